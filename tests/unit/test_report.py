"""`lockgate report`: SLO figures from the audit log, drift, lead time, pending approvals; the
HTML page opened in a real headless browser (Debian's chromium) with its plots rendered."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from lockgate.plugins import InferenceEvent
from lockgate.server.cli import main
from lockgate.server.tools.demo import build_mlp

SLO = """
monitoring:
  slo: {latency_percentile: 99, latency_ms: 50, error_rate: 0.01, availability: 0.999}
  slos:
    iris: {latency_percentile: 95, latency_ms: 90, error_rate: 0.05, availability: 0.95}
"""


@pytest.fixture
def home(tmp_path, monkeypatch, demo_repo):
    """A home with the demo repository registered, a pending mlp version 2, and a period of traffic."""
    from lockgate.server.serving.settings import LockgateSettings
    from lockgate.server.tools.repository import announce_imports, import_repository

    monkeypatch.setenv("LOCKGATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LOCKGATE_ACTOR", "alice")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "lockgate.yaml").write_text(SLO)
    manager = LockgateSettings.from_env(anonymous=True).manager()
    registry = manager.registry()
    import_repository(demo_repo, registry, actor="alice", before_alias=announce_imports(manager, "tester"))
    onnx.save(build_mlp(seed=1), str(tmp_path / "mlp2.onnx"))
    registry.register(tmp_path / "mlp2.onnx", "mlp", created_by="alice")
    now = time.time()
    statuses = [200] * 90 + [503] * 6 + [500] * 4  # iris: 4 % failed, 94 % available
    events = [
        InferenceEvent(f"r{i}", "iris", 1, "app", status, (i + 1) / 1000.0, 1, started_at=now - 3000 + 30 * i)
        for i, status in enumerate(statuses)
    ] + [InferenceEvent(f"m{i}", "mlp", 1, "app", 200, 0.002, 1, started_at=now - 1000 + i) for i in range(50)]

    async def record() -> None:
        await asyncio.gather(*(manager.record_inference(e) for e in events))

    asyncio.run(record())
    manager.audit("drift_detected", "lockgate", model="mlp", version=1, detail={"max_psi": 0.31, "threshold": 0.2})
    manager.plugin("audit").close()
    return tmp_path


def run(*args):
    result = CliRunner().invoke(main, ["report", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def columns(output: str, model: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.startswith(model + " "))
    return re.split(r"\s{2,}", line.strip())


def test_the_table_gives_each_models_slo_figures(home):
    out = run("--since", "2h", "--html", str(home / "r.html"))
    iris = dict(
        zip(
            [
                "model",
                "requests",
                "p50",
                "p95",
                "p99",
                "slo",
                "errors",
                "availability",
                "budget",
                "drift",
                "versions",
                "lead",
                "pending",
            ],
            columns(out, "iris"),
        )
    )
    answered = np.arange(1, 91, dtype=float)  # latencies (ms) of the 90 answered requests
    assert iris["requests"] == "100"
    assert float(iris["p50"]) == pytest.approx(np.percentile(answered, 50), abs=0.01)
    assert float(iris["p99"]) == pytest.approx(np.percentile(answered, 99), abs=0.01)
    assert iris["slo"] == "p95<=90ms met"
    assert iris["errors"] == "4.000%" and iris["availability"] == "94.000%"
    assert iris["budget"] == "120%"  # 6 % refused of the 5 % allowed
    assert iris["versions"] == "1" and iris["drift"] == "-" and iris["pending"] == "-"
    mlp = columns(out, "mlp")
    assert mlp[1] == "50" and mlp[5] == "p99<=50ms met" and mlp[9] == "DRIFT" and mlp[12] == "2"
    assert re.fullmatch(r"\d+ s|\d+\.\d (min|h)", mlp[11])  # registration -> production of version 1
    assert "HTML report:" in out


def test_a_period_without_traffic_and_a_model_filter(home):
    out = run("--since", "55m", "--until", "31m", "--model", "iris", "--html", str(home / "r.html"))
    assert columns(out, "iris")[1] == "39" and not [line for line in out.splitlines() if line.startswith("mlp ")]
    quiet = run("--since", "3h", "--until", "2h", "--model", "iris", "--html", str(home / "q.html"))
    assert columns(quiet, "iris")[1:5] == ["0", "-", "-", "-"]
    assert "no requests in this period" in (home / "q.html").read_text()
    result = CliRunner().invoke(main, ["report", "--model", "ghost"], catch_exceptions=False)
    assert result.exit_code == 2 and "unknown model(s) ghost" in result.output


@pytest.mark.slow
def test_the_html_report_renders_its_plots_in_a_headless_browser(home):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
    page = home / "report.html"
    run("--since", "2h", "--html", str(page))
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=5000"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    assert 'data-plots="2"' in body and 'data-rendered="2"' in body, body  # both plots decoded
    shot = home / "shot.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1200,1400", page.as_uri()], capture_output=True, timeout=120, check=True
    )
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))[..., :3]
    colours = {tuple(p) for p in (pixels[::4, ::4].reshape(-1, 3) * 255).astype(int)}
    assert len(colours) > 50, "the page looks blank"  # text, table lines and the plots' colours
    plot_blue = np.all(np.abs(pixels - np.array([0x1F, 0x77, 0xB4]) / 255) < 0.08, axis=-1)
    assert plot_blue.sum() > 200, "the traffic line of the first plot is not on screen"


def test_the_report_without_its_extra_names_the_extra(home, monkeypatch):
    """matplotlib is the [report] extra: without it `lockgate report` says what to install, and
    writes nothing."""
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed: importing it raises
    result = CliRunner().invoke(main, ["report", "--since", "2h", "--html", str(home / "r.html")])
    assert result.exit_code == 2, result.output
    assert "the HTML report's plots needs the package 'matplotlib'" in result.output
    assert "pip install 'lockgate[report]'" in result.output
    assert not (home / "r.html").exists()


def test_the_report_shows_the_evidence_of_shadow_runs_in_the_period(home):
    from lockgate.server.serving.settings import LockgateSettings

    registry = LockgateSettings.from_env(anonymous=True).manager().registry()
    now = time.time()
    for i, (compared, agreed) in enumerate([(30, 29), (50, 50)]):
        registry.add_shadow_window(
            "mlp",
            2,
            {
                "baseline": 1,
                "start": now - 1800 + 60 * i,
                "end": now - 1740 + 60 * i,
                "compared": compared,
                "errors": 0,
                "dropped": 1,
                "classified": compared,
                "agreed": agreed,
                "shadow_ms": 0.3 * compared,
                "baseline_ms": 0.2 * compared,
                "shadow_ms_max": 0.5,
                "baseline_ms_max": 0.4,
                "outputs": {"output": {"max_abs": 0.25, "sum_abs": 1.0 * compared, "elements": 10 * compared}},
                "last_error": None,
            },
        )
    registry.add_shadow_window("mlp", 2, {**registry.shadow_windows("mlp", 2)[0], "start": now - 90000, "end": now - 89940})
    page = home / "report.html"
    output = run("--since", "2h", "--html", str(page))
    assert "mlp version 2 shadowed production (version 1)" in output
    assert "requests compared    80" in output and "98.75% of 80 rows" in output  # the window a day ago is not in the period
    html = page.read_text()
    section = re.search(r"<pre class='evidence' id='shadow-mlp-2'>(.*?)</pre>", html, re.S)
    assert section is not None and "copies dropped       2" in section.group(1)
    assert "alt='mlp version 2 shadow evidence' src='data:image/png;base64," in html
