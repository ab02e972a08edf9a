"""Many models per replica: a pool of shared replicas, each holding the models it was asked for
most recently within a memory budget.

A model whose config names a ``pool`` gets no application of its own. Its requests reach the
control replica (the ingress's catch-all route), which hands them to the pool through a Serve
handle with the model as the multiplexed model id: Serve's router sends them to a replica that
already holds the model where there is one (model multiplexing). A replica without it loads it
(hash-checked, audited and gated as any replica's load, by the same ``ModelService``), first
evicting the least recently used models until the new one fits the pool's budget in bytes.
Serve's own cache bound (a count) is off: lockgate keeps both the count (``max_models``) and
the byte budget, evicting through Serve's cache (``serve_compat``). The HTTP path of a pooled model costs one more hop (the control
replica) than a model of its own: pools are for the long tail of rarely called models.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve
from ray.serve import Application

from ..errors import LockgateError
from ..serving.asgi import call_whole
from ..serving.config import ModelConfig, PoolConfig
from ..serving.explain import explain_options
from ..serving.limits import limit_options
from ..serving.model_app import ModelApp
from ..serving.service import ModelService
from ..serving.settings import LockgateSettings
from .replica import start_replica
from .serve_compat import evict_least_recent, multiplexed_models

__all__ = ["POOL_DEPLOYMENT", "PoolDeployment", "build_pool_app", "pool_app"]

POOL_DEPLOYMENT = "pool"

log = logging.getLogger("lockgate.server")


def pool_app(pool: str) -> str:
    """The Serve application of pool ``pool``."""
    return f"lockgate-pool-{pool}"


class _Hosted:
    """One model resident in a pool replica: its service, app, artifact bytes and alias follower.
    Evicted while requests are on it, it closes when the last of them has its answer."""

    def __init__(self, service: ModelService, size: int, alias_poll_s: float) -> None:
        self.service = service
        self.app = ModelApp(service)
        self.size = size
        self.loop = asyncio.get_running_loop()
        self.refresher = self.loop.create_task(service.refresh_forever(alias_poll_s))
        self.active = 0  # requests on it now (on the event loop)
        self.evicted = False
        self.closed = False

    def __del__(self) -> None:
        """Called by Serve when it evicts the model (in a worker thread), and by the collector."""
        if self.evicted:
            return
        self.evicted = True
        try:
            self.loop.call_soon_threadsafe(self.retire)
        except RuntimeError:  # the loop is gone: the process is ending
            self.close()

    def retire(self) -> None:
        if self.active == 0:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.refresher.cancel()
            self.service.close()


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        registry = CollectorRegistry()  # multiprocess: the files are the registry (hosting/metrics.py)
        self.loads = Counter("lockgate_pool_loads", "Models loaded into a pool replica.", ["pool", "model"], registry=registry)
        self.evictions = Counter(
            "lockgate_pool_evictions",
            "Models evicted from a pool replica to fit its budget.",
            ["pool", "model"],
            registry=registry,
        )
        self.resident = Gauge(
            "lockgate_pool_resident_models",
            "Models resident in the pool's replicas.",
            ["pool"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.bytes = Gauge(
            "lockgate_pool_resident_bytes",
            "Artifact bytes resident in the pool's fullest replica (its budget bounds it).",
            ["pool"],
            multiprocess_mode="livemax",
            registry=registry,
        )


class PoolDeployment:
    """A replica of a pool: any of ``models`` on request, within ``options``' budget."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self, pool: str, models: dict[str, ModelConfig], settings: LockgateSettings, options: PoolConfig
    ) -> None:
        start_replica(settings)
        self._pool, self._configs, self._settings, self._options = pool, models, settings, options
        self._manager = settings.manager()
        self._registry = self._manager.registry()
        self._limits = limit_options(settings.options)
        self._explain = explain_options(settings.options)
        self._metrics = _Metrics()
        self._metrics.resident.labels(pool).set(0)
        self._metrics.bytes.labels(pool).set(0)

        async def load(name: str) -> _Hosted:
            return await self._load(name)

        # Serve keeps its cache on the undecorated function. Its own bound is off (-1): _load keeps
        # both bounds (count and bytes), so every eviction is counted and the gauges move with it.
        self._loader = load
        self._get = serve.multiplexed(max_num_models_per_replica=-1)(load)

    def _resident(self) -> dict[str, _Hosted]:
        return multiplexed_models(self._loader)

    async def _load(self, name: str) -> _Hosted:
        """Load ``name`` (under Serve's cache lock), evicting the least recently used first."""
        config = self._configs[name]
        size = await asyncio.to_thread(self._size, name)
        resident = self._resident()
        budget, most = self._options.memory_budget_bytes, self._options.max_models
        while resident and (sum(h.size for h in resident.values()) + size > budget or len(resident) >= most):
            evicted = next(iter(resident))
            await evict_least_recent(self._loader)
            self._metrics.evictions.labels(self._pool, evicted).inc()
            log.info("pool %s: evicted model %s to fit %s", self._pool, evicted, name)
        service = await asyncio.to_thread(
            ModelService,
            name,
            config,
            self._registry,
            manager=self._manager,
            default_alias=self._settings.default_alias,
            explain=self._explain,
            limits=self._limits,
            stats_dir=self._settings.metrics_dir,
            engine_dir=f"{self._settings.home}/engines",
            optimized_dir=f"{self._settings.home}/optimized",
        )
        hosted = _Hosted(service, size, self._settings.alias_poll_s)
        self._metrics.loads.labels(self._pool, name).inc()
        self._count(extra=hosted)
        return hosted

    def _size(self, name: str) -> int:
        """The artifact bytes of the versions ``name`` serves (what its sessions hold)."""
        config = self._configs[name]
        records = self._registry.versions(name)
        aliases = self._registry.aliases(name)
        wanted = set(config.version_policy.select(sorted(r.version for r in records))) | set(aliases.values())
        return sum(r.size for r in records if r.version in wanted)

    def _count(self, extra: _Hosted | None = None) -> None:
        resident = list(self._resident().values()) + ([extra] if extra is not None else [])
        self._metrics.resident.labels(self._pool).set(len(resident))
        self._metrics.bytes.labels(self._pool).set(sum(h.size for h in resident))

    async def handle(self, request: dict[str, Any], body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One OIP request for the model Serve's router picked this replica for."""
        name = serve.get_multiplexed_model_id()
        if name not in self._configs:
            return 404, [(b"content-type", b"application/json")], b'{"error": "model not in this pool"}'
        try:
            hosted: _Hosted = await self._get(name)
        except LockgateError as e:
            import json

            body_out = json.dumps({"error": f"model '{name}' failed to load: {e}"}).encode()
            return 503, [(b"content-type", b"application/json")], body_out
        hosted.active += 1
        try:
            return await _call(hosted.app, request, body)
        finally:
            hosted.active -= 1
            if hosted.evicted:
                hosted.retire()


async def _call(app: ModelApp, request: dict[str, Any], body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Run ``app`` on the request the control replica forwarded; its answer, whole."""
    return await call_whole(app, {"type": "http", "asgi": {"version": "3.0"}, "root_path": "", **request}, body)


def build_pool_app(pool: str, models: dict[str, ModelConfig], settings: LockgateSettings, options: PoolConfig) -> Application:
    deployment = serve.deployment(
        PoolDeployment,
        name=POOL_DEPLOYMENT,
        num_replicas=options.replicas,
        ray_actor_options={"num_cpus": options.num_cpus, **({"num_gpus": options.num_gpus} if options.num_gpus else {})},
        max_ongoing_requests=256,
    )
    return deployment.bind(pool, models, settings, options)  # type: ignore[attr-defined]  # serve.deployment's stub types the decorator form
