"""The ``lockgate`` command line."""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import threading
from pathlib import Path

import click

from ._cli_common import _fail, actor, checked_actor, settings_from, with_registry_options
from ._errors import LockgateError

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lockgate")
def main() -> None:
    """lockgate: low-latency, governed ONNX inference on Ray Serve (Open Inference Protocol v2)."""


@main.command("demo-repo")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", "models", multiple=True, help="Only this demo model (repeatable): iris, digits, mlp, identity.")
def demo_repo(directory: Path, models: tuple[str, ...]) -> None:
    """Write the demo model repository into DIRECTORY.

    The models are trained here from data sets that ship inside scikit-learn, or
    built with onnx.helper; nothing is downloaded.
    """
    from .demo import DEMO_MODELS, write_demo_repository

    unknown = [m for m in models if m not in DEMO_MODELS]
    if unknown:
        _fail(LockgateError(f"unknown demo model(s) {', '.join(unknown)}; choose from {', '.join(DEMO_MODELS)}"))
    for path in write_demo_repository(directory, list(models) or None):
        click.echo(f"wrote {path}")


def _example(record, config=None) -> str:
    """A request body that works as printed: the version's signature as clients see it
    (after the model's declared preprocessing), filled with sample values."""
    import json
    import math

    preprocess = config.preprocess if config is not None else {}
    inputs = []
    for spec in record.signature["inputs"]:
        shape, datatype = list(spec["shape"]), spec["datatype"]
        pre = preprocess.get(spec["name"])
        if pre is not None:
            datatype = pre.datatype or datatype
            if pre.layout == "HWC" and len(shape) == 4:
                shape = [shape[0], shape[2], shape[3], shape[1]]
        shape = [1 if d == -1 else d for d in shape]
        n = math.prod(shape)
        sample = {"BOOL": True, "BYTES": "text"}.get(datatype, 1.0 if datatype.startswith("FP") else 1)
        data = [5.1, 3.5, 1.4, 0.2] if record.name == "iris" and n == 4 else [sample] * n
        inputs.append({"name": spec["name"], "datatype": datatype, "shape": shape, "data": data})
    return json.dumps({"inputs": inputs}, separators=(",", ":"))


@main.command()
@click.option(
    "--model-repository",
    "repository",
    default=None,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Triton-style model repository to register and serve: <dir>/<model>/<version>/model.onnx and an "
    "optional config.yaml. Without it, every model of the registry is served.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="HTTP port.")
@click.option("--address", default=None, help="Join this running Ray cluster instead of starting a local one.")
@with_registry_options
@click.option("--verbose", is_flag=True, help="Show Ray's and the replicas' logs.")
@click.option("--insecure", is_flag=True, help="Allow serving without API keys on an interface other than loopback.")
def serve(
    repository: Path | None, host: str, port: int, address: str | None, registry_url: str | None, artifact_dir: str | None, verbose: bool, insecure: bool
) -> None:
    """Serve models over HTTP (Open Inference Protocol v2).

    Registers the --model-repository into the registry (idempotently; a model without a
    'production' alias gets it on its highest version), starts a local Ray (or joins
    --address), deploys one Serve application per model at /v2/models/<name> and the
    control routes at /v2. Ctrl-C or SIGTERM stops everything it started.
    """
    from ._cli_governance import open_mode_approver
    from .config import ModelConfig
    from .explain import explain_options
    from .limits import limit_options
    from .repository import import_repository
    from .runtime import Runtime

    try:
        settings = settings_from(registry_url, artifact_dir)
        manager = settings.manager()
        open_mode = _check_governance(manager, host, insecure)
        explain_options(settings.options)
        limit_options(settings.options)
        registry = manager.registry()
        if repository is not None:
            refused: list[str] = []
            who = checked_actor(manager, "register")
            imported = import_repository(
                repository, registry, actor=who, default_alias=settings.default_alias,
                before_alias=open_mode_approver(manager), refused=refused,
            )
            for name, version, new in imported:
                click.echo(f"{'registered' if new else 'already registered'}: {name} version {version}")
            for line in refused:
                click.secho(f"not aliased: {line}", fg="yellow")
            from .reference import import_references

            for line in import_references(manager, repository, imported, actor=who):
                click.echo(line)
            names = sorted({name for name, _, _ in imported})
        else:
            names = [n for n in registry.list_models() if registry.versions(n)]
        if not names:
            raise LockgateError("the registry holds no models; give --model-repository or `lockgate models register`")
        models = {n: ModelConfig.model_validate(registry.model_config(n)) for n in names}
        shown_name = "iris" if "iris" in names else names[0]
        shown = manager.hook.lockgate_resolve_model(name=shown_name, reference=None)
    except (LockgateError, LookupError, ValueError) as e:
        _fail(e)
    stop = threading.Event()

    def trap() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())

    trap()
    runtime = Runtime(host=host, port=port, address=address, progress=click.echo, verbose=verbose)
    code = 0
    try:
        runtime.start()
        trap()  # Ray's core worker installs its own SIGTERM handler in ray.init; ours must win
        if stop.is_set():
            return
        runtime.deploy(models, settings)
        served = {n: registry.aliases(n) for n in models}
        # The options by digest, not by value: they may hold database URLs with passwords.
        options = hashlib.sha256(json.dumps(settings.options, sort_keys=True, default=str).encode()).hexdigest()
        manager.audit("server_start", actor(), detail={"host": host, "port": port, "aliases": served, "options_sha256": options})
        url_host = f"[{host}]" if ":" in host else ("127.0.0.1" if host in ("0.0.0.0", "") else host)
        base = f"http://{url_host}:{port}"
        click.secho(f"lockgate is serving {len(models)} model(s) on {base}", fg="green")
        if open_mode:
            click.secho(
                "  open mode: no API keys exist, so anyone who can reach this address may call every model; "
                "create one with `lockgate keys create --principal NAME --role admin`",
                fg="yellow",
            )
        click.echo(f"  models: {', '.join(models)}; registry: {settings.registry_url}")
        click.echo("try:")
        click.echo(f"  curl -s {base}/v2/health/ready")
        click.echo(f"  curl -s {base}/v2/models/{shown_name}")
        click.echo(f"  curl -s -X POST {base}/v2/models/{shown_name}/infer -H 'Content-Type: application/json' -d '{_example(shown, models[shown_name])}'")
        click.echo(f"  curl -s {base}/metrics")
        click.echo("Ctrl-C stops the server.")
        while not stop.wait(0.5):
            pass
    except LockgateError as e:
        click.secho(f"error: {e}", fg="red", err=True)
        code = 2
    finally:
        click.echo("shutting down ...")
        runtime.shutdown()
        manager.audit("server_stop", actor(), detail={"host": host, "port": port, "exit_code": code})
        click.echo("stopped.")
    sys.exit(code)


