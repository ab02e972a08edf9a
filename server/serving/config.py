"""Model configuration: ``<repository>/<model>/config.yaml`` (or ``config.json``).

Users write these files, so every section is a pydantic model that rejects unknown
keys with a message naming the key and the accepted ones. Field meanings follow
Triton's model configuration where Triton has the same idea.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError

__all__ = [
    "AutoscalingConfig",
    "DynamicBatchingConfig",
    "ExecutionConfig",
    "ModelConfig",
    "OnnxRuntimeConfig",
    "PoolConfig",
    "PreprocessConfig",
    "VersionPolicy",
    "WarmupSample",
    "load_model_config",
    "pool_options",
]

CONFIG_NAMES = ("config.yaml", "config.yml", "config.json")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DynamicBatchingConfig(_Strict):
    """How requests are gathered into batches (Triton's ``dynamic_batching``)."""

    max_queue_delay_us: int = Field(
        0,
        ge=0,
        description="Longest a request waits for more to join its batch while the model is idle. "
        "0 dispatches at once when idle; arrivals during a run form the next batch.",
    )
    preferred_batch_sizes: list[int] = Field(
        default_factory=list,
        description="Batch sizes to dispatch at as soon as they are reached (Triton's meaning).",
    )
    max_queue_size: int = Field(1024, ge=1, description="Requests queued beyond this are refused with 503 and Retry-After.")
    default_timeout_us: int = Field(
        0,
        ge=0,
        description="Deadline for a request that names none (Triton's 'timeout' parameter); 0 for none.",
    )
    padding: dict[str, float] = Field(
        default_factory=dict,
        description="Inputs whose dynamic non-batch dimensions may differ within a batch, with the value to pad "
        "them with up to the batch's largest; requests are padded into one batch.",
    )
    padded_outputs: list[str] = Field(
        default_factory=list,
        description="Outputs cut back to each request's own sizes after a padded batch: their dimensions 1.. "
        "follow the first padded input's dimensions 1.. (sequence models: [N, L] in, [N, L, ...] out).",
    )
    priority_levels: int = Field(
        0,
        ge=0,
        description="Priority levels a request may ask for with Triton's 'priority' parameter (1 is served first); "
        "0: none. Requests wait in one queue ordered by level, then arrival; a batch is filled from the front.",
    )
    default_priority_level: int = Field(
        0, ge=0, description="The level of a request that names none (or 0); unset (0): the lowest, priority_levels."
    )
    inline_compute_us: int = Field(
        200,
        ge=0,
        description="Batches whose measured compute time (moving average) is below this run on the event loop "
        "thread, saving the hand-off to the worker thread; longer ones run on the worker so the loop keeps "
        "accepting requests. 0 always uses the worker. Measured as the running thread's CPU time where the run "
        "is all that thread's work (onnxruntime's CPU provider, one thread per operator, sequential), else as "
        "wall time.",
    )

    @model_validator(mode="after")
    def _positive_sizes(self) -> DynamicBatchingConfig:
        bad = [s for s in self.preferred_batch_sizes if s < 1]
        if bad:
            raise ValueError(f"preferred_batch_sizes must be positive integers, got {bad}")
        if self.default_priority_level > self.priority_levels:
            raise ValueError(
                f"default_priority_level ({self.default_priority_level}) must be at most priority_levels ({self.priority_levels})"
            )
        return self


class AutoscalingConfig(_Strict):
    """Replica autoscaling, mapped to Ray Serve's ``autoscaling_config``."""

    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 scales to zero when idle.")
    max_replicas: int = Field(2, ge=1, description="Most replicas.")
    target_ongoing_requests: float = Field(4.0, gt=0, description="Ongoing requests per replica that autoscaling aims for.")
    upscale_delay_s: float = Field(5.0, ge=0, description="How long load must stay high before adding.")
    downscale_delay_s: float = Field(30.0, ge=0, description="How long load must stay low before removing.")
    downscale_to_zero_delay_s: float | None = Field(
        None,
        ge=0,
        description="How long a model must stay idle before its last replica goes (min_replicas 0); default downscale_delay_s.",
    )
    look_back_period_s: float = Field(10.0, gt=0, description="Window over which the replicas' load reports are averaged.")
    metrics_interval_s: float = Field(
        1.0, gt=0, description="How often each replica sends its load to Serve's controller (below look_back_period_s)."
    )

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be at least min_replicas ({self.min_replicas})")
        if self.metrics_interval_s >= self.look_back_period_s:
            raise ValueError(
                f"metrics_interval_s ({self.metrics_interval_s}) must be below look_back_period_s ({self.look_back_period_s})"
            )
        return self


class CustomOpLibrary(_Strict):
    """A shared library of custom operators that onnxruntime loads for this model."""

    path: str = Field(..., description="Path of the library (.so) on every node that serves the model.")
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$", description="Its sha256; a library whose bytes differ is not loaded.")


class OnnxRuntimeConfig(_Strict):
    """onnxruntime session options. Defaults suit shared CPUs: one thread, no spinning."""

    intra_op_num_threads: int = Field(1, ge=0, description="Threads inside one operator; 0 lets onnxruntime choose.")
    inter_op_num_threads: int = Field(1, ge=0, description="Threads across operators (parallel mode only).")
    allow_spinning: bool = Field(
        False, description="Let idle worker threads spin; faster on dedicated cores, wasteful on shared ones."
    )
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="onnxruntime graph optimisation level."
    )
    execution_mode: Literal["sequential", "parallel"] = Field("sequential", description="Operator scheduling.")
    enable_cpu_mem_arena: bool = Field(
        True, description="onnxruntime's CPU memory arena (off: less memory held, more allocations)."
    )
    enable_mem_pattern: bool = Field(
        True, description="Plan allocations from the first run's pattern (off for inputs whose shapes vary)."
    )
    custom_op_libraries: list[CustomOpLibrary] = Field(
        [], description="Custom-operator libraries to load; the governance policy must list their sha256."
    )
    optimized_model_cache: bool = Field(
        False,
        description="Keep the graph onnxruntime optimised under LOCKGATE_HOME/optimized (by artifact sha256, level, "
        "provider, onnxruntime version and machine) and load it without optimising again (not with TensorRT).",
    )


