"""The HTTP surface: lean ASGI applications for a model and for the control routes.

Each model's Serve replica hands its requests straight to ``ModelApp`` (Serve's
direct ingress, behind HAProxy), so nothing but this module's routing sits between
the socket and the model. ``ControlApp`` answers ``/v2`` itself: health, server
metadata, and OIP 404s for models that do not exist.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lockgate.plugins import Decision, InferenceEvent, PluginManager, Principal, RecordFailed, RequestInfo

from ._errors import (
    BadRequest,
    ConfigError,
    Forbidden,
    MethodNotAllowed,
    ModelFailed,
    ModelLoadError,
    NotFound,
    PayloadTooLarge,
    RequestError,
    Unauthorized,
    Unavailable,
)
from .autoscaling import LoadMeter
from .batching import Assembler, Batcher
from .config import ModelConfig
from .explain import Explainer, ExplainOptions
from .limits import DEFAULT_LIMITS, LimitOptions
from .model import ModelVersion, load_version
from .protocol import HEADER_LENGTH, InferRequest, encode_infer_response, parse_infer_request

__all__ = ["ControlApp", "ModelApp", "ModelService", "SERVER_NAME", "server_version"]

log = logging.getLogger("lockgate.server")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

SERVER_NAME = "lockgate"
_JSON = [(b"content-type", b"application/json")]
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_RETRY = {"retry-after": "1"}
_CHALLENGE = {"www-authenticate": 'Bearer realm="lockgate"'}
_VERSION_ROUTE = re.compile(r"^/versions/([^/]+)(/ready|/infer|/explain)?/?$")


def server_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lockgate")
    except PackageNotFoundError:
        return "0+unknown"


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("client disconnected")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body is larger than the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def respond_error(send: Send, error: RequestError) -> None:
    await respond(send, error.status, error.body(), _error_headers(error))


def _json_body(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _json_length(header_length: bytes | None) -> int | None:
    """The Inference-Header-Content-Length of a binary-tensor request (None: all JSON)."""
    if header_length is None:
        return None
    try:
        return int(header_length)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length must be an integer, got {header_length[:20]!r}") from None


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v
    return None


class _Served:
    __slots__ = ("batcher", "max_batch_size", "model")

    def __init__(self, model: ModelVersion, max_batch_size: int, batcher: Batcher) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.batcher = batcher


class ModelService:
    """One model as a replica serves it: versions from the registry, each with its batcher.

    Loaded at start: every version an alias points to, and those the version policy selects.
    Any other registered version loads on its first request. Every load reads the artifact
    through the registry, which checks its sha256. ``refresh_forever`` follows alias moves:
    a newly aliased version is loaded first, then the alias table is swapped in one
    assignment, so requests never see a half-done move.
    """

    def __init__(
        self,
        name: str,
        config: ModelConfig,
        registry: Any,
        *,
        manager: PluginManager | None = None,
        default_alias: str = "production",
        explain: ExplainOptions | None = None,
        limits: LimitOptions = DEFAULT_LIMITS,
    ) -> None:
        self.name = name
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"onnxruntime-{name}")
        self.explainer = Explainer(name, registry, set(config.preprocess), explain or ExplainOptions(), self.executor)
        self.config = config
        self.registry = registry
        self.manager = manager
        self.default_alias = default_alias
        self.limits = limits  # body and tensor sizes here; the rest is the listener's
        self.served: dict[int, _Served] = {}
        self._loading: dict[int, asyncio.Future] = {}
        records = registry.versions(name)
        if not records:
            raise ModelLoadError(name, None, "no registered versions")
        self.registered = {r.version for r in records}
        self._registered_at = 0.0  # when a request for an unknown version last asked the registry
        self.aliases: dict[str, int] = registry.aliases(name)
        wanted = set(config.version_policy.select(sorted(self.registered))) | set(self.aliases.values())
        for version in sorted(wanted):
            self.served[version] = self._load(version)
        self._batch_observed = manager is not None and manager.has("lockgate_observe_batch")
        self._serving_checked = manager is not None and manager.has("lockgate_check_serving")
        self._blocked_lock = threading.Lock()
        self.blocked: dict[int, str] = {}  # version -> why it may not serve now (serving gatekeepers)
        self.update_blocked()

    def _load(self, version: int) -> _Served:
        """Read (hash-checked) and load one version; runs off the event loop after start."""
        record = self.registry.get_version(self.name, version)
        try:
            data = self.registry.read_verified(record)
        except Exception as e:  # noqa: BLE001 - a changed or missing artifact: refused, already recorded
            raise ModelLoadError(self.name, version, str(e)) from None
        model = load_version(self.name, version, data, self.config.onnxruntime, record.sha256)
        preprocess = model.preprocess(self.config.preprocess)
        size = self._max_batch_size(model)
        on_batch = self._on_batch(version, [s.name for s in model.outputs]) if self.manager is not None and self.manager.has("lockgate_observe_batch") else None
        batching = self.config.dynamic_batching
        self._check_padding(model, batching)
        assembler = Assembler([s.name for s in model.graph_inputs], preprocess, size, size > 0, batching.padding)
        dynamic = {s.name: tuple(d == -1 for d in s.shape[1:]) for s in model.graph_inputs}
        batcher = Batcher(model.run, [s.name for s in model.outputs], size, batching, self.executor, on_batch, assembler, dynamic)
        return _Served(model, size, batcher)

    def _check_padding(self, model: ModelVersion, batching: Any) -> None:
        graph = {s.name: s for s in model.graph_inputs}
        outputs = {s.name for s in model.outputs}
        where = f"model {self.name} version {model.version}: dynamic_batching"
        for name in batching.padding:
            spec = graph.get(name)
            if spec is None:
                raise ConfigError(f"padding names input '{name}'; the model's inputs are {', '.join(graph)}", source=where)
            if name in self.config.preprocess:
                raise ConfigError(f"input '{name}' cannot be both padded and preprocessed", source=where)
            if -1 not in spec.shape[1:]:
                raise ConfigError(f"padding input '{name}' has no dynamic non-batch dimension ({list(spec.shape)})", source=where)
        unknown = [o for o in batching.padded_outputs if o not in outputs]
        if unknown:
            raise ConfigError(f"padded_outputs names {', '.join(unknown)}; the model's outputs are {', '.join(sorted(outputs))}", source=where)

    def _on_batch(self, version: int, names: list[str]):
        manager = self.manager

        def observe(rows: int, requests: int, queue_s: float, compute_s: float, queued: int, feeds: dict, results: list) -> None:
            manager.observe(
                "lockgate_observe_batch", model=self.name, version=version, rows=rows, requests=requests, queue_s=queue_s,
                compute_s=compute_s, queued=queued, inputs=feeds, outputs=dict(zip(names, results)),
            )

        return observe

    def _max_batch_size(self, model: ModelVersion) -> int:
        configured = self.config.max_batch_size
        if configured is None:
            return 32 if model.batchable() else 0
        if configured > 0 and not model.batchable():
            raise ConfigError(
                f"max_batch_size {configured} needs a dynamic first dimension on every input and output of "
                f"version {model.version}; set max_batch_size: 0",
                source=f"model {self.name}",
            )
        return configured

    @property
    def default_version(self) -> int:
        return self.aliases.get(self.default_alias) or max(self.served)

    async def version(self, text: str | None) -> _Served:
        """The served version for a route's version text (None: the default alias)."""
        if text is None:
            return self.served[self.default_version]
        number = int(text) if text.isdigit() else None
        if number is not None and number in self.served:
            return self.served[number]
        if number is not None and number not in self.registered and time.monotonic() - self._registered_at > 1.0:
            # Registered since the last refresh? Ask the registry (off the event loop), at most once a
            # second, so requests for versions that do not exist cannot load the database.
            self._registered_at = time.monotonic()
            self.registered = await asyncio.to_thread(lambda: {r.version for r in self.registry.versions(self.name)})
        if number is None or number not in self.registered:
            known = ", ".join(str(v) for v in sorted(self.registered))
            raise NotFound(f"model '{self.name}' has no version '{text}'; registered: {known}")
        return await self._load_later(number)

    async def _load_later(self, number: int) -> _Served:
        pending = self._loading.get(number)
        if pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(self._load, number))
            self._loading[number] = pending
        try:
            served = await asyncio.shield(pending)
        except ModelLoadError as e:
            raise Unavailable(str(e)) from None
        finally:
            self._loading.pop(number, None)
        self.served.setdefault(number, served)
        await asyncio.to_thread(self.update_blocked)
        return self.served[number]

    async def refresh(self) -> bool:
        """Follow the registry: load newly aliased versions, then swap the alias table. True on change."""
        aliases = await asyncio.to_thread(self.registry.aliases, self.name)
        if aliases == self.aliases:
            return False
        for number in sorted(set(aliases.values()) - set(self.served)):
            self.registered.add(number)
            try:
                await self._load_later(number)
            except Unavailable as e:
                log.error("alias move of %s to version %s not applied: %s", self.name, number, e)
                return False
        # The serving decisions for the new table are taken before it is swapped in, and both
        # change together: a request never sees the new alias with the old decisions.
        await asyncio.to_thread(self.update_blocked, None, aliases)
        log.info("model %s aliases now %s", self.name, aliases)
        return True

    def update_blocked(self, records: list[Any] | None = None, aliases: dict[str, int] | None = None) -> None:
        """Ask the serving gatekeepers about every loaded version under ``aliases`` (default: the
        current table), then install the decisions, and ``aliases`` when given, together. Runs
        off the event loop; one call at a time, so a slower call cannot undo a newer one."""
        with self._blocked_lock:
            self._update_blocked(records, aliases)

    def _update_blocked(self, records: list[Any] | None, new_aliases: dict[str, int] | None) -> None:
        aliases = self.aliases if new_aliases is None else new_aliases
        if not self._serving_checked:
            self.aliases = aliases
            return
        if records is None:
            records = [self.registry.get_version(self.name, v) for v in self.served]
        blocked = {}
        for record in records:
            if record.version not in self.served:
                continue
            pointing = sorted(a for a, v in aliases.items() if v == record.version)
            decision = self.manager.check_serving(record, pointing)
            if not decision.allow:
                blocked[record.version] = decision.reason or f"version {record.version} may not serve"
        for version in blocked.keys() - self.blocked.keys():
            log.warning("model %s version %s stops serving: %s", self.name, version, blocked[version])
            self.manager.audit("serving_stopped", "lockgate", model=self.name, version=version, detail={"reason": blocked[version]})
        for version in self.blocked.keys() - blocked.keys():
            self.manager.audit("serving_resumed", "lockgate", model=self.name, version=version)
        self.blocked, self.aliases = blocked, aliases

    def check_serving(self, served: _Served) -> None:
        """503 when a serving gatekeeper stopped this version (revoked, not approved, ...)."""
        if self.blocked:
            reason = self.blocked.get(served.model.version)
            if reason is not None:
                raise Unavailable(f"model '{self.name}' version {served.model.version} is not served: {reason}")

    async def refresh_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
                records = await asyncio.to_thread(self.registry.versions, self.name)
                self.registered = {r.version for r in records}
                await asyncio.to_thread(self.update_blocked, records)
            except Exception as e:  # noqa: BLE001 - keep serving what is loaded
                log.warning("registry refresh for %s failed: %s", self.name, e)

    async def metadata(self, version: str | None) -> dict[str, object]:
        served = await self.version(version)
        meta = served.model.metadata()
        meta["versions"] = [str(v) for v in sorted(self.served)] if version is None else [str(served.model.version)]
        meta["max_batch_size"] = served.max_batch_size
        return meta

    async def infer(self, served: _Served, body: bytes, header_length: bytes | None) -> tuple[bytes, list, InferRequest]:
        served.batcher.check_room()
        request = parse_infer_request(body, _json_length(header_length), served.model, served.max_batch_size, self.limits.max_tensor_elements)
        timeout = None
        if request.parameters and "timeout" in request.parameters:
            timeout = request.parameters["timeout"]
            if type(timeout) is not int or timeout < 0:
                raise BadRequest("parameter 'timeout' must be a non-negative integer of microseconds")
        try:
            results = await served.batcher.submit(request.inputs, request.rows, timeout)
        except RequestError:
            raise
        except Exception as e:
            kind = type(e).__name__
            if kind in ("InvalidArgument", "InvalidGraph") or "INVALID_ARGUMENT" in str(e):
                raise BadRequest(f"model '{self.name}' rejected the input: {e}") from None
            log.exception("model %s version %s failed", self.name, served.model.version)
            raise ModelFailed(f"model '{self.name}' version {served.model.version} failed: {kind}: {e}") from None
        body, headers = encode_infer_response(request, self.name, served.model.version, results)
        return body, headers, request

    async def explain(self, served: _Served, body: bytes, header_length: bytes | None) -> tuple[bytes, InferRequest, str | None]:
        """Attributions for the one row of an OIP request body (see lockgate.server.explain)."""
        return await self.explainer.explain(served.model, served.max_batch_size, body, _json_length(header_length))

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class ModelApp:
    """ASGI app for one model, mounted at ``/v2/models/<name>``.

    Gatekeepers (authenticate, authorize) run once per request before the body is read.
    Recorders (the audit log) get every inference request before its response leaves, and
    the response waits for a record they say is pending; observers run after it was sent.
    With no such plugins, none of this costs anything.
    """

    def __init__(self, service: ModelService) -> None:
        self.service = service
        manager = service.manager
        self.manager = manager
        self.gated = manager is not None and (manager.has("lockgate_authenticate") or manager.has("lockgate_authorize"))
        self.observed = manager is not None and manager.has("lockgate_observe_inference")
        self.recorded = manager is not None and manager.has("lockgate_record_inference")
        # Requests held, read by autoscaling only (server/autoscaling.py); no cost without it.
        self.load = LoadMeter() if service.config.autoscaling is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if self.load is None:
            await self._serve(scope, receive, send)
            return
        self.load.enter()
        try:
            await self._serve(scope, receive, send)
        finally:
            self.load.leave()

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        outcome = _Outcome()
        try:
            status, body, headers = await self._route(scope, receive, outcome)
        except RequestError as e:
            outcome.status, outcome.error = e.status, e.message
            status, body, headers = e.status, e.body(), _error_headers(e)
        except ConnectionAbortedError:
            outcome.status, outcome.error = 499, "client disconnected before the request was read"
            if self.recorded and outcome.action:
                await self._record(outcome, start, None)
            return
        except Exception as e:  # a bug of ours: say so, keep the replica up
            log.exception("unhandled error on %s", scope.get("path"))
            error = RequestError(f"internal error: {type(e).__name__}")
            outcome.status, outcome.error = 500, error.message
            status, body, headers = 500, error.body(), _error_headers(error)
        if outcome.action:
            headers = [*headers, (b"lockgate-request-id", outcome.request_id.encode())]
            if self.recorded:
                withheld = await self._record(outcome, start, body)
                if withheld is not None:  # observers see what the client got
                    outcome.status, outcome.error = withheld.status, withheld.message
                    status, body, headers = withheld.status, withheld.body(), [*_error_headers(withheld), headers[-1]]
        await respond(send, status, body, headers)
        if self.observed and outcome.action:
            self.manager.observe("lockgate_observe_inference", event=self._event(outcome, start, body))

    def _event(self, outcome: _Outcome, start: float, response: bytes | None) -> InferenceEvent:
        return InferenceEvent(
            outcome.request_id, self.service.name, outcome.version, outcome.principal, outcome.status,
            time.perf_counter() - start, outcome.rows, outcome.error, outcome.client_id, outcome.sha256,
            outcome.body, response, outcome.decided_by, outcome.started_at, outcome.action, outcome.explains,
        )

    async def _record(self, outcome: _Outcome, start: float, response: bytes | None) -> RequestError | None:
        """Hand the request to the recorders; the error to send instead when they fail."""
        try:
            await self.manager.record_inference(self._event(outcome, start, response))
        except RecordFailed as e:
            log.error("answer to request %s withheld: %s", outcome.request_id, e)
            return Unavailable(f"the request could not be recorded in the audit log, so its answer is withheld ({e})", headers=_RETRY)
        return None

    async def _gate(self, scope: Scope, action: str, version: str | None, outcome: _Outcome) -> None:
        try:
            await gate(self.manager, scope, action, self.service.name, version, outcome)
        except RequestError as e:
            outcome.decided_by = e.decided_by
            raise

    async def _route(self, scope: Scope, receive: Receive, outcome: _Outcome) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        path: str = scope["path"]
        root = scope.get("root_path", "")
        rest = path[len(root) :] if root and path.startswith(root) else path
        prefix = f"/v2/models/{self.service.name}"
        if rest.startswith(prefix):  # mounted without a root_path
            rest = rest[len(prefix) :]
        if rest and not rest.startswith("/"):
            raise NotFound(f"unknown model '{self.service.name}{rest.split('/')[0]}'")
        method = scope["method"]
        version: str | None = None
        action = rest.rstrip("/")
        match = _VERSION_ROUTE.match(rest)
        if match:
            version, action = match.group(1), (match.group(2) or "")
        if action == "/infer" or action == "/explain":
            kind = action[1:]
            outcome.action = kind
            outcome.request_id = new_request_id()
            if self.recorded:
                outcome.started_at = time.time()
            if method != "POST":
                raise MethodNotAllowed(f"{method} is not allowed on {action}; use POST")
            if self.gated:
                await self._gate(scope, kind, version, outcome)
            served = await self.service.version(version)
            outcome.version, outcome.sha256 = served.model.version, served.model.sha256
            self.service.check_serving(served)
            body = await read_body(receive, self.service.limits.max_body_bytes)
            outcome.body = body
            if kind == "explain":
                out, request, outcome.explains = await self.service.explain(served, body, _header(scope, HEADER_LENGTH.encode()))
                headers = _JSON
            else:
                out, headers, request = await self.service.infer(served, body, _header(scope, HEADER_LENGTH.encode()))
            outcome.rows, outcome.client_id = request.rows, request.id
            return 200, out, headers
        if action in ("", "/ready"):
            self._get_only(method)
            if self.gated:
                await self._gate(scope, "metadata", version, outcome)
            if action:
                self.service.check_serving(await self.service.version(version))
                answer: object = {"name": self.service.name, "ready": True}
            else:
                answer = await self.service.metadata(version)
            return 200, _json_body(answer), _JSON
        raise NotFound(f"no route {path}; model routes are '', /ready, /infer, /explain, optionally after /versions/<v>")

    @staticmethod
    def _get_only(method: str) -> None:
        if method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"{method} is not allowed here; use GET")


