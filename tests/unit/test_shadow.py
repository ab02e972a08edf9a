"""Shadow runs without Ray: the registry's runs and windows, the comparison of two answers, a
production replica's bounded copy queue, the request path copying production's traffic to a
shadow version (compared against the two models run directly), the governance policy's minimum
sample, and the evidence in `lockgate report`."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from lockgate.plugins import Settings, build_manager
from lockgate.plugins.errors import GovernanceError
from lockgate.plugins.registry import Registry
from lockgate.plugins.shared import evidence_lines, shadow_evidence
from lockgate.server.serving.config import ModelConfig
from lockgate.server.serving.model_app import ModelApp
from lockgate.server.serving.service import ModelService
from lockgate.server.serving.shadow import (
    Copy,
    ShadowComparer,
    ShadowOptions,
    ShadowTap,
    _sum_pairs,
    compare_outputs,
    predicted_class,
)
from lockgate.server.tools.demo import build_mlp
from tests.asgi import call


def mlp_registry(url: str, tmp_path) -> Registry:
    registry = Registry(url, tmp_path / "artifacts")
    for seed in (0, 1):
        onnx.save(build_mlp(seed=seed), str(tmp_path / f"mlp{seed}.onnx"))
        registry.register(tmp_path / f"mlp{seed}.onnx", "mlp", created_by="alice")
    registry.set_alias("mlp", "production", 1, actor="alice")
    return registry


def window(**overrides):
    row = {
        "baseline": 1,
        "start": 1000.0,
        "end": 1060.0,
        "compared": 10,
        "errors": 1,
        "dropped": 2,
        "classified": 10,
        "agreed": 9,
        "shadow_ms": 5.0,
        "baseline_ms": 4.0,
        "shadow_ms_max": 0.9,
        "baseline_ms_max": 0.7,
        "outputs": {"output": {"max_abs": 0.5, "sum_abs": 10.0, "elements": 100}},
        "last_error": None,
    }
    return {**row, **overrides}


# -- the registry ------------------------------------------------------------------------------------


def test_the_registry_keeps_one_run_per_model_its_events_and_its_windows(db_url, tmp_path):
    registry = mlp_registry(db_url, tmp_path)
    for share in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"fraction of production's traffic in \(0, 1\]"):
            registry.start_shadow("mlp", 2, share, actor="alice")
    with pytest.raises(ValueError, match="version 1 is what mlp@production serves"):
        registry.start_shadow("mlp", 1, 0.5, actor="alice")
    with pytest.raises(LookupError):
        registry.start_shadow("mlp", 7, 0.5, actor="alice")
    with pytest.raises(ValueError, match="end must be in the future"):
        registry.start_shadow("mlp", 2, 0.5, time.time() - 1, actor="alice")
    assert registry.shadow_runs() == {}
    assert registry.start_shadow("mlp", 2, 0.2, actor="alice") is None
    until = time.time() + 3600
    replaced = registry.start_shadow("mlp", 2, 0.5, until, actor="bob")
    assert (replaced.version, replaced.share, replaced.set_by) == (2, 0.2, "alice")
    run = registry.shadow_runs("mlp")["mlp"]
    assert (run.version, run.share, run.until, run.set_by) == (2, 0.5, until, "bob") and run.active(time.time())
    assert not run.active(until + 1)
    with pytest.raises(ValueError, match="needs agreed"):
        registry.add_shadow_window("mlp", 2, {k: v for k, v in window().items() if k != "agreed"})
    registry.add_shadow_window("mlp", 2, window())
    registry.add_shadow_window("mlp", 2, window(start=1060.0, end=1120.0, last_error="x" * 5000))
    kept = registry.shadow_windows("mlp", 2)
    assert [w["start"] for w in kept] == [1000.0, 1060.0] and len(kept[1]["last_error"]) == 2000
    assert registry.shadow_windows("mlp", 2, since=1061.0) == kept[1:]
    assert registry.shadow_windows("mlp", 1) == []
    stopped = registry.stop_shadow("mlp", actor="carol", reason="enough")
    assert stopped.version == 2 and registry.shadow_runs() == {}
    assert registry.stop_shadow("mlp", actor="carol") is None
    with pytest.raises(LookupError):
        registry.stop_shadow("nope", actor="carol")
    events = [
        (e["kind"], e["actor"], e["version"], e["detail"]) for e in registry.events("mlp") if e["kind"].startswith("shadow")
    ]
    assert events == [
        ("shadow_started", "alice", 2, {"share": 0.2, "until": None, "replaces": None}),
        ("shadow_started", "bob", 2, {"share": 0.5, "until": until, "replaces": 2}),
        ("shadow_stopped", "carol", 2, {"reason": "enough", "share": 0.5}),
    ]
    assert len(registry.shadow_windows("mlp", 2)) == 2  # the evidence outlives the run


def test_the_evidence_sums_the_windows():
    summary = shadow_evidence([window(), window(start=1060.0, end=1120.0, agreed=10, baseline=3, last_error="boom")])
    assert (summary["compared"], summary["errors"], summary["dropped"], summary["windows"]) == (20, 2, 4, 2)
    assert summary["agreement"] == 19 / 20 and summary["baselines"] == [1, 3]
    assert (summary["first"], summary["last"]) == (1000.0, 1120.0)
    assert summary["outputs"] == {"output": {"max_abs": 0.5, "mean_abs": 0.1}}
    assert summary["shadow_ms_mean"] == 0.5 and summary["baseline_ms_mean"] == 0.4 and summary["shadow_ms_max"] == 0.9
    text = "\n".join(evidence_lines("mlp", 2, summary))
    assert "requests compared    20" in text and "95.00% of 20 rows" in text and "(last: boom)" in text
    assert evidence_lines("mlp", 2, shadow_evidence([]))[0].startswith("mlp version 2: no shadow evidence")


# -- the comparison ----------------------------------------------------------------------------------


def test_two_answers_are_compared_per_output_and_by_predicted_class():
    scores_a = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], dtype=np.float32)
    scores_b = np.array([[0.2, 0.8], [0.4, 0.6], [0.3, 0.7]], dtype=np.float32)
    labels = np.array([1, 0, 1], dtype=np.int64)
    diffs, classified, agreed, problem = compare_outputs(
        {"label": labels, "scores": scores_a}, {"label": labels, "scores": scores_b}, 3
    )
    assert problem is None and (classified, agreed) == (3, 3)  # the first output with a class decides: the labels
    assert diffs["label"] == (0.0, 0.0, 3)
    most, total, n = diffs["scores"]
    assert n == 6 and most == pytest.approx(0.4) and total == pytest.approx(0.1 + 0.1 + 0.4 + 0.4)
    _, classified, agreed, _ = compare_outputs({"scores": scores_a}, {"scores": scores_b}, 3)
    assert (classified, agreed) == (3, 2)  # argmax of row 1 moved
    assert compare_outputs({"y": labels}, {"z": labels}, 3)[3] == "the shadow has no output 'y'"
    assert "shape [3, 1] in the shadow, [3] in production" in compare_outputs({"y": labels}, {"y": labels[:, None]}, 3)[3]
    nan = np.array([[np.nan, 1.0]], dtype=np.float32)
    assert compare_outputs({"s": nan}, {"s": nan.copy()}, 1)[0]["s"][0] == 0.0  # NaN on both sides: no difference
    assert compare_outputs({"s": nan}, {"s": np.array([[0.0, 1.0]], np.float32)}, 1)[0]["s"][0] == np.inf
    assert predicted_class(np.zeros((3, 1), np.float32), 3) is None  # one score: a regression, no class
    assert predicted_class(np.array(["a", "b"]), 2).tolist() == [["a"], ["b"]]


def test_many_answers_compared_at_once_sum_to_the_answers_compared_one_by_one():
    rng = np.random.default_rng(5)

    def answer(rows: int, width: int) -> dict[str, np.ndarray]:
        return {"label": rng.integers(0, 3, rows), "scores": rng.normal(size=(rows, width)).astype(np.float32)}

    def one_by_one(pairs):
        most, total, n, classified, agreed = 0.0, 0.0, 0, 0, 0
        for a, b, r in pairs:
            d, c, g, _ = compare_outputs(a, b, r)
            most, total, n = max(most, d["scores"][0]), total + d["scores"][1], n + d["scores"][2]
            classified, agreed = classified + c, agreed + g
        return most, total, n, classified, agreed

    for widths in ([4] * 6, [4, 5, 4, 6]):  # stacked; inner shapes that differ: one by one
        pairs = [(answer(r, w), answer(r, w), r) for r, w in zip([1, 3, 2, 1, 4, 2], widths)]
        diffs, classified, agreed = _sum_pairs(pairs)
        most, total, n, c, g = one_by_one(pairs)
        assert diffs["scores"][0] == pytest.approx(most) and diffs["scores"][1] == pytest.approx(total)
        assert (diffs["scores"][2], classified, agreed) == (n, c, g)


# -- production's copy queue ---------------------------------------------------------------------------


def test_a_full_copy_queue_drops_and_counts_and_a_failed_send_counts_too():
    calls: list[tuple[int, int, int]] = []
    gate = asyncio.Event()
    fail = [True]

    async def send(version: int, copies: list[Copy], dropped: int) -> None:
        calls.append((version, len(copies), dropped))
        if fail[0]:
            fail[0] = False
            raise ConnectionError("shadow not there yet")
        await gate.wait()

    async def main() -> ShadowTap:
        tap = ShadowTap(3, 1.0, None, send, ShadowOptions(max_queue=2, batch=2))
        copy = Copy(b"{}", None, 1, {}, 1000)
        for _ in range(10):
            tap.offer(copy)  # never waits
        assert tap.queued == 2 and tap.dropped_total == 8
        await asyncio.sleep(1.3)  # the first send fails (2 copies, 8 dropped: all counted again), one retry later
        tap.offer(copy)
        await asyncio.sleep(0.1)
        gate.set()
        await asyncio.sleep(0.1)
        tap.close()
        return tap

    tap = asyncio.run(main())
    assert calls[0] == (3, 2, 8)
    # the byte bound counts production's outputs too, not only the request
    big = ShadowTap(3, 1.0, None, send, ShadowOptions(max_queue_bytes=4096))
    big.offer(Copy(b"{}", None, 1, {"y": np.zeros(1024, np.float32)}, 1000))
    assert (big.queued, big.dropped_total) == (0, 1)
    assert calls[1] == (3, 1, 10)  # what the failed call carried is reported with the next one
    assert tap.dropped_total == 10 and tap.sent_total == 1


def test_copies_queued_when_a_run_changes_go_to_its_shadow_or_are_counted(caplog):
    """A run that ends, or moves to another version, leaves copies queued: they are sent to the
    old version's shadow in one last pass, with the drops not yet reported; what that pass cannot
    send is counted as dropped, and not tried again, and the log says how many the shadow was
    not told of, and so does ``unreported`` (the hosting's counter). A run that changes only its
    share or end hands its copies to the new tap. A replica that stops counts what it let go."""
    calls: list[tuple[int, int, int]] = []
    unreported: list[tuple[int, int]] = []

    def count(version: int, copies: int) -> None:
        unreported.append((version, copies))

    gate = asyncio.Event()

    async def send(version: int, copies: list[Copy], dropped: int) -> None:
        calls.append((version, len(copies), dropped))
        await gate.wait()

    async def failing(version: int, copies: list[Copy], dropped: int) -> None:
        calls.append((version, len(copies), dropped))
        raise ConnectionError("the shadow is gone")

    copy = Copy(b"{}", None, 1, {}, 1000)

    async def main() -> None:
        # the run ends with five copies queued behind a send in progress, and two drops unreported
        tap = ShadowTap(3, 1.0, None, send, ShadowOptions(max_queue=6, batch=2, linger_s=0.0), count)
        for _ in range(8):
            tap.offer(copy)
        await asyncio.sleep(0.05)  # the first batch (2 copies, 2 drops) is being sent
        assert calls == [(3, 2, 2)] and tap.queued == 4
        tap.end()
        tap.offer(copy)  # an answer after the end: not queued, counted
        assert tap.queued == 4 and tap.dropped_total == 3
        gate.set()
        task = tap._task
        assert task is not None
        await asyncio.wait_for(task, 5)
        assert calls == [(3, 2, 2), (3, 2, 1), (3, 2, 0)]  # everything sent, the late drop reported
        assert (tap.sent_total, tap.queued) == (6, 0)
        assert unreported == []  # the shadow was told of every drop

        # the shadow is gone: one pass, its copies counted, no retry
        calls.clear()
        gone = ShadowTap(4, 1.0, None, failing, ShadowOptions(max_queue=6, batch=2, linger_s=0.0), count)
        for _ in range(5):
            gone.offer(copy)
        await asyncio.sleep(0.05)  # the first send failed: its task waits a second before trying again
        gone.end()
        task = gone._task
        assert task is not None
        await asyncio.wait_for(task, 5)
        assert calls == [(4, 2, 0), (4, 2, 2)]
        assert (gone.sent_total, gone.queued, gone.dropped_total) == (0, 0, 5)
        said = [r.getMessage() for r in caplog.records if "it was not told of" in r.getMessage()]
        assert said == ["shadow of version 4: 5 copies dropped that it was not told of (its run ended)"], said
        assert unreported == [(4, 5)]

        # the same version with another share: the new tap sends what the old one held, and the
        # old one ends once the send it has in flight is done
        calls.clear()
        gate.clear()
        old = ShadowTap(5, 1.0, None, send, ShadowOptions(max_queue=3, batch=1, linger_s=0.0))
        for _ in range(5):
            old.offer(copy)  # three queued, two dropped
        await asyncio.sleep(0.05)  # one copy is being sent (with the two drops), two wait
        new = ShadowTap(5, 0.5, None, send, ShadowOptions(max_queue=3, batch=1, linger_s=0.0))
        old.dropped = 1  # a drop since that send began, not reported yet
        new.take_over(old)
        assert (old.queued, new.queued, new.dropped) == (0, 2, 1)
        gate.set()
        for _ in range(100):
            if new.sent_total == 2 and old._task is not None and old._task.done():
                break
            await asyncio.sleep(0.01)
        assert calls[0] == (5, 1, 2) and sorted(calls[1:]) == [(5, 1, 0), (5, 1, 1)]
        assert (old.sent_total, new.sent_total, new.queued, old.dropped_total) == (1, 2, 0, 2)
        new.close()

        # a stopping replica lets its copies go, counted
        stopping = ShadowTap(6, 1.0, None, send, ShadowOptions(max_queue=8, batch=8, linger_s=1.0), count)
        for _ in range(3):
            stopping.offer(copy)
        stopping.close()
        assert (stopping.queued, stopping.dropped_total, stopping.sent_total) == (0, 3, 0)
        assert unreported == [(4, 5), (6, 3)]

        # a counter that fails is logged, and the replica goes on
        def broken(version: int, copies: int) -> None:
            raise OSError("metrics folder gone")

        odd = ShadowTap(7, 1.0, None, send, ShadowOptions(max_queue=8, batch=8, linger_s=1.0), broken)
        odd.offer(copy)
        odd.close()
        assert odd.dropped_total == 1

    with caplog.at_level(logging.INFO, logger="lockgate.server"):
        asyncio.run(main())
    assert any("counting unreported shadow copies failed: metrics folder gone" in r.getMessage() for r in caplog.records)


# -- the request path ----------------------------------------------------------------------------------


def test_production_traffic_is_copied_to_the_shadow_and_compared(tmp_path):
    registry = mlp_registry(f"sqlite:///{tmp_path}/registry.db", tmp_path)
    registry.start_shadow("mlp", 2, 1.0, actor="alice")
    config = ModelConfig.model_validate(registry.model_config("mlp"))
    shadow_service = ModelService("mlp", config, registry, only=2)
    assert set(shadow_service.served) == {2}
    comparer = ShadowComparer(
        shadow_service.served[2], 1 << 20, lambda row: registry.add_shadow_window("mlp", 2, row), window_s=3600
    )

    async def send(version: int, copies: list[Copy], dropped: int) -> None:
        assert version == 2
        await comparer.compare(copies, dropped)

    production = ModelService("mlp", config, registry, shadow_send=send)
    assert production.shadow is not None and production.shadow.version == 2
    app = ModelApp(production)
    rng = np.random.default_rng(7)
    inputs = rng.normal(size=(40, 64)).astype(np.float32)

    async def main() -> list[dict]:
        answers = []
        for row in inputs:
            body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": row.tolist()}]})
            r = await call(app, "POST", "/v2/models/mlp/infer", body.encode(), root_path="/v2/models/mlp")
            assert r.status == 200, r.body
            answers.append(r.json())
        # a request by version is not production's traffic: never copied
        r = await call(app, "POST", "/v2/models/mlp/versions/1/infer", body.encode(), root_path="/v2/models/mlp")
        assert r.status == 200
        for _ in range(200):
            if production.shadow.sent_total == len(inputs) and not production.shadow.queued:
                break
            await asyncio.sleep(0.01)
        await comparer.flush()
        return answers

    try:
        answers = asyncio.run(main())
    finally:
        production.close()
        shadow_service.close()
    assert {a["model_version"] for a in answers} == {"1"}  # clients get production's answer only
    direct = {}
    for seed in (0, 1):
        session = ort.InferenceSession(build_mlp(seed=seed).SerializeToString())
        direct[seed] = session.run(None, {"input": inputs})[0]
    got = np.array([a["outputs"][0]["data"] for a in answers], dtype=np.float32)
    assert np.array_equal(got, direct[0])
    (kept,) = registry.shadow_windows("mlp", 2)
    assert (kept["baseline"], kept["compared"], kept["errors"], kept["dropped"]) == (1, 40, 0, 0)
    agree = int((direct[0].argmax(axis=1) == direct[1].argmax(axis=1)).sum())
    assert (kept["classified"], kept["agreed"]) == (40, agree)
    (output,) = kept["outputs"].values()
    diff = np.abs(direct[0].astype(np.float64) - direct[1].astype(np.float64))
    assert output["elements"] == diff.size and output["max_abs"] == pytest.approx(diff.max(), rel=1e-6)
    assert output["sum_abs"] == pytest.approx(diff.sum(), rel=1e-6)
    assert kept["shadow_ms"] > 0 and kept["baseline_ms"] > 0


def test_a_shadow_that_fails_on_production_requests_is_evidence_not_a_crash(tmp_path):
    registry = mlp_registry(f"sqlite:///{tmp_path}/registry.db", tmp_path)
    config = ModelConfig.model_validate(registry.model_config("mlp"))
    service = ModelService("mlp", config, registry, only=2)
    rows: list[dict] = []
    comparer = ShadowComparer(service.served[2], 1 << 20, rows.append, window_s=3600)
    bad = Copy(json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1]}]}).encode(), None, 1, {}, 1)

    async def main() -> None:
        await comparer.compare([bad, bad], 3)
        await comparer.flush()

    try:
        asyncio.run(main())
    finally:
        service.close()
    (row,) = rows
    assert (row["compared"], row["errors"], row["dropped"]) == (0, 2, 3)
    assert "BadRequest" in row["last_error"] and "'x'" in row["last_error"]


# -- approval ------------------------------------------------------------------------------------------


def test_the_policy_can_ask_for_a_shadow_sample_before_approval(tmp_path):
    settings = Settings(
        f"sqlite:///{tmp_path}/registry.db",
        str(tmp_path / "artifacts"),
        "production",
        {"governance": {"min_shadow_requests": 25}},
        str(tmp_path / "home"),
        anonymous=True,
    )
    manager = build_manager(settings)
    try:
        registry, g = manager.registry(), manager.plugin("governance")
        for seed in (0, 1):
            onnx.save(build_mlp(seed=seed), str(tmp_path / f"mlp{seed}.onnx"))
            registry.register(tmp_path / f"mlp{seed}.onnx", "mlp", created_by="alice")
        assert g.decide("approve", "mlp", 1, actor="bob").state == "approved"  # nothing serves production yet: exempt
        registry.set_alias("mlp", "production", 1, actor="alice")
        with pytest.raises(GovernanceError, match=r"needs 25 requests compared in a shadow run .* it has 0") as e:
            g.decide("approve", "mlp", 2, actor="bob")
        assert e.value.status == 409
        registry.add_shadow_window("mlp", 2, window(compared=20))
        with pytest.raises(GovernanceError, match="it has 20"):
            g.decide("approve", "mlp", 2, actor="bob")
        registry.add_shadow_window("mlp", 2, window(compared=5))
        assert g.decide("approve", "mlp", 2, actor="bob").state == "approved"
        refused = [r for r in manager.plugin("audit").audit_log.records() if r["kind"] == "approve_refused"]
        assert len(refused) == 2 and "shadow run" in refused[0]["detail"]["reason"]
    finally:
        manager.plugin("audit").close()


def test_approve_shows_the_evidence_before_deciding(tmp_path, monkeypatch):
    from lockgate.server.cli import main

    monkeypatch.setenv("LOCKGATE_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    for seed in (0, 1):
        onnx.save(build_mlp(seed=seed), str(tmp_path / f"mlp{seed}.onnx"))
        result = runner.invoke(
            main, ["models", "register", "--name", "mlp", str(tmp_path / f"mlp{seed}.onnx")], env={"LOCKGATE_ACTOR": "alice"}
        )
        assert result.exit_code == 0, result.output
    registry = Registry(f"sqlite:///{tmp_path}/home/registry.db", tmp_path / "home" / "artifacts")
    registry.add_shadow_window("mlp", 2, window())
    result = runner.invoke(main, ["models", "approve", "mlp", "2"], env={"LOCKGATE_ACTOR": "bob"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("mlp version 2 shadowed production (version 1)")
    assert "requests compared    10" in result.output and lines[-1] == "mlp version 2 is approved (by bob)"
    result = runner.invoke(main, ["models", "evidence", "mlp", "2", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert (shown["compared"], shown["agreement"], shown["running"], len(shown["per_window"])) == (10, 0.9, False, 1)
    result = runner.invoke(
        main, ["models", "shadow", "mlp", "2", "--share", "0.25", "--until", "2h"], env={"LOCKGATE_ACTOR": "alice"}
    )
    assert result.exit_code == 0, result.output
    assert "mlp version 2 shadows production with 25% of its requests, until " in result.output
    run = registry.shadow_runs("mlp")["mlp"]
    assert run.share == 0.25 and abs(run.until - (time.time() + 7200)) < 60
    result = runner.invoke(main, ["models", "evidence", "mlp", "2"])
    assert "the run goes on: 25% of production's requests" in result.output
    result = runner.invoke(main, ["models", "shadow", "mlp", "--stop"], env={"LOCKGATE_ACTOR": "alice"})
    assert result.exit_code == 0 and "mlp: shadow of version 2 stopped" in result.output
    result = runner.invoke(main, ["models", "shadow", "mlp", "9"], env={"LOCKGATE_ACTOR": "alice"})
    assert result.exit_code != 0 and "version 9" in result.output, result.output


# -- the control replica's part -------------------------------------------------------------------------


def test_the_control_replica_follows_the_registrys_shadow_runs(tmp_path, monkeypatch):
    from lockgate.server.hosting import shadow as hosting
    from lockgate.server.serving.settings import LockgateSettings

    registry = mlp_registry(f"sqlite:///{tmp_path}/registry.db", tmp_path)
    attempts: list[str] = []
    deleted: list[str] = []
    audited: list[tuple] = []
    failing = [False]

    def run(app, name: str, route_prefix: str | None) -> None:
        assert route_prefix is None  # no route: no client reaches a shadow
        attempts.append(name)
        if failing[0]:
            raise RuntimeError("the replica failed: version 2 does not load")

    monkeypatch.setattr(hosting.serve, "run", run)
    monkeypatch.setattr(hosting.serve, "delete", deleted.append)
    served = {"mlp"}
    settings = LockgateSettings.from_env(home=str(tmp_path / "home"))
    follower = hosting.ShadowFollower(registry, settings, lambda: served, lambda *a, **k: audited.append((a, k)))

    def step() -> None:
        asyncio.run(follower.step())

    step()
    assert attempts == [] and follower.deployed == {}
    registry.start_shadow("mlp", 2, 0.5, actor="alice")
    step()
    step()
    assert attempts == ["lockgate-shadow-mlp"] and follower.deployed == {"mlp": 2}  # deployed once
    registry.stop_shadow("mlp", actor="alice")
    step()
    assert deleted == ["lockgate-shadow-mlp"] and follower.deployed == {}
    served.clear()  # a model this server does not serve (unloaded, or in a pool): no shadow
    registry.start_shadow("mlp", 2, 0.5, time.time() + 0.5, actor="alice")
    step()
    assert len(attempts) == 1
    served.add("mlp")
    step()
    assert len(attempts) == 2 and follower.deployed == {"mlp": 2}
    time.sleep(0.6)
    step()  # the run's end came: the follower stops it, and its application goes
    assert registry.shadow_runs() == {} and deleted == ["lockgate-shadow-mlp"] * 2
    stopped = [e for e in registry.events("mlp") if e["kind"] == "shadow_stopped"][-1]
    assert (stopped["actor"], stopped["detail"]["reason"]) == ("lockgate", "the run's end was reached")
    failing[0] = True
    registry.start_shadow("mlp", 2, 0.5, actor="alice")
    step()
    step()  # not tried again at once
    assert len(attempts) == 3 and follower.deployed == {}
    ((args, kwargs),) = audited
    assert args == ("shadow_failed", "lockgate") and kwargs["version"] == 2 and "does not load" in kwargs["detail"]["reason"]
    monkeypatch.setattr(hosting, "RETRY_FAILED_S", 0.0)
    step()
    assert len(attempts) == 4 and len(audited) == 1  # tried again; said once
    failing[0] = False
    step()
    assert follower.deployed == {"mlp": 2} and follower.failed == {}
