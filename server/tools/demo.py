"""Demo model repository: real models built from data that ships inside installed packages.

- ``iris``: logistic regression on scikit-learn's iris data, converted with skl2onnx.
- ``digits``: a multi-layer perceptron classifier on scikit-learn's 8x8 digits, converted with skl2onnx.
- ``mlp``: a 64 -> 256 -> 256 -> 10 fp32 MLP built with onnx.helper (the latency benchmark's model).
- ``identity``: one Identity per OIP datatype, for protocol round trips of every datatype.
- ``cnn``: a small image classifier taking uint8 HWC images, normalised in the fast path.

Nothing is downloaded: the data sets are files inside scikit-learn's package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import require_extra

__all__ = [
    "DEMO_MODELS",
    "IDENTITY_TYPES",
    "IMAGE_SCALE",
    "IMAGE_SHIFT",
    "IMAGE_SIZE",
    "build_cnn",
    "build_identity",
    "build_mlp",
    "write_demo_repository",
]

OPSET = 17

# OIP datatype -> ONNX element type, for the identity model.
IDENTITY_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _save(model: onnx.ModelProto, repo: Path, name: str, config: str, version: int = 1) -> Path:
    onnx.checker.check_model(model)
    target = repo / name / str(version)
    target.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target / "model.onnx"))
    (repo / name / "config.yaml").write_text(config, encoding="utf-8")
    return target / "model.onnx"


def build_mlp(seed: int = 0, sizes: tuple[int, ...] = (64, 256, 256, 10)) -> onnx.ModelProto:
    """A ReLU MLP with fixed random weights; input ``input`` [-1, 64] FP32, output ``logits`` [-1, 10]."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "input"
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = np.zeros(fan_out, dtype=np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(sizes) - 2
        out = "logits" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out if last else f"z{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", sizes[-1]])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lockgate")


def build_cnn(seed: int = 0, size: int | None = None) -> onnx.ModelProto:
    """A small image classifier: ``image`` [-1, 3, size, size] FP32 -> ``logits`` [-1, 10].

    Three 3x3 convolutions (3->32, 32->64 stride 2, 64->64 stride 2) with ReLU, global average
    pool, Gemm 64->10, fixed random weights: about 145 MFLOP an image at 96x96, so compute
    dominates. Served with uint8 HWC input normalised in the fast path.
    """
    size = size or IMAGE_SIZE
    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    inits, nodes, current = [], [], "image"
    for i, (cin, cout, stride) in enumerate(((3, 32, 1), (32, 64, 2), (64, 64, 2))):
        inits += [
            numpy_helper.from_array(weights(cout, cin, 3, 3), f"c{i}w"),
            numpy_helper.from_array(np.zeros(cout, np.float32), f"c{i}b"),
        ]
        nodes += [
            helper.make_node("Conv", [current, f"c{i}w", f"c{i}b"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[stride, stride]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        current = f"r{i}"
    inits += [numpy_helper.from_array(weights(64, 10), "fw"), numpy_helper.from_array(np.zeros(10, np.float32), "fb")]
    nodes += [
        helper.make_node("GlobalAveragePool", [current], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lockgate")


IMAGE_SIZE = 96

# ImageNet's mean and std, as the per-channel shift and scale of uint8 pixels.
IMAGE_SCALE = [1 / (255 * 0.229), 1 / (255 * 0.224), 1 / (255 * 0.225)]
IMAGE_SHIFT = [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]


def build_identity() -> onnx.ModelProto:
    """Inputs ``in_<TYPE>`` [-1, -1] to outputs ``out_<TYPE>`` unchanged, one pair per datatype."""
    inputs, outputs, nodes = [], [], []
    for name, elem in IDENTITY_TYPES.items():
        inputs.append(helper.make_tensor_value_info(f"in_{name}", elem, ["batch", "n"]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", elem, ["batch", "n"]))
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
    graph = helper.make_graph(nodes, "identity", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lockgate")


def _sklearn(estimator, data, name: str, n_features: int) -> onnx.ModelProto:
    to_onnx = _sklearn_module("skl2onnx").to_onnx
    tensor_type = _sklearn_module("skl2onnx.common.data_types").FloatTensorType

    estimator.fit(data.data.astype(np.float32), data.target)
    return to_onnx(
        estimator,
        initial_types=[("input", tensor_type([None, n_features]))],
        target_opset={"": OPSET, "ai.onnx.ml": 3},
        options={id(estimator): {"zipmap": False}},
        naming=name,
    )


def _sklearn_module(name: str) -> Any:
    return require_extra(name, "demo", "the iris and digits demo models")


def build_iris() -> onnx.ModelProto:
    load_iris = _sklearn_module("sklearn.datasets").load_iris
    logistic = _sklearn_module("sklearn.linear_model").LogisticRegression
    return _sklearn(logistic(max_iter=500), load_iris(), "iris_", 4)


def build_digits() -> onnx.ModelProto:
    load_digits = _sklearn_module("sklearn.datasets").load_digits
    mlp = _sklearn_module("sklearn.neural_network").MLPClassifier
    return _sklearn(mlp(hidden_layer_sizes=(64,), max_iter=300, random_state=0), load_digits(), "digits_", 64)


_BATCHED = "max_batch_size: 32\nnum_cpus: 0.25\n"

DEMO_MODELS = {
    # Triton's classification extension names iris's classes from this label file.
    "iris": (build_iris, _BATCHED + "labels:\n  probabilities: labels.txt\n"),
    "digits": (build_digits, _BATCHED),
    "mlp": (build_mlp, _BATCHED),
    "identity": (build_identity, "max_batch_size: 8\nnum_cpus: 0.1\n"),
    "cnn": (
        build_cnn,
        # Batches of 4 are onnxruntime's fastest per image for this model on one thread here.
        "max_batch_size: 4\nnum_cpus: 0.25\npreprocess:\n  image:\n    datatype: UINT8\n    layout: HWC\n"
        f"    scale: {IMAGE_SCALE}\n    shift: {IMAGE_SHIFT}\n",
    ),
}


def _reference(name: str) -> np.ndarray | None:
    """A reference sample of a tabular demo model's inputs (drift baseline, explanation background)."""
    if name == "iris":
        return _sklearn_module("sklearn.datasets").load_iris().data.astype(np.float32)
    if name == "digits":
        return _sklearn_module("sklearn.datasets").load_digits().data.astype(np.float32)
    if name == "mlp":
        return np.random.default_rng(7).standard_normal((2000, 64)).astype(np.float32)
    return None


def write_demo_repository(repo: Path | str, names: list[str] | None = None) -> list[Path]:
    """Write the demo models (all, or ``names``) into ``repo`` in Triton's layout; the tabular
    ones with a ``reference.npy`` next to their model file."""
    repo = Path(repo)
    written = []
    for name in names or list(DEMO_MODELS):
        build, config = DEMO_MODELS[name]
        path = _save(build(), repo, name, config)
        sample = _reference(name)
        if sample is not None:
            np.save(path.parent / "reference.npy", sample)
        if name == "iris":
            names = _sklearn_module("sklearn.datasets").load_iris().target_names
            (repo / name / "labels.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
        written.append(path)
    return written