class Headers(Mapping[str, str]):
    """A request's headers as gatekeepers see them: a read-only mapping with lower-case names,
    decoded when asked for (a gatekeeper reads one or two of them). A header sent more than
    once reads as its values joined with ', ' (RFC 9110), so a second Authorization header
    makes the credentials malformed instead of choosing one of them."""

    __slots__ = ("_raw",)

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        key = name.lower().encode("latin-1")
        found = None
        for k, v in self._raw:
            if k == key or k.lower() == key:
                found = v if found is None else found + b", " + v
        return default if found is None else found.decode("latin-1")

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(k.decode("latin-1").lower() for k, _ in self._raw))

    def __len__(self) -> int:
        return len({k.lower() for k, _ in self._raw})


async def gate(
    manager: PluginManager, scope: Scope, action: str, model: str | None, version: str | None, outcome: _Outcome | None = None
) -> Principal:
    """Run the request gatekeepers: the caller's Principal, or the OIP error of the first deny
    (401, 403 or 503), carrying the deciding plugin's name as ``decided_by``. ``outcome``
    learns who the caller is as soon as authentication says so (for the audit record of a
    request that authorization then refuses)."""
    client = scope.get("client")
    info = RequestInfo(scope["method"], scope["path"], Headers(scope.get("headers", ())), client[0] if client else None, model, version)
    if manager.request_gates_are_sync():  # no coroutine per gatekeeper: about half the cost
        who, denied = manager.check_request(info, action)
    else:
        who, denied = await manager.check_request_async(info, action)
    if who is not None and outcome is not None:
        outcome.principal = who.name
    if denied is not None:
        fallback = "authentication failed" if who is None else f"'{who.name}' may not {action}" + (f" model '{model}'" if model else "")
        raise _refusal(denied, denied.reason or fallback)
    assert who is not None
    return who