class ProviderConfig(_Strict):
    """One onnxruntime execution provider and its options (Triton's execution_accelerators)."""

    name: Literal["CUDA", "TensorRT", "CPU"] = Field(..., description="CUDA, TensorRT or CPU.")
    device_id: int = Field(0, ge=0, description="CUDA and TensorRT: the GPU.")
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = Field(
        "EXHAUSTIVE", description="CUDA: how cuDNN picks convolution algorithms."
    )
    gpu_mem_limit: int | None = Field(None, gt=0, description="CUDA: the arena's limit in bytes; unset: no limit.")
    fp16: bool = Field(False, description="TensorRT: allow FP16 kernels.")
    int8: bool = Field(False, description="TensorRT: allow INT8 kernels (needs calibration; off by default).")
    max_workspace_size: int = Field(1 << 30, gt=0, description="TensorRT: builder workspace in bytes.")
    engine_cache: bool = Field(
        True,
        description="TensorRT: keep built engines under LOCKGATE_HOME/engines/<artifact sha256>, one build per version and device.",
    )

    @model_validator(mode="after")
    def _options_fit(self) -> ProviderConfig:
        # An option counts when it differs from its default: a stored config carries every field.
        fields = type(self).model_fields
        given = {f for f in fields if f != "name" and getattr(self, f) != fields[f].get_default(call_default_factory=True)}
        fits = {
            "CUDA": {"device_id", "cudnn_conv_algo_search", "gpu_mem_limit"},
            "TensorRT": {"device_id", "fp16", "int8", "max_workspace_size", "engine_cache"},
            "CPU": set(),
        }[self.name]
        wrong = sorted(given - fits)
        if wrong:
            raise ValueError(
                f"{', '.join(wrong)} do not apply to {self.name}; its options are {', '.join(sorted(fits)) or 'none'}"
            )
        return self


class ExecutionConfig(_Strict):
    """Where a model runs: execution providers in order of preference."""

    providers: list[ProviderConfig] = Field(
        default_factory=lambda: [ProviderConfig(name="CPU")],
        min_length=1,
        description="In order of preference, e.g. [{name: TensorRT, fp16: true}, {name: CUDA}, {name: CPU}].",
    )
    missing: Literal["prefer", "require"] = Field(
        "prefer",
        description="A provider this onnxruntime build lacks: prefer skips it with a logged warning; require refuses to load.",
    )
    io_binding: Literal["auto", "on", "off"] = Field(
        "auto",
        description="onnxruntime's IO binding: a batch copied to the device once, outputs allocated there. auto: when a "
        "GPU provider serves; on: always (on CPU it only changes how the same run is called).",
    )


