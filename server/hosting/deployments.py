"""Ray Serve deployments: one application per model, and the control application.

A model application is mounted at ``/v2/models/<name>``; the control application at ``/``
answers everything else (Serve routes by longest prefix): ``/v2`` and ``/metrics``. Each replica
builds its plugin manager and ASGI app in its constructor, and Serve's direct ingress
hands it the requests, so no Serve proxy and no Ray call sits on the request path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray import serve
from ray.serve import Application

from ..errors import BadRequest, LockgateError, ModelLoadError
from ..serving.config import ModelConfig, parse_model_config
from ..serving.control_app import ControlApp
from ..serving.explain import explain_options
from ..serving.grpc_service import GrpcOverHttp, OipGrpcService, start_grpc_server
from ..serving.limits import limit_options
from ..serving.listener import FastServer
from ..serving.model_app import ModelApp
from ..serving.service import ModelService
from ..serving.settings import LockgateSettings
from ..serving.shadow import shadow_options
from ..serving.stats import read_statistics
from . import metrics
from .autoscaling import ONGOING
from .grpc_ingress import REGISTER_S, GrpcIngress, replica_host, split_address
from .replica import start_replica
from .serve_compat import ReplicaStartFailed, install_listener, load_failure, serve_status
from .shadow import ShadowFollower, shadow_sender

__all__ = [
    "CONTROL_APP",
    "CONTROL_DEPLOYMENT",
    "CONTROL_PREFIX",
    "ControlDeployment",
    "ModelDeployment",
    "build_control_app",
    "build_model_app",
    "deployment_options",
    "route_prefix",
]

CONTROL_APP = "lockgate-control"
CONTROL_DEPLOYMENT = "control"
CONTROL_PREFIX = "/"
AUTOSCALING_POLICY = "lockgate.server.hosting.autoscaling:policy"

log = logging.getLogger("lockgate.server")


def route_prefix(model: str) -> str:
    return f"/v2/models/{model}"


@serve.ingress()
class ModelDeployment:
    """A replica of one model: its plugin manager, its versions from the registry, its batchers."""

    async def __init__(self, name: str, config: ModelConfig, settings: LockgateSettings) -> None:  # type: ignore[misc]  # Serve awaits an async constructor
        start_replica(settings)
        metrics.replica_started(name)
        try:
            manager = settings.manager()
            registry = manager.registry()
            limits = limit_options(settings.options)
            self._service = ModelService(
                name,
                config,
                registry,
                manager=manager,
                default_alias=settings.default_alias,
                explain=explain_options(settings.options),
                limits=limits,
                stats_dir=settings.metrics_dir,
                engine_dir=f"{settings.home}/engines",
                optimized_dir=f"{settings.home}/optimized",
                shadow_send=shadow_sender(name),
                shadow_unreported=metrics.shadow_unreported(name),
                shadow=shadow_options(settings.options),
            )
        except LockgateError as e:  # the driver reads this from Serve's status (serve_compat.load_failure)
            raise ReplicaStartFailed(name, e) from None
        self._app = ModelApp(self._service)
        loop = asyncio.get_running_loop()
        self._refresher = loop.create_task(self._service.refresh_forever(settings.alias_poll_s))
        self._grpc: Any = None
        self._registrar: asyncio.Task[None] | None = None
        grpc_host = None if settings.grpc_address is None else replica_host(split_address(settings.grpc_address)[0])
        if settings.replica_listener:
            # Serve starts the replica's HTTP server after this constructor: it will be ours. With
            # gRPC on, it also answers the unary gRPC calls the gRPC ingress forwards as HTTP/1.1.
            prefix = route_prefix(name)
            grpc = None if grpc_host is None else GrpcOverHttp(OipGrpcService(self._app, name))

            def announce(port: int) -> None:
                if grpc_host is not None:
                    self._registrar = loop.create_task(_register_grpc(name, grpc_host, port, False))

            install_listener(
                lambda serve_app: FastServer(
                    self._app,
                    serve_app,
                    prefix,
                    limits,
                    precheck=self._app.precheck,
                    grpc=grpc,
                    announce=announce,
                    whole=self._app.whole,
                )
            )
        elif grpc_host is not None:  # Serve's own HTTP server: gRPC on a grpc.aio server of this replica
            self._grpc, port = await start_grpc_server(OipGrpcService(self._app, name), grpc_host, 0, limits.max_body_bytes)
            self._registrar = loop.create_task(_register_grpc(name, grpc_host, port, True))

    def __serve_build_asgi_app__(self) -> ModelApp:
        return self._app

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metrics (read with an autoscaling_config only): requests
        this replica held, averaged since the last report (server/hosting/autoscaling.py)."""
        return {} if self._app.load is None else {ONGOING: self._app.load.report()}


def _running_replicas(app: Any) -> int:
    """The running replicas of an application in Serve's status (every deployment of it)."""
    return sum(
        n
        for deployment in getattr(app, "deployments", {}).values()
        for state, n in getattr(deployment, "replica_states", {}).items()
        if getattr(state, "value", state) == "RUNNING"
    )


