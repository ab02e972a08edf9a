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


def test_plugins_add_their_commands_through_the_hook():
    """keys, policy, sbom, audit and the approval commands are the governance and audit plugins'
    (lockgate_register_commands): blocked plugins take their commands with them."""
    import os
    import subprocess
    import sys

    def commands(env: dict[str, str]) -> str:
        run = subprocess.run(
            [sys.executable, "-m", "lockgate.server.cli", "--help"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.split("Commands:", 1)[1]

    def models(env: dict[str, str]) -> str:
        run = subprocess.run(
            [sys.executable, "-m", "lockgate.server.cli", "models", "--help"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        return run.stdout

    everything = commands({})
    for name in ("audit", "keys", "policy", "sbom", "serve", "models", "report"):
        assert f"\n  {name} " in everything, everything
    assert "approve" in models({}) and "revoke" in models({})
    core = commands({"LOCKGATE_PLUGINS_BLOCK": "governance,audit"})
    for name in ("audit", "keys", "policy", "sbom"):
        assert f"\n  {name} " not in core, core
    assert "\n  serve " in core and "approve" not in models({"LOCKGATE_PLUGINS_BLOCK": "governance"})
