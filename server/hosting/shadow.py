"""Shadow runs on Ray Serve: the shadow's own replica, the control replica that follows the
registry's runs, and the production replicas' way to send it copies.

Each run is a Serve application of its own, ``lockgate-shadow-<model>``, with no route: nothing
reaches it over HTTP, and clients never see its answers. The control replica deploys it when a
run starts, replaces it when the run moves to another version, deletes it when the run stops,
and stops a run whose end has come. Production replicas send copies through a deployment
handle, in batches, after their answers (lockgate.server.serving.shadow).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ray import serve
from ray.serve import Application

from ..errors import LockgateError
from ..serving.config import parse_model_config
from ..serving.limits import limit_options
from ..serving.service import ModelService
from ..serving.settings import LockgateSettings
from ..serving.shadow import Copy, Send, ShadowComparer, shadow_options
from . import metrics
from .replica import start_replica
from .serve_compat import ReplicaStartFailed, load_failure

__all__ = ["SHADOW_DEPLOYMENT", "ShadowDeployment", "ShadowFollower", "shadow_app", "shadow_sender"]

SHADOW_DEPLOYMENT = "shadow"
RETRY_FAILED_S = 60.0  # a shadow that failed to deploy is tried again after this

log = logging.getLogger("lockgate.server")


def shadow_app(model: str) -> str:
    return f"lockgate-shadow-{model}"


class ShadowDeployment:
    """The replica of a shadow run: the shadow version alone, compared with production's answers."""

    async def __init__(self, name: str, version: int, config: Any, settings: LockgateSettings) -> None:  # type: ignore[misc]  # Serve awaits an async constructor
        start_replica(settings, traced=False)  # not clients' requests: no spans
        try:
            registry: Any = settings.manager().registry()
            limits = limit_options(settings.options)
            # No plugins on the shadow's requests: they are not clients' requests (no gate, no
            # audit record, no drift), and its Triton statistics stay apart from production's.
            self._service = ModelService(
                name,
                config,
                registry,
                limits=limits,
                engine_dir=f"{settings.home}/engines",
                optimized_dir=f"{settings.home}/optimized",
                only=version,
            )
        except LockgateError as e:
            raise ReplicaStartFailed(shadow_app(name), e) from None
        self._comparer = ShadowComparer(
            self._service.served[version],
            limits.max_tensor_elements,
            lambda row: registry.add_shadow_window(name, version, row),
            shadow_options(settings.options).window_s,
            metrics.shadow_observer(name, version),
        )
        self._flusher = asyncio.get_running_loop().create_task(self._comparer.flush_forever())
        log.info("shadow of %s version %s ready", name, version)

    async def compare(self, version: int, copies: list[Copy], dropped: int) -> None:
        """Copies of production's requests (and how many production dropped since its last call)."""
        if version == self._comparer.version:  # copies for a run that moved on are let go
            await self._comparer.compare(copies, dropped)

    async def __del__(self) -> None:
        """Serve stops the replica (the run stopped or moved): keep what the open window holds."""
        self._flusher.cancel()
        await self._comparer.flush()
        self._service.close()


def build_shadow_app(name: str, version: int, config: Any, settings: LockgateSettings) -> Application:
    deployment = serve.deployment(
        ShadowDeployment,
        name=SHADOW_DEPLOYMENT,
        ray_actor_options={"num_cpus": config.num_cpus, **({"num_gpus": config.num_gpus} if config.num_gpus else {})},
        max_ongoing_requests=64,
    )
    return deployment.bind(name, version, config, settings)  # type: ignore[attr-defined]  # serve.deployment's stub types the decorator form


def shadow_sender(model: str) -> Send:
    """How a production replica of ``model`` sends copies: a handle to its shadow's replica."""
    handle: Any = None

    async def send(version: int, copies: list[Copy], dropped: int) -> None:
        nonlocal handle
        if handle is None:
            handle = serve.get_deployment_handle(SHADOW_DEPLOYMENT, app_name=shadow_app(model))
        await handle.compare.remote(version, copies, dropped)

    return send


class ShadowFollower:
    """The control replica's part: one shadow application per running shadow run of a served model."""

    def __init__(
        self, registry: Any, settings: LockgateSettings, served: Callable[[], set[str]], audit: Callable[..., None]
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.served = served
        self.audit = audit
        self.deployed: dict[str, int] = {}  # model -> the version its shadow application runs
        self.failed: dict[str, tuple[int, float]] = {}  # model -> (version, when its deploy failed)

    async def run(self, interval_s: float) -> None:
        if getattr(self.registry, "shadow_runs", None) is None:
            return  # a registry without shadow runs
        while True:
            try:
                await self.step()
            except Exception as e:  # noqa: BLE001 - keep following; the next round tries again
                log.warning("shadow runs not followed this round: %s", e)
            await asyncio.sleep(interval_s)

    async def step(self) -> None:
        runs = await asyncio.to_thread(self.registry.shadow_runs)
        now = time.time()
        for name, run in runs.items():
            if not run.active(now):
                await asyncio.to_thread(self.registry.stop_shadow, name, actor="lockgate", reason="the run's end was reached")
        served = self.served()
        wanted = {name: run.version for name, run in runs.items() if run.active(now) and name in served}
        for name in [n for n, v in self.deployed.items() if wanted.get(n) != v]:
            await asyncio.to_thread(serve.delete, shadow_app(name))
            del self.deployed[name]
            log.info("shadow of %s removed", name)
        for name, version in wanted.items():
            if name in self.deployed:
                continue
            failed = self.failed.get(name)
            if failed is not None and failed[0] == version and now - failed[1] < RETRY_FAILED_S:
                continue
            await self._deploy(name, version)

    async def _deploy(self, name: str, version: int) -> None:
        try:
            config = parse_model_config(await asyncio.to_thread(self.registry.model_config, name), source=f"model {name}")
            app = build_shadow_app(name, version, config, self.settings)
            await asyncio.to_thread(serve.run, app, name=shadow_app(name), route_prefix=None)
        except Exception as e:  # noqa: BLE001 - whatever Serve raised: said, audited, tried again later
            reason = str(load_failure(shadow_app(name), e))
            first = self.failed.get(name, (None, 0.0))[0] != version
            self.failed[name] = (version, time.time())
            if first:
                log.error("shadow of %s version %s could not start: %s", name, version, reason)
                self.audit("shadow_failed", "lockgate", model=name, version=version, detail={"reason": reason})
            return
        self.failed.pop(name, None)
        self.deployed[name] = version
        log.info("shadow of %s version %s deployed", name, version)
