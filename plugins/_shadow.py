"""A shadow run's evidence: its kept windows summed up, and shown as text.

The windows are the rows of a registry's ``shadow_windows``; ``lockgate models evidence``,
``lockgate models approve``, the governance policy's minimum sample and ``lockgate report`` all
read them through ``shadow_evidence``, so they never disagree on a figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ._commands import iso_time

__all__ = ["evidence_lines", "shadow_evidence"]


def shadow_evidence(windows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The sum of a version's shadow windows: copies compared, failed and dropped; the share of
    rows whose predicted class agrees with production's (None: no row had a class on both
    sides); per output the largest and the mean absolute difference; the mean model time of
    each side (queue and compute, ms) and the largest; the production versions compared with."""
    out: dict[str, Any] = {
        "windows": 0,
        "first": None,
        "last": None,
        "compared": 0,
        "errors": 0,
        "dropped": 0,
        "classified": 0,
        "agreed": 0,
        "baselines": [],
        "last_error": None,
    }
    outputs: dict[str, dict[str, float]] = {}
    sums = {"shadow_ms": 0.0, "baseline_ms": 0.0, "shadow_ms_max": 0.0, "baseline_ms_max": 0.0}
    baselines: set[int] = set()
    for w in windows:
        out["windows"] += 1
        out["first"] = w["start"] if out["first"] is None else min(out["first"], w["start"])
        out["last"] = w["end"] if out["last"] is None else max(out["last"], w["end"])
        for key in ("compared", "errors", "dropped", "classified", "agreed"):
            out[key] += int(w[key])
        sums["shadow_ms"] += float(w["shadow_ms"])
        sums["baseline_ms"] += float(w["baseline_ms"])
        sums["shadow_ms_max"] = max(sums["shadow_ms_max"], float(w["shadow_ms_max"]))
        sums["baseline_ms_max"] = max(sums["baseline_ms_max"], float(w["baseline_ms_max"]))
        baselines.add(int(w["baseline"]))
        if w.get("last_error"):
            out["last_error"] = w["last_error"]
        for name, o in (w.get("outputs") or {}).items():
            seen = outputs.setdefault(name, {"max_abs": 0.0, "sum_abs": 0.0, "elements": 0})
            seen["max_abs"] = max(seen["max_abs"], float(o["max_abs"]))
            seen["sum_abs"] += float(o["sum_abs"])
            seen["elements"] += int(o["elements"])
    n = out["compared"]
    out["baselines"] = sorted(baselines)
    out["agreement"] = out["agreed"] / out["classified"] if out["classified"] else None
    out["shadow_ms_mean"] = sums["shadow_ms"] / n if n else None
    out["baseline_ms_mean"] = sums["baseline_ms"] / n if n else None
    out["shadow_ms_max"], out["baseline_ms_max"] = sums["shadow_ms_max"], sums["baseline_ms_max"]
    out["outputs"] = {
        name: {"max_abs": o["max_abs"], "mean_abs": o["sum_abs"] / o["elements"] if o["elements"] else 0.0}
        for name, o in sorted(outputs.items())
    }
    return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"


def evidence_lines(name: str, version: int, evidence: Mapping[str, Any]) -> list[str]:
    """The evidence as an approver reads it, one fact per line."""
    if not evidence["windows"]:
        return [f"{name} version {version}: no shadow evidence (lockgate models shadow {name} {version} --share 0.1)"]
    against = ", ".join(str(v) for v in evidence["baselines"])
    agreement = evidence["agreement"]
    lines = [
        f"{name} version {version} shadowed production (version {against}) "
        f"from {iso_time(evidence['first'])} to {iso_time(evidence['last'])}, {evidence['windows']} window(s):",
        f"  requests compared    {evidence['compared']}",
        f"  shadow errors        {evidence['errors']}" + (f" (last: {evidence['last_error']})" if evidence["last_error"] else ""),
        f"  copies dropped       {evidence['dropped']} (production's copy queue was full)",
        "  class agreement      "
        + ("- (no output with a predicted class)" if agreement is None else f"{agreement:.2%} of {evidence['classified']} rows"),
    ]
    for output, o in evidence["outputs"].items():
        lines.append(f"  output {output:<13} max |diff| {o['max_abs']:.6g}, mean |diff| {o['mean_abs']:.6g}")
    lines.append(
        f"  model time (queue + compute): shadow mean {_ms(evidence['shadow_ms_mean'])}, max {_ms(evidence['shadow_ms_max'])}; "
        f"production mean {_ms(evidence['baseline_ms_mean'])}, max {_ms(evidence['baseline_ms_max'])}"
    )
    return lines
