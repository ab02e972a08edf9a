"""What the registry and the policy read from an ONNX model: its signature, opsets, operators
(in every graph: the main one, the subgraphs of control-flow nodes, the model's functions) and
the tensors that keep their data outside the model file."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import onnx

__all__ = ["external_data_tensors", "onnx_nodes", "onnx_operators", "onnx_opsets", "onnx_signature"]

_A = onnx.AttributeProto


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attribute in node.attribute:
        if attribute.type == _A.GRAPH:
            yield attribute.g
        elif attribute.type == _A.GRAPHS:
            yield from attribute.graphs


def _graph_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for sub in _subgraphs(node):
            yield from _graph_nodes(sub)


def onnx_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node: of the main graph, of each subgraph (If, Loop, Scan bodies, at any depth) and
    of each function the model defines (and their subgraphs)."""
    yield from _graph_nodes(model.graph)
    for function in model.functions:
        for node in function.node:
            yield node
            for sub in _subgraphs(node):
                yield from _graph_nodes(sub)


def _graphs(model: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    def walk(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
        yield graph
        for node in graph.node:
            for sub in _subgraphs(node):
                yield from walk(sub)

    yield from walk(model.graph)
    for function in model.functions:
        for node in function.node:
            for sub in _subgraphs(node):
                yield from walk(sub)


def _data_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor that can carry data: initializers, sparse initializers' values and indices,
    and tensor attributes of every node (Constant values, ...), in every graph and function."""
    for graph in _graphs(model):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
    for node in onnx_nodes(model):
        for attribute in node.attribute:
            if attribute.type == _A.TENSOR:
                yield attribute.t
            elif attribute.type == _A.TENSORS:
                yield from attribute.tensors
            elif attribute.type == _A.SPARSE_TENSOR:
                yield attribute.sparse_tensor.values
                yield attribute.sparse_tensor.indices
            elif attribute.type == _A.SPARSE_TENSORS:
                for sparse in attribute.sparse_tensors:
                    yield sparse.values
                    yield sparse.indices


def external_data_tensors(model: onnx.ModelProto) -> list[str]:
    """The tensors whose data lives outside the model file (``data_location: EXTERNAL``), as
    'name (location)'. lockgate stores and hashes the model file only, so such data would be
    read from wherever the location points when the model loads: it is refused."""
    found = []
    for tensor in _data_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            found.append(f"{tensor.name or '(unnamed)'} ({location})")
    return found


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
    """Operators of every node (``onnx_nodes``): 'Op' in the default domain, 'domain::Op' elsewhere."""
    return frozenset(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in onnx_nodes(model))


def onnx_signature(model: onnx.ModelProto) -> dict[str, Any]:
    """Inputs and outputs of the graph (initializers excluded), with -1 for dynamic dimensions."""
    inits = {i.name for i in model.graph.initializer}
    return {"inputs": _tensors(model.graph.input, inits), "outputs": _tensors(model.graph.output, set())}
