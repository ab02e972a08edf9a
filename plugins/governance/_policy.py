"""The library and operator policy: what an ONNX artifact may contain to be registered, and
which onnxruntime may serve it."""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .._types import RegistrationCandidate

__all__ = ["OpsetRange", "Policy", "onnxruntime_version"]


class OpsetRange(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min: int = Field(7, ge=1, description="Lowest ai.onnx opset accepted.")
    max: int = Field(23, ge=1, description="Highest ai.onnx opset accepted.")


class Policy(BaseModel):
    """The ``governance.policy`` section. Every registration runs it; a refusal lists every reason."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_domains: list[str] = Field(
        ["ai.onnx", "ai.onnx.ml"], description="Operator domains a model may use ('ai.onnx' is the default domain)."
    )
    opset: OpsetRange = Field(default_factory=OpsetRange, description="Accepted range of the ai.onnx opset.")
    forbidden_operators: list[str] = Field(
        [], description="Operators refused wherever they appear ('Loop', 'com.example::MyOp')."
    )
    custom_op_libraries: list[str] = Field(
        [], description="sha256 of the custom-operator libraries that models may load; none by default."
    )
    max_artifact_bytes: int = Field(2 * 1024**3, ge=1, description="Largest ONNX file accepted, in bytes.")
    onnxruntime: str = Field(">=1.20", description="onnxruntime versions allowed at serve time (a PEP 440 specifier).")
    required_lineage: list[str] = Field(
        [], description="Lineage fields every registration must give (training_data, code_version, ...)."
    )

    @field_validator("onnxruntime")
    @classmethod
    def _specifier(cls, value: str) -> str:
        try:
            SpecifierSet(value)
        except InvalidSpecifier:
            raise ValueError(f"{value!r} is not a version specifier; write for example '>=1.20,<2'") from None
        return value

    @field_validator("custom_op_libraries")
    @classmethod
    def _hashes(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if len(v) != 64 or any(ch not in "0123456789abcdef" for ch in v)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a lower-case hex sha256")
        return value

    def check(self, candidate: RegistrationCandidate) -> list[str]:
        """Every reason ``candidate`` breaks the policy; empty when it complies."""
        reasons = []
        if candidate.size > self.max_artifact_bytes:
            reasons.append(f"artifact is {candidate.size} bytes, over the limit of {self.max_artifact_bytes}")
        for domain, opset in sorted(candidate.opsets.items()):
            if domain not in self.allowed_domains:
                reasons.append(f"operator domain '{domain}' is not allowed (allowed: {', '.join(self.allowed_domains)})")
            elif domain == "ai.onnx" and not self.opset.min <= opset <= self.opset.max:
                reasons.append(f"ai.onnx opset {opset} is outside the allowed range {self.opset.min}-{self.opset.max}")
        for op in sorted(candidate.operators):
            domain = op.split("::")[0] if "::" in op else "ai.onnx"
            if op in self.forbidden_operators:
                reasons.append(f"operator '{op}' is forbidden")
            elif domain not in self.allowed_domains and domain not in candidate.opsets:
                reasons.append(f"operator '{op}' is from domain '{domain}', which is not allowed")
        for path, sha in sorted(candidate.custom_op_libraries.items()):
            if sha not in self.custom_op_libraries:
                reasons.append(f"custom-op library {path} (sha256 {sha}) is not on the allowed list")
        missing = [f for f in self.required_lineage if candidate.lineage.get(f) in (None, "", [], {})]
        if missing:
            reasons.append(f"lineage lacks required field(s): {', '.join(missing)}")
        return reasons

    def runtime_problem(self) -> str | None:
        """Why the installed onnxruntime may not serve, or None."""
        installed = onnxruntime_version()
        if installed is None:
            return "onnxruntime is not installed"
        if installed not in SpecifierSet(self.onnxruntime):
            return f"onnxruntime {installed} is outside the allowed range '{self.onnxruntime}' (governance.policy.onnxruntime)"
        return None


@functools.lru_cache(maxsize=1)
def onnxruntime_version() -> str | None:
    """The installed onnxruntime (read once: a running process cannot change it)."""
    try:
        return version("onnxruntime")
    except PackageNotFoundError:
        return None