def _refusal(decision: Decision, reason: str) -> RequestError:
    if decision.status == 503:
        return Unavailable(reason, headers=_RETRY, decided_by=decision.plugin)
    if decision.status == 401:
        return Unauthorized(reason, headers=_CHALLENGE, decided_by=decision.plugin)
    return Forbidden(reason, decided_by=decision.plugin)


def new_request_id() -> str:
    """A request id unique across replicas and restarts (96 random bits)."""
    return os.urandom(12).hex()


def _error_headers(error: RequestError) -> list[tuple[bytes, bytes]]:
    return [*_JSON, *((k.encode(), v.encode()) for k, v in error.headers.items())]


class _Outcome:
    """What the request came to, for the recorders and observers."""

    __slots__ = (
        "action", "body", "client_id", "decided_by", "error", "explains", "principal", "request_id", "rows", "sha256", "started_at", "status",
        "version",
    )

    def __init__(self) -> None:
        self.action = ""
        self.status = 200
        self.error: str | None = None
        self.principal = "anonymous"
        self.request_id = ""
        self.client_id: str | None = None
        self.version: int | None = None
        self.sha256: str | None = None
        self.body: bytes | None = None
        self.decided_by: str | None = None
        self.explains: str | None = None
        self.started_at = 0.0
        self.rows = 0


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class ControlApp:
    """ASGI app for ``/v2``: health, server metadata, Triton's repository extension, and
    answers for models that are unknown or not ready.

    ``status`` returns Serve's status of each application by name (called at most once a
    second by the caller's cache). ``repository`` provides ``index()``, ``load(name)``,
    ``unload(name)``, ``known(name)`` and ``sbom()``; without it those routes answer 404.
    Health and server metadata are open (probes); the repository routes, the SBOM and
    ``/metrics`` (``metrics`` returns the Prometheus text of the node) pass the gatekeepers
    of ``manager``.
    """

    def __init__(
        self,
        models: list[str],
        status: Callable[[], Awaitable[dict[str, str]]] | None = None,
        repository: Any = None,
        manager: PluginManager | None = None,
        metrics: Callable[[], Awaitable[bytes]] | None = None,
    ) -> None:
        self.models = set(models)
        self.metrics = metrics
        self.status = status
        self.repository = repository
        self.manager = manager
        self.gated = manager is not None and (manager.has("lockgate_authenticate") or manager.has("lockgate_authorize"))
        self.version = server_version()

    async def _not_ready(self) -> list[str]:
        if self.status is None:
            return []
        apps = await self.status()
        return sorted(m for m in self.models if apps.get(m) != "RUNNING")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            if scope["path"].rstrip("/") == "/metrics":
                await respond(send, 200, await self._metrics(scope), [(b"content-type", METRICS_CONTENT_TYPE)])
                return
            status, body = await self._route(scope)
        except RequestError as e:
            await respond_error(send, e)
            return
        except Exception as e:
            log.exception("unhandled error on %s", scope.get("path"))
            await respond_error(send, RequestError(f"internal error: {type(e).__name__}"))
            return
        await respond(send, status, _json_body(body), _JSON)

    async def _metrics(self, scope: Scope) -> bytes:
        if scope["method"] not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"{scope['method']} is not allowed on /metrics; use GET")
        if self.metrics is None:
            raise NotFound("this server keeps no metrics")
        await self._gate(scope, "metrics", None)
        return await self.metrics()

    async def _route(self, scope: Scope) -> tuple[int, object]:
        path = scope["path"].rstrip("/") or "/"
        method = scope["method"]
        if path.startswith("/v2/repository/"):
            if method != "POST":
                raise MethodNotAllowed(f"{method} is not allowed on {path}; use POST")
            return await self._repository(scope, path[len("/v2/repository/") :])
        if path == "/v2/sbom":
            if method not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"{method} is not allowed on {path}; use GET")
            if self.repository is None:
                raise NotFound("this server has no registry to describe")
            await self._gate(scope, "sbom", None)
            return 200, await self.repository.sbom()
        if path in ("/v2", "/v2/health/live", "/v2/health/ready") and method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"{method} is not allowed on {path}; use GET")
        if path == "/v2":
            extensions = ["binary_tensor_data"] + (["model_repository"] if self.repository is not None else [])
            return 200, {"name": SERVER_NAME, "version": self.version, "extensions": extensions}
        if path == "/v2/health/live":
            return 200, {"live": True}
        if path == "/v2/health/ready":
            waiting = await self._not_ready()
            if waiting:
                raise Unavailable(f"not ready: waiting for model(s) {', '.join(waiting)}")
            return 200, {"ready": True}
        if path.startswith("/v2/models/"):
            name = path[len("/v2/models/") :].split("/")[0]
            if name in self.models:
                if self.status is None or name in await self._not_ready():
                    raise Unavailable(f"model '{name}' is not ready yet")
                # The model's application is up, yet the ingress did not route this to it: the
                # path only reads as that model's once decoded (an encoded '/', say).
                raw = scope.get("raw_path", b"").decode("latin-1") or scope["path"]
                raise NotFound(f"no route {raw}: routes are matched before percent-decoding")
            known = ", ".join(sorted(self.models)) or "none"
            raise NotFound(f"unknown model '{name}'; served models: {known}")
        raise NotFound(f"no route {scope['path']}")

    async def _gate(self, scope: Scope, action: str, model: str | None) -> None:
        if self.gated:
            await gate(self.manager, scope, action, model, None)

    async def _repository(self, scope: Scope, rest: str) -> tuple[int, object]:
        if self.repository is None:
            raise NotFound("this server has no model repository API")
        if rest == "index":
            who = await gate(self.manager, scope, "metadata", None, None) if self.gated else None
            entries = await self.repository.index()
            if who is not None:  # only the models this caller may see: a key for one model learns of no other
                entries = [e for e in entries if (await self.manager.authorize(who, "metadata", e["name"], None, count=False)).allow]
            return 200, entries
        parts = rest.split("/")
        if len(parts) == 3 and parts[0] == "models" and parts[2] in ("load", "unload"):
            name, action = parts[1], parts[2]
            await self._gate(scope, action, name)
            if not await asyncio.to_thread(self.repository.known, name):
                raise NotFound(f"unknown model '{name}' in the registry")
            try:
                await (self.repository.load(name) if action == "load" else self.repository.unload(name))
            except Exception as e:  # noqa: BLE001 - a model that cannot load is reported, not fatal
                log.warning("repository %s of %s failed: %s", action, name, e)
                raise Unavailable(f"failed to {action} model '{name}': {_first_line(e)}") from None
            return 200, {}
        raise NotFound(f"no route /v2/repository/{rest}; routes: index, models/<m>/load, models/<m>/unload")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if "ModelLoadError" in line or "failed to load" in line:
            return line
    return lines[-1] if lines else type(error).__name__
