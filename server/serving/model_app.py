"""The ASGI application of one model: routes, the gate, recorders and observers around a
``ModelService``.

Each model's Serve replica hands its requests straight to ``ModelApp`` (through the replica
listener, behind HAProxy), so nothing but this module's routing sits between the socket and
the model.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from functools import partial
from typing import cast

from lockgate.plugins import InferenceEvent, RecordFailed

from ..errors import MethodNotAllowed, NotFound, RequestError, Unavailable
from . import tracing
from .asgi import (
    JSON_HEADERS,
    PRECHECK,
    RETRY_AFTER,
    Receive,
    Scope,
    Send,
    WholeAnswer,
    body_in_hand,
    error_headers,
    header,
    json_body,
    lifespan,
    read_body,
    respond,
)
from .gate import Allows, gate, gate_now, new_request_id
from .load import LoadMeter
from .logs import ACCESS, REQUEST, json_enabled, trace_id
from .protocol import HEADER_LENGTH
from .service import ModelService, json_length
from .shadow import Copy

__all__ = ["PRECHECK", "ModelApp", "Outcome", "Precheck"]


@dataclass(frozen=True, slots=True)
class Precheck:
    """The gate's answer to a request whose headers are in (``ModelApp.precheck``): the caller's
    name as far as authentication got, and the refusal, if it was refused."""

    principal: str
    refusal: RequestError | None
    span_ns: tuple[int, int] = (0, 0)  # when the gate was asked (epoch ns), for a traced request


log = logging.getLogger("lockgate.server")

_VERSION_ROUTE = re.compile(r"^/versions/([^/]+)(/ready|/infer|/explain|/config|/stats)?/?$")
_HEADER_LENGTH = HEADER_LENGTH.encode()


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
        self.gated = manager.has("lockgate_authenticate") or manager.has("lockgate_authorize")
        # Allows the gatekeepers let a request reuse for a while (lockgate_reuse_allow).
        self.allows = Allows(manager) if self.gated else None
        self.observed = manager.has("lockgate_observe_inference")
        self.recorded = manager.has("lockgate_record_inference")
        # Requests held, read by autoscaling only (server/hosting/autoscaling.py); no cost without it.
        self.load = LoadMeter() if service.config.autoscaling is not None else None
        self.in_flight = 0  # requests being answered now: the recorders' InferenceEvent.in_flight
        # Structured logs (lockgate.server.serving.logs): a request's ids on its log lines, and
        # the access log; nothing per request while both are off.
        self.access = ACCESS.isEnabledFor(logging.INFO)
        self.logged = json_enabled() or self.access
        self.tracer = tracing.tracer()  # OpenTelemetry (lockgate.server.serving.tracing); None: off

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        answered = await self.whole(scope, receive)
        if answered is None:  # the client left before its request was read
            return
        status, headers, body, done = answered
        await respond(send, status, body, headers)
        if done is not None:
            done()

    async def whole(self, scope: Scope, source: Receive | bytes) -> WholeAnswer:
        """The answer to an HTTP request whole: status, headers without content-length, body,
        and what to call once it is sent (the observers), if anything. The body comes from
        ``source``: the bytes, as the replica listener has them once read (no ASGI messages), or
        ASGI's ``receive`` (``__call__``). None when the client left before its body was read
        (recorded as 499: nothing to send)."""
        self.in_flight += 1
        if self.load is not None:
            self.load.enter()
        try:
            start = time.perf_counter()
            outcome = Outcome()
            answer = await self._answer(scope, source, outcome, start)
        finally:
            self.in_flight -= 1
            if self.load is not None:
                self.load.leave()
        if answer is None:
            return None
        status, out, headers = answer
        return status, headers, out, partial(self._answered, outcome, start, out) if outcome.action else None

    async def _answer(
        self, scope: Scope, source: Receive | bytes, outcome: Outcome, start: float
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]] | None:
        """The answer to an HTTP request (its body from ``source``: ASGI's ``receive``, or the
        bytes), recorded when it is an inference; None when the client left before its body
        was read (recorded as 499, nothing to send)."""
        try:
            status, body, headers = await self._route(scope, source, outcome)
        except RequestError as e:
            outcome.status, outcome.error = e.status, e.message
            status, body, headers = e.status, e.body(), error_headers(e)
        except ConnectionAbortedError:
            outcome.status, outcome.error = 499, "client disconnected before the request was read"
            if self.recorded and outcome.action:
                await self._record(self._event(outcome, start, None))
            if outcome.span is not None:
                outcome.span.end(**{"lockgate.request_id": outcome.request_id, "http.response.status_code": 499})
            return None
        except Exception as e:  # a bug of ours: say so, keep the replica up
            log.exception("unhandled error on %s", scope.get("path"))
            error = RequestError(f"internal error: {type(e).__name__}")
            outcome.status, outcome.error = 500, error.message
            status, body, headers = 500, error.body(), error_headers(error)
        if outcome.action:
            if outcome.action == "infer" and outcome.version is not None:  # Triton's statistics
                ns = int((time.perf_counter() - start) * 1e9)
                self.service.stats.version(outcome.version).answered(outcome.status == 200, ns, *outcome.timing)
            headers = [*headers, (b"lockgate-request-id", outcome.request_id.encode())]
            if self.recorded:
                event = self._event(outcome, start, body)
                asked = time.time_ns() if outcome.span is not None else 0
                withheld = await self._record(event)
                if outcome.span is not None:
                    outcome.span.child("lockgate.audit", asked, time.time_ns())
                if withheld is not None:  # observers see what the client got
                    outcome.status, outcome.error = withheld.status, withheld.message
                    status, body, headers = withheld.status, withheld.body(), [*error_headers(withheld), headers[-1]]
        if outcome.span is not None:
            headers = [*headers, (b"traceparent", outcome.span.traceparent())]
        return status, body, headers

    def _answered(self, outcome: Outcome, start: float, body: bytes) -> None:
        """After an inference request's answer was sent: its span ends, its access line, its
        observers (latency as the client had it: the audit wait included)."""
        if outcome.span is not None:
            outcome.span.end(
                **{
                    "lockgate.model": self.service.name,
                    "lockgate.version": outcome.version,
                    "lockgate.request_id": outcome.request_id,
                    "lockgate.batch_rows": outcome.rows,
                    "lockgate.principal": outcome.principal,
                    "http.response.status_code": outcome.status,
                }
            )
        if self.logged:
            if self.access:
                self._access(outcome, start)
            REQUEST.set(None)  # the next request on this connection sets its own
        if self.observed:
            self.manager.observe("lockgate_observe_inference", event=self._event(outcome, start, body))
        if outcome.copy is not None and outcome.status == 200:  # a shadow's copy, after the answer
            tap = self.service.shadow
            if tap is not None:
                tap.offer(outcome.copy)

    def _access(self, outcome: Outcome, start: float) -> None:
        ms = round((time.perf_counter() - start) * 1000.0, 3)
        fields = {
            "model": self.service.name,
            "version": outcome.version,
            "action": outcome.action,
            "status": outcome.status,
            "latency_ms": ms,
            "rows": outcome.rows,
            "principal": outcome.principal,
        }
        ACCESS.info(
            "%s %s v%s %d %.3f ms",
            outcome.action,
            self.service.name,
            outcome.version,
            outcome.status,
            ms,
            extra={"fields": fields},
        )

    def _event(self, outcome: Outcome, start: float, response: bytes | None) -> InferenceEvent:
        return InferenceEvent(
            outcome.request_id,
            self.service.name,
            outcome.version,
            outcome.principal,
            outcome.status,
            time.perf_counter() - start,
            outcome.rows,
            outcome.error,
            outcome.client_id,
            outcome.sha256,
            outcome.body,
            response,
            outcome.decided_by,
            outcome.started_at,
            outcome.action,
            outcome.explains,
            self.in_flight,
        )

    async def _record(self, event: InferenceEvent) -> RequestError | None:
        """Hand the request to the recorders; the error to send instead when they fail."""
        try:
            await self.manager.record_inference(event)
        except RecordFailed as e:
            log.error("answer to request %s withheld: %s", event.request_id, e)
            return Unavailable(
                f"the request could not be recorded in the audit log, so its answer is withheld ({e})", headers=RETRY_AFTER
            )
        return None

    async def _gate(self, scope: Scope, action: str, version: str | None, outcome: Outcome) -> None:
        try:
            await gate(self.manager, scope, action, self.service.name, version, outcome, self.allows)
        except RequestError as e:
            outcome.decided_by = e.decided_by
            raise

    def _target(self, scope: Scope) -> tuple[str, str | None]:
        """The route's action ('', '/ready', '/infer', '/explain' or an unknown rest) and version text."""
        path: str = scope["path"]
        root = scope.get("root_path", "")
        rest = path[len(root) :] if root and path.startswith(root) else path
        prefix = f"/v2/models/{self.service.name}"
        if rest.startswith(prefix):  # mounted without a root_path
            rest = rest[len(prefix) :]
        if rest and not rest.startswith("/"):
            raise NotFound(f"unknown model '{self.service.name}{rest.split('/')[0]}'")
        match = _VERSION_ROUTE.match(rest)
        if match:
            return match.group(2) or "", match.group(1)
        return rest.rstrip("/"), None

    def precheck(self, scope: Scope) -> Precheck | None:
        """The gate of an inference request, asked by the replica listener as soon as its headers
        are in: a refused request's body is never read (nor buffered). None when there is
        nothing to ask now: no gatekeepers, async ones (they run in the request), another route."""
        if not self.gated or scope["method"] != "POST" or not self.manager.request_gates_are_sync():
            return None
        try:
            action, version = self._target(scope)
        except NotFound:
            return None
        if action not in ("/infer", "/explain"):
            return None
        outcome = Outcome()
        asked = time.time_ns() if self.tracer is not None else 0
        try:
            gate_now(self.manager, scope, action[1:], self.service.name, version, outcome, self.allows)
        except RequestError as e:
            return Precheck(outcome.principal, e, (asked, time.time_ns() if asked else 0))
        return Precheck(outcome.principal, None, (asked, time.time_ns() if asked else 0))

    async def _inference(
        self, scope: Scope, source: Receive | bytes, outcome: Outcome, kind: str, version: str | None
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """An /infer or /explain request: gate, version, body, the model's answer."""
        method = scope["method"]
        outcome.action = kind
        outcome.request_id = new_request_id()
        if self.tracer is not None:
            outcome.span = tracing.RequestSpan(
                self.tracer,
                f"lockgate {kind} {self.service.name}",
                scope.get("headers", ()),
                time.time_ns(),
            )
        if self.logged:
            REQUEST.set((outcome.request_id, trace_id(scope.get("headers", ()))))
        if self.recorded:
            outcome.started_at = time.time()
        if method != "POST":
            raise MethodNotAllowed(f"{method} is not allowed on /{kind}; use POST")
        if self.gated:
            await self._gate_inference(scope, kind, version, outcome)
        if version is None and self.service.split is not None:  # a canary: the caller's version
            served = await self.service.version(None, _caller(scope, outcome.principal))
        else:
            served = await self.service.version(version)
        outcome.version, outcome.sha256 = served.model.version, served.model.sha256
        self.service.check_serving(served)
        limit = self.service.limits.max_body_bytes
        body = body_in_hand(source, limit) if type(source) is bytes else await read_body(cast(Receive, source), limit)
        outcome.body = body
        if kind == "explain":
            out, request, outcome.explains = await self.service.explain(served, body, header(scope, _HEADER_LENGTH))
            headers = JSON_HEADERS
        else:
            length = header(scope, _HEADER_LENGTH)
            out, headers, request, results = await self.service.infer(served, body, length)
            if outcome.span is not None:
                outcome.span.batch(request.timing, time.time_ns(), request.rows)
            tap = self.service.shadow
            if tap is not None and version is None and tap.wants():  # production's traffic, sampled
                timing = request.timing
                outcome.copy = Copy(body, json_length(length), served.model.version, results, timing[0] + timing[1] + timing[2])
        outcome.rows, outcome.client_id, outcome.timing = request.rows, request.id, request.timing
        return 200, out, headers

    async def _gate_inference(self, scope: Scope, kind: str, version: str | None, outcome: Outcome) -> None:
        early: Precheck | None = scope.get(PRECHECK)
        if early is None:
            asked = time.time_ns()
            try:
                await self._gate(scope, kind, version, outcome)
            finally:
                if outcome.span is not None:
                    outcome.span.child("lockgate.gate", asked, time.time_ns())
            return
        outcome.principal = early.principal  # the listener asked the gate when the headers were in
        if outcome.span is not None and early.span_ns[0]:
            outcome.span.child("lockgate.gate", *early.span_ns)
        if early.refusal is not None:
            outcome.decided_by = early.refusal.decided_by
            raise early.refusal

    async def _route(
        self, scope: Scope, source: Receive | bytes, outcome: Outcome
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        path: str = scope["path"]
        method = scope["method"]
        action, version = self._target(scope)
        if action == "/infer" or action == "/explain":
            return await self._inference(scope, source, outcome, action[1:], version)
        if action in ("", "/ready", "/config", "/stats"):
            self._get_only(method)
            if self.gated:
                await self._gate(scope, "metadata", version, outcome)
            answer: object
            if action == "/ready":
                self.service.check_serving(await self.service.version(version))
                answer = {"name": self.service.name, "ready": True}
            elif action == "/config":
                answer = await self.service.triton_config(version)
            elif action == "/stats":
                number = None if version is None else (await self.service.version(version)).model.version
                answer = await self.service.stats.answer(number)
            else:
                answer = await self.service.metadata(version)
            return 200, json_body(answer), JSON_HEADERS
        raise NotFound(
            f"no route {path}; model routes are '', /ready, /infer, /explain, /config, /stats, optionally after /versions/<v>"
        )

    @staticmethod
    def _get_only(method: str) -> None:
        if method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"{method} is not allowed here; use GET")


def _caller(scope: Scope, principal: str) -> str:
    """Who asks, for a canary's sticky choice: the authenticated principal; an anonymous caller by
    its ``lockgate-client`` header, else its address."""
    if principal != "anonymous":
        return principal
    named = header(scope, b"lockgate-client")
    if named:
        return "client:" + named.decode("latin-1")
    client = scope.get("client")
    return "address:" + (client[0] if client else "")


class Outcome:
    """What the request came to, for the recorders and observers."""

    __slots__ = (
        "action",
        "body",
        "client_id",
        "copy",
        "decided_by",
        "error",
        "explains",
        "principal",
        "request_id",
        "rows",
        "sha256",
        "span",
        "started_at",
        "status",
        "timing",
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
        self.span: tracing.RequestSpan | None = None  # OpenTelemetry, when tracing is on
        self.rows = 0
        self.timing: tuple[int, ...] | list[int] = ()  # Triton's statistics: queue, input, infer, output ns
        self.copy: Copy | None = None  # for the shadow run, when this request was sampled
