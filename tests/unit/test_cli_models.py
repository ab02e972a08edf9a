"""`lockgate models ...` and `lockgate plugins list` against a SQLite registry in a temporary home."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import onnx
import pytest
from click.testing import CliRunner

from lockgate.server.cli import main
from lockgate.server.tools.demo import build_mlp


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCKGATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LOCKGATE_ACTOR", "alice")
    runner = CliRunner()

    def run(*args, ok=True, actor=None):
        result = runner.invoke(main, list(args), catch_exceptions=False, env={"LOCKGATE_ACTOR": actor} if actor else None)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return run


@pytest.fixture
def model_files(tmp_path):
    paths = []
    for seed in (0, 1):
        p = tmp_path / f"mlp{seed}.onnx"
        onnx.save(build_mlp(seed=seed), str(p))
        paths.append(p)
    (tmp_path / "card.md").write_text("# MLP\nFor tests.")
    return paths


def test_register_list_show_alias_history(cli, model_files, tmp_path):
    out = cli(
        "models",
        "register",
        str(model_files[0]),
        "--name",
        "mlp",
        "--training-data",
        "s3://data/train.csv",
        "--training-data-sha256",
        "cd" * 32,
        "--code-version",
        "v1.2",
        "--param",
        "lr=0.01",
        "--param",
        "opt=adam",
        "--metric",
        "acc=0.93",
        "--card",
        str(tmp_path / "card.md"),
    ).output
    assert "registered mlp version 1" in out
    assert (
        "registered mlp version 2"
        in cli("models", "register", str(model_files[1]), "--name", "mlp", "--parent-version", "1").output
    )
    refused = cli("models", "alias", "set", "mlp", "production", "1", ok=False)
    assert refused.exit_code == 4 and "protected alias and version 1 is pending" in refused.output
    cli("models", "approve", "mlp", "1", actor="bob")
    cli("models", "approve", "mlp", "2", actor="bob")
    assert "mlp@production -> version 1" in cli("models", "alias", "set", "mlp", "production", "1").output
    before = datetime.now(timezone.utc).isoformat()
    assert "(was 1)" in cli("models", "alias", "set", "mlp", "production", "2").output
    listed = cli("models", "list").output
    assert "mlp" in listed and "1,2" in listed and "production=2" in listed
    shown = json.loads(cli("models", "show", "mlp:1").output)
    assert shown["lineage"] == {
        "training_data": "s3://data/train.csv",
        "training_data_sha256": "cd" * 32,
        "code_version": "v1.2",
        "parameters": {"lr": 0.01, "opt": "adam"},
        "metrics": {"acc": 0.93},
    }
    assert shown["card"].startswith("# MLP") and shown["created_by"] == "alice" and shown["aliases"] == []
    assert json.loads(cli("models", "show", "mlp@production").output)["version"] == 2
    assert json.loads(cli("models", "show", "mlp").output)["lineage"] == {"parent_version": 1}
    history = cli("models", "history", "mlp").output.strip().splitlines()
    assert len(history) == 2 and "-> 2 (was 1)  by alice" in history[1]
    assert "mlp@production at" in cli("models", "history", "mlp", "--at", before).output
    assert cli("models", "history", "mlp", "--at", before).output.strip().endswith(": 1")


def test_errors_are_clear(cli, model_files, tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"nope")
    bad = cli("models", "register", str(tmp_path / "junk.onnx"), "--name", "x", ok=False)
    assert bad.exit_code == 2 and "not an ONNX model" in bad.output
    assert "unknown model 'ghost'" in cli("models", "show", "ghost", ok=False).output
    cli("models", "register", str(model_files[0]), "--name", "mlp")
    assert "has no version 9" in cli("models", "alias", "set", "mlp", "production", "9", ok=False).output
    assert (
        "expected KEY=VALUE"
        in cli("models", "register", str(model_files[0]), "--name", "mlp", "--param", "oops", ok=False).output
    )


def test_import_repo_is_idempotent(cli, tmp_path):
    from lockgate.server.tools.demo import write_demo_repository

    write_demo_repository(tmp_path / "repo", ["mlp", "iris"])
    first = cli("models", "import-repo", str(tmp_path / "repo")).output
    assert "registered: iris version 1" in first and "registered: mlp version 1" in first
    assert "already registered: mlp version 1" in cli("models", "import-repo", str(tmp_path / "repo")).output
    assert "production=1" in cli("models", "list").output


def test_plugins_list_shows_the_builtin_registry(cli):
    out = cli("plugins", "list").output
    assert "registry" in out and "loaded" in out and "lockgate.plugins.registry:plugin" in out


def test_register_with_a_reference_sample_stores_it_with_its_baseline(cli, model_files, tmp_path):
    import numpy as np

    from lockgate.server.serving.settings import LockgateSettings

    sample = np.random.default_rng(0).standard_normal((500, 64))
    np.savetxt(tmp_path / "ref.csv", sample, delimiter=",", header=",".join(f"f{i}" for i in range(64)), comments="")
    out = cli("models", "register", str(model_files[0]), "--name", "mlp", "--reference", str(tmp_path / "ref.csv")).output
    assert "registered mlp version 1" in out and "reference sample of mlp version 1: 500 rows, 65 features" in out
    reference = LockgateSettings.from_env(anonymous=True).manager().registry().reference("mlp", 1)
    assert reference.rows == 500 and reference.set_by == "alice"
    np.testing.assert_allclose(reference.sample["input"], sample.astype(np.float32))
    assert (
        reference.baseline["features"]["input[0]"]["kind"] == "numeric"
        and len(reference.baseline["features"]["input[0]"]["expected"]) == 10
    )


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".parquet"])
def test_reference_formats(cli, model_files, tmp_path, suffix):
    import numpy as np

    sample = np.random.default_rng(1).standard_normal((300, 64)).astype(np.float32)
    path = tmp_path / f"ref{suffix}"
    if suffix == ".npy":
        np.save(path, sample)
    elif suffix == ".npz":
        np.savez(path, input=sample)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({f"f{i}": sample[:, i] for i in range(64)}), path)
    cli("models", "register", str(model_files[0]), "--name", "mlp")
    assert "300 rows" in cli("models", "reference", "mlp", "1", str(path)).output


@pytest.mark.parametrize(
    "content, name, message",
    [
        ("1,2,3\n4,5,6\n", "ref.csv", "input 'input' has shape [-1, 64] in the model; the sample's is [2, 3]"),
        ("x", "ref.txt", "unknown reference format '.txt'"),
        ("a,b\nc,d\n", "ref.csv", "cannot read the reference sample"),
    ],
)
def test_a_reference_that_does_not_fit_refuses_the_registration(cli, model_files, tmp_path, content, name, message):
    (tmp_path / name).write_text(content)
    result = cli("models", "register", str(model_files[0]), "--name", "mlp", "--reference", str(tmp_path / name), ok=False)
    assert result.exit_code == 2 and message in result.output
    assert "no models registered" in cli("models", "list").output  # nothing written


def test_import_repo_stores_the_reference_samples_kept_next_to_model_files(cli, demo_repo):
    out = cli("models", "import-repo", str(demo_repo)).output
    assert "reference sample of iris version 1: 150 rows from reference.npy" in out
    assert "reference sample of mlp version 1: 2000 rows" in out and "reference sample of cnn" not in out
    again = cli("models", "import-repo", str(demo_repo)).output
    assert "reference sample" not in again  # kept, not replaced


def _key(cli, *args: str) -> str:
    """A new API key (the command prints it once, on its own line)."""
    out = cli("keys", "create", *args).output
    return next(line for line in out.splitlines() if line.startswith("lg_"))


def test_a_key_granted_some_models_imports_only_those(cli, tmp_path, monkeypatch):
    """import-repo (and serve --model-repository) ask the register grant for every model they
    would write: before, a deployer granted iris registered digits, and rewrote its config."""
    from lockgate.server.tools.demo import write_demo_repository

    write_demo_repository(tmp_path / "repo", ["iris", "digits"])
    admin = _key(cli, "--principal", "root", "--role", "admin")
    monkeypatch.setenv("LOCKGATE_API_KEY", admin)
    deployer = _key(cli, "--principal", "ci", "--role", "deployer", "--models", "iris")
    monkeypatch.setenv("LOCKGATE_API_KEY", deployer)
    refused = cli("models", "import-repo", str(tmp_path / "repo"), ok=False)
    assert refused.exit_code == 4 and "'ci' is not granted model 'digits'" in refused.output, refused.output
    monkeypatch.setenv("LOCKGATE_API_KEY", admin)
    assert "no models registered" in cli("models", "list").output  # nothing was written, iris included
    write_demo_repository(tmp_path / "only-iris", ["iris"])
    monkeypatch.setenv("LOCKGATE_API_KEY", deployer)
    assert "registered: iris version 1" in cli("models", "import-repo", str(tmp_path / "only-iris")).output


def test_a_new_key_holds_no_more_than_its_creator(cli, monkeypatch):
    """An admin granted one model cannot mint a key for every model, nor for another one."""
    root = _key(cli, "--principal", "root", "--role", "admin")
    monkeypatch.setenv("LOCKGATE_API_KEY", root)
    iris_admin = _key(cli, "--principal", "iris-admin", "--role", "admin", "--models", "iris")
    monkeypatch.setenv("LOCKGATE_API_KEY", iris_admin)
    for models, beyond in (("*", "every model"), ("iris,digits", "digits")):
        refused = cli("keys", "create", "--principal", "x", "--role", "invoker", "--models", models, ok=False)
        assert refused.exit_code == 4, refused.output
        assert f"'iris-admin' is granted iris only and may not create a key for {beyond}" in refused.output
    assert _key(cli, "--principal", "app", "--role", "invoker", "--models", "iris").startswith("lg_")
    monkeypatch.setenv("LOCKGATE_API_KEY", _key(cli, "--principal", "viewer-maker", "--role", "viewer", "--models", "iris"))
    refused = cli("keys", "create", "--principal", "y", "--role", "admin", "--models", "iris", ok=False)
    assert refused.exit_code == 4  # a viewer may not create keys at all
