"""The hook specifications of lockgate's plugin API (``PLUGIN_API_VERSION``).

Six concerns, each with its calling rule:

- Lifecycle: ``lockgate_configure`` runs once when a process builds its plugin manager;
  ``lockgate_register_commands`` when the ``lockgate`` command line starts;
  ``lockgate_startup_notes`` when ``lockgate serve`` has started.
- Providers (registry, audit records, approval states, service levels, baselines, SBOM):
  first non-None result wins.
- Gatekeepers (authenticate, authorize, registration policy, alias moves, serving, start):
  each implementation is called on its own, in turn; any deny wins; an exception or a timeout
  counts as a deny, and is counted. Any gatekeeper may be ``async def``. A gatekeeper
  declared as a pluggy wrapper or hookwrapper is refused when its plugin registers: a
  wrapper's answer is not a Decision, and would pass for an abstention.
- Recorders (the audit log's inference records): called before a response leaves; the
  response waits for an awaitable they return; an exception withholds the answer (503).
- Observers (audit, monitoring, repository imports): each implementation is called on its
  own; an exception is logged and counted and the request goes on.

No hook runs per row of a batch: per request at most, and per batch for batch observers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from . import hookspec
from ._types import (
    AuditEvent,
    CommandContext,
    Decision,
    InferenceEvent,
    ModelRegistry,
    ModelVersionRecord,
    Principal,
    RegistrationCandidate,
    RequestInfo,
    ServiceLevel,
    Settings,
)

__all__ = [
    "GATEKEEPERS",
    "LIFECYCLE",
    "OBSERVERS",
    "PROVIDERS",
    "RECORDERS",
    "lockgate_approval_states",
    "lockgate_audit_event",
    "lockgate_audit_payload",
    "lockgate_audit_record",
    "lockgate_audit_records",
    "lockgate_authenticate",
    "lockgate_authorize",
    "lockgate_build_baseline",
    "lockgate_check_alias",
    "lockgate_check_registration",
    "lockgate_check_serving",
    "lockgate_check_startup",
    "lockgate_configure",
    "lockgate_imported_version",
    "lockgate_model_registry",
    "lockgate_observe_batch",
    "lockgate_observe_inference",
    "lockgate_record_inference",
    "lockgate_register_commands",
    "lockgate_resolve_model",
    "lockgate_reuse_allow",
    "lockgate_sbom",
    "lockgate_service_level",
    "lockgate_startup_notes",
]

GATEKEEPERS = (
    "lockgate_authenticate",
    "lockgate_authorize",
    "lockgate_reuse_allow",
    "lockgate_check_registration",
    "lockgate_check_alias",
    "lockgate_check_serving",
    "lockgate_check_startup",
)
RECORDERS = ("lockgate_record_inference",)
OBSERVERS = (
    "lockgate_audit_event",
    "lockgate_observe_inference",
    "lockgate_observe_batch",
    "lockgate_imported_version",
    "lockgate_register_commands",
    "lockgate_startup_notes",
)
LIFECYCLE = ("lockgate_configure",)
PROVIDERS = (
    "lockgate_model_registry",
    "lockgate_resolve_model",
    "lockgate_audit_records",
    "lockgate_audit_record",
    "lockgate_audit_payload",
    "lockgate_approval_states",
    "lockgate_service_level",
    "lockgate_build_baseline",
    "lockgate_sbom",
)


# -- lifecycle -------------------------------------------------------------------------------


@hookspec
def lockgate_configure(settings: Settings, manager: Any) -> None:
    """Called once per process when its plugin manager is built, before any other hook.

    ``settings`` carries the registry URL, the artifact folder, the default alias and each
    plugin's own options (``settings.options[<plugin name>]``). ``manager`` is the process's
    ``lockgate.plugins.PluginManager``: a plugin that acts (a registry registering a model)
    asks it to run the gatekeepers (``manager.check_registration``) and to record the action
    (``manager.audit``). An exception here marks the plugin as failed and unregisters it;
    the server goes on without it.
    """


@hookspec
def lockgate_register_commands(cli: Any, context: CommandContext) -> None:
    """Add commands to the ``lockgate`` command line: ``cli`` is its click group.

    Called once when the command line starts, before it parses its arguments (so ``lockgate
    --help`` lists every command). ``context`` builds the plugin manager a command runs with
    (``context.manager(registry_url, artifact_dir)``) and carries the shared registry
    options; ``lockgate.plugins.shared`` has the helpers the built-in commands use (the
    caller's key check, dates, failing with a message). An exception is logged and counted:
    the plugin's commands are missing and every other command works.
    """


@hookspec
def lockgate_startup_notes(host: str) -> list[str] | None:
    """Lines ``lockgate serve`` prints as warnings once it serves on ``host`` (open mode, say),
    or None. Called once, after the models are deployed. An exception is logged and counted."""


# -- providers: the first non-None answer wins -------------------------------------------------


@hookspec(firstresult=True)
def lockgate_model_registry() -> ModelRegistry | None:
    """Return the model registry this process uses, or None to let another plugin answer.

    Called when a process first needs the registry (CLI, replica constructor, control app).
    The first non-None answer wins; block the built-in ``registry`` plugin to replace it.
    An exception propagates to whoever asked: without a registry nothing can be served.
    """


@hookspec(firstresult=True)
def lockgate_resolve_model(name: str, reference: str | None) -> ModelVersionRecord | None:
    """Resolve ``name`` and ``reference`` to a registered version, or None to pass.

    ``reference`` is None (the default alias), an alias name (``"staging"``), or a version
    number as text (``"3"``). Called off the hot path: at load and when aliases change.
    Raise ``LookupError`` with a readable message when the model or reference is unknown; an
    exception propagates to whoever asked.
    """


@hookspec(firstresult=True)
def lockgate_audit_records(
    since: float | None, until: float | None, kind: str | None, model: str | None
) -> Iterable[Mapping[str, Any]] | None:
    """The audit log's records from ``since`` to ``until`` (epoch seconds; None: unbounded),
    of ``kind`` (``infer``, ``register``, ``drift_detected``, ...; None: every kind) and of
    ``model`` (None: every model), in sequence order; or None when this plugin keeps none.

    Each record is a mapping with at least ``seq``, ``at``, ``kind``, ``actor``, ``model``,
    ``version`` and ``detail``. Called off the request path (``lockgate report``). An
    exception propagates to whoever asked.
    """


@hookspec(firstresult=True)
def lockgate_audit_record(request_id: str) -> Mapping[str, Any] | None:
    """The record of inference request ``request_id`` (the server's ``lockgate-request-id``, or
    the OIP ``id`` the client sent), as ``lockgate_audit_records`` gives records; None when this
    plugin keeps no such record. Plugin API 1.4; called by ``lockgate audit replay``/``explain``.
    An exception propagates to whoever asked."""


@hookspec(firstresult=True)
def lockgate_audit_payload(record: Mapping[str, Any], which: str) -> bytes | None:
    """The ``which`` body (``input``: the request, ``output``: the response) kept with ``record``,
    as it was received or sent; None when none was kept. An exception propagates to whoever asked:
    it says why a kept body cannot be read (another key, altered). Called by ``lockgate audit
    replay``/``explain``, off the request path. Plugin API 1.4."""


@hookspec(firstresult=True)
def lockgate_approval_states(model: str) -> Mapping[int, str] | None:
    """The approval state of each version of ``model`` that has one (``pending``,
    ``approved``, ``rejected``, ``revoked``), or None when this plugin keeps no approvals.
    A version absent from the mapping has no decision yet. Called off the request path (``lockgate
    report``). An exception propagates to whoever asked."""


@hookspec(firstresult=True)
def lockgate_service_level(model: str) -> ServiceLevel | None:
    """The service-level objectives of ``model``, or None to let another plugin (or the
    defaults of ``ServiceLevel``) answer. Called off the request path (``lockgate report``). An
    exception propagates to whoever asked."""


@hookspec(firstresult=True)
def lockgate_build_baseline(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The drift baseline of a reference sample: ``inputs`` are the model's inputs by name
    (numpy, one row per example), ``outputs`` the model's outputs on them. Return a JSON-able
    mapping with at least ``rows`` and ``features``, or None when this plugin measures no
    drift. Called when a reference sample is set. An exception propagates to whoever asked: the
    sample is refused."""


@hookspec(firstresult=True)
def lockgate_sbom(models: Sequence[tuple[ModelVersionRecord, bytes, list[str]]]) -> Mapping[str, Any] | None:
    """A software bill of materials (CycloneDX JSON) of this runtime and of ``models``: each
    a version's record, its verified artifact bytes and the aliases pointing to it. None when
    this plugin makes none (``GET /v2/sbom`` is then 404). Called off the request path (the
    control replica, ``lockgate sbom``). An exception propagates to whoever asked."""


# -- gatekeepers ---------------------------------------------------------------------------------


@hookspec
def lockgate_authenticate(request: RequestInfo) -> Principal | Decision | None:
    """Say who sends ``request``: a Principal, a deny Decision, or None to abstain.

    Runs once per request before the body is decoded. The first Principal returned is the
    caller; a deny Decision refuses the request with 401. An exception or a timeout counts as a
    deny (401).
    When every implementation abstains the caller is the anonymous principal.
    """


@hookspec
def lockgate_authorize(principal: Principal, action: str, model: str | None, version: str | None) -> Decision | None:
    """Allow or deny ``principal`` doing ``action`` ('infer', 'metadata', 'register', ...)
    on ``model`` (None for server-wide actions) at ``version`` (None: the default).

    Runs once per request. Return a Decision, or None to abstain. Any deny wins; an
    exception or a timeout counts as a deny (403).
    """


@hookspec
def lockgate_reuse_allow(principal: Principal) -> float | None:
    """Until when (a ``time.monotonic()`` value) this plugin's allow of ``principal`` stays true
    for requests with the same credentials (the Authorization header as sent), action, model and
    version. Before then the server asks no request gatekeeper again for such a request.

    Runs right after a request was allowed, in the replica that serves it, when every plugin
    with an ``authenticate`` or ``authorize`` implementation also implements this hook (one
    that does not keeps every request asked). None: ask every time. The earliest answer of all
    implementations wins. A plugin that answers promises that its gatekeepers' answers depend on
    nothing else of the request, and that what revokes the allow (a key revoked or expired)
    takes effect no later than the time it gave. An exception, or an answer that is neither a
    number nor None, counts as a deny of the request just allowed.
    """


@hookspec
def lockgate_check_registration(candidate: RegistrationCandidate) -> Decision | None:
    """Allow or deny registering ``candidate`` (a validated ONNX file with its sha256,
    signature, opsets and operators). Runs once per registration, before anything is
    written. Every deny is collected into the refusal; an exception counts as a deny.
    """


@hookspec
def lockgate_check_alias(principal: Principal, model: str, alias: str, version: int) -> Decision | None:
    """Allow or deny ``principal`` pointing ``alias`` of ``model`` at ``version``. Runs once
    per alias move, before anything is written (CLI, repository import). Any deny refuses
    the move with its reason; an exception counts as a deny.
    """


@hookspec
def lockgate_check_serving(record: ModelVersionRecord, aliases: list[str]) -> Decision | None:
    """May ``record`` be served now, while ``aliases`` (possibly empty) point to it?

    Runs off the hot path in every model replica: when a version loads and at each registry
    poll (``alias_poll_s``, 1 s by default). A deny stops the version serving: its requests
    get 503 with the reason until a later poll allows it again. An exception counts as a deny.
    """


@hookspec
def lockgate_check_startup(host: str, insecure: bool) -> Decision | None:
    """May ``lockgate serve`` start, listening on ``host``? ``insecure`` is True when the
    operator asked to serve without credentials beyond loopback (``--insecure``).

    Runs once, before Ray starts. Any deny refuses the start with its reason (exit code 2):
    a misconfigured plugin that would fail every request, a policy the runtime breaks, open
    access on a public interface. An exception counts as a deny.
    """


# -- recorders -------------------------------------------------------------------------------------


@hookspec
def lockgate_record_inference(event: InferenceEvent) -> Any:
    """Record one inference request (answered, refused or failed) before its response leaves.

    Runs once per inference request, on the replica's event loop, so it must only hand the
    event over (to a buffer, a queue). Return None, or an awaitable that completes when the
    record is durable: the response waits for it. An exception, or an awaitable that fails or
    takes longer than the recorder timeout, withholds the answer: the client gets 503, and
    the model's answer is never sent unrecorded.
    """


# -- observers -----------------------------------------------------------------------------------


@hookspec
def lockgate_audit_event(event: AuditEvent) -> None:
    """Record a control action or refusal (registration, alias move, load refused, plugin
    failure). Called after the action took effect (or was refused). An exception is logged
    and counted; the action stands.
    """


@hookspec
def lockgate_observe_inference(event: InferenceEvent) -> None:
    """Observe one answered inference request, success or error. Called after the response
    was sent, once per request (never per row). An exception is logged and counted.
    """


@hookspec
def lockgate_observe_batch(
    model: str,
    version: int,
    rows: int,
    requests: int,
    queue_s: float,
    compute_s: float,
    queued: int,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Any],
) -> None:
    """Observe one batch run by the model: ``rows`` rows from ``requests`` requests, the
    oldest request's wait in the queue and the model's compute time, in seconds, and the
    requests still ``queued`` behind it. ``inputs`` and ``outputs`` are the batch's arrays
    by tensor name (numpy, at least ``rows`` rows; padding rows may follow): they are
    reused by the next batch, so copy what you keep, and keep the call short, it runs on
    the replica's event loop. An exception is logged and counted. (Plugin API 1.2 added
    ``queued``, ``inputs`` and ``outputs``; an implementation may take any subset.)
    """


@hookspec
def lockgate_imported_version(name: str, version: int, actor: str) -> None:
    """Called once per model by a repository import (``lockgate serve --model-repository``,
    ``lockgate models import-repo``) that registered version ``version`` of ``name``, or found
    it registered, and is about to point the default alias at it in the name of ``actor``. The governance plugin
    approves a pending version here while no API key exists (open mode), so a fresh demo
    serves. The alias move itself still passes the alias gatekeepers. An exception is logged
    and counted; the import goes on.
    """
