"""Values handed to and returned from hooks: frozen, slotted, and free of server internals."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from ._manager import PluginManager

__all__ = [
    "MODEL_NAME",
    "RESERVED_MODEL_NAMES",
    "AuditEvent",
    "CommandContext",
    "Decision",
    "InferenceEvent",
    "ModelRegistry",
    "ModelVersionRecord",
    "Principal",
    "Reference",
    "RegistrationCandidate",
    "RequestInfo",
    "ServiceLevel",
    "Settings",
    "model_name_problem",
]


# A model name: it is a URL path segment and a Serve application name.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# Names no model may take: the control application's Serve name (a model so named would replace
# it), and the path segments of the control routes.
# lockgate's own Serve application, and a name that is a route: GET /v2/models/stats.
RESERVED_MODEL_NAMES = frozenset({"lockgate-control", "stats"})


def model_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a model, or None when it can."""
    if not MODEL_NAME.match(name):
        return f"name {name!r}: use letters, digits, '_', '.', '-' (up to 128, starting with a letter or digit)"
    if name.lower() in RESERVED_MODEL_NAMES:
        return f"name {name!r} is reserved (lockgate's own Serve application, or a route of /v2/models); reserved names: {', '.join(sorted(RESERVED_MODEL_NAMES))}"
    return None


_T = TypeVar("_T")


