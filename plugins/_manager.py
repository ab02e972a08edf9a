"""The plugin manager: discovery from entry points, and the calling rules of each hook kind.

One manager per process (CLI command, model replica, control replica), built by a factory,
never at import time.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import Counter, deque
from collections.abc import Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, NamedTuple, cast

import pluggy

from . import PROJECT_NAME, hookspecs
from ._types import AuditEvent, Decision, ModelRegistry, Principal, Settings
from .errors import RecordFailed

__all__ = ["ENTRY_POINT_GROUP", "PLUGIN_API_VERSION", "PluginManager", "PluginStatus"]

log = logging.getLogger("lockgate.plugins")

ENTRY_POINT_GROUP = "lockgate.plugins"
PLUGIN_API_VERSION = "1.5"
ANONYMOUS = Principal("anonymous")
ALLOWED = Decision(True)
_EXPIRED = "the record was not durable in time"


class _Deadlines:
    """The record timeout of every pending record of one event loop, kept by one timer.

    Every deadline is the same span after the record was asked for, so they come due in the
    order they were added: a deque, and a timer for its oldest entry. A record not durable by
    its deadline has its future cancelled (what ``asyncio.wait_for`` did, with a timer, a
    waiter and two callbacks per request); the request then answers 503 and the recorder learns
    from the cancellation that the answer was withheld."""

    __slots__ = ("armed", "loop", "queue", "timeout_s")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self.loop = loop
        self.timeout_s = timeout_s
        self.queue: deque[tuple[float, asyncio.Future]] = deque()
        self.armed = False

    def watch(self, future: asyncio.Future) -> None:
        """Cancel ``future`` with ``_EXPIRED`` unless it is done within the timeout. Its waiter
        awaits it itself: a coroutine of this class's around each await cost every request one."""
        self.queue.append((self.loop.time() + self.timeout_s, future))
        if not self.armed:
            self.armed = True
            self.loop.call_at(self.queue[0][0], self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        queue = self.queue
        while queue and (queue[0][1].done() or queue[0][0] <= now):
            _, future = queue.popleft()
            future.cancel(_EXPIRED)  # a no-op when it is done
        if queue:
            self.loop.call_at(queue[0][0], self._sweep)
        else:
            self.armed = False


_ANSWERS = (Principal, Decision)  # what gatekeepers return, not awaitables


class _Impl(NamedTuple):
    plugin_name: str
    function: Any
    argnames: tuple[str, ...]
    is_async: bool


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
        self._reusable: bool | None = None
        self._watch: _Deadlines | None = None

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
            status = PluginStatus(
                name, "failed", source, error=f"does not declare LOCKGATE_PLUGIN_API (this server speaks {PLUGIN_API_VERSION})"
            )
        elif declared.split(".")[0] != PLUGIN_API_VERSION.split(".")[0]:
            status = PluginStatus(
                name, "failed", source, declared, f"speaks plugin API {declared}; this server speaks {PLUGIN_API_VERSION}"
            )
        else:
            try:
                self._impl_cache.clear()
                self._sync_gates = None
                self._reusable = None
                self._pm.register(plugin, name=name)
                wrapped = self._wrapped_gatekeepers(name)
                if wrapped:
                    self._pm.unregister(name=name)
                    status = PluginStatus(
                        name,
                        "failed",
                        source,
                        declared,
                        f"gatekeeper hook(s) {', '.join(wrapped)} declared as a pluggy wrapper or hookwrapper: a gatekeeper must "
                        "return its Decision (write it as a plain or async def hookimpl)",
                    )
                else:
                    status = PluginStatus(name, "loaded", source, declared)
            except Exception as e:  # noqa: BLE001 - pluggy validation errors and name clashes
                status = PluginStatus(name, "failed", source, declared, f"{type(e).__name__}: {e}")
        if status.state == "failed":
            log.warning("plugin %s skipped: %s", name, status.error)
        return status

    def _wrapped_gatekeepers(self, name: str) -> list[str]:
        """The gatekeeper and recorder hooks that plugin ``name`` implements as a wrapper: its
        generator would be taken for an abstention, so such a plugin is refused, never run."""
        found = []
        for hook_name in (*hookspecs.GATEKEEPERS, *hookspecs.RECORDERS):
            for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
                if impl.plugin_name == name and (impl.hookwrapper or impl.wrapper):
                    found.append(hook_name)
        return found

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
                self._reusable = None
                self.statuses = [
                    PluginStatus(s.name, "failed", s.source, s.api_version, f"configure failed: {type(e).__name__}: {e}")
                    if s.name == impl.plugin_name
                    else s
                    for s in self.statuses
                ]

    @property
    def settings(self) -> Settings:
        """The settings this manager was configured with (empty ones before ``configure``)."""
        return self._settings if self._settings is not None else Settings("", "")

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

    # -- calling rules ---------------------------------------------------------------------------

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

    def request_gates_are_sync(self) -> bool:
        """True when every authenticate and authorize implementation is a plain function, so
        ``check_request`` can decide without a coroutine (the common case, and the cheaper one)."""
        if self._sync_gates is None:
            self._sync_gates = not any(
                i.is_async for h in ("lockgate_authenticate", "lockgate_authorize") for i in self._impls(h)
            )
        return self._sync_gates

    def allows_reusable(self) -> bool:
        """True when every plugin with a request gatekeeper (``authenticate``, ``authorize``)
        answers ``lockgate_reuse_allow``, so that an allow may be reused until the time they give."""
        if self._reusable is None:
            gatekeepers = {i.plugin_name for h in ("lockgate_authenticate", "lockgate_authorize") for i in self._impls(h)}
            reusers = {i.plugin_name for i in self._impls("lockgate_reuse_allow")}
            self._reusable = bool(gatekeepers) and gatekeepers <= reusers
        return self._reusable

    def reuse_allow(self, principal: Principal) -> float | Decision | None:
        """Until when (``time.monotonic()``) the allow just given to ``principal`` may be reused:
        the earliest answer of ``lockgate_reuse_allow``. None when it may not be (a plugin said
        None, or a request gatekeeper's plugin does not answer); a deny when an implementation
        failed or gave something else than a number (fail closed, counted)."""
        if not self.allows_reusable():
            return None
        until = float("inf")
        for impl in self._impls("lockgate_reuse_allow"):
            try:
                answer = impl.function(principal)
                if answer is None:
                    return None
                if isinstance(answer, bool) or not isinstance(answer, (int, float)):
                    if inspect.iscoroutine(answer):  # an async def implementation: never awaited here
                        answer.close()
                    raise TypeError(f"lockgate_reuse_allow returned {type(answer).__name__}, not a number or None")
            except Exception as e:  # noqa: BLE001 - a failing gatekeeper denies
                return self._gate_failed(impl.plugin_name, "reuse check", e, status=403)
            until = min(until, float(answer))
        return until

    # Each gatekeeper rule below is written once, as a generator that yields the next
    # implementation to call with its arguments and is sent back the result (or the exception
    # it raised). Two drivers run the rules: one synchronous (on the event loop for plain
    # functions, or in a CLI), one asynchronous; so the sync and async paths cannot differ.

    def _request_rules(self, request: Any, action: str) -> _Rules:
        """authenticate, then authorize: ``(principal, None)`` when allowed; ``(None, deny)``
        when authentication refused (401, or 503 when it cannot check now); ``(principal,
        deny)`` when authorization refused (403 unless the plugin said otherwise)."""
        who = yield from self._authenticate_rules(request)
        if isinstance(who, Decision):
            return None, who
        denied = yield from self._authorize_rules(who, action, request.model, request.version, count=True)
        return who, denied

    def _authenticate_rules(self, request: Any) -> _Rules:
        for impl in self._impls("lockgate_authenticate"):
            result = yield impl, {"request": request}
            if isinstance(result, BaseException):
                return self._gate_failed(impl.plugin_name, "authentication", result, status=401)
            if isinstance(result, Principal):
                return result
            if isinstance(result, Decision):
                if not result.allow:
                    self.denials[impl.plugin_name] += 1
                    return Decision(False, result.reason, impl.plugin_name, 503 if result.status == 503 else 401)
            elif result is not None:
                return self._gate_failed(impl.plugin_name, "authentication", _not_an_answer(result), status=401)
        return ANONYMOUS

    def _authorize_rules(
        self, principal: Principal, action: str, model: str | None, version: str | None, *, count: bool
    ) -> _Rules:
        kwargs = {"principal": principal, "action": action, "model": model, "version": version}
        for impl in self._impls("lockgate_authorize"):
            result = yield impl, kwargs
            denied = self._deny_of(impl.plugin_name, "authorization", result, count=count)
            if denied is not None:
                return denied
        return None

    def _gatekeeper_rules(self, hook_name: str, what: str, kwargs: dict[str, Any], *, first: bool) -> _Rules:
        """Every deny of a gatekeeper hook (``first``: stop at the first one)."""
        denials = []
        for impl in self._impls(hook_name):
            result = yield impl, kwargs
            denied = self._deny_of(impl.plugin_name, what, result, count=True)
            if denied is not None:
                denials.append(denied)
                if first:
                    break
        return denials

    def _deny_of(self, plugin: str, what: str, result: Any, *, count: bool) -> Decision | None:
        """What one gatekeeper's answer means: a deny, or None (allowed or abstained). An
        exception, or an answer that is neither a Decision nor None, is a deny (fail closed)."""
        if isinstance(result, BaseException):
            return self._gate_failed(plugin, what, result, status=403)
        if isinstance(result, Decision):
            if result.allow:
                return None
            if count:
                self.denials[plugin] += 1
            return Decision(False, result.reason, plugin, result.status or 403)
        if result is None:
            return None
        return self._gate_failed(plugin, what, _not_an_answer(result), status=403)

    def _drive(self, rules: _Rules) -> Any:
        """Run ``rules`` here and now: plain functions are called, ``async def`` gatekeepers
        run to completion (on a helper thread when this thread runs an event loop)."""
        try:
            impl, kwargs = next(rules)
            while True:
                try:
                    result: Any = self._call_sync(impl, kwargs)
                except Exception as e:  # noqa: BLE001 - the rules decide what it means: a deny
                    result = e
                impl, kwargs = rules.send(result)
        except StopIteration as done:
            return done.value

    async def _drive_async(self, rules: _Rules) -> Any:
        try:
            impl, kwargs = next(rules)
            while True:
                try:
                    result: Any = await self._call_async(impl, kwargs)
                except Exception as e:  # noqa: BLE001 - the rules decide what it means: a deny
                    result = e
                impl, kwargs = rules.send(result)
        except StopIteration as done:
            return done.value

    def _call_sync(self, impl: _Impl, kwargs: dict[str, Any]) -> Any:
        args = [kwargs[k] for k in impl.argnames]
        start = time.monotonic()
        result = impl.function(*args)
        # An async gatekeeper, from a synchronous caller. The usual answers are told apart first:
        # ``inspect.isawaitable`` is a Python function and an ABC check, asked twice a request.
        if result is not None and type(result) not in _ANSWERS and inspect.isawaitable(result):
            result = _run_awaitable(result, self.gate_timeout_s)
        elapsed = time.monotonic() - start
        if elapsed > self.gate_timeout_s:
            raise TimeoutError(f"took {elapsed:.2f} s, over the {self.gate_timeout_s} s limit")
        return result

    async def _call_async(self, impl: _Impl, kwargs: dict[str, Any]) -> Any:
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

    def check_request(self, request: Any, action: str) -> tuple[Principal | None, Decision | None]:
        """``authenticate`` then ``authorize`` in one synchronous call (see ``_request_rules``).
        On an event loop, only for plain-function gatekeepers (``request_gates_are_sync``)."""
        return cast("tuple[Principal | None, Decision | None]", self._drive(self._request_rules(request, action)))

    async def check_request_async(self, request: Any, action: str) -> tuple[Principal | None, Decision | None]:
        """``check_request`` for any gatekeepers, async ones included."""
        return cast("tuple[Principal | None, Decision | None]", await self._drive_async(self._request_rules(request, action)))

    async def authenticate(self, request: Any) -> Principal | Decision:
        """The caller's Principal, or the first deny. Every abstention: the anonymous principal."""
        return cast("Principal | Decision", await self._drive_async(self._authenticate_rules(request)))

    async def authorize(
        self, principal: Principal, action: str, model: str | None, version: str | None, *, count: bool = True
    ) -> Decision:
        """Allow unless some gatekeeper denies; every implementation is asked.

        ``count=False`` asks without counting a deny as a refusal: for filtering a listing (the
        repository index) to what the caller may see, where a hidden entry is not a refused request."""
        denied = await self._drive_async(self._authorize_rules(principal, action, model, version, count=count))
        return ALLOWED if denied is None else cast(Decision, denied)

    def _denials(self, hook_name: str, what: str, kwargs: dict[str, Any], *, first: bool = False) -> list[Decision]:
        return cast("list[Decision]", self._drive(self._gatekeeper_rules(hook_name, what, kwargs, first=first)))

    def check_registration(self, candidate: Any) -> list[Decision]:
        """Every deny of every registration gatekeeper (empty: allowed). Runs synchronously."""
        return self._denials("lockgate_check_registration", "registration check", {"candidate": candidate})

    def check_alias(self, principal: Principal, model: str, alias: str, version: int) -> Decision:
        """Allow an alias move unless a gatekeeper denies it."""
        kwargs = {"principal": principal, "model": model, "alias": alias, "version": version}
        denials = self._denials("lockgate_check_alias", "alias check", kwargs, first=True)
        return denials[0] if denials else ALLOWED

    def check_serving(self, record: Any, aliases: list[str]) -> Decision:
        """Allow serving ``record`` unless a gatekeeper denies it."""
        denials = self._denials("lockgate_check_serving", "serving check", {"record": record, "aliases": aliases}, first=True)
        return denials[0] if denials else ALLOWED

    def check_startup(self, host: str, insecure: bool) -> list[Decision]:
        """Every reason a start-up gatekeeper gives for refusing to serve on ``host`` (empty: start)."""
        return self._denials("lockgate_check_startup", "start-up check", {"host": host, "insecure": insecure})

    async def record_inference(self, event: Any) -> None:
        """Hand ``event`` to every recorder and wait for the records they say are pending.

        Raises RecordFailed when a recorder fails or times out: the caller must withhold its answer.
        A pending asyncio future is awaited under this loop's one deadline timer (``_Deadlines``),
        not a timer and a waiter of its own per request: this runs on every audited request."""
        for impl in self._impls("lockgate_record_inference"):
            try:
                pending = impl.function(event) if impl.argnames else impl.function()
                if pending is None:
                    continue
                if isinstance(pending, asyncio.Future):
                    if not pending.done():
                        watch = self._deadlines()
                        watch.watch(pending)
                        try:
                            await pending
                        except asyncio.CancelledError as e:
                            if e.args != (_EXPIRED,):
                                raise  # this request itself is being cancelled
                            raise TimeoutError(f"the record was not durable within {watch.timeout_s:g} s") from None
                    pending.result()
                else:
                    await asyncio.wait_for(pending, self.record_timeout_s)
            except Exception as e:
                self.errors[impl.plugin_name] += 1
                kind = "timed out" if isinstance(e, (TimeoutError, asyncio.TimeoutError)) else f"failed ({type(e).__name__}: {e})"
                raise RecordFailed(f"recorder '{impl.plugin_name}' {kind}") from e

    def _deadlines(self) -> _Deadlines:
        loop = asyncio.get_running_loop()
        watch = self._watch
        if watch is None or watch.loop is not loop:
            watch = self._watch = _Deadlines(loop, self.record_timeout_s)
        return watch

    def _gate_failed(self, plugin: str, what: str, error: BaseException, *, status: int = 403) -> Decision:
        self.errors[plugin] += 1
        kind = "timed out" if isinstance(error, (TimeoutError, asyncio.TimeoutError)) else f"failed ({type(error).__name__})"
        log.warning("gatekeeper %s %s: %s", plugin, kind, error)
        return Decision(False, f"{what} by plugin '{plugin}' {kind}; denied", plugin, status)

    def observe(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call every implementation of observer ``hook_name``; failures are logged and counted.
        Returns the answers that were not None (most observers answer nothing)."""
        answers = []
        for impl in self._impls(hook_name):
            try:
                answer = impl.function(*[kwargs[k] for k in impl.argnames])
            except Exception as e:  # noqa: BLE001 - fail open
                self.errors[impl.plugin_name] += 1
                log.warning("observer %s.%s failed: %s", impl.plugin_name, hook_name, e)
            else:
                if answer is not None:
                    answers.append(answer)
        return answers

    def audit(self, kind: str, actor: str, **fields: Any) -> None:
        self.observe("lockgate_audit_event", event=AuditEvent(kind, actor, **fields))

    def provide(self, hook_name: str, **kwargs: Any) -> Any:
        """The first non-None answer of provider ``hook_name`` (None when no plugin answers).
        An exception propagates: the caller asked for something it cannot do without."""
        return getattr(self._pm.hook, hook_name)(**kwargs)

    def registry(self) -> ModelRegistry:
        """The model registry that a plugin provides; LookupError when none does."""
        found = self._pm.hook.lockgate_model_registry()
        if found is None:
            raise LookupError("no plugin provides a model registry (is the built-in 'registry' plugin blocked?)")
        return cast(ModelRegistry, found)


_Rules = Generator[tuple[_Impl, dict[str, Any]], Any, Any]


def _not_an_answer(result: Any) -> TypeError:
    return TypeError(
        f"a gatekeeper must return a Decision or None (or a Principal, when authenticating), got {type(result).__name__}"
    )


def _run_awaitable(awaitable: Any, timeout_s: float) -> Any:
    """Run an async gatekeeper's awaitable to completion from synchronous code: on this thread
    when it runs no event loop, else on a helper thread (a loop cannot be re-entered)."""

    async def bounded() -> Any:
        return await asyncio.wait_for(awaitable, timeout_s)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(bounded())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockgate-gate") as pool:
        return pool.submit(asyncio.run, bounded()).result()


def build_manager(settings: Settings, *, allow: Iterable[str] | None = None, block: Iterable[str] = ()) -> PluginManager:
    """A configured manager with every entry-point plugin loaded: the per-process factory."""
    manager = PluginManager(allow=allow, block=block)
    manager.load_entry_points()
    manager.configure(settings)
    for status in manager.failed():
        manager.audit("plugin_failed", "lockgate", detail={"plugin": status.name, "error": status.error})
    return manager