async def _register_grpc(model: str, host: str, port: int, h2: bool) -> None:
    """Tell the control replica (the gRPC ingress) where this replica's gRPC server is, every
    REGISTER_S seconds: a control replica that Serve restarted learns them all again."""
    handle = serve.get_deployment_handle(CONTROL_DEPLOYMENT, app_name=CONTROL_APP)
    said = False
    while True:
        try:
            await handle.register_grpc.remote(model, host, port, h2)
        except Exception as e:  # noqa: BLE001 - the control replica is starting or restarting: next round
            if not said:
                log.warning("gRPC server of %s not registered yet: %s", model, e)
                said = True
        await asyncio.sleep(REGISTER_S)


@serve.ingress()
class ControlDeployment:
    """The ``/v2`` routes: health, server metadata, the repository API, OIP 404s for unknown models;
    and the gRPC ingress, when the settings name an address for it."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self, models: list[str], settings: LockgateSettings, pooled: dict[str, str] | None = None
    ) -> None:
        self._metrics_dir = start_replica(settings)
        self._settings = settings
        self._pooled = dict(pooled or {})  # model -> its pool's application
        self._pool_handles: dict[str, Any] = {}
        self._manager = settings.manager()
        self._registry = self._manager.registry()
        self._checked = 0.0
        self._apps: dict[str, str] = {}
        self._running: dict[str, int] = {}  # application -> its running replicas
        self._sbom: tuple[Any, dict[str, Any]] | None = None
        self._ingress: GrpcIngress | None = None
        self._app = ControlApp(
            list(models),
            self._status,
            repository=self,
            manager=self._manager,
            metrics=self._scrape,
            statistics=self._statistics,
            grpc_unrouted=None if settings.grpc_address is None else self._grpc_unrouted,
            pooled=self._pooled,
            forward=self._forward,
            max_body_bytes=limit_options(settings.options).max_body_bytes,
        )
        # Shadow runs: one application each, following the registry (lockgate.server.hosting.shadow).
        self._shadows = ShadowFollower(
            self._registry, settings, lambda: self._app.models - set(self._pooled), self._manager.audit
        )
        self._shadow_task = asyncio.get_running_loop().create_task(self._shadows.run(max(settings.alias_poll_s, 0.5)))
        if settings.grpc_address is not None:
            host, port = split_address(settings.grpc_address)
            limit = limit_options(settings.options).max_body_bytes
            self._grpc, control_port = await start_grpc_server(OipGrpcService(self._app), "127.0.0.1", 0, limit)
            self._ingress = GrpcIngress(host, port, control_port)
            try:
                self._ingress.apply()
            except LockgateError as e:
                raise ReplicaStartFailed(CONTROL_APP, e) from None
            self._follower = asyncio.get_running_loop().create_task(self._ingress.run())

    def __serve_build_asgi_app__(self) -> ControlApp:
        return self._app

    async def register_grpc(self, model: str, host: str, port: int, h2: bool) -> None:
        """A model replica's gRPC server (called by each replica every few seconds): HTTP/2, or
        its HTTP/1.1 listener (``h2`` False). On the event loop, where the ingress follows."""
        if self._ingress is not None:
            self._ingress.register(model, host, port, h2)

    def _grpc_unrouted(self) -> set[str]:
        """Applications with a running replica the gRPC ingress does not route to yet (as of the
        last status read)."""
        routed = self._ingress.routed() if self._ingress is not None else set()
        own = self._app.models - set(self._pooled)  # pooled models are answered through this replica
        return {name for name, n in self._running.items() if n > 0 and name not in routed and name in own}

    async def _forward(self, model: str, scope: Any, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """A pooled model's request, to a replica of its pool (one that holds it, where Serve's
        router knows one: model multiplexing)."""
        from .pool import POOL_DEPLOYMENT

        app = self._pooled[model]
        handle = self._pool_handles.get(app)
        if handle is None:
            handle = self._pool_handles[app] = serve.get_deployment_handle(POOL_DEPLOYMENT, app_name=app)
        request = {
            k: scope[k]
            for k in ("method", "path", "raw_path", "query_string", "headers", "client", "scheme", "http_version")
            if k in scope
        }
        answer: tuple[int, list[tuple[bytes, bytes]], bytes] = await handle.options(multiplexed_model_id=model).handle.remote(
            request, body
        )
        return answer

    def __del__(self) -> None:
        ingress = getattr(self, "_ingress", None)
        if ingress is not None:
            ingress.stop()

    async def _status(self) -> dict[str, str]:
        """Serve's status of each application, refreshed at most once a second."""
        if time.monotonic() - self._checked > 1.0:
            status = await asyncio.to_thread(serve_status)
            self._apps = {name: getattr(app.status, "value", str(app.status)) for name, app in status.items()}
            self._running = {name: _running_replicas(app) for name, app in status.items()}
            self._checked = time.monotonic()
        return self._apps

    async def _scrape(self) -> bytes:
        return await asyncio.to_thread(metrics.collect, self._metrics_dir)

    async def _statistics(self) -> dict[str, Any]:
        return await asyncio.to_thread(read_statistics, self._metrics_dir)

    # -- the repository extension, called by ControlApp ------------------------------------------

    async def index(self) -> list[dict[str, Any]]:
        apps = await self._status()
        out = []
        for name in await asyncio.to_thread(self._registry.list_models):
            aliases = await asyncio.to_thread(self._registry.aliases, name)
            state = apps.get(self._pooled.get(name, name))
            entry: dict[str, Any] = {"name": name, "state": "READY" if state == "RUNNING" else "UNAVAILABLE"}
            version = aliases.get(self._settings.default_alias)
            if version is not None:
                entry["version"] = str(version)
            if state not in (None, "RUNNING"):
                entry["reason"] = state
            elif state is None:
                entry["reason"] = "not loaded"
            out.append(entry)
        return out

    def _not_pooled(self, name: str, action: str) -> None:
        if name in self._pooled:
            raise BadRequest(
                f"model '{name}' is hosted in a pool ({self._pooled[name]}): its replicas load it on demand and evict it "
                f"under their budget; {action} does not apply"
            )

    async def load(self, name: str) -> None:
        self._not_pooled(name, "load")
        config = parse_model_config(await asyncio.to_thread(self._registry.model_config, name), source=f"model {name}")
        if not await asyncio.to_thread(self._registry.versions, name):
            raise ModelLoadError(name, None, "no registered versions")
        app = build_model_app(name, config, self._settings)
        try:
            await asyncio.to_thread(serve.run, app, name=name, route_prefix=route_prefix(name))
        except Exception as e:  # noqa: BLE001 - whatever Serve raised, the replica's marked failure says why
            raise load_failure(name, e) from None
        self._app.models.add(name)
        self._checked = 0.0
        self._manager.audit("model_load", "lockgate", model=name)

    async def unload(self, name: str) -> None:
        self._not_pooled(name, "unload")
        await asyncio.to_thread(serve.delete, name)
        self._app.models.discard(name)
        self._checked = 0.0
        self._manager.audit("model_unload", "lockgate", model=name)

    async def sbom(self) -> Any:
        """The SBOM of the runtime and of every version an alias points to (``lockgate_sbom``);
        None when no plugin makes one. Rebuilt when the aliases change: reading every artifact
        and the package list is not for each request."""

        def aliases() -> list[tuple[str, list[tuple[str, int]]]]:
            return [(name, sorted(self._registry.aliases(name).items())) for name in self._registry.list_models()]

        def build(snapshot: list[tuple[str, list[tuple[str, int]]]]) -> Any:
            models = []
            for name, pairs in snapshot:
                for version in sorted({v for _, v in pairs}):
                    record = self._registry.get_version(name, version)
                    models.append((record, self._registry.read_verified(record), [a for a, v in pairs if v == version]))
            return self._manager.provide("lockgate_sbom", models=models)

        snapshot = await asyncio.to_thread(aliases)
        if self._sbom is None or self._sbom[0] != snapshot:
            self._sbom = (snapshot, await asyncio.to_thread(build, snapshot))
        return self._sbom[1]

    def known(self, name: str) -> bool:
        return name in self._registry.list_models()


