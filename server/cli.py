"""The ``lockgate`` command line."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import click

from ._errors import LockgateError

__all__ = ["main"]


def _fail(error: Exception) -> None:
    click.secho(f"error: {error}", fg="red", err=True)
    sys.exit(2)


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


def _example(entry) -> str:
    """A curl command that works as printed against the first model."""
    import json

    import numpy as np

    from .model import load_version

    version = load_version(entry.name, entry.versions[0], entry.files[entry.versions[0]], entry.config.onnxruntime)
    inputs = []
    for spec in version.inputs:
        shape = [1 if d == -1 else d for d in spec.shape]
        n = int(np.prod(shape)) if shape else 1
        sample = {"BOOL": True, "BYTES": "text"}.get(spec.datatype, 1.0 if spec.datatype.startswith("FP") else 1)
        if entry.name == "iris" and spec.datatype == "FP32" and n == 4:
            data = [5.1, 3.5, 1.4, 0.2]
        else:
            data = [sample] * n
        inputs.append({"name": spec.name, "datatype": spec.datatype, "shape": shape, "data": data})
    body = json.dumps({"inputs": inputs}, separators=(",", ":"))
    return body


@main.command()
@click.option(
    "--model-repository",
    "repository",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Triton-style model repository: <dir>/<model>/<version>/model.onnx and an optional config.yaml.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="HTTP port.")
@click.option("--address", default=None, help="Join this running Ray cluster instead of starting a local one.")
@click.option("--verbose", is_flag=True, help="Show Ray's and the replicas' logs.")
def serve(repository: Path, host: str, port: int, address: str | None, verbose: bool) -> None:
    """Serve every model of a model repository over HTTP (Open Inference Protocol v2).

    Starts a local Ray (or joins --address), deploys one Serve application per
    model at /v2/models/<name> and the control routes at /v2. Ctrl-C or SIGTERM
    stops everything it started.
    """
    from .repository import scan_repository
    from .runtime import Runtime

    try:
        entries = scan_repository(repository)
    except LockgateError as e:
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
        runtime.deploy(entries)
        shown = next((e for e in entries if e.name == "iris"), entries[0])
        url_host = f"[{host}]" if ":" in host else ("127.0.0.1" if host in ("0.0.0.0", "") else host)
        base = f"http://{url_host}:{port}"
        click.secho(f"lockgate is serving {len(entries)} model(s) on {base}", fg="green")
        click.echo(f"  models: {', '.join(e.name for e in entries)}")
        click.echo("try:")
        click.echo(f"  curl -s {base}/v2/health/ready")
        click.echo(f"  curl -s {base}/v2/models/{shown.name}")
        click.echo(f"  curl -s -X POST {base}/v2/models/{shown.name}/infer -H 'Content-Type: application/json' -d '{_example(shown)}'")
        click.echo("Ctrl-C stops the server.")
        while not stop.wait(0.5):
            pass
    except LockgateError as e:
        click.secho(f"error: {e}", fg="red", err=True)
        code = 2
    finally:
        click.echo("shutting down ...")
        runtime.shutdown()
        click.echo("stopped.")
    sys.exit(code)


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


if __name__ == "__main__":
    main()