class _Latest(_Strict):
    num_versions: int = Field(1, ge=1, description="How many of the highest versions to serve.")


class _All(_Strict):
    pass


class _Specific(_Strict):
    versions: list[int] = Field(..., min_length=1, description="Exactly these versions.")


class VersionPolicy(_Strict):
    """Which versions of a model serve (Triton's ``version_policy``): exactly one of the three."""

    latest: _Latest | None = Field(None, description="Serve the N highest versions.")
    all: _All | None = Field(None, description="Serve every version in the repository.")
    specific: _Specific | None = Field(None, description="Serve the listed versions.")

    @model_validator(mode="after")
    def _exactly_one(self) -> VersionPolicy:
        chosen = [k for k in ("latest", "all", "specific") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"give one of latest, all, specific; got {', '.join(chosen)}")
        if not chosen:
            object.__setattr__(self, "latest", _Latest())
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of ``available``, highest first."""
        ordered = sorted(set(available), reverse=True)
        if self.all is not None:
            return ordered
        if self.specific is not None:
            return sorted(set(self.specific.versions) & set(ordered), reverse=True)
        assert self.latest is not None
        return ordered[: self.latest.num_versions]


class PreprocessConfig(_Strict):
    """Preprocessing of one input, fused into batch assembly: ``model_input = cast(sent) * scale + shift``."""

    datatype: str | None = Field(
        None, description="The datatype clients send (e.g. UINT8 for images); unset: the model input's own."
    )
    layout: Literal["same", "HWC"] = Field("same", description="HWC: clients send [N, H, W, C] and the model takes [N, C, H, W].")
    scale: list[float] | None = Field(None, description="Per-channel multiplier (channel: the model input's dimension 1).")
    shift: list[float] | None = Field(None, description="Per-channel addend, after the scale (e.g. -mean/std).")


class WarmupInput(_Strict):
    """The data of one input of a warmup sample (Triton's ``model_warmup.inputs``): zeros or random
    values, of the input's datatype as clients send it."""

    zero_data: bool = Field(False, description="All zeros (empty strings for BYTES).")
    random_data: bool = Field(False, description="Random values over the datatype's range (floats: standard normal).")
    dims: list[int] | None = Field(
        None, description="The shape of one row (without the batch dimension); needed where the input's is dynamic."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> WarmupInput:
        if self.zero_data == self.random_data:
            raise ValueError("give exactly one of zero_data: true, random_data: true")
        if self.dims is not None and any(d < 1 for d in self.dims):
            raise ValueError(f"dims must be positive, got {self.dims}")
        return self


class WarmupSample(_Strict):
    """One warmup request (Triton's ``model_warmup``): run before the replica says it is ready."""

    name: str = Field(..., min_length=1, description="Named in logs and in the error of a failed warmup.")
    batch_size: int = Field(1, ge=1, description="Rows of the sample (1 for a model without batching).")
    count: int = Field(1, ge=1, description="How many times it is run.")
    inputs: dict[str, WarmupInput] = Field(..., description="Every input of the model, by name.")


class PoolConfig(_Strict):
    """One pool of shared model replicas (the server configuration's ``pools.<name>``)."""

    replicas: int = Field(1, ge=1, description="Replicas of the pool; each holds any of its models.")
    memory_budget_bytes: int = Field(
        1 << 30,
        gt=0,
        description="Per replica: the artifact bytes of its resident models; loading one over it evicts the least "
        "recently used first.",
    )
    max_models: int = Field(64, ge=1, description="Per replica: the most resident models, whatever their size.")
    num_cpus: float = Field(0.25, gt=0, description="CPUs each pool replica reserves in Ray.")
    num_gpus: float = Field(0, ge=0, description="GPUs each pool replica reserves in Ray.")


def pool_options(options: typing.Mapping[str, Any]) -> dict[str, PoolConfig]:
    """The ``pools`` section of the server configuration, by pool name; ConfigError says what is wrong."""
    raw = options.get("pools") or {}
    if not isinstance(raw, dict):
        raise ConfigError("pools must map pool names to their options", source="pools options invalid")
    out = {}
    for name, value in raw.items():
        try:
            out[str(name)] = PoolConfig.model_validate(value or {})
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(map(str, first["loc"]))
            raise ConfigError(f"{name}.{where}: {first['msg']}", source="pools options invalid") from None
    return out


class ModelConfig(_Strict):
    """One model's serving configuration."""

    name: str | None = Field(None, description="Must match the model's folder name when given.")
    max_batch_size: int | None = Field(
        None,
        ge=0,
        description="Largest batch (first dimension) of one request and of an assembled batch; 0 disables "
        "batching. Unset: 32 when every input's first dimension is dynamic in the graph, else 0.",
    )
    dynamic_batching: DynamicBatchingConfig = Field(
        default_factory=DynamicBatchingConfig, description="Dynamic batching options."
    )
    replicas: int = Field(1, ge=1, description="Fixed replica count (ignored when autoscaling is set).")
    autoscaling: AutoscalingConfig | None = Field(None, description="Replica autoscaling instead of a fixed count.")
    num_cpus: float = Field(
        0.25, gt=0, description="CPUs each replica reserves in Ray; fractional so several models share a node."
    )
    num_gpus: float = Field(
        0,
        ge=0,
        description="GPUs each replica reserves in Ray (Triton's instance_group KIND_GPU); fractional, e.g. 0.25, so "
        "several models share one GPU. 0: a CPU replica.",
    )
    onnxruntime: OnnxRuntimeConfig = Field(default_factory=OnnxRuntimeConfig, description="Session options.")
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig, description="Execution providers.")
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy, description="Which versions serve.")
    preprocess: dict[str, PreprocessConfig] = Field(
        default_factory=dict, description="Per model input: what clients send and how it becomes the model's input."
    )
    model_warmup: list[WarmupSample] = Field(
        default_factory=list,
        description="Requests run on every version a replica loads, through batch assembly and the model, before "
        "it reports ready (Triton's model_warmup); a failure keeps the version from serving, naming the sample.",
    )
    labels: dict[str, list[str] | str] = Field(
        default_factory=dict,
        description="Per model output: the class labels of its elements, in order, for Triton's classification "
        "extension ('score:index:label'); a list, or the name of a file in the model's folder with one label a line "
        "(Triton's label_filename), read when the repository is imported.",
    )
    pool: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$",
        description="Host this model in the named pool of shared replicas (the server configuration's `pools`), loaded "
        "on its first request and evicted least recently used under the pool's memory budget, instead of in replicas "
        "of its own; replicas, autoscaling, num_cpus and num_gpus are then the pool's.",
    )