def deployment_options(config: ModelConfig) -> dict[str, Any]:
    """Serve deployment options for a model's config: CPUs, replicas or autoscaling, concurrency."""
    batch = max(config.max_batch_size or 32, 1)
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": config.num_cpus, **({"num_gpus": config.num_gpus} if config.num_gpus else {})},
        # The batcher holds the queue; Serve's own limit only has to stay out of its way.
        "max_ongoing_requests": config.dynamic_batching.max_queue_size + batch,
    }
    if config.autoscaling is not None:
        a = config.autoscaling
        options["autoscaling_config"] = {
            "min_replicas": a.min_replicas,
            "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
            "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s,
            "downscale_to_zero_delay_s": a.downscale_to_zero_delay_s,
            "look_back_period_s": a.look_back_period_s,
            "metrics_interval_s": a.metrics_interval_s,
            # On the load the replicas count themselves: Serve's count misses the listener's requests.
            "policy": {"policy_function": AUTOSCALING_POLICY},
        }
    else:
        options["num_replicas"] = config.replicas
    return options


def build_model_app(name: str, config: ModelConfig, settings: LockgateSettings) -> Application:
    deployment = serve.deployment(ModelDeployment, name=f"model-{name}", **deployment_options(config))
    return deployment.bind(name, config, settings)  # type: ignore[attr-defined]  # serve.deployment's stub types the decorator form


def build_control_app(
    models: list[str], settings: LockgateSettings, num_cpus: float = 0.05, pooled: dict[str, str] | None = None
) -> Application:
    """The control application; ``pooled`` maps the models hosted in pools to their pool's application."""
    deployment = serve.deployment(
        ControlDeployment, name=CONTROL_DEPLOYMENT, ray_actor_options={"num_cpus": num_cpus}, max_ongoing_requests=256
    )
    return deployment.bind(models, settings, pooled or {})  # type: ignore[attr-defined]
