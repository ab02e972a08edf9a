"""What lockgate reads inside a model: operators in every graph (the policy and the SBOM), and
tensor data kept outside the model file, which is refused at registration, by `policy check`
and before every load."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from lockgate.plugins import Settings, build_manager
from lockgate.plugins.errors import RegistrationError
from lockgate.plugins.shared import external_data_tensors, onnx_operators
from lockgate.server.cli import main
from lockgate.server.errors import ModelLoadError
from lockgate.server.serving.config import OnnxRuntimeConfig
from lockgate.server.serving.model import load_version

OPSET = [helper.make_opsetid("", 17)]


def with_external_weights(location: str) -> onnx.ModelProto:
    """y = x + W, where W's data is said to be in ``location`` (external data)."""
    weights = numpy_helper.from_array(np.zeros((1, 4), np.float32), "W")
    weights.ClearField("raw_data")
    weights.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"])],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weights],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def with_branch(then_op: str, constant: onnx.TensorProto | None = None) -> onnx.ModelProto:
    """If(cond) then ``then_op``(x, x) else x: the operator appears only inside a branch."""
    then_nodes = [helper.make_node(then_op, ["x", "x"], ["t"])]
    if constant is not None:  # a Constant node inside the branch carries a tensor attribute
        then_nodes = [helper.make_node("Constant", [], ["c"], value=constant), helper.make_node(then_op, ["x", "c"], ["t"])]
    then_branch = helper.make_graph(then_nodes, "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])])
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"])], "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])]
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)],
        "branch",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return helper.make_model(graph, opset_imports=OPSET)


@pytest.fixture
def manager(tmp_path):
    options = {"governance": {"policy": {"forbidden_operators": ["Mul"]}}}
    made = build_manager(
        Settings(f"sqlite:///{tmp_path}/registry.db", str(tmp_path / "artifacts"), "production", options, str(tmp_path))
    )
    yield made
    made.plugin("audit").close()


def test_an_operator_inside_a_branch_is_seen_by_the_policy_and_the_sbom(manager, tmp_path):
    model = with_branch("Mul")
    assert onnx_operators(model) == {"If", "Mul", "Identity"}
    path = tmp_path / "branch.onnx"
    onnx.save(model, str(path))
    with pytest.raises(RegistrationError, match="operator 'Mul' is forbidden"):
        manager.registry().register(path, "branchy", created_by="alice")
    from lockgate.plugins.governance import build_sbom
    from lockgate.plugins.registry import Registry

    record = Registry(f"sqlite:///{tmp_path}/plain.db", tmp_path / "plain-artifacts").register(
        path, "branchy", created_by="alice"
    )
    sbom = build_sbom([(record, path.read_bytes(), [])])
    props = {p["name"]: p["value"] for c in sbom["components"] if c["name"] == "branchy" for p in c["properties"]}
    assert set(props["lockgate:operators"].split(",")) == {"If", "Mul", "Identity"}


def test_external_data_is_refused_at_registration_and_nothing_is_read(manager, tmp_path):
    secret = tmp_path / ".env"
    secret.write_bytes(b"PASSWORD=hunter2" + b"\0" * 16)
    path = tmp_path / "external.onnx"
    onnx.save(with_external_weights(".env"), str(path))
    with pytest.raises(RegistrationError, match=r"keeps tensor data outside the model file \(external data: W \(.env\)\)"):
        manager.registry().register(path, "leaky", created_by="alice")
    assert "leaky" not in manager.registry().list_models()


def test_external_data_anywhere_is_found(tmp_path):
    """In a Constant node's tensor inside a branch, and in a sparse initializer."""
    hidden = numpy_helper.from_array(np.ones((1, 4), np.float32), "hidden")
    hidden.ClearField("raw_data")
    hidden.data_location = TensorProto.EXTERNAL
    entry = hidden.external_data.add()
    entry.key, entry.value = "location", "../audit.key"
    assert external_data_tensors(with_branch("Add", constant=hidden)) == ["hidden (../audit.key)"]
    model = with_external_weights("w.bin")
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.ones(1, np.float32), "values"), numpy_helper.from_array(np.zeros(1, np.int64), "indices"), [4]
    )
    sparse.values.data_location = TensorProto.EXTERNAL
    model.graph.sparse_initializer.append(sparse)
    assert external_data_tensors(model) == ["W (w.bin)", "values (?)"]


def test_policy_check_names_external_data(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCKGATE_HOME", str(tmp_path / "home"))
    path = tmp_path / "external.onnx"
    onnx.save(with_external_weights("weights.bin"), str(path))
    result = CliRunner().invoke(main, ["policy", "check", str(path)])
    assert result.exit_code == 1, result.output
    assert "keeps tensor data outside the model file (external data: W (weights.bin))" in result.output


def test_a_model_with_external_data_is_never_loaded_whatever_registered_it(tmp_path, monkeypatch):
    """The replica's last word: it would read the named file relative to its working directory."""
    (tmp_path / "weights.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    monkeypatch.chdir(tmp_path)
    data = with_external_weights("weights.bin").SerializeToString()
    with pytest.raises(ModelLoadError, match=r"keeps tensor data outside the model file, which is refused: W \(weights.bin\)"):
        load_version("leaky", 1, data, OnnxRuntimeConfig())
