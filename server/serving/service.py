"""A model as one replica serves it: its versions from the registry, each with its batcher."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from lockgate.plugins import PluginManager

from ..errors import BadRequest, ConfigError, ModelFailed, ModelLoadError, NotFound, RequestError, Unavailable
from .batching import Assembler, Batcher
from .config import ModelConfig
from .explain import Explainer, ExplainOptions
from .limits import DEFAULT_LIMITS, LimitOptions
from .model import REJECTED_INPUT, ModelVersion, load_version
from .protocol import InferRequest, encode_infer_response, parse_off_loop
from .shadow import Send, ShadowOptions, ShadowTap, Unreported
from .stats import Statistics
from .triton_config import triton_model_config
from .warmup import run_warmup

__all__ = ["ModelService", "Served", "json_length"]

log = logging.getLogger("lockgate.server")


def json_length(header_length: bytes | None) -> int | None:
    """The Inference-Header-Content-Length of a binary-tensor request (None: all JSON)."""
    if header_length is None:
        return None
    try:
        return int(header_length)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length must be an integer, got {header_length[:20]!r}") from None


def _labels(name: str, config: ModelConfig) -> dict[str, list[str]]:
    labels = {}
    for output, value in config.labels.items():
        if isinstance(value, str):
            raise ConfigError(
                f"labels of output '{output}' name the file {value!r}, which is read when a repository is imported; "
                "give the labels as a list here",
                source=f"model {name}",
            )
        labels[output] = value
    return labels


class Served:
    """One loaded version: its session, its batch size and its batcher."""

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
        stats_dir: str | None = None,
        engine_dir: str | None = None,
        optimized_dir: str | None = None,
        only: int | None = None,
        shadow_send: Send | None = None,
        shadow_unreported: Unreported | None = None,
        shadow: ShadowOptions | None = None,
    ) -> None:
        self.name = name
        self.engine_dir = engine_dir  # TensorRT's engine cache (LOCKGATE_HOME/engines), by artifact sha256
        self.optimized_dir = optimized_dir  # onnxruntime's optimised graphs (LOCKGATE_HOME/optimized)
        self.stats = Statistics(name, stats_dir)  # Triton's statistics, over the node's replicas
        self.labels = _labels(name, config)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"onnxruntime-{name}")
        self.explainer = Explainer(name, registry, set(config.preprocess), explain or ExplainOptions(), self.executor)
        self.config = config
        self.registry = registry
        self.manager = manager if manager is not None else PluginManager()  # None: no plugins
        self._batch_observed = self.manager.has("lockgate_observe_batch")
        self._serving_checked = self.manager.has("lockgate_check_serving")
        self.default_alias = default_alias
        self.limits = limits  # body and tensor sizes here; the rest is the listener's
        self.served: dict[int, Served] = {}
        self._loading: dict[int, asyncio.Future[Served]] = {}
        records = registry.versions(name)
        if not records:
            raise ModelLoadError(name, None, "no registered versions")
        self.registered = {r.version for r in records}
        self._registered_at = 0.0  # when a request for an unknown version last asked the registry
        self._registry_asked: asyncio.Future[set[int]] | None = None  # that question, while it is open
        self.aliases: dict[str, int] = registry.aliases(name)
        self.splits: dict[str, dict[int, int]] = _splits(registry, name)  # canaries: alias -> {version: weight}
        self.split = _compile(self.splits.get(default_alias))  # the default alias's, as cumulative bounds
        wanted = set(config.version_policy.select(sorted(self.registered))) | set(self.aliases.values())
        wanted |= {v for weights in self.splits.values() for v in weights}
        if only is not None:  # a shadow replica: its one version, whatever the aliases say
            if only not in self.registered:
                raise ModelLoadError(name, only, "no such version")
            wanted = {only}
        # Shadow runs (lockgate.server.serving.shadow): the copies of production's answers, when
        # a run is on and the hosting can reach a shadow replica (``shadow_send``).
        self.shadow_send = shadow_send
        self.shadow_unreported = shadow_unreported  # copies let go that the shadow never hears of
        self.shadow_options = shadow or ShadowOptions()
        self.shadow: ShadowTap | None = None
        if shadow_send is not None:
            self.follow_shadow(_shadow_run(registry, name))
        for version in sorted(wanted):
            self.served[version] = self._load(version)
        self._blocked_lock = threading.Lock()
        self.blocked: dict[int, str] = {}  # version -> why it may not serve now (serving gatekeepers)
        self.update_blocked()

    def _load(self, version: int) -> Served:
        """Read (hash-checked) and load one version; runs off the event loop after start."""
        record = self.registry.get_version(self.name, version)
        try:
            data = self.registry.read_verified(record)
        except Exception as e:  # noqa: BLE001 - a changed or missing artifact: refused, already recorded
            raise ModelLoadError(self.name, version, str(e)) from None
        model = load_version(
            self.name,
            version,
            data,
            self.config.onnxruntime,
            record.sha256,
            self.config.execution,
            self.engine_dir,
            self.optimized_dir,
        )
        preprocess = model.preprocess(self.config.preprocess)
        size = self._max_batch_size(model)
        unknown = [o for o in self.labels if o not in model.output_index]
        if unknown:
            outputs = ", ".join(s.name for s in model.outputs)
            raise ConfigError(
                f"labels name output(s) {', '.join(unknown)}; version {version} gives {outputs}", source=f"model {self.name}"
            )
        on_batch = self._on_batch(version, [s.name for s in model.outputs]) if self._batch_observed else None
        batching = self.config.dynamic_batching
        self._check_padding(model, batching)
        assembler = Assembler([s.name for s in model.graph_inputs], preprocess, size, size > 0, batching.padding)
        dynamic = {s.name: tuple(d == -1 for d in s.shape[1:]) for s in model.graph_inputs}
        batcher = Batcher(
            model.run,
            [s.name for s in model.outputs],
            size,
            batching,
            self.executor,
            on_batch,
            assembler,
            dynamic,
            self.stats.version(version),
            cpu_timed=model.runs_on_caller,
        )
        run_warmup(model, assembler, size, self.config.model_warmup)  # before anything may see it
        return Served(model, size, batcher)

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
            raise ConfigError(
                f"padded_outputs names {', '.join(unknown)}; the model's outputs are {', '.join(sorted(outputs))}", source=where
            )

    def _on_batch(
        self, version: int, names: list[str]
    ) -> Callable[[int, int, float, float, int, dict[str, np.ndarray], list[np.ndarray]], None]:
        manager = self.manager

        def observe(
            rows: int,
            requests: int,
            queue_s: float,
            compute_s: float,
            queued: int,
            feeds: dict[str, np.ndarray],
            results: list[np.ndarray],
        ) -> None:
            manager.observe(
                "lockgate_observe_batch",
                model=self.name,
                version=version,
                rows=rows,
                requests=requests,
                queue_s=queue_s,
                compute_s=compute_s,
                queued=queued,
                inputs=feeds,
                outputs=dict(zip(names, results)),
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

    async def version(self, text: str | None, caller: str | None = None) -> Served:
        """The served version for a route's version text (None: the default alias). When the
        default alias is split between versions (a canary), ``caller`` picks one by the weights,
        the same one for the same caller while the weights hold."""
        if text is None:
            split = self.split
            if split is not None and caller is not None:
                point = zlib.crc32(caller.encode("utf-8", "surrogatepass")) % 100
                for bound, pick in split:
                    if point < bound:
                        return self.served[pick]
            return self.served[self.default_version]
        number = int(text) if text.isdigit() else None
        if number is not None and number in self.served:
            return self.served[number]
        if number is not None and number not in self.registered:
            await self._ask_registry()
        if number is None or number not in self.registered:
            known = ", ".join(str(v) for v in sorted(self.registered))
            raise NotFound(f"model '{self.name}' has no version '{text}'; registered: {known}")
        return await self._load_later(number)

    async def _ask_registry(self) -> None:
        """Registered since the last refresh? Ask the registry (off the event loop), at most once a
        second, so requests for versions that do not exist cannot load the database; requests
        that come while it is asked wait for the same answer."""
        if self._registry_asked is None and time.monotonic() - self._registered_at > 1.0:
            self._registered_at = time.monotonic()
            self._registry_asked = asyncio.ensure_future(
                asyncio.to_thread(lambda: {r.version for r in self.registry.versions(self.name)})
            )
        asked = self._registry_asked
        if asked is None:
            return
        try:
            self.registered = await asyncio.shield(asked)
        finally:
            if self._registry_asked is asked and asked.done():
                self._registry_asked = None

    async def _load_later(self, number: int) -> Served:
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
        if number not in self.served:
            # Decided before it is published: a version a gatekeeper refuses never answers, not
            # even while the decision is being taken.
            await asyncio.to_thread(self.update_blocked, None, None, {number: served})
        return self.served[number]

    async def refresh(self) -> bool:
        """Follow the registry: load newly aliased versions, then swap the alias table. True on change."""
        aliases, splits, run = await asyncio.to_thread(
            lambda: (self.registry.aliases(self.name), _splits(self.registry, self.name), _shadow_run(self.registry, self.name))
        )
        if self.shadow_send is not None:
            self.follow_shadow(run)
        if aliases == self.aliases and splits == self.splits:
            return False
        needed = set(aliases.values()) | {v for weights in splits.values() for v in weights}
        for number in sorted(needed - set(self.served)):
            self.registered.add(number)
            try:
                await self._load_later(number)
            except Unavailable as e:
                log.error("alias move of %s to version %s not applied: %s", self.name, number, e)
                return False
        # The serving decisions for the new table are taken before it is swapped in, and both
        # change together: a request never sees the new alias with the old decisions.
        await asyncio.to_thread(self.update_blocked, None, aliases, None, splits)
        log.info("model %s aliases now %s%s", self.name, aliases, f", split {splits}" if splits else "")
        return True

    def follow_shadow(self, run: Any) -> None:
        """Copy production's answers to the shadow ``run`` names (a ``ShadowRun``; None, or one
        that ended: no copies). A changed run gets a new tap: the copies the old one holds go
        with it when the version is the same, else to the old version's shadow in one last pass."""
        tap = self.shadow
        if run is not None and not run.active(time.time()):
            run = None
        if run is None or self.shadow_send is None:
            if tap is not None:
                log.info("model %s: shadow of version %s ended", self.name, tap.version)
                self.shadow = None
                tap.end()
            return
        if tap is not None and tap.same(run.version, run.share, run.until):
            return
        self.shadow = ShadowTap(run.version, run.share, run.until, self.shadow_send, self.shadow_options, self.shadow_unreported)
        if tap is not None:
            if tap.version == run.version:
                self.shadow.take_over(tap)
            else:
                tap.end()
        log.info("model %s: %.0f%% of production's traffic copied to version %s", self.name, run.share * 100, run.version)

    def update_blocked(
        self,
        records: list[Any] | None = None,
        aliases: dict[str, int] | None = None,
        adding: dict[int, Served] | None = None,
        splits: dict[str, dict[int, int]] | None = None,
    ) -> None:
        """Ask the serving gatekeepers about every loaded version, and the ``adding`` ones, under
        ``aliases`` (default: the current table), then install the decisions, ``aliases`` when
        given, and the added versions, in that order. Runs off the event loop; one call at a
        time, so a slower call cannot undo a newer one."""
        with self._blocked_lock:
            self._update_blocked(records, aliases, adding, splits)

    def _update_blocked(
        self,
        records: list[Any] | None,
        new_aliases: dict[str, int] | None,
        adding: dict[int, Served] | None,
        new_splits: dict[str, dict[int, int]] | None = None,
    ) -> None:
        aliases = self.aliases if new_aliases is None else new_aliases
        splits = self.splits if new_splits is None else new_splits
        adding = {v: s for v, s in (adding or {}).items() if v not in self.served}
        if not self._serving_checked:
            self.served.update(adding)  # before the tables that name them
            self.aliases, self.splits, self.split = aliases, splits, _compile(splits.get(self.default_alias))
            return
        served = {**self.served, **adding}
        if records is None:
            records = [self.registry.get_version(self.name, v) for v in served]
        blocked = {}
        for record in records:
            if record.version not in served:
                continue
            pointing = sorted(
                {a for a, v in aliases.items() if v == record.version} | {a for a, w in splits.items() if record.version in w}
            )
            decision = self.manager.check_serving(record, pointing)
            if not decision.allow:
                blocked[record.version] = decision.reason or f"version {record.version} may not serve"
        for version in blocked.keys() - self.blocked.keys():
            log.warning("model %s version %s stops serving: %s", self.name, version, blocked[version])
            self.manager.audit(
                "serving_stopped", "lockgate", model=self.name, version=version, detail={"reason": blocked[version]}
            )
        for version in self.blocked.keys() - blocked.keys():
            self.manager.audit("serving_resumed", "lockgate", model=self.name, version=version)
        self.blocked = blocked
        self.served.update(adding)  # after the decisions: a request that sees the version sees them
        self.aliases, self.splits, self.split = aliases, splits, _compile(splits.get(self.default_alias))

    def check_serving(self, served: Served) -> None:
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

    async def triton_config(self, version: str | None) -> dict[str, object]:
        """Triton's model configuration of a served version (lockgate.server.serving.triton_config)."""
        served = await self.version(version)
        return triton_model_config(self.name, served.model, served.max_batch_size, self.config)

    async def infer(
        self, served: Served, body: bytes, header_length: bytes | None
    ) -> tuple[bytes, list[tuple[bytes, bytes]], InferRequest, dict[str, np.ndarray]]:
        """The encoded answer, its headers, the decoded request and every output the model gave."""
        served.batcher.check_room()
        request = await parse_off_loop(
            body, json_length(header_length), served.model, served.max_batch_size, self.limits.max_tensor_elements
        )
        timeout = priority = None
        if request.parameters:
            timeout = request.parameters.get("timeout")
            if timeout is not None and (type(timeout) is not int or timeout < 0):
                raise BadRequest(f"parameter 'timeout' must be a non-negative integer of microseconds, got {timeout!r}")
            priority = request.parameters.get("priority")
            if priority is not None and (type(priority) is not int or priority < 0):
                raise BadRequest(f"parameter 'priority' must be a non-negative integer, got {priority!r}")
        try:
            results = await served.batcher.submit(request.inputs, request.rows, timeout, priority, request.timing)
        except RequestError:
            raise
        except REJECTED_INPUT as e:
            raise BadRequest(f"model '{self.name}' rejected the input: {e}") from None
        except Exception as e:
            log.exception("model %s version %s failed", self.name, served.model.version)
            raise ModelFailed(f"model '{self.name}' version {served.model.version} failed: {type(e).__name__}: {e}") from None
        started = time.perf_counter_ns()
        body, headers = encode_infer_response(
            request, self.name, served.model.version, results, self.labels, served.max_batch_size > 0
        )
        request.timing[3] = time.perf_counter_ns() - started
        return body, headers, request, results

    async def explain(self, served: Served, body: bytes, header_length: bytes | None) -> tuple[bytes, InferRequest, str | None]:
        """Attributions for the one row of an OIP request body (see lockgate.server.serving.explain)."""
        return await self.explainer.explain(
            served.model, served.max_batch_size, body, json_length(header_length), self.limits.max_tensor_elements
        )

    def close(self) -> None:
        if self.shadow is not None:
            self.shadow.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


def _splits(registry: Any, name: str) -> dict[str, dict[int, int]]:
    """The registry's canaries of ``name`` (a registry without them has none)."""
    read = getattr(registry, "alias_splits", None)
    return read(name) if read is not None else {}


def _shadow_run(registry: Any, name: str) -> Any:
    """The registry's shadow run of ``name`` (a registry without them has none)."""
    read = getattr(registry, "shadow_runs", None)
    return read(name).get(name) if read is not None else None


def _compile(weights: dict[int, int] | None) -> tuple[tuple[int, int], ...] | None:
    """A split's versions as (cumulative bound, version), in version order: a caller whose hash
    modulo 100 is below a bound, and not below the one before, gets that version."""
    if not weights:
        return None
    bounds, total = [], 0
    for version in sorted(weights):
        total += weights[version]
        bounds.append((total, version))
    return tuple(bounds)