def _accepted_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys accepted at ``loc`` (the location of an unknown key) inside ``model``."""
    current: Any = model
    for part in loc[:-1]:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = field.annotation
        for arg in typing.get_args(current) or ():
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                current = arg
                break
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def format_validation_error(error: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            accepted = _accepted_keys(model, tuple(e["loc"]))
            lines.append(f"unknown key '{where}'; accepted keys: {', '.join(accepted)}")
        else:
            lines.append(f"{where}: {e['msg']} (got {e.get('input')!r})")
    return "; ".join(lines)


def parse_model_config(raw: Any, *, source: str) -> ModelConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping of keys, got {type(raw).__name__}", source=source)
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, ModelConfig), source=source) from None


def load_model_config(model_dir: Path) -> ModelConfig:
    """Read a model folder's config file; a folder without one gets the defaults."""
    for name in CONFIG_NAMES:
        path = model_dir / name
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            try:
                raw = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
            except (json.JSONDecodeError, yaml.YAMLError) as e:
                raise ConfigError(f"cannot parse: {e}", source=str(path)) from None
            config = parse_model_config(raw, source=str(path))
            if config.name is not None and config.name != model_dir.name:
                raise ConfigError(f"name {config.name!r} does not match the folder name {model_dir.name!r}", source=str(path))
            if any(isinstance(v, str) for v in config.labels.values()):
                labels = {k: _label_file(model_dir, v, str(path)) if isinstance(v, str) else v for k, v in config.labels.items()}
                config = config.model_copy(update={"labels": labels})
            return config
    return ModelConfig()


def _label_file(model_dir: Path, name: str, source: str) -> list[str]:
    """The labels of a label file in the model's folder: one a line, blank lines at the end dropped."""
    path = (model_dir / name).resolve()
    if not path.is_relative_to(model_dir.resolve()):
        raise ConfigError(f"labels file {name!r} is outside the model's folder", source=source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"labels file {name!r} cannot be read: {e}", source=source) from None
    return text.rstrip("\r\n").splitlines() if text.strip() else []
