"""Plugin discovery and calling rules: failures reported not fatal, gatekeepers fail closed, observers fail open."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time

import pytest

from lockgate.plugins import PLUGIN_API_VERSION, Decision, PluginManager, Principal, RequestInfo, Settings, hookimpl

REQUEST = RequestInfo("POST", "/v2/models/m/infer", {}, "127.0.0.1", "m", None)


def plugin(**hooks):
    """A plugin object from keyword hook functions."""
    ns = {"LOCKGATE_PLUGIN_API": "1.0"}
    for name, fn in hooks.items():
        ns[name] = staticmethod(hookimpl(fn))
    return type("P", (), ns)()


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """Installs fake distributions with entry points, found by importlib.metadata as any other."""

    def install(name: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
        dist = tmp_path / f"{name}-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
        (dist / "entry_points.txt").write_text(f"[lockgate.plugins]\n{lines}\n")
        for module, source in modules.items():
            (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))

    monkeypatch.syspath_prepend(str(tmp_path))
    yield install
    for mod in [m for m in sys.modules if m.startswith("lgtest_")]:
        del sys.modules[mod]


def test_discovery_reports_each_failure_and_keeps_the_rest(fake_dist):
    fake_dist(
        "lgtest-dist",
        {
            "good": "lgtest_good",
            "broken": "lgtest_broken",
            "old": "lgtest_old",
            "silent": "lgtest_silent",
            "unwanted": "lgtest_good:Other",
        },
        {
            "lgtest_good": """
                from lockgate.plugins import hookimpl
                LOCKGATE_PLUGIN_API = "1.2"
                @hookimpl
                def lockgate_observe_inference(event):
                    pass
                class Other:
                    LOCKGATE_PLUGIN_API = "1.0"
            """,
            "lgtest_broken": "raise ImportError('missing dependency: foo')\n",
            "lgtest_old": "LOCKGATE_PLUGIN_API = '0.9'\n",
            "lgtest_silent": "x = 1\n",
        },
    )
    m = PluginManager(block=["unwanted"])
    statuses = {s.name: s for s in m.load_entry_points()}
    assert statuses["good"].state == "loaded" and statuses["good"].api_version == "1.2"
    assert statuses["broken"].state == "failed" and "missing dependency: foo" in statuses["broken"].error
    assert (
        statuses["old"].state == "failed"
        and f"speaks plugin API 0.9; this server speaks {PLUGIN_API_VERSION}" in statuses["old"].error
    )
    assert statuses["silent"].state == "failed" and "does not declare LOCKGATE_PLUGIN_API" in statuses["silent"].error
    assert statuses["unwanted"].state == "blocked"
    assert m.has("lockgate_observe_inference")


def test_allow_list_loads_only_named_plugins(fake_dist):
    fake_dist("lgtest-allow", {"a": "lgtest_a", "b": "lgtest_a"}, {"lgtest_a": "LOCKGATE_PLUGIN_API = '1.0'\n"})
    statuses = {s.name: s.state for s in PluginManager(allow=["a"]).load_entry_points()}
    assert statuses["a"] == "loaded" and statuses["b"] == "blocked"


def test_builtin_registry_loads_through_entry_points():
    statuses = {s.name: s for s in PluginManager().load_entry_points()}
    assert statuses["registry"].state == "loaded"
    assert statuses["registry"].source == "lockgate.plugins.registry:plugin"


def test_bad_hook_signature_is_a_failed_plugin():
    def lockgate_observe_inference(event, extra):
        pass

    status = PluginManager().register(plugin(lockgate_observe_inference=lockgate_observe_inference), "typo")
    assert status.state == "failed" and "extra" in status.error


def test_configure_failure_unregisters_the_plugin(tmp_path):
    def lockgate_configure(settings):
        raise RuntimeError("cannot reach my service")

    m = PluginManager()
    m.statuses.append(
        m.register(plugin(lockgate_configure=lockgate_configure, lockgate_observe_inference=lambda event: None), "flaky")
    )
    m.configure(Settings(f"sqlite:///{tmp_path}/r.db", str(tmp_path)))
    assert m.statuses[0].state == "failed" and "cannot reach my service" in m.statuses[0].error
    assert not m.has("lockgate_observe_inference")


def run(coro):
    return asyncio.run(coro)


def test_authentication_first_principal_wins_and_abstention_is_anonymous():
    m = PluginManager()
    assert run(m.authenticate(REQUEST)).name == "anonymous"
    m.register(plugin(lockgate_authenticate=lambda request: None), "abstains")
    m.register(plugin(lockgate_authenticate=lambda request: Principal("alice", frozenset({"invoker"}))), "keys")
    assert run(m.authenticate(REQUEST)).name == "alice"


@pytest.mark.parametrize(
    "impl,fragment",
    [
        (lambda request: Decision.deny("bad key"), "bad key"),
        (lambda request: 1 / 0, "failed (ZeroDivisionError)"),
    ],
)
def test_authentication_denies_and_failures_are_401(impl, fragment):
    m = PluginManager()
    m.register(plugin(lockgate_authenticate=impl), "auth")
    result = run(m.authenticate(REQUEST))
    assert isinstance(result, Decision) and not result.allow and result.status == 401
    assert fragment in result.reason and result.plugin == "auth"


def test_any_deny_wins_and_every_gatekeeper_is_asked_in_turn():
    asked = []

    def allow(principal, action, model, version):
        asked.append("allow")
        return Decision(True)

    def deny(principal, action, model, version):
        asked.append("deny")
        return Decision.deny(f"{principal.name} may not {action} {model}") if model == "secret" else None

    m = PluginManager()
    m.register(plugin(lockgate_authorize=deny), "deny")
    m.register(plugin(lockgate_authorize=allow), "allow")
    p = Principal("bob")
    assert run(m.authorize(p, "infer", "public", None)).allow
    d = run(m.authorize(p, "infer", "secret", None))
    assert not d.allow and d.plugin == "deny" and d.reason == "bob may not infer secret"
    assert asked == ["allow", "deny", "allow", "deny"]
    assert m.denials["deny"] == 1
    # filtering a listing asks the same question without counting the hidden entry as a refusal
    quiet = run(m.authorize(p, "metadata", "secret", None, count=False))
    assert not quiet.allow and quiet.plugin == "deny" and m.denials["deny"] == 1


def test_gatekeeper_exception_and_timeout_deny_and_are_counted():
    async def slow(principal, action, model, version):
        await asyncio.sleep(5)

    def sleepy(principal, action, model, version):
        time.sleep(0.05)

    def broken(principal, action, model, version):
        raise KeyError("boom")

    for name, impl, fragment in (
        ("slow", slow, "timed out"),
        ("sleepy", sleepy, "timed out"),
        ("broken", broken, "failed (KeyError)"),
    ):
        m = PluginManager(gate_timeout_s=0.02)
        m.register(plugin(lockgate_authorize=impl), name)
        d = run(m.authorize(Principal("x"), "infer", "m", None))
        assert not d.allow and fragment in d.reason, (name, d)
        assert m.errors[name] == 1


def test_observers_fail_open_and_are_counted(caplog):
    seen = []
    m = PluginManager()
    m.register(plugin(lockgate_audit_event=lambda event: 1 / 0), "broken")
    m.register(plugin(lockgate_audit_event=lambda event: seen.append(event.kind)), "good")
    m.audit("register", "alice", model="m", version=1)
    m.audit("alias_set", "alice", model="m", version=1)
    assert seen == ["register", "alias_set"]
    assert m.errors["broken"] == 2
    assert "observer broken.lockgate_audit_event failed" in caplog.text


def test_registration_gatekeepers_collect_every_deny():
    m = PluginManager()
    m.register(plugin(lockgate_check_registration=lambda candidate: Decision.deny("too large")), "size")
    m.register(plugin(lockgate_check_registration=lambda candidate: None), "fine")
    m.register(plugin(lockgate_check_registration=lambda candidate: [][1]), "buggy")
    reasons = sorted(d.reason for d in m.check_registration(object()))
    assert reasons[1] == "too large" and "registration check by plugin 'buggy' failed (IndexError)" in reasons[0]


def test_a_gatekeeper_written_as_a_wrapper_is_refused_at_registration():
    """pluggy would hand a wrapper's generator back as its answer, which is no Decision: such a
    plugin would fail open, so it is refused before any hook runs, saying why."""
    for kind in ("wrapper", "hookwrapper"):

        class Wrapping:
            LOCKGATE_PLUGIN_API = "1.0"

            @hookimpl(**{kind: True})
            def lockgate_authorize(self, principal, action, model, version):
                yield

        m = PluginManager()
        status = m.register(Wrapping(), f"wrapping-{kind}")
        assert status.state == "failed", status
        assert "lockgate_authorize" in status.error and "wrapper or hookwrapper" in status.error
        assert not m.has("lockgate_authorize")
        assert asyncio.run(m.authorize(Principal("bob"), "infer", "m", None)).allow  # nothing of it runs


def test_an_answer_that_is_not_a_decision_is_a_deny_on_the_sync_and_the_async_path():
    m = PluginManager()
    m.register(plugin(lockgate_authorize=lambda principal, action, model, version: True), "truthy")
    who, denied = m.check_request(REQUEST, "infer")
    assert who is not None and denied is not None and "truthy" in denied.reason and denied.status == 403
    who, denied_async = asyncio.run(m.check_request_async(REQUEST, "infer"))
    assert denied_async == denied
    assert m.errors["truthy"] == 2


def test_an_allow_is_reusable_only_when_every_request_gatekeeper_says_until_when():
    """``reuse_allow``: the earliest time of all answers; None when one says None or when a
    plugin with a request gatekeeper does not answer; a deny, counted, when one raises or
    answers something else than a number."""
    principal = Principal("bob")
    allow = {"lockgate_authorize": lambda principal, action, model, version: None}
    m = PluginManager()
    m.register(plugin(**allow, lockgate_reuse_allow=lambda principal: 20.0), "late")
    m.register(plugin(lockgate_authenticate=lambda request: principal, lockgate_reuse_allow=lambda principal: 10.0), "soon")
    assert m.allows_reusable() and m.reuse_allow(principal) == 10.0
    m.register(plugin(lockgate_reuse_allow=lambda principal: None), "never")
    assert m.reuse_allow(principal) is None
    m = PluginManager()
    m.register(plugin(**allow, lockgate_reuse_allow=lambda principal: 20.0), "late")
    m.register(plugin(**allow), "silent")  # a request gatekeeper that says nothing of reuse
    assert not m.allows_reusable() and m.reuse_allow(principal) is None
    for answer, error in ((lambda principal: [][1], "IndexError"), (lambda principal: "soon", "TypeError")):
        m = PluginManager()
        m.register(plugin(**allow, lockgate_reuse_allow=answer), "buggy")
        denied = m.reuse_allow(principal)
        assert isinstance(denied, Decision) and not denied.allow and denied.status == 403, denied
        assert f"reuse check by plugin 'buggy' failed ({error})" in denied.reason and m.errors["buggy"] == 1
    assert not PluginManager().allows_reusable()  # no gatekeeper: nothing to reuse


def test_async_gatekeepers_work_on_every_gatekeeper_hook():
    """From plain code and from inside a running event loop (a replica's constructor checks
    serving on its loop): an async gatekeeper is awaited, never taken for an abstention."""

    async def deny(**_):
        await asyncio.sleep(0)
        return Decision.deny("async says no")

    m = PluginManager()
    m.register(
        plugin(
            lockgate_check_registration=lambda candidate: deny(),
            lockgate_check_alias=lambda principal, model, alias, version: deny(),
            lockgate_check_serving=lambda record, aliases: deny(),
            lockgate_check_startup=lambda host, insecure: deny(),
            lockgate_authorize=lambda principal, action, model, version: deny(),
        ),
        "async-gates",
    )

    def every_check() -> list[Decision]:
        return [
            *m.check_registration(object()),
            m.check_alias(Principal("bob"), "m", "production", 1),
            m.check_serving(object(), []),
            *m.check_startup("127.0.0.1", False),
            m.check_request(REQUEST, "infer")[1],
        ]

    async def on_a_loop() -> list[Decision]:
        return every_check()

    for decisions in (every_check(), asyncio.run(on_a_loop())):
        assert len(decisions) == 5
        assert all(not d.allow and d.reason == "async says no" and d.plugin == "async-gates" for d in decisions), decisions


def test_async_def_hookimpls_are_awaited_on_the_request_path():
    class AsyncGate:
        LOCKGATE_PLUGIN_API = "1.0"

        @hookimpl
        async def lockgate_authenticate(self, request):
            await asyncio.sleep(0)
            return Principal("carol", frozenset({"invoker"}))

        @hookimpl
        async def lockgate_authorize(self, principal, action, model, version):
            return None if principal.name == "carol" else Decision.deny("not carol")

    m = PluginManager()
    m.register(AsyncGate(), "async-gate")
    assert not m.request_gates_are_sync()
    who, denied = asyncio.run(m.check_request_async(REQUEST, "infer"))
    assert who == Principal("carol", frozenset({"invoker"})) and denied is None
    assert m.check_request(REQUEST, "infer") == (who, None)  # the synchronous driver awaits them too


def test_recorders_pending_futures_time_out_on_one_timer_and_cancellation_still_propagates():
    """A recorder's pending record that is not done within ``record_timeout_s`` is a RecordFailed
    'timed out' with its future cancelled (the recorder learns the answer was withheld), while
    records done in time pass, in any order; a request cancelled while it waits stays cancelled."""
    from lockgate.plugins import InferenceEvent, RecordFailed

    futures: list[asyncio.Future] = []

    def record(event):
        future = asyncio.get_running_loop().create_future()
        futures.append(future)
        return future

    m = PluginManager(record_timeout_s=0.2)
    m.register(plugin(lockgate_record_inference=record), "recorder")
    event = InferenceEvent("r1", "m", 1, "alice", 200, 0.001, 1)

    async def scenario():
        loop = asyncio.get_running_loop()
        waits = [asyncio.ensure_future(m.record_inference(event)) for _ in range(4)]
        await asyncio.sleep(0.05)
        futures[2].set_result(7)  # done in time, out of order
        futures[0].set_result(5)
        started = loop.time()
        results = await asyncio.gather(*waits, return_exceptions=True)
        waited = loop.time() - started
        # the cancelled request: CancelledError, not a timeout
        cancelled = asyncio.ensure_future(m.record_inference(event))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        return results, waited

    results, waited = run(scenario())
    assert results[0] is None and results[2] is None
    for failed in (results[1], results[3]):
        assert isinstance(failed, RecordFailed) and "recorder 'recorder' timed out" in str(failed)
    assert futures[1].cancelled() and futures[3].cancelled() and futures[4].cancelled()
    assert 0.1 <= waited < 2.0, waited  # the remaining two waited for their deadline, not forever
    assert m.errors["recorder"] == 2
