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

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lockgate.plugins.shared import parse_section

from ..errors import BadRequest, Conflict, ModelFailed
from .protocol import InferRequest, parse_off_loop

__all__ = ["Explainer", "Explanation", "ExplainOptions", "explain_options", "kernel_shap"]

log = logging.getLogger("lockgate.server")


class ExplainOptions(BaseModel):
    """The ``explain`` section of the server configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_evaluations: int = Field(
        32768, ge=16, le=1_000_000, description="Model rows one explanation may run at most (its budget)."
    )
    background_rows: int = Field(16, ge=1, le=1024, description="Rows of the reference sample used as background.")
    seed: int = Field(0, description="Seed of the background choice and of coalition sampling (explanations are reproducible).")


def explain_options(options: Mapping[str, Any]) -> ExplainOptions:
    """The ``explain`` section of the server configuration; ConfigError says what is wrong."""
    return parse_section(options, "explain", ExplainOptions)


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


class Explainer:
    """The ``/explain`` route of one model's replica: checks the request, finds the background
    in the version's reference sample (read through the registry, cached per version, looked
    up again at most every 5 s while missing), runs ``kernel_shap`` on the model's executor."""

    def __init__(self, name: str, registry: Any, preprocessed: set[str], options: ExplainOptions, executor: Executor) -> None:
        self.name = name
        self.registry = registry
        self.preprocessed = preprocessed
        self.options = options
        self.executor = executor
        self._backgrounds: dict[int, tuple[np.ndarray | None, float]] = {}

    async def explain(
        self, model: Any, max_batch_size: int, body: bytes, json_length: int | None, max_elements: int
    ) -> tuple[bytes, InferRequest, str | None]:
        """Kernel SHAP attributions for the one row of an OIP inference request body, against
        background rows of the version's reference sample, in one onnxruntime run: the
        response body, the decoded request, and the request id it says it explains."""
        inputs = model.graph_inputs
        where = f"model '{self.name}' version {model.version}"
        if max_batch_size <= 0:
            raise BadRequest(f"{where} takes no batch dimension; explanations run many rows at once")
        if len(inputs) != 1 or len(inputs[0].shape) != 2 or inputs[0].name in self.preprocessed:
            raise BadRequest(
                f"{where} is not tabular: explanations need one input of shape [batch, features], without preprocessing"
            )
        if not inputs[0].datatype.startswith("FP"):
            raise BadRequest(f"{where}: explanations need a floating-point input, '{inputs[0].name}' is {inputs[0].datatype}")
        request = await parse_off_loop(body, json_length, model, max_batch_size, max_elements)
        if request.rows != 1:
            raise BadRequest(f"an explanation is of one row; the request has {request.rows}")
        params = dict(request.parameters or {})
        options = self.options
        budget = params.get("max_evaluations", options.max_evaluations)
        if type(budget) is not int or not 16 <= budget <= options.max_evaluations:
            raise BadRequest(
                f"parameter 'max_evaluations' must be an integer in [16, {options.max_evaluations}] (the server's budget)"
            )
        explains = params.get("explains")
        if explains is not None and (type(explains) is not str or not 1 <= len(explains) <= 64):
            raise BadRequest(
                "parameter 'explains' must be the lockgate-request-id of the request explained (text, 1-64 characters)"
            )
        floats = [s for s in model.outputs if s.datatype.startswith("FP")]
        wanted = params.get("output", floats[0].name if floats else None)
        output = model.output_index.get(wanted) if isinstance(wanted, str) else None
        if output is None or output not in floats:
            names = ", ".join(s.name for s in floats) or "none"
            raise BadRequest(f"parameter 'output' must name a floating-point output of {where}; these are: {names}")
        target = params.get("target")
        if target is not None and (type(target) is not int or target < 0):
            raise BadRequest("parameter 'target' must be a non-negative integer: the output column to explain")
        background = await self._background(model.version, inputs[0].name)
        index = [s.name for s in model.outputs].index(output.name)
        name = inputs[0].name
        x = np.ascontiguousarray(request.inputs[name][0])

        def compute() -> Any:
            return kernel_shap(
                lambda rows: model.run({name: rows})[index].reshape(rows.shape[0], -1),
                x,
                background.astype(x.dtype, copy=False),
                budget,
                np.random.default_rng(options.seed),
                target,
            )

        try:
            result = await asyncio.get_running_loop().run_in_executor(self.executor, compute)
        except ValueError as e:
            raise BadRequest(f"{where}: {e}") from None
        except Exception as e:
            log.exception("explanation of %s failed", where)
            raise ModelFailed(f"{where} failed while explaining: {type(e).__name__}: {e}") from None
        features = [f"{name}[{i}]" for i in range(x.shape[0])]
        answer = {
            "model_name": self.name,
            "model_version": str(model.version),
            **({"id": request.id} if request.id is not None else {}),
            **({"explains": explains} if explains is not None else {}),
            "method": "kernel_shap",
            "output": output.name,
            **({"target": result.target} if result.target is not None else {}),
            "value": result.value,
            "base_value": result.base_value,
            "features": features,
            "attributions": result.attributions.tolist(),
            "additivity_error": abs(float(result.attributions.sum()) + result.base_value - result.value),
            "evaluations": result.evaluations,
            "max_evaluations": budget,
            "background_rows": int(background.shape[0]),
            "coalitions": result.coalitions,
            "exact": result.exact,
        }
        return json.dumps(answer, separators=(",", ":")).encode("utf-8"), request, explains

    async def _background(self, version: int, name: str) -> np.ndarray:
        """Background rows of the version's reference sample (read once, re-read after a miss)."""
        known = self._backgrounds.get(version)
        if known is None or (known[0] is None and time.monotonic() > known[1]):
            reader = getattr(self.registry, "reference", None)
            reference = await asyncio.to_thread(reader, self.name, version) if reader is not None else None
            rows = None
            if reference is not None and name in reference.sample:
                sample = np.asarray(reference.sample[name])
                k = min(self.options.background_rows, sample.shape[0])
                pick = np.random.default_rng(self.options.seed).choice(sample.shape[0], k, replace=False)
                rows = sample[np.sort(pick)]
            known = (rows, time.monotonic() + 5.0)
            self._backgrounds[version] = known
        if known[0] is None:
            raise Conflict(
                f"model '{self.name}' version {version} has no reference sample to explain against; "
                f"set one with `lockgate models reference {self.name} {version} FILE`"
            )
        return known[0]
