"""What the registry and the policy read from an ONNX model: its signature, opsets and operators."""

from __future__ import annotations

from typing import Any

import onnx

__all__ = ["onnx_operators", "onnx_opsets", "onnx_signature"]

# ONNX tensor element types -> Open Inference Protocol datatypes.
_ELEM_TO_OIP = {
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.STRING: "BYTES",
}


def _tensors(values: Any, skip: set[str]) -> list[dict[str, Any]]:
    out = []
    for v in values:
        if v.name in skip:
            continue
        tt = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        out.append({"name": v.name, "datatype": _ELEM_TO_OIP.get(tt.elem_type, f"ONNX:{tt.elem_type}"), "shape": dims})
    return out


def onnx_opsets(model: onnx.ModelProto) -> dict[str, int]:
    """Opset version by domain, the default domain named 'ai.onnx'."""
    return {(o.domain or "ai.onnx"): o.version for o in model.opset_import}


def onnx_operators(model: onnx.ModelProto) -> frozenset[str]:
    """Operators of the main graph: 'Op' in the default domain, 'domain::Op' elsewhere."""
    return frozenset(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in model.graph.node)


def onnx_signature(model: onnx.ModelProto) -> dict[str, Any]:
    """Inputs and outputs of the graph (initializers excluded), with -1 for dynamic dimensions."""
    inits = {i.name for i in model.graph.initializer}
    return {"inputs": _tensors(model.graph.input, inits), "outputs": _tensors(model.graph.output, set())}
