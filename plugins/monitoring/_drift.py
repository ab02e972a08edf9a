"""Drift statistics: a baseline from a reference sample, and a window compared with it.

Numeric features keep quantile bins (edges and the reference's share in each) and a sorted
subsample for the Kolmogorov-Smirnov test; categorical features (integer, boolean and string
inputs, and the predicted class of each classifier output) keep their frequencies. A window
is compared feature by feature: PSI and KS for numeric ones, PSI, chi-square and
Jensen-Shannon for categorical ones.

A feature is one column of a ``[batch, n]`` input (``x[3]``), or a ``[batch]`` input itself.
Inputs with more than ``MAX_FEATURES`` values per row (images, sequences) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MAX_FEATURES", "FeatureDrift", "build_baseline", "columns", "compare", "ks_2samp", "output_columns", "prepare", "psi"]

MAX_FEATURES = 256
KS_SAMPLE = 2000
_EPS = 1e-4


def columns(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Feature name -> one value per row, for every input drift can follow."""
    out: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        a = np.asarray(array)
        if a.ndim == 1:
            out[name] = a
        elif a.ndim >= 2 and int(np.prod(a.shape[1:])) <= MAX_FEATURES:
            flat = a.reshape(a.shape[0], -1)
            for i in range(flat.shape[1]):
                out[f"{name}[{i}]"] = flat[:, i]
    return out


def output_columns(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Predicted class per row of each classifier output (``[batch, classes]`` scores: the
    argmax; ``[batch]`` integer labels: as they are), named ``<output>:class``."""
    out: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        a = np.asarray(array)
        if a.ndim == 2 and a.shape[1] > 1 and a.dtype.kind == "f":
            out[f"{name}:class"] = np.argmax(a, axis=1)
        elif a.ndim == 1 and a.dtype.kind in "iub":
            out[f"{name}:class"] = a
    return out


def _categorical(values: np.ndarray) -> bool:
    return values.dtype.kind in "iubUSO"


def _numeric_baseline(values: np.ndarray, bins: int) -> dict[str, Any]:
    v = values.astype(np.float64)
    v = v[np.isfinite(v)]
    edges = np.unique(np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1])) if v.size else np.array([])
    counts = np.bincount(np.searchsorted(edges, v, side="right"), minlength=edges.size + 1)
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(v, KS_SAMPLE, replace=False) if v.size > KS_SAMPLE else v)
    return {
        "kind": "numeric",
        "edges": edges.tolist(),
        "expected": (counts / max(v.size, 1)).tolist(),
        "sample": sample.tolist(),
        "mean": float(v.mean()) if v.size else 0.0,
    }


def _categorical_baseline(values: np.ndarray) -> dict[str, Any]:
    keys, counts = np.unique(values.astype(str), return_counts=True)
    return {"kind": "categorical", "frequencies": {str(k): float(c / counts.sum()) for k, c in zip(keys, counts)}}


def build_baseline(
    inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray] | None = None, bins: int = 10
) -> dict[str, Any]:
    """The baseline of a reference sample: inputs (and the model's outputs on them) by name."""
    features = {}
    for name, values in columns(inputs).items():
        features[name] = _categorical_baseline(values) if _categorical(values) else _numeric_baseline(values, bins)
    for name, values in output_columns(outputs or {}).items():
        features[name] = _categorical_baseline(values)
    rows = len(next(iter(inputs.values()))) if inputs else 0
    return {"rows": int(rows), "bins": bins, "features": features}


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two distributions over the same bins."""
    e = np.clip(expected, _EPS, None)
    a = np.clip(actual, _EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """One feature of one window against the baseline. ``pvalue`` is the KS test's (numeric)
    or the chi-square test's (categorical); ``js`` the Jensen-Shannon divergence (base 2,
    0..1), categorical features only."""

    feature: str
    kind: str
    psi: float
    statistic: float
    pvalue: float
    js: float | None = None


def ks_2samp(window: np.ndarray, reference_sorted: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and its asymptotic p-value (Kolmogorov's
    distribution; windows and samples are hundreds of values or more). A few numpy calls:
    scipy.stats.ks_2samp costs about 1.4 ms per feature here, mostly argument handling."""
    from scipy.special import kolmogorov

    w = np.sort(window)
    n, m = w.size, reference_sorted.size
    pooled = np.concatenate([w, reference_sorted])
    d = float(
        np.max(np.abs(np.searchsorted(w, pooled, side="right") / n - np.searchsorted(reference_sorted, pooled, side="right") / m))
    )
    return d, float(kolmogorov(d * math.sqrt(n * m / (n + m))))


def compare(baseline: Mapping[str, Any], window: Mapping[str, np.ndarray]) -> list[FeatureDrift]:
    """Every baseline feature present in ``window`` (feature name -> values), compared.
    Only scipy.special is used: scipy.stats takes 0.75 s to import (holding the GIL of a
    serving replica), scipy.special 0.19 s."""
    from scipy.special import chdtrc

    out = []
    for name, values in window.items():
        base = baseline["features"].get(name)
        if base is None or len(values) == 0:
            continue
        if base["kind"] == "numeric":
            v = values.astype(np.float64)
            v = v[np.isfinite(v)]
            if v.size == 0:
                continue
            edges = np.asarray(base["edges"], dtype=np.float64)
            actual = np.bincount(np.searchsorted(edges, v, side="right"), minlength=edges.size + 1) / v.size
            statistic, pvalue = ks_2samp(v, np.asarray(base["sample"], dtype=np.float64))
            out.append(
                FeatureDrift(name, "numeric", psi(np.asarray(base["expected"], dtype=np.float64), actual), statistic, pvalue)
            )
        else:
            freq: dict[str, float] = base["frequencies"]
            keys, counts = np.unique(values.astype(str), return_counts=True)
            seen = dict(zip(keys.tolist(), counts.tolist()))
            categories = sorted(set(freq) | set(seen))
            expected = np.array([freq.get(c, 0.0) for c in categories])
            observed = np.array([seen.get(c, 0) for c in categories], dtype=np.float64)
            actual = observed / observed.sum()
            # chi-square against the baseline shares (categories the baseline never saw get a floor)
            exp_counts = np.clip(expected, _EPS, None)
            exp_counts = exp_counts / exp_counts.sum() * observed.sum()
            statistic = float(np.sum((observed - exp_counts) ** 2 / exp_counts))
            pvalue = float(chdtrc(len(categories) - 1, statistic)) if len(categories) > 1 else 1.0
            out.append(FeatureDrift(name, "categorical", psi(expected, actual), statistic, pvalue, _js(expected, actual)))
    return out


def _js(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0..1) of two distributions over the same categories."""
    p = p / p.sum() if p.sum() > 0 else p
    q = q / q.sum() if q.sum() > 0 else q
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def prepare(baseline: Mapping[str, Any]) -> dict[str, Any]:
    """The baseline with its numeric lists as arrays, made once where a baseline is loaded
    (baselines are stored as JSON; ``compare`` takes either form)."""
    features = {}
    for name, base in baseline["features"].items():
        if base["kind"] == "numeric":
            base = {**base, **{k: np.asarray(base[k], dtype=np.float64) for k in ("edges", "expected", "sample")}}
        features[name] = base
    return {**baseline, "features": features}
