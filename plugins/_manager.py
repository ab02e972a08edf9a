"""The plugin manager: discovery from entry points, and the calling rules of each hook kind.

One manager per process (CLI command, model replica, control replica), built by a factory,
never at import time.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, NamedTuple

import pluggy

from . import PROJECT_NAME, hookspecs
from ._types import AuditEvent, Decision, Principal, Settings

__all__ = ["ENTRY_POINT_GROUP", "PLUGIN_API_VERSION", "PluginManager", "PluginStatus", "RecordFailed"]

log = logging.getLogger("lockgate.plugins")

ENTRY_POINT_GROUP = "lockgate.plugins"
PLUGIN_API_VERSION = "1.2"
ANONYMOUS = Principal("anonymous")
ALLOWED = Decision(True)


class _Impl(NamedTuple):
    plugin_name: str
    function: Any
    argnames: tuple[str, ...]
    is_async: bool


class RecordFailed(Exception):
    """A recorder could not record an inference request; its answer must not be sent."""


@dataclass(frozen=True, slots=True)
class PluginStatus:
    """How one entry point fared: 'loaded', 'failed' (with the error) or 'blocked'."""

    name: str
    state: str
    source: str
    api_version: str | None = None
    error: str | None = None


class PluginManager:
    """lockgate's pluggy manager with its discovery and calling rules.

    ``allow``: when given, only these plugin names load. ``block``: these never load.
    ``gate_timeout_s``: a gatekeeper taking longer counts as a deny.
    """

    def __init__(
        self,
        *,
        allow: Iterable[str] | None = None,
        block: Iterable[str] = (),
        gate_timeout_s: float = 1.0,
        record_timeout_s: float = 5.0,
    ) -> None:
        self._pm = pluggy.PluginManager(PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self.allow = None if allow is None else frozenset(allow)
        self.block = frozenset(block)
        self.gate_timeout_s = gate_timeout_s
        self.record_timeout_s = record_timeout_s
        self.statuses: list[PluginStatus] = []
        self.errors: Counter[str] = Counter()  # by plugin name: gatekeeper and observer failures
        self.denials: Counter[str] = Counter()  # by plugin name
        self._settings: Settings | None = None
        self._impl_cache: dict[str, list[_Impl]] = {}
        self._sync_gates: bool | None = None

    # -- discovery ---------------------------------------------------------------------------

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[PluginStatus]:
        """Load every plugin of ``group``, one at a time; a failure is recorded, never raised."""
        seen = set()
        for ep in sorted(entry_points(group=group), key=lambda e: e.name):
            if ep.name in seen:
                continue
            seen.add(ep.name)
            self.statuses.append(self._load(ep))
        return self.statuses

    def _load(self, ep: EntryPoint) -> PluginStatus:
        source = ep.value
        if ep.name in self.block or (self.allow is not None and ep.name not in self.allow):
            return PluginStatus(ep.name, "blocked", source)
        try:
            plugin = ep.load()
        except Exception as e:  # noqa: BLE001 - any import failure is reported, not fatal
            log.warning("plugin %s failed to import: %s", ep.name, e)
            return PluginStatus(ep.name, "failed", source, error=f"import failed: {type(e).__name__}: {e}")
        return self.register(plugin, ep.name, source)

    def register(self, plugin: Any, name: str, source: str = "") -> PluginStatus:
        """Register ``plugin`` (a module or object with hookimpls) after checking its API version."""
        declared = getattr(plugin, "LOCKGATE_PLUGIN_API", None)
        if not isinstance(declared, str):
            status = PluginStatus(name, "failed", source, error=f"does not declare LOCKGATE_PLUGIN_API (this server speaks {PLUGIN_API_VERSION})")
        elif declared.split(".")[0] != PLUGIN_API_VERSION.split(".")[0]:
            status = PluginStatus(name, "failed", source, declared, f"speaks plugin API {declared}; this server speaks {PLUGIN_API_VERSION}")
        else:
            try:
                self._impl_cache.clear()
                self._sync_gates = None
                self._pm.register(plugin, name=name)
                status = PluginStatus(name, "loaded", source, declared)
            except Exception as e:  # noqa: BLE001 - pluggy validation errors and name clashes
                status = PluginStatus(name, "failed", source, declared, f"{type(e).__name__}: {e}")
        if status.state == "failed":
            log.warning("plugin %s skipped: %s", name, status.error)
        return status

    def configure(self, settings: Settings) -> None:
        """Call ``lockgate_configure`` on each plugin; one that raises is unregistered and marked failed."""
        self._settings = settings
        for impl in list(self._pm.hook.lockgate_configure.get_hookimpls()):
            try:
                impl.function(**{k: {"settings": settings, "manager": self}[k] for k in impl.argnames})
            except Exception as e:  # noqa: BLE001
                log.warning("plugin %s failed to configure: %s", impl.plugin_name, e)
                self._pm.unregister(name=impl.plugin_name)
                self._impl_cache.clear()
                self._sync_gates = None
                self.statuses = [
                    PluginStatus(s.name, "failed", s.source, s.api_version, f"configure failed: {type(e).__name__}: {e}")
                    if s.name == impl.plugin_name
                    else s
                    for s in self.statuses
                ]

    @property
    def hook(self) -> Any:
        return self._pm.hook

    def has(self, hook_name: str) -> bool:
        return bool(getattr(self._pm.hook, hook_name).get_hookimpls())

    def plugin(self, name: str) -> Any:
        """The registered plugin object called ``name``, or None."""
        return self._pm.get_plugin(name)

    def failed(self) -> list[PluginStatus]:
        return [s for s in self.statuses if s.state == "failed"]

    # -- calling rules -----------------------------------------------------------------------

    def _impls(self, hook_name: str) -> list[_Impl]:
        """The implementations of ``hook_name`` in calling order (last registered first), cached:
        the request gatekeepers run on every request, and pluggy's lookup copies a list."""
        found = self._impl_cache.get(hook_name)
        if found is None:
            found = [
                _Impl(i.plugin_name, i.function, tuple(i.argnames), inspect.iscoroutinefunction(i.function))
                for i in reversed(getattr(self._pm.hook, hook_name).get_hookimpls())
            ]
            self._impl_cache[hook_name] = found
        return found

    async def _call_gate(self, impl: _Impl, kwargs: dict[str, Any]) -> Any:
        args = [kwargs[k] for k in impl.argnames]
        if impl.is_async:
            return await asyncio.wait_for(impl.function(*args), self.gate_timeout_s)
        start = time.monotonic()
        result = impl.function(*args)
        if inspect.isawaitable(result):  # a plain function that returned an awaitable
            result = await asyncio.wait_for(result, self.gate_timeout_s)
        elapsed = time.monotonic() - start
        if elapsed > self.gate_timeout_s:
            raise TimeoutError(f"took {elapsed:.2f} s, over the {self.gate_timeout_s} s limit")
        return result

    def request_gates_are_sync(self) -> bool:
        """True when every authenticate and authorize implementation is a plain function, so
        ``check_request`` can decide without a coroutine (the common case, and the cheaper one)."""
        if self._sync_gates is None:
            self._sync_gates = not any(i.is_async for h in ("lockgate_authenticate", "lockgate_authorize") for i in self._impls(h))
        return self._sync_gates

    def check_request(self, request: Any, action: str) -> tuple[Principal | None, Decision | None]:
        """``authenticate`` then ``authorize`` in one synchronous call, for plain-function
        gatekeepers (see ``request_gates_are_sync``), with the same rules as the coroutines:
        ``(principal, None)`` when allowed; ``(None, deny)`` when authentication refused (401 or
        503); ``(principal, deny)`` when authorization refused."""
        who: Principal = ANONYMOUS
        given = {"request": request}
        for impl in self._impls("lockgate_authenticate"):
            try:
                result = self._call_sync(impl, [given[k] for k in impl.argnames])
            except Exception as e:  # noqa: BLE001 - fail closed
                return None, self._gate_failed(impl.plugin_name, "authentication", e, status=401)
            if isinstance(result, Principal):
                who = result
                break
            if isinstance(result, Decision) and not result.allow:
                self.denials[impl.plugin_name] += 1
                return None, Decision(False, result.reason, impl.plugin_name, 503 if result.status == 503 else 401)
        kwargs = {"principal": who, "action": action, "model": request.model, "version": request.version}
        for impl in self._impls("lockgate_authorize"):
            try:
                result = self._call_sync(impl, [kwargs[k] for k in impl.argnames])
            except Exception as e:  # noqa: BLE001 - fail closed
                return who, self._gate_failed(impl.plugin_name, "authorization", e, status=403)
            if result is not None and isinstance(result, Decision) and not result.allow:
                self.denials[impl.plugin_name] += 1
                return who, Decision(False, result.reason, impl.plugin_name, result.status or 403)
        return who, None

    async def check_request_async(self, request: Any, action: str) -> tuple[Principal | None, Decision | None]:
        """``check_request`` for any gatekeepers, async ones included."""
        who = await self.authenticate(request)
        if isinstance(who, Decision):
            return None, who
        decision = await self.authorize(who, action, request.model, request.version)
        return who, (None if decision.allow else decision)

    def _call_sync(self, impl: _Impl, args: Any) -> Any:
        start = time.monotonic()
        result = impl.function(*args)
        elapsed = time.monotonic() - start
        if elapsed > self.gate_timeout_s:
            raise TimeoutError(f"took {elapsed:.2f} s, over the {self.gate_timeout_s} s limit")
        return result

    async def authenticate(self, request: Any) -> Principal | Decision:
        """The caller's Principal, or the first deny. Every abstention: the anonymous principal."""
        for impl in self._impls("lockgate_authenticate"):
            try:
                result = await self._call_gate(impl, {"request": request})
            except Exception as e:  # noqa: BLE001 - fail closed
                return self._gate_failed(impl.plugin_name, "authentication", e, status=401)
            if type(result) is Principal:
                return result
            if isinstance(result, Decision):
                if not result.allow:
                    self.denials[impl.plugin_name] += 1
                    # 503: the authenticator cannot check credentials now; anything else is 401.
                    return Decision(False, result.reason, impl.plugin_name, 503 if result.status == 503 else 401)
            elif isinstance(result, Principal):
                return result
        return ANONYMOUS

    async def authorize(
        self, principal: Principal, action: str, model: str | None, version: str | None, *, count: bool = True
    ) -> Decision:
        """Allow unless some gatekeeper denies; every implementation is asked.

        ``count=False`` asks without counting a deny as a refusal: for filtering a listing (the
        repository index) to what the caller may see, where a hidden entry is not a refused request."""
        kwargs = {"principal": principal, "action": action, "model": model, "version": version}
        for impl in self._impls("lockgate_authorize"):
            try:
                result = await self._call_gate(impl, kwargs)
            except Exception as e:  # noqa: BLE001 - fail closed
                return self._gate_failed(impl.plugin_name, "authorization", e, status=403)
            if result is not None and isinstance(result, Decision) and not result.allow:
                if count:
                    self.denials[impl.plugin_name] += 1
                return Decision(False, result.reason, impl.plugin_name, result.status or 403)
        return ALLOWED

    def _denials(self, hook_name: str, what: str, kwargs: dict[str, Any], *, first: bool = False) -> list[Decision]:
        """The denies of every implementation of a synchronous gatekeeper (``first``: stop at one)."""
        denials = []
        for impl in self._impls(hook_name):
            try:
                result = asyncio.run(self._call_gate(impl, kwargs)) if impl.is_async else impl.function(*[kwargs[k] for k in impl.argnames])
            except Exception as e:  # noqa: BLE001 - fail closed
                denials.append(self._gate_failed(impl.plugin_name, what, e))
            else:
                if isinstance(result, Decision) and not result.allow:
                    self.denials[impl.plugin_name] += 1
                    denials.append(Decision(False, result.reason, impl.plugin_name, result.status))
            if denials and first:
                break
        return denials

    def check_registration(self, candidate: Any) -> list[Decision]:
        """Every deny of every registration gatekeeper (empty: allowed). Runs synchronously."""
        return self._denials("lockgate_check_registration", "registration check", {"candidate": candidate})

    def check_alias(self, principal: Principal, model: str, alias: str, version: int) -> Decision:
        """Allow an alias move unless a gatekeeper denies it."""
        kwargs = {"principal": principal, "model": model, "alias": alias, "version": version}
        denials = self._denials("lockgate_check_alias", "alias check", kwargs, first=True)
        return denials[0] if denials else Decision(True)

    def check_serving(self, record: Any, aliases: list[str]) -> Decision:
        """Allow serving ``record`` unless a gatekeeper denies it."""
        denials = self._denials("lockgate_check_serving", "serving check", {"record": record, "aliases": aliases}, first=True)
        return denials[0] if denials else Decision(True)

    async def record_inference(self, event: Any) -> None:
        """Hand ``event`` to every recorder and wait for the records they say are pending.

        Raises when a recorder fails or times out: the caller must withhold its answer."""
        for impl in self._impls("lockgate_record_inference"):
            try:
                pending = impl.function(*[{"event": event}[k] for k in impl.argnames])
                if pending is not None:
                    if isinstance(pending, asyncio.Future) and pending.done():
                        pending.result()
                    else:
                        await asyncio.wait_for(pending, self.record_timeout_s)
            except Exception as e:
                self.errors[impl.plugin_name] += 1
                kind = "timed out" if isinstance(e, (TimeoutError, asyncio.TimeoutError)) else f"failed ({type(e).__name__}: {e})"
                raise RecordFailed(f"recorder '{impl.plugin_name}' {kind}") from e

    def _gate_failed(self, plugin: str, what: str, error: BaseException, *, status: int = 403) -> Decision:
        self.errors[plugin] += 1
        kind = "timed out" if isinstance(error, (TimeoutError, asyncio.TimeoutError)) else f"failed ({type(error).__name__})"
        log.warning("gatekeeper %s %s: %s", plugin, kind, error)
        return Decision(False, f"{what} by plugin '{plugin}' {kind}; denied", plugin, status)

    def observe(self, hook_name: str, **kwargs: Any) -> None:
        """Call every implementation of observer ``hook_name``; failures are logged and counted."""
        for impl in self._impls(hook_name):
            try:
                impl.function(*[kwargs[k] for k in impl.argnames])
            except Exception as e:  # noqa: BLE001 - fail open
                self.errors[impl.plugin_name] += 1
                log.warning("observer %s.%s failed: %s", impl.plugin_name, hook_name, e)

    def audit(self, kind: str, actor: str, **fields: Any) -> None:
        self.observe("lockgate_audit_event", event=AuditEvent(kind, actor, **fields))

    def registry(self) -> Any:
        """The model registry that a plugin provides; LookupError when none does."""
        found = self._pm.hook.lockgate_model_registry()
        if found is None:
            raise LookupError("no plugin provides a model registry (is the built-in 'registry' plugin blocked?)")
        return found


def build_manager(settings: Settings, *, allow: Iterable[str] | None = None, block: Iterable[str] = ()) -> PluginManager:
    """A configured manager with every entry-point plugin loaded: the per-process factory."""
    manager = PluginManager(allow=allow, block=block)
    manager.load_entry_points()
    manager.configure(settings)
    for status in manager.failed():
        manager.audit("plugin_failed", "lockgate", detail={"plugin": status.name, "error": status.error})
    return manager
