"""One loaded model version: an onnxruntime session and the signature read from its graph."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument, InvalidGraph

from lockgate.fastpath import DATATYPES
from lockgate.plugins.shared import external_data_tensors

from ..errors import ConfigError, ModelLoadError
from .config import ExecutionConfig, OnnxRuntimeConfig, PreprocessConfig

log = logging.getLogger("lockgate.server")

__all__ = ["REJECTED_INPUT", "ModelVersion", "Preprocess", "TensorSpec", "load_version", "session_options"]

# What onnxruntime raises for input the model cannot take (a shape or type it rejects): the
# client's mistake, answered 400. Anything else it raises is the model failing (500).
REJECTED_INPUT: tuple[type[Exception], ...] = (InvalidArgument, InvalidGraph)

# onnxruntime type strings -> Open Inference Protocol datatypes.
_ORT_TO_OIP = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True, slots=True)
class Preprocess:
    """Prepared preprocessing of one input: the model's datatype, per-channel arrays, layout change."""

    model_datatype: str
    scale: np.ndarray | None
    shift: np.ndarray | None
    hwc_to_chw: bool


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """An input or output as the graph declares it; dynamic dimensions are -1."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _spec(node: ort.NodeArg, model: str, version: int) -> TensorSpec:
    datatype = _ORT_TO_OIP.get(node.type)
    if datatype is None:
        raise ModelLoadError(model, version, f"tensor {node.name!r} has type {node.type}, which lockgate cannot serve")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (node.shape or ()))
    return TensorSpec(node.name, datatype, shape)


def session_options(config: OnnxRuntimeConfig) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = config.intra_op_num_threads
    opts.inter_op_num_threads = config.inter_op_num_threads
    opts.graph_optimization_level = _OPT_LEVELS[config.graph_optimization_level]
    opts.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if config.execution_mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    opts.enable_cpu_mem_arena = config.enable_cpu_mem_arena
    opts.enable_mem_pattern = config.enable_mem_pattern
    spin = "1" if config.allow_spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    for library in config.custom_op_libraries:
        got = hashlib.sha256(Path(library.path).read_bytes()).hexdigest()
        if got != library.sha256:
            raise ValueError(
                f"custom-op library {library.path} has sha256 {got}, not the configured {library.sha256}; not loading it"
            )
        opts.register_custom_ops_library(library.path)
    return opts


class ModelVersion:
    """A served model version. ``run`` is thread-safe (onnxruntime sessions are)."""

    __slots__ = (
        "graph_inputs",
        "input_index",
        "io_device",
        "inputs",
        "name",
        "output_index",
        "outputs",
        "provider",
        "session",
        "sha256",
        "version",
    )

    def __init__(self, name: str, version: int, session: ort.InferenceSession, sha256: str = "") -> None:
        self.name = name
        self.version = version
        self.sha256 = sha256
        self.session = session
        self.provider: str = session.get_providers()[0]  # the execution provider that serves it
        self.graph_inputs = tuple(_spec(n, name, version) for n in session.get_inputs())
        self.inputs = self.graph_inputs  # what clients send; differs where preprocessing is declared
        self.outputs = tuple(_spec(n, name, version) for n in session.get_outputs())
        self.input_index = {s.name: s for s in self.inputs}
        self.output_index = {s.name: s for s in self.outputs}
        # (device, id) where inputs are bound and outputs allocated (onnxruntime's IO binding),
        # or None: plain run. load_version sets it (execution.io_binding).
        self.io_device: tuple[str, int] | None = None

    @property
    def runs_on_caller(self) -> bool:
        """True when a run's work is all done by the thread that calls it (the CPU provider, one
        thread inside an operator, operators one after another): that thread's CPU time is then
        what a run costs, whatever else the process is doing meanwhile."""
        options = self.session.get_session_options()
        return (
            self.provider == "CPUExecutionProvider"
            and options.intra_op_num_threads == 1
            and options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
        )

    def batchable(self) -> bool:
        """True when every input and output has a dynamic first dimension."""
        return all(s.shape and s.shape[0] == -1 for s in self.graph_inputs + self.outputs)

    def preprocess(self, config: dict[str, PreprocessConfig]) -> dict[str, Preprocess]:
        """Apply the config's preprocessing to the client-facing signature; return it per input.

        A ConfigError names what does not fit the graph."""
        prepared: dict[str, Preprocess] = {}
        graph = {s.name: s for s in self.graph_inputs}
        for name, pre in config.items():
            where = f"model {self.name} version {self.version}: preprocess.{name}"
            spec = graph.get(name)
            if spec is None:
                raise ConfigError(f"no such input; the model's inputs are {', '.join(graph)}", source=where)
            datatype = pre.datatype or spec.datatype
            if datatype not in DATATYPES or datatype == "BYTES":
                raise ConfigError(f"datatype {datatype!r} cannot be preprocessed", source=where)
            shape = spec.shape
            if pre.layout == "HWC":
                if len(shape) != 4:
                    raise ConfigError(f"layout HWC needs a rank-4 [N, C, H, W] input, the model's is {list(shape)}", source=where)
                shape = (shape[0], shape[2], shape[3], shape[1])
            channels = spec.shape[1] if len(spec.shape) > 1 else 1
            scale = shift = None
            if pre.scale is not None or pre.shift is not None:
                if spec.datatype != "FP32":
                    raise ConfigError(f"scale and shift need an FP32 model input, this one is {spec.datatype}", source=where)
                for label, values in (("scale", pre.scale), ("shift", pre.shift)):
                    if values is not None and (channels < 1 or len(values) != channels):
                        raise ConfigError(
                            f"{label} has {len(values)} values; the input has {channels} channels (dimension 1)", source=where
                        )
                scale = None if pre.scale is None else np.asarray(pre.scale, np.float32)
                shift = None if pre.shift is None else np.asarray(pre.shift, np.float32)
            prepared[name] = Preprocess(spec.datatype, scale, shift, pre.layout == "HWC")
            self.inputs = tuple(TensorSpec(s.name, datatype, shape) if s.name == name else s for s in self.inputs)
        self.input_index = {s.name: s for s in self.inputs}
        return prepared

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """All outputs, in graph order.

        With IO binding (a GPU provider), each assembled batch is copied to the device once and
        the outputs are allocated there and copied back once, instead of onnxruntime staging
        them per run; the binding is per call, so runs on several threads stay independent."""
        if self.io_device is None:
            results: list[np.ndarray] = self.session.run(None, feeds)
            return results
        device, device_id = self.io_device
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        for spec in self.outputs:
            binding.bind_output(spec.name, device, device_id)
        self.session.run_with_iobinding(binding)
        bound: list[np.ndarray] = binding.copy_outputs_to_cpu()
        return bound

    def metadata(self) -> dict[str, object]:
        return {
            "name": self.name,
            "versions": [str(self.version)],
            "platform": "onnxruntime_onnx",
            "execution_provider": self.provider,
            "inputs": [s.metadata() for s in self.inputs],
            "outputs": [s.metadata() for s in self.outputs],
        }


ORT_PROVIDERS = {"CUDA": "CUDAExecutionProvider", "TensorRT": "TensorrtExecutionProvider", "CPU": "CPUExecutionProvider"}


def session_providers(
    execution: ExecutionConfig, where: str, sha256: str = "", engine_dir: str | None = None
) -> tuple[list[str], list[dict[str, str]]]:
    """onnxruntime's providers and their options for ``execution``: those this build lacks are
    skipped with a warning (``missing: prefer``) or refused (``require``), a ConfigError naming them."""
    available = set(ort.get_available_providers())
    names, options = [], []
    for provider in execution.providers:
        ort_name = ORT_PROVIDERS[provider.name]
        if ort_name not in available:
            said = f"{provider.name} ({ort_name}) is not in this onnxruntime build; it has {', '.join(sorted(available))}"
            if execution.missing == "require":
                raise ConfigError(f"{said} (execution.missing: require; install lockgate[gpu] on a GPU node)", source=where)
            log.warning("%s: %s; skipped", where, said)
            continue
        opts: dict[str, str] = {}
        if provider.name == "CUDA":
            opts = {"device_id": str(provider.device_id), "cudnn_conv_algo_search": provider.cudnn_conv_algo_search}
            if provider.gpu_mem_limit is not None:
                opts["gpu_mem_limit"] = str(provider.gpu_mem_limit)
        elif provider.name == "TensorRT":
            opts = {
                "device_id": str(provider.device_id),
                "trt_fp16_enable": str(provider.fp16).lower(),
                "trt_int8_enable": str(provider.int8).lower(),
                "trt_max_workspace_size": str(provider.max_workspace_size),
            }
            if provider.engine_cache and engine_dir is not None and sha256:
                opts["trt_engine_cache_enable"] = "true"
                opts["trt_engine_cache_path"] = str(Path(engine_dir) / sha256)
        names.append(ort_name)
        options.append(opts)
    if not names:
        wanted = ", ".join(p.name for p in execution.providers)
        raise ConfigError(
            f"none of the execution providers ({wanted}) is in this onnxruntime build; add {{name: CPU}}", source=where
        )
    return names, options


class OptimizedGraphCache:
    """onnxruntime's optimised graph of one artifact, kept in ``folder`` so a replica that loads
    the version again skips graph optimisation (``onnxruntime.optimized_model_cache``).

    The name holds everything the optimised graph depends on: the artifact's sha256, the
    optimisation level, the provider (fused operators differ), onnxruntime's version and the
    machine's architecture (layout transformations). The file's own sha256, taken when it was
    written, is checked at every load; a file that no longer matches is removed and the graph
    optimised again from the verified artifact. The cache is as trusted as LOCKGATE_HOME."""

    def __init__(self, folder: Path, sha256: str, level: str, provider: str) -> None:
        import platform

        key = f"{sha256}-{level}-{provider.removesuffix('ExecutionProvider')}-ort{ort.__version__}-{platform.machine()}"
        self.folder = folder
        self.path = folder / f"{key}.onnx"
        self.digest = folder / f"{key}.sha256"
        self.staging = folder / f".{key}.{os.getpid()}.onnx"

    def load(self) -> bytes | None:
        """The cached optimised graph, when there is one whose bytes still match."""
        try:
            data = self.path.read_bytes()
            expected = self.digest.read_text().strip()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() == expected:
            return data
        log.warning("optimised graph %s does not match its digest; optimising again", self.path)
        self.path.unlink(missing_ok=True)
        return None

    def keep(self) -> None:
        """Make the graph onnxruntime just wrote (to ``staging``) the cached one."""
        try:
            data = self.staging.read_bytes()
            self.digest.write_text(hashlib.sha256(data).hexdigest())
            os.replace(self.staging, self.path)  # digest first: a reader never sees a file without one
        except OSError as e:  # the cache is an optimisation: serving goes on without it
            log.warning("optimised graph not cached: %s", e)
            self.staging.unlink(missing_ok=True)

    def prepare(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)


def load_version(
    name: str,
    version: int,
    source: bytes | Path,
    config: OnnxRuntimeConfig,
    sha256: str = "",
    execution: ExecutionConfig | None = None,
    engine_dir: str | None = None,
    optimized_dir: str | None = None,
) -> ModelVersion:
    """Load a model (verified bytes, or a file) with onnxruntime; a failure is a ModelLoadError naming it.

    A model that keeps tensor data outside its file is refused here too, whatever registered it:
    onnxruntime would read that data from wherever the file says, relative to this process."""
    try:
        proto = (
            onnx.load_model_from_string(source) if isinstance(source, bytes) else onnx.load(str(source), load_external_data=False)
        )
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for a bad file
        raise ModelLoadError(name, version, f"not an ONNX model: {type(e).__name__}: {e}") from None
    external = external_data_tensors(proto)
    if external:
        raise ModelLoadError(
            name, version, f"it keeps tensor data outside the model file, which is refused: {', '.join(external[:5])}"
        )
    del proto
    execution = execution or ExecutionConfig()
    providers, options = session_providers(execution, f"model {name} version {version}: execution", sha256, engine_dir)
    cache = None
    if config.optimized_model_cache and optimized_dir is not None and sha256 and "TensorrtExecutionProvider" not in providers:
        cache = OptimizedGraphCache(Path(optimized_dir), sha256, config.graph_optimization_level, providers[0])
        cache.prepare()
    try:
        model: bytes | str = source if isinstance(source, bytes) else str(source)
        opts = session_options(config)
        cached = cache.load() if cache is not None else None
        if cached is not None:  # optimised before, for this artifact, level, provider and build
            model, opts.graph_optimization_level = cached, ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        elif cache is not None:
            opts.optimized_model_filepath = str(cache.staging)
        session = ort.InferenceSession(model, sess_options=opts, providers=providers, provider_options=options)
        if cache is not None and cached is None:
            cache.keep()
    except Exception as e:  # noqa: BLE001 - onnxruntime raises several unrelated types for a bad file
        raise ModelLoadError(name, version, str(e)) from None
    serving = session.get_providers()[0]
    if execution.missing == "require" and serving != providers[0]:  # onnxruntime fell back (no device, say)
        raise ModelLoadError(
            name, version, f"{providers[0]} did not start (onnxruntime fell back to {serving}); execution.missing: require"
        )
    if serving != providers[0]:
        log.warning("model %s version %s: %s did not start; %s serves it", name, version, providers[0], serving)
    served = ModelVersion(name, version, session, sha256)
    on_gpu = serving in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
    if execution.io_binding == "on" or (execution.io_binding == "auto" and on_gpu):
        device_id = next((p.device_id for p in execution.providers if ORT_PROVIDERS[p.name] == serving), 0)
        served.io_device = ("cuda", device_id) if on_gpu else ("cpu", 0)
    return served


assert set(_ORT_TO_OIP.values()) == set(DATATYPES)
