from __future__ import annotations

from click.testing import CliRunner

from lockgate.server.cli import main


def test_help_documents_every_command():
    runner = CliRunner()
    top = runner.invoke(main, ["--help"])
    assert top.exit_code == 0
    for command in main.commands:
        assert command in top.output
        sub = runner.invoke(main, [command, "--help"])
        assert sub.exit_code == 0 and "Usage:" in sub.output
    serve = runner.invoke(main, ["serve", "--help"]).output
    for option in ("--model-repository", "--host", "--port", "--address"):
        assert option in serve
    assert "127.0.0.1" in serve


def test_demo_repo_writes_the_models(tmp_path):
    result = CliRunner().invoke(main, ["demo-repo", str(tmp_path), "--model", "mlp"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mlp" / "1" / "model.onnx").is_file()
    bad = CliRunner().invoke(main, ["demo-repo", str(tmp_path), "--model", "resnet"])
    assert bad.exit_code == 2 and "unknown demo model" in bad.output