def _check_governance(manager, host: str, insecure: bool) -> bool:
    """Refuse what the governance plugin forbids at start; True in open mode (no keys yet)."""
    for status in manager.failed():
        click.secho(f"warning: plugin {status.name} failed: {status.error}", fg="yellow", err=True)
    audit = manager.plugin("audit")
    if audit is not None and audit.error:
        raise LockgateError(f"refusing to start: {audit.error} (every answer would be withheld)")
    monitoring = manager.plugin("monitoring")
    if monitoring is not None and monitoring.error:
        raise LockgateError(f"refusing to start: {monitoring.error}")

    governance = manager.plugin("governance")
    if governance is None:
        click.secho("warning: the governance plugin is not loaded: no authentication, approval or policy", fg="yellow", err=True)
        return False
    if governance.error:
        raise LockgateError(governance.error)
    problem = governance.options.policy.runtime_problem()
    if problem is not None:
        raise LockgateError(f"refusing to start: {problem}")
    open_mode = governance.open_mode()
    loopback = host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
    if open_mode and not loopback and not insecure:
        raise LockgateError(
            f"refusing to serve on {host} without API keys: anyone on the network could call every model. "
            "Create a key (`lockgate keys create --principal NAME --role admin`), bind 127.0.0.1, or pass --insecure"
        )
    return open_mode


@main.command()
def cleanup() -> None:
    """Stop HAProxy processes left behind by a lockgate or Serve run that was killed."""
    from .runtime import orphaned_haproxy_pids, stop_haproxy

    pids = orphaned_haproxy_pids()
    if not pids:
        click.echo("nothing to clean up")
        return
    stop_haproxy(pids)
    click.echo(f"stopped HAProxy (pid {', '.join(map(str, pids))})")


from ._cli_audit import audit as _audit_group  # noqa: E402
from ._cli_governance import approval_commands as _approval_commands  # noqa: E402
from ._cli_governance import keys as _keys_group  # noqa: E402
from ._cli_governance import policy as _policy_group  # noqa: E402
from ._cli_governance import sbom as _sbom_command  # noqa: E402
from ._cli_metrics import metrics as _metrics_command  # noqa: E402
from ._cli_models import models as _models_group  # noqa: E402
from ._cli_models import plugins as _plugins_group  # noqa: E402
from ._cli_report import report as _report_command  # noqa: E402

for _command in _approval_commands:
    _models_group.add_command(_command)
for _command in (_models_group, _plugins_group, _keys_group, _policy_group, _sbom_command, _audit_group, _report_command, _metrics_command):
    main.add_command(_command)

if __name__ == "__main__":
    main()