def _slot_init(cls: type[_T]) -> type[_T]:
    """Give a frozen, slotted dataclass an ``__init__`` that fills its slots through their
    descriptors. The one ``dataclass`` writes for a frozen class sets each field through
    ``object.__setattr__`` (a lookup and a call per field), which is what makes it frozen for
    everyone else: for ``InferenceEvent``, built for every inference request, 1.7 us against
    0.9 (``bench/micro/test_events.py``). The class stays a dataclass, frozen, with the same
    fields, defaults and order; it must have no ``__post_init__`` and no default factory."""
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has __post_init__")
    names: dict[str, Any] = {}
    params, lines = [], []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name} has a default factory")
        names[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            names[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        lines.append(f"    _set_{f.name}(self, {f.name})")
    exec(f"def __init__(self, {', '.join(params)}):\n" + "\n".join(lines), names)  # as dataclasses does
    init = names["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    setattr(cls, "__init__", init)  # noqa: B010 - mypy will not have a method assigned
    return cls


@dataclass(frozen=True, slots=True)
class Settings:
    """What plugins are told at start (``lockgate_configure``).

    ``registry_url`` is a SQLAlchemy URL; ``artifact_dir`` where artifacts live by sha256;
    ``default_alias`` the alias that ``/v2/models/<m>/infer`` serves; ``options`` the
    per-plugin sections of the server configuration, by plugin name; ``home`` the folder
    where plugins keep their local files (keys, checkpoints) unless configured otherwise.
    ``anonymous``: callers without credentials may act while no API key exists (open mode).
    Only ``lockgate serve`` on a loopback-only address (or with ``--insecure``) and the local
    command line set it; every other process, a Serve config's builder or KubeRay included,
    refuses anonymous callers even before the first key exists.
    """

    registry_url: str
    artifact_dir: str
    default_alias: str = "production"
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    home: str = ""
    anonymous: bool = False


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """One HTTP request as gatekeepers see it. ``headers`` keys are lower-case."""

    method: str
    path: str
    headers: Mapping[str, str]
    client: str | None
    model: str | None
    version: str | None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. ``name`` is 'anonymous' when no authenticator claimed the request."""

    name: str
    roles: frozenset[str] = frozenset()
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    """A gatekeeper's answer: allow or deny, why, and who said so (the plugin's name)."""

    allow: bool
    reason: str = ""
    plugin: str = ""
    status: int = 403

    @classmethod
    def deny(cls, reason: str, *, status: int = 403) -> Decision:
        return cls(False, reason, status=status)


@dataclass(frozen=True, slots=True)
class ModelVersionRecord:
    """An immutable registered model version."""

    name: str
    version: int
    sha256: str
    size: int
    signature: Mapping[str, Any]
    created_by: str
    created_at: float
    lineage: Mapping[str, Any]
    card: str
    artifact_path: str


@dataclass(frozen=True, slots=True)
class ShadowRun:
    """A shadow run of a model: ``share`` (0..1] of the traffic its default alias receives is
    copied to ``version`` after the answer, until ``until`` (epoch seconds; None: until stopped)."""

    name: str
    version: int
    share: float
    until: float | None
    set_by: str
    set_at: float

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until


@dataclass(frozen=True, slots=True)
class Reference:
    """A version's reference sample (model inputs by name, one row per example) and the
    baseline statistics computed from it at registration: drift is measured against the
    baseline, explanations take rows of the sample as background."""

    name: str
    version: int
    sample: Mapping[str, Any]
    baseline: Mapping[str, Any]
    rows: int
    source_sha256: str
    set_by: str
    set_at: float


@dataclass(frozen=True, slots=True)
class RegistrationCandidate:
    """A model about to be registered, for registration-policy gatekeepers. ``operators`` are
    ``Op`` for the default domain and ``domain::Op`` otherwise; ``custom_op_libraries`` the
    libraries its configuration loads into onnxruntime, by path, with their sha256."""

    name: str
    path: str
    sha256: str
    size: int
    signature: Mapping[str, Any]
    created_by: str
    lineage: Mapping[str, Any]
    opsets: Mapping[str, int]
    operators: frozenset[str]
    custom_op_libraries: Mapping[str, str] = field(default_factory=dict)  # path -> sha256


@_slot_init
@dataclass(frozen=True, slots=True)
class InferenceEvent:
    """One inference request and what it came to (recorders and observers; never per row).

    ``request_id`` is the server's id of the request (the ``lockgate-request-id`` response
    header); ``client_id`` the OIP request ``id`` the client sent, if any. ``sha256`` is the
    served version's artifact hash. ``request_body`` and ``response_body`` are the bytes as
    received and sent (None when there were none); a recorder digests them off the hot path.
    ``decided_by`` names the gatekeeper plugin that refused the request, if one did.
    ``started_at`` is the epoch time the request arrived. ``action`` is ``infer`` or
    ``explain``; an explanation names the request it explains in ``explains`` when the
    client said (parameter ``explains``: that request's ``lockgate-request-id``).
    ``in_flight`` is how many requests the replica was serving when the event was made, this one
    included (0: not known); a recorder may commit a lone request's record at once (plugin API 1.4).
    """

    request_id: str | None
    model: str
    version: int | None
    principal: str
    status: int
    latency_s: float
    batch_rows: int
    error: str | None = None
    client_id: str | None = None
    sha256: str | None = None
    request_body: bytes | None = None
    response_body: bytes | None = None
    decided_by: str | None = None
    started_at: float = 0.0
    action: str = "infer"
    explains: str | None = None
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """A control action or a refusal worth a record (register, alias move, load refused, ...)."""

    kind: str
    actor: str
    model: str | None = None
    version: int | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ServiceLevel:
    """A model's service-level objectives (``lockgate_service_level``): the latency percentile
    and its bound in milliseconds, the share of requests that may fail (5xx but 503), and the
    share that must be answered (not 503)."""

    latency_percentile: float = 99.0
    latency_ms: float = 50.0
    error_rate: float = 0.01
    availability: float = 0.999


@dataclass(frozen=True, slots=True)
class CommandContext:
    """What a plugin's commands get from the command line (``lockgate_register_commands``).

    ``manager(registry_url, artifact_dir)`` builds the plugin manager of the command's
    process (None: the environment's LOCKGATE_REGISTRY_URL / LOCKGATE_ARTIFACTS, else
    LOCKGATE_HOME); ``registry_options`` is a click decorator adding ``--registry-url`` and
    ``--artifacts`` to a command or group, as the built-in commands have them."""

    manager: Callable[[str | None, str | None], PluginManager]
    registry_options: Callable[[Any], Any]


@runtime_checkable
class ModelRegistry(Protocol):
    """Every method the server calls on a registry; the built-in one is
    ``lockgate.plugins.registry``. ``register`` with ``version`` registers that number (a
    repository import) and returns the existing version unchanged when its sha256 is the
    same; ``set_alias`` returns the version the alias pointed to before (None: new alias);
    ``alias_history`` lists moves oldest first as mappings with ``alias``, ``version``,
    ``previous``, ``set_by`` and ``set_at``; unknown names raise ``LookupError``. A registry that
    keeps no reference samples answers None from ``reference`` and raises ``RegistryError``
    from ``set_reference``."""

    def list_models(self) -> list[str]: ...

    def model_config(self, name: str) -> Mapping[str, Any]: ...

    def versions(self, name: str) -> list[ModelVersionRecord]: ...

    def get_version(self, name: str, version: int) -> ModelVersionRecord: ...

    def aliases(self, name: str) -> dict[str, int]: ...

    def resolve(self, name: str, reference: str | None = None) -> ModelVersionRecord: ...

    def read_verified(self, record: ModelVersionRecord) -> bytes: ...

    def register(
        self,
        path: str | Path,
        name: str,
        *,
        created_by: str,
        lineage: Mapping[str, Any] | None = None,
        card: str = "",
        version: int | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> ModelVersionRecord: ...

    def set_alias(self, name: str, alias: str, version: int, *, actor: str) -> int | None: ...

    def alias_history(self, name: str, alias: str | None = None) -> list[dict[str, Any]]: ...

    def alias_at(self, name: str, alias: str, when: float) -> int | None: ...

    def describe(self, record: ModelVersionRecord) -> dict[str, Any]: ...

    def reference(self, name: str, version: int) -> Reference | None: ...

    def set_reference(
        self, name: str, version: int, sample: Mapping[str, Any], baseline: Mapping[str, Any], *, actor: str, source_sha256: str
    ) -> None: ...
