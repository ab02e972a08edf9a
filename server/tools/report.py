"""The SLO and KPI report: what the audit log, the registry and the approvals say about a period.

Every inference request is in the audit log (status, latency, version), so the report reads
the record of what happened rather than a metrics store that may have been reset. Per model:
traffic, latency percentiles of answered requests, error rate (500, 504: the server failed),
availability (not refused with 503), the error budget those used, drift crossings, versions
served, deployment lead time (registration to production alias), approvals pending, and the
evidence of shadow runs (the registry's windows).
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from lockgate.plugins import ServiceLevel
from lockgate.plugins.shared import evidence_lines, shadow_evidence

from ..errors import require_extra

__all__ = ["ModelReport", "Report", "gather", "render_html", "render_text"]

_FAILED = (500, 504)


@dataclass
class ModelReport:
    name: str
    slo: ServiceLevel
    at: np.ndarray  # epoch seconds of each request
    status: np.ndarray
    latency_ms: np.ndarray
    versions: dict[int, int] = field(default_factory=dict)  # version -> requests
    aliases: dict[str, int] = field(default_factory=dict)
    drift: list[dict[str, Any]] = field(default_factory=list)  # drift_detected / drift_cleared records
    lead_times_s: list[tuple[int, float]] = field(default_factory=list)  # (version, registration -> production)
    pending: list[int] = field(default_factory=list)
    # With more than one version served in the period (a canary, a move): the same figures per version.
    by_version: list[ModelReport] = field(default_factory=list)
    # Shadow runs in the period: version -> its windows (the registry's shadow_windows)
    shadows: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return int(self.status.size)

    def _share(self, codes: tuple[int, ...]) -> float:
        return float(np.isin(self.status, codes).mean()) if self.status.size else 0.0

    @property
    def error_rate(self) -> float:
        return self._share(_FAILED)

    @property
    def availability(self) -> float:
        return 1.0 - self._share((503,))

    def percentile(self, q: float) -> float | None:
        ok = self.latency_ms[(self.status >= 200) & (self.status < 300)]
        return float(np.percentile(ok, q)) if ok.size else None

    @property
    def latency_met(self) -> bool | None:
        p = self.percentile(self.slo.latency_percentile)
        return None if p is None else p <= self.slo.latency_ms

    @property
    def budget_used(self) -> float:
        """Share of the period's error budget spent: failures and refusals against what the
        error-rate and availability objectives allow (the larger of the two)."""
        if not self.requests:
            return 0.0
        spent = []
        for observed, allowed in ((self.error_rate, self.slo.error_rate), (1.0 - self.availability, 1.0 - self.slo.availability)):
            spent.append(math.inf if allowed == 0 and observed > 0 else (observed / allowed if allowed else 0.0))
        return max(spent)

    @property
    def drifting(self) -> bool:
        return bool(self.drift) and self.drift[-1]["kind"] == "drift_detected"


@dataclass
class Report:
    since: float
    until: float
    models: list[ModelReport]


def gather(manager: Any, since: float, until: float | None = None, models: list[str] | None = None) -> Report:
    """Read the audit log, the registry and the approvals for ``since``..``until``, each through
    its hook (``lockgate_audit_records``, ``lockgate_approval_states``, ``lockgate_service_level``)."""
    until = until or time.time()

    def records(kind: str) -> Iterable[Mapping[str, Any]]:
        found = manager.provide("lockgate_audit_records", since=since, until=until, kind=kind, model=None)
        if found is None:
            raise LookupError("the report reads the audit log, and no plugin keeps one (is the built-in 'audit' plugin blocked?)")
        return found

    registry = manager.registry()
    names = models or registry.list_models()
    rows: dict[str, list[tuple[float, int, float, int]]] = defaultdict(list)
    drift: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records("infer"):
        if record.get("model") in names:
            detail = record.get("detail", {})
            rows[record["model"]].append(
                (record["at"], int(detail.get("status", 0)), float(detail.get("latency_ms", 0.0)), record.get("version") or 0)
            )
    crossings = [dict(r) for kind in ("drift_detected", "drift_cleared") for r in records(kind)]
    for record in sorted(crossings, key=lambda r: r["seq"]):
        if record.get("model") in names:
            drift[record["model"]].append(record)
    out = []
    for name in names:
        data = np.array(rows[name], dtype=np.float64).reshape(-1, 4)
        slo = manager.provide("lockgate_service_level", model=name) or ServiceLevel()
        report = ModelReport(name, slo, data[:, 0], data[:, 1].astype(int), data[:, 2], drift=drift[name])
        versions, counts = np.unique(data[:, 3].astype(int), return_counts=True)
        report.versions = {int(v): int(c) for v, c in zip(versions, counts) if v}
        if len(report.versions) > 1:
            for v in sorted(report.versions):
                part = data[data[:, 3].astype(int) == v]
                report.by_version.append(
                    ModelReport(f"  version {v}", slo, part[:, 0], part[:, 1].astype(int), part[:, 2], versions={v: len(part)})
                )
        report.aliases = registry.aliases(name)
        history = registry.alias_history(name, manager.settings.default_alias)
        versions_of = registry.versions(name)
        for record in versions_of:
            first = next((h["set_at"] for h in history if h["version"] == record.version), None)
            if first is not None and since <= first <= until:
                report.lead_times_s.append((record.version, first - record.created_at))
        read_shadows = getattr(registry, "shadow_windows", None)
        if read_shadows is not None:
            for window in read_shadows(name, since=since, until=until):
                report.shadows.setdefault(window["version"], []).append(window)
        states = manager.provide("lockgate_approval_states", model=name)
        if states is not None:
            report.pending = [r.version for r in versions_of if states.get(r.version, "pending") == "pending"]
        out.append(report)
    return Report(since, until, out)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


def _row(m: ModelReport) -> list[str]:
    met = {None: "-", True: "met", False: "MISSED"}[m.latency_met]
    lead = np.median([s for _, s in m.lead_times_s]) if m.lead_times_s else None
    return [
        m.name,
        str(m.requests),
        _ms(m.percentile(50)),
        _ms(m.percentile(95)),
        _ms(m.percentile(99)),
        f"p{m.slo.latency_percentile:g}<={m.slo.latency_ms:g}ms {met}",
        f"{100 * m.error_rate:.3f}%",
        f"{100 * m.availability:.3f}%",
        f"{100 * m.budget_used:.0f}%",
        "DRIFT" if m.drifting else ("ok" if m.drift else "-"),
        ",".join(str(v) for v in sorted(m.versions)) or "-",
        "-" if lead is None else _duration(float(lead)),
        ",".join(map(str, m.pending)) or "-",
    ]


HEADER = [
    "model",
    "requests",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "latency SLO",
    "errors",
    "availability",
    "budget",
    "drift",
    "versions",
    "lead time",
    "pending",
]


def render_text(report: Report) -> str:
    rows = [HEADER] + [_row(r) for m in report.models for r in (m, *m.by_version)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = [f"lockgate report {_iso(report.since)} .. {_iso(report.until)}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for m in report.models:
        for version, windows in sorted(m.shadows.items()):
            lines += evidence_lines(m.name, version, shadow_evidence(windows))
    return "\n".join(lines)


def _series(m: ModelReport, since: float, until: float) -> dict[str, np.ndarray]:
    span = max(until - since, 60.0)
    step = max(60.0, span / 120)
    edges = np.arange(since, until + step, step)
    idx = np.clip(np.digitize(m.at, edges) - 1, 0, len(edges) - 2) if m.at.size else np.array([], dtype=int)
    n = len(edges) - 1
    traffic = np.bincount(idx, minlength=n)[:n] / step
    pct = {q: np.full(n, np.nan) for q in (50, 95, 99)}
    errors = np.full(n, np.nan)
    ok = (m.status >= 200) & (m.status < 300)
    for b in np.unique(idx):
        sel = idx == b
        lat = m.latency_ms[sel & ok]
        if lat.size:
            for q in pct:
                pct[q][b] = np.percentile(lat, q)
        errors[b] = np.isin(m.status[sel], _FAILED).mean() * 100
    # error budget spent, cumulative over the period, in % of what the objectives allow
    bad = np.isin(m.status, _FAILED).astype(float) / max(m.slo.error_rate, 1e-12)
    refused = (m.status == 503).astype(float) / max(1.0 - m.slo.availability, 1e-12)
    burn = (
        np.maximum(np.cumsum(bad), np.cumsum(refused)) / np.arange(1, m.status.size + 1) * 100 if m.status.size else np.array([])
    )
    return {"t": edges[:-1], "traffic": traffic, **{f"p{q}": v for q, v in pct.items()}, "errors": errors, "burn": burn}


def _pyplot() -> Any:
    """matplotlib's pyplot, drawing off screen (the [report] extra)."""
    matplotlib = require_extra("matplotlib", "report", "the HTML report's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any, axes: Iterable[Any], title: str) -> str:
    """A figure of time series as a base64 PNG: hours and minutes on each x axis, a grid, a title."""
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plot(m: ModelReport, since: float, until: float) -> str:
    plt = _pyplot()
    s = _series(m, since, until)
    t = [datetime.fromtimestamp(x, timezone.utc) for x in s["t"]]
    fig, axes = plt.subplots(2, 2, figsize=(11, 6), dpi=90)
    (a, b), (c, d) = axes
    a.plot(t, s["traffic"], color="#1f77b4")
    a.set_title("traffic (requests/s)")
    for q, color in (("p50", "#2ca02c"), ("p95", "#ff7f0e"), ("p99", "#d62728")):
        b.plot(t, s[q], label=q, color=color)
    b.axhline(m.slo.latency_ms, color="black", linestyle="--", linewidth=1, label=f"SLO p{m.slo.latency_percentile:g}")
    b.set_title("latency of answered requests (ms)")
    b.legend(loc="upper right", fontsize=8)
    c.plot(t, s["errors"], color="#d62728")
    c.axhline(100 * m.slo.error_rate, color="black", linestyle="--", linewidth=1)
    c.set_title("error rate (500/504, %)")
    d.plot([datetime.fromtimestamp(x, timezone.utc) for x in m.at], s["burn"], color="#9467bd")
    d.axhline(100, color="black", linestyle="--", linewidth=1)
    d.set_title("error budget spent (cumulative, %)")
    return _png(fig, (a, b, c, d), f"model {m.name}")


def _shadow_plot(name: str, version: int, windows: list[dict[str, Any]]) -> str:
    """A shadow run's windows: requests compared, class agreement, model time of each side,
    largest difference per output."""
    plt = _pyplot()
    t = [datetime.fromtimestamp(w["start"], timezone.utc) for w in windows]
    n = np.array([max(w["compared"], 1) for w in windows], dtype=float)
    fig, axes = plt.subplots(2, 2, figsize=(11, 6), dpi=90)
    (a, b), (c, d) = axes
    a.plot(t, [w["compared"] for w in windows], marker="o", label="compared", color="#1f77b4")
    a.plot(t, [w["errors"] for w in windows], marker="x", label="shadow errors", color="#d62728")
    a.plot(t, [w["dropped"] for w in windows], marker=".", label="dropped", color="#7f7f7f")
    a.set_title("copies per window")
    a.legend(loc="upper right", fontsize=8)
    agreement = [100 * w["agreed"] / w["classified"] if w["classified"] else np.nan for w in windows]
    b.plot(t, agreement, marker="o", color="#2ca02c")
    b.set_ylim(min([x for x in agreement if x == x] + [90.0]) - 1, 100.5)
    b.set_title("predicted class agrees with production (%)")
    c.plot(t, np.array([w["baseline_ms"] for w in windows]) / n, marker="o", label="production", color="#1f77b4")
    c.plot(t, np.array([w["shadow_ms"] for w in windows]) / n, marker="o", label=f"version {version}", color="#ff7f0e")
    c.set_title("mean model time: queue + compute (ms)")
    c.legend(loc="upper right", fontsize=8)
    for output in sorted({o for w in windows for o in (w.get("outputs") or {})}):
        d.plot(t, [(w.get("outputs") or {}).get(output, {}).get("max_abs", np.nan) for w in windows], marker="o", label=output)
    d.set_yscale("symlog", linthresh=1e-7)
    d.set_title("largest |difference| per output")
    d.legend(loc="upper right", fontsize=8)
    return _png(fig, (a, b, c, d), f"model {name}: shadow of version {version}")


def _shadow_section(m: ModelReport) -> str:
    e = html.escape
    parts = ["<h3>shadow runs</h3>"]
    for version, windows in sorted(m.shadows.items()):
        lines = evidence_lines(m.name, version, shadow_evidence(windows))
        parts.append(f"<pre class='evidence' id='shadow-{e(m.name)}-{version}'>{e(chr(10).join(lines))}</pre>")
        parts.append(
            f"<img class='plot' alt='{e(m.name)} version {version} shadow evidence' "
            f"src='data:image/png;base64,{_shadow_plot(m.name, version, windows)}'>"
        )
    return "".join(parts)


def render_html(report: Report) -> str:
    """One self-contained page: the table, then per model its plots, drift, versions, lead times."""
    e = html.escape
    cells = "".join(f"<th>{e(h)}</th>" for h in HEADER)
    body = [f"<table id='summary'><tr>{cells}</tr>"]
    for m in report.models:
        for r in (m, *m.by_version):
            body.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in _row(r)) + "</tr>")
    body.append("</table>")
    for m in report.models:
        body.append(f"<section class='model' id='model-{e(m.name)}'><h2>{e(m.name)}</h2>")
        if m.requests:
            body.append(
                f"<img class='plot' alt='{e(m.name)} traffic, latency, errors, budget' src='data:image/png;base64,{_plot(m, report.since, report.until)}'>"
            )
        else:
            body.append("<p>no requests in this period</p>")
        aliases = ", ".join(f"{a} -> {v}" for a, v in sorted(m.aliases.items())) or "none"
        served = ", ".join(f"version {v}: {n} requests" for v, n in sorted(m.versions.items())) or "none"
        body.append(f"<p>aliases now: {e(aliases)}; served: {e(served)}</p>")
        if m.drift:
            items = "".join(
                f"<li>{e(_iso(d['at']))} {e(d['kind'])} version {d.get('version')}: max PSI {d['detail'].get('max_psi')}</li>"
                for d in m.drift
            )
            body.append(f"<h3>drift</h3><ul>{items}</ul>")
        if m.lead_times_s:
            items = "".join(f"<li>version {v}: {e(_duration(s))} from registration to production</li>" for v, s in m.lead_times_s)
            body.append(f"<h3>deployment lead time</h3><ul>{items}</ul>")
        if m.shadows:
            body.append(_shadow_section(m))
        if m.pending:
            body.append(f"<p>approvals pending: versions {e(', '.join(map(str, m.pending)))}</p>")
        body.append("</section>")
    # The page marks itself once every plot has decoded (a headless browser reads it back).
    script = (
        "<script>window.addEventListener('load',()=>{const i=[...document.images];"
        "document.body.dataset.plots=i.length;document.body.dataset.rendered=i.filter(x=>x.complete&&x.naturalWidth>0).length;});</script>"
    )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
        "font-size:13px}img.plot{max-width:100%}section{margin-top:2em}"
    )
    title = f"lockgate report {_iso(report.since)} .. {_iso(report.until)}"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{style}</style></head>"
        f"<body><h1>{e(title)}</h1>{''.join(body)}{script}</body></html>\n"
    )
