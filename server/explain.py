"""Per-feature attributions of one tabular prediction: Kernel SHAP against a background sample.

For a request ``x`` with ``F`` features and ``B`` background rows (from the version's
reference sample), a coalition ``z`` (which features keep the request's value) is worth
``v(z)``: the model's mean output over the background rows with those features replaced by
``x``'s. Kernel SHAP fits attributions ``phi`` to ``v`` by weighted least squares under the
constraint ``sum(phi) = f(x) - E[f(background)]`` (additivity, exact up to floating point).
Every coalition's rows, the request and the background go to onnxruntime as one batch.

When all ``2^F - 2`` coalitions fit in the budget they are enumerated with their Shapley
kernel weights (the result is the exact Shapley value of ``v``); otherwise coalitions are
drawn from the kernel's distribution over sizes, in complementary pairs, and weighted equally.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Explanation", "ExplainOptions", "explain_options", "kernel_shap"]


class ExplainOptions(BaseModel):
    """The ``explain`` section of the server configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_evaluations: int = Field(32768, ge=16, le=1_000_000, description="Model rows one explanation may run at most (its budget).")
    background_rows: int = Field(16, ge=1, le=1024, description="Rows of the reference sample used as background.")
    seed: int = Field(0, description="Seed of the background choice and of coalition sampling (explanations are reproducible).")


def explain_options(options: dict) -> ExplainOptions:
    """The ``explain`` section of the server configuration; ConfigError says what is wrong."""
    from pydantic import ValidationError

    from ._errors import ConfigError

    try:
        return ExplainOptions.model_validate(dict(options.get("explain") or {}))
    except ValidationError as e:
        first = e.errors()[0]
        raise ConfigError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}", source="explain options") from None


@dataclass(frozen=True, slots=True)
class Explanation:
    attributions: np.ndarray  # (F,)
    base_value: float
    value: float
    target: int | None  # the output column explained, for an output of several columns
    evaluations: int
    coalitions: int
    exact: bool


def _coalitions(f: int, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool]:
    """Masks (M, F) of non-empty, non-full coalitions and their regression weights."""
    if f <= 20 and (1 << f) - 2 <= budget:
        codes = np.arange(1, (1 << f) - 1, dtype=np.int64)
        masks = ((codes[:, None] >> np.arange(f)) & 1).astype(bool)
        sizes = masks.sum(axis=1)
        weights = np.array([(f - 1) / (math.comb(f, int(s)) * s * (f - s)) for s in sizes])
        return masks, weights, True
    pairs = max(budget // 2, 1)
    sizes = np.arange(1, f)
    p = (f - 1) / (sizes * (f - sizes))
    p = p / p.sum()
    drawn = rng.choice(sizes, size=pairs, p=p)
    masks = np.zeros((2 * pairs, f), dtype=bool)
    for i, s in enumerate(drawn):
        chosen = rng.choice(f, size=int(s), replace=False)
        masks[2 * i, chosen] = True
        masks[2 * i + 1] = ~masks[2 * i]
    return masks, np.ones(len(masks)), False


def kernel_shap(
    run: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    background: np.ndarray,
    budget: int,
    rng: np.random.Generator,
    target: int | None = None,
) -> Explanation:
    """Attributions of ``run`` at ``x`` (``(F,)``) against ``background`` (``(B, F)``), within
    ``budget`` model rows in total. ``run`` maps rows ``(n, F)`` to one value per row, or to
    ``(n, C)``: then column ``target`` is explained (default: the largest at ``x``)."""
    f = x.shape[0]
    b = background.shape[0]
    exact = True
    if f == 1:
        masks, weights = np.zeros((0, 1), dtype=bool), np.zeros(0)
    else:
        masks, weights, exact = _coalitions(f, max((budget - b - 1) // b, 2), rng)
    m = len(masks)
    rows = np.where(masks[:, None, :], x[None, None, :], background[None, :, :]).reshape(m * b, f)
    out = np.asarray(run(np.concatenate([x[None, :], background, rows]).astype(x.dtype, copy=False)), dtype=np.float64)
    if out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.ndim == 2:
        if target is None:
            target = int(np.argmax(out[0]))
        if not 0 <= target < out.shape[1]:
            raise ValueError(f"target {target} is not a column of the output (0..{out.shape[1] - 1})")
        out = out[:, target]
    else:
        target = None
    value = float(out[0])
    base = float(out[1 : b + 1].mean())
    total = value - base
    if f == 1:
        return Explanation(np.array([total]), base, value, target, 1 + b, 0, True)
    v = out[b + 1 :].reshape(m, b).mean(axis=1) - base
    # Eliminate the last feature with the constraint, then weighted least squares for the rest.
    z = masks.astype(np.float64)
    design = z[:, :-1] - z[:, -1:]
    goal = v - z[:, -1] * total
    sw = np.sqrt(weights)[:, None]
    head, *_ = np.linalg.lstsq(design * sw, goal * sw[:, 0], rcond=None)
    phi = np.append(head, total - head.sum())
    return Explanation(phi, base, value, target, 1 + b + m * b, m, exact)
