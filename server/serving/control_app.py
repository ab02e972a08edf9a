"""The ASGI application of the control routes: health, server metadata, Triton's repository
extension, the SBOM, ``/metrics``, and OIP 404s for models that are unknown or not ready."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any, NoReturn

from lockgate.plugins import PluginManager, Principal

from ..errors import LockgateError, MethodNotAllowed, NotFound, RequestError, Unavailable
from .asgi import (
    JSON_HEADERS,
    METRICS_CONTENT_TYPE,
    RETRY_AFTER,
    SERVER_NAME,
    Receive,
    Scope,
    Send,
    json_body,
    lifespan,
    read_body,
    respond,
    respond_error,
    server_version,
)
from .gate import gate

__all__ = ["MODEL_EXTENSIONS", "ControlApp"]

# The protocol extensions every model route serves (GET /v2 lists them; statistics and the
# repository extension are added where the server keeps them).
MODEL_EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration", "parameters", "schedule_policy")

log = logging.getLogger("lockgate.server")


class ControlApp:
    """ASGI app for ``/v2``: health, server metadata, Triton's repository extension, and
    answers for models that are unknown or not ready.

    ``status`` returns Serve's status of each application by name (called at most once a
    second by the caller's cache). ``repository`` provides ``index()``, ``load(name)``,
    ``unload(name)``, ``known(name)`` and ``sbom()`` (None: no plugin makes one); without it
    those routes answer 404.
    Health and server metadata are open (probes); the repository routes, the SBOM and
    ``/metrics`` (``metrics`` returns the Prometheus text of the node) pass the gatekeepers
    of ``manager``.
    ``pooled`` maps the models hosted in a pool of shared replicas to the pool's application;
    ``forward(model, scope, body)`` hands such a model's request to its pool and returns the
    answer (status, headers, body).
    ``grpc_unrouted`` (where a gRPC ingress runs) returns the models that have a running
    replica the gRPC ingress does not route to yet: the server is not ready while there are any,
    and a gRPC call for one that falls through to this app is told to retry.
    """

    def __init__(
        self,
        models: list[str],
        status: Callable[[], Awaitable[dict[str, str]]] | None = None,
        repository: Any = None,
        manager: PluginManager | None = None,
        metrics: Callable[[], Awaitable[bytes]] | None = None,
        statistics: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        grpc_unrouted: Callable[[], Collection[str]] | None = None,
        pooled: dict[str, str] | None = None,
        forward: Callable[[str, Scope, bytes], Awaitable[tuple[int, list[tuple[bytes, bytes]], bytes]]] | None = None,
        max_body_bytes: int = 64 << 20,
    ) -> None:
        self.models = set(models)
        self.grpc_unrouted = grpc_unrouted
        self.pooled = dict(pooled or {})  # model -> the application (a pool) that serves it
        self.forward = forward
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.statistics = statistics
        self.status = status
        self.repository = repository
        self.manager = manager if manager is not None else PluginManager()  # None: no plugins
        self.gated = self.manager.has("lockgate_authenticate") or self.manager.has("lockgate_authorize")
        self.version = server_version()

    async def _not_ready(self) -> list[str]:
        if self.status is None:
            return []
        apps = await self.status()
        unrouted = self.grpc_unrouted() if self.grpc_unrouted is not None else ()
        return sorted(m for m in self.models if apps.get(self.pooled.get(m, m)) != "RUNNING" or m in unrouted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if self.pooled and scope["path"].startswith("/v2/models/"):
            name = scope["path"][len("/v2/models/") :].split("/")[0]
            if name in self.pooled and self.forward is not None:
                await self._pooled_call(name, scope, receive, send)
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
        await respond(send, status, json_body(body), JSON_HEADERS)

    async def _pooled_call(self, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        """A request for a model hosted in a pool: its body read (within the body limit), handed
        to a pool replica that holds the model or will load it, its answer sent back as it is."""
        assert self.forward is not None
        try:
            request = await read_body(receive, self.max_body_bytes)
            status, headers, body = await self.forward(name, scope, request)
        except ConnectionAbortedError:  # the client left before sending the whole body
            return
        except RequestError as e:
            await respond_error(send, e)
            return
        except Exception as e:
            log.exception("model %s: its pool did not answer", name)
            await respond_error(
                send, Unavailable(f"model '{name}': its pool did not answer ({type(e).__name__})", headers=RETRY_AFTER)
            )
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

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
        if method not in ("GET", "HEAD") and path in (
            "/v2",
            "/v2/health/live",
            "/v2/health/ready",
            "/v2/sbom",
            "/v2/models/stats",
        ):
            raise MethodNotAllowed(f"{method} is not allowed on {path}; use GET")
        if path == "/v2/sbom":
            if self.repository is None:
                raise NotFound("this server has no registry to describe")
            await self._gate(scope, "sbom", None)
            sbom = await self.repository.sbom()
            if sbom is None:
                raise NotFound("no plugin makes an SBOM (is the built-in 'governance' plugin blocked?)")
            return 200, sbom
        if path == "/v2":
            extensions = [*MODEL_EXTENSIONS, *(["statistics"] if self.statistics is not None else [])]
            if self.repository is not None:
                extensions.append("model_repository")
            return 200, {"name": SERVER_NAME, "version": self.version, "extensions": extensions}
        if path == "/v2/health/live":
            return 200, {"live": True}
        if path == "/v2/health/ready":
            waiting = await self._not_ready()
            if waiting:
                raise Unavailable(f"not ready: waiting for model(s) {', '.join(waiting)}")
            return 200, {"ready": True}
        if path == "/v2/models/stats":
            if self.statistics is None:
                raise NotFound("this server keeps no statistics")
            return 200, await self._visible_statistics(scope)
        if path.startswith("/v2/models/"):
            await self._model_route(scope, path[len("/v2/models/") :].split("/")[0])
        raise NotFound(f"no route {scope['path']}")

    async def _model_route(self, scope: Scope, name: str) -> NoReturn:
        """A model route that reached this app: the model is unknown, not ready, or the path odd."""
        if name in self.models:
            if self.status is None or name in await self._not_ready():
                if scope.get("scheme") == "grpc" and self.grpc_unrouted is not None and name in self.grpc_unrouted():
                    raise Unavailable(
                        f"model '{name}' is not reachable over gRPC yet: its replicas are registering with the gRPC ingress",
                        headers=RETRY_AFTER,
                    )
                raise Unavailable(f"model '{name}' is not ready yet")
            if scope.get("scheme") == "grpc":
                # Running, routed by HTTP, yet no replica of it registered with the gRPC ingress:
                # it has none running (scaled to zero), and a gRPC call does not start one.
                raise Unavailable(
                    f"model '{name}' has no running replica to answer gRPC (scaled to zero?); an HTTP request starts one",
                    headers=RETRY_AFTER,
                )
            # The model's application is up, yet the ingress did not route this to it: the
            # path only reads as that model's once decoded (an encoded '/', say).
            raw = scope.get("raw_path", b"").decode("latin-1") or scope["path"]
            raise NotFound(f"no route {raw}: routes are matched before percent-decoding")
        known = ", ".join(sorted(self.models)) or "none"
        raise NotFound(f"unknown model '{name}'; served models: {known}")

    async def _visible_statistics(self, scope: Scope) -> dict[str, Any]:
        """Every model's statistics, or, for a caller with a key, those of the models it may see."""
        assert self.statistics is not None
        who = await self._caller(scope)
        answer = await self.statistics()
        return {"model_stats": await self._visible(who, answer["model_stats"])}

    async def _caller(self, scope: Scope) -> Principal | None:
        """Who asks for a listing (gated before anything is read); None when no gatekeeper runs."""
        return await gate(self.manager, scope, "metadata", None, None) if self.gated else None

    async def _visible(self, who: Principal | None, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The ``entries`` (each naming a model) of the models ``who`` may see: a key for one model
        learns of no other. Every entry when no gatekeeper runs."""
        if who is None:
            return entries
        allowed = {}
        for name in {e["name"] for e in entries}:
            allowed[name] = (await self.manager.authorize(who, "metadata", name, None, count=False)).allow
        return [e for e in entries if allowed[e["name"]]]

    async def _gate(self, scope: Scope, action: str, model: str | None) -> None:
        if self.gated:
            await gate(self.manager, scope, action, model, None)

    async def _repository(self, scope: Scope, rest: str) -> tuple[int, object]:
        if self.repository is None:
            raise NotFound("this server has no model repository API")
        if rest == "index":
            who = await self._caller(scope)
            return 200, await self._visible(who, await self.repository.index())
        parts = rest.split("/")
        if len(parts) == 3 and parts[0] == "models" and parts[2] in ("load", "unload"):
            name, action = parts[1], parts[2]
            await self._gate(scope, action, name)
            if not await asyncio.to_thread(self.repository.known, name):
                raise NotFound(f"unknown model '{name}' in the registry")
            try:
                await (self.repository.load(name) if action == "load" else self.repository.unload(name))
            except RequestError:  # the request does not apply (a pooled model): the client's answer as it is
                raise
            except LockgateError as e:  # a model that cannot load is reported, not fatal
                log.warning("repository %s of %s failed: %s", action, name, e)
                raise Unavailable(f"failed to {action} model '{name}': {e}") from None
            return 200, {}
        raise NotFound(f"no route /v2/repository/{rest}; routes: index, models/<m>/load, models/<m>/unload")
