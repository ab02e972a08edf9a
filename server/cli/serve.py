"""``lockgate serve``, ``lockgate cleanup`` and ``lockgate demo-repo``: running the server."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from lockgate.plugins import PluginManager
from lockgate.plugins.shared import actor, fail, registry_options

from ..errors import LockgateError, StartupError
from ..serving.logs import JsonFormatter, json_stdio
from ..serving.logs import configure as configure_logs
from .common import import_actor, is_loopback, settings_from

__all__ = ["cleanup", "demo_repo", "serve"]


@click.command("demo-repo")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", "models", multiple=True, help="Only this demo model (repeatable): iris, digits, mlp, identity.")
def demo_repo(directory: Path, models: tuple[str, ...]) -> None:
    """Write the demo model repository into DIRECTORY.

    The models are trained here from data sets that ship inside scikit-learn, or
    built with onnx.helper; nothing is downloaded.
    """
    from ..tools.demo import DEMO_MODELS, write_demo_repository

    unknown = [m for m in models if m not in DEMO_MODELS]
    if unknown:
        fail(LockgateError(f"unknown demo model(s) {', '.join(unknown)}; choose from {', '.join(DEMO_MODELS)}"))
    try:
        written = write_demo_repository(directory, list(models) or None)
    except LockgateError as e:
        fail(e)
    for path in written:
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


@click.command()
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
@click.option(
    "--grpc-port",
    default=None,
    type=click.IntRange(0, 65535),
    help="Port of the OIP gRPC service (inference.GRPCInferenceService), on --host; 0: no gRPC. "
    "Default: --port + 1 (8001 for 8000), or a free port where that one is taken.",
)
@click.option("--address", default=None, help="Join this running Ray cluster instead of starting a local one.")
@registry_options
@click.option("--verbose", is_flag=True, help="Show Ray's and the replicas' logs.")
@click.option("--insecure", is_flag=True, help="Allow serving without API keys on an interface other than loopback.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    envvar="LOCKGATE_LOG_FORMAT",
    default="text",
    show_default=True,
    help="json: everything this server and its replicas print is one JSON object per line; a request's "
    "lines carry its request_id and the trace_id of its W3C traceparent header. Env LOCKGATE_LOG_FORMAT.",
)
@click.option("--access-log", is_flag=True, help="One log line per inference request (logger lockgate.access).")
def serve(
    repository: Path | None,
    host: str,
    port: int,
    grpc_port: int | None,
    address: str | None,
    registry_url: str | None,
    artifact_dir: str | None,
    verbose: bool,
    insecure: bool,
    log_format: str,
    access_log: bool,
) -> None:
    """Serve models over HTTP (Open Inference Protocol v2).

    Registers the --model-repository into the registry (idempotently; a model without a
    'production' alias gets it on its highest version), starts a local Ray (or joins
    --address), deploys one Serve application per model at /v2/models/<name> and the
    control routes at /v2. Ctrl-C or SIGTERM stops everything it started.
    """
    say = _Say(log_format)
    restore_stdio = _log_environment(log_format, access_log)  # before Ray is imported: it reads the environment once
    from ..hosting.runtime import Runtime, port_or_free
    from ..serving.config import ModelConfig
    from ..serving.explain import explain_options
    from ..serving.limits import limit_options
    from ..serving.settings import host_port, replica_options
    from ..tools.reference import import_references
    from ..tools.repository import announce_imports, import_repository

    try:
        # Anonymous callers (open mode, while no API key exists) only on a loopback-only server,
        # or when the operator said --insecure; the replicas enforce it (Settings.anonymous).
        if grpc_port is None:  # derived, so a second server on another --port needs no flag
            grpc_port = port_or_free(host, port + 1, avoid={port}) if port < 65535 else 0
        grpc_address = None if grpc_port == 0 else host_port(host, grpc_port)
        settings = replace(
            settings_from(registry_url, artifact_dir), anonymous=is_loopback(host) or insecure, grpc_address=grpc_address
        )
        manager = settings.manager()
        _check_startup(manager, host, insecure, say)
        explain_options(settings.options)
        limit_options(settings.options)
        replica_options(settings.options)
        registry = manager.registry()
        if repository is not None:
            refused: list[str] = []
            who = import_actor(manager, repository)
            imported = import_repository(
                repository,
                registry,
                actor=who,
                default_alias=settings.default_alias,
                before_alias=announce_imports(manager, who),
                refused=refused,
            )
            for name, version, new in imported:
                say(f"{'registered' if new else 'already registered'}: {name} version {version}")
            for line in refused:
                say(f"not aliased: {line}", "WARNING")
            for line in import_references(manager, repository, imported, actor=who):
                say(line)
            names = sorted({name for name, _, _ in imported})
        else:
            names = [n for n in registry.list_models() if registry.versions(n)]
        if not names:
            raise LockgateError("the registry holds no models; give --model-repository or `lockgate models register`")
        models = {n: ModelConfig.model_validate(registry.model_config(n)) for n in names}
        shown_name = "iris" if "iris" in names else names[0]
        shown = manager.hook.lockgate_resolve_model(name=shown_name, reference=None) or registry.resolve(shown_name)
    except (LockgateError, LookupError, ValueError) as e:
        fail(e)
    stop = threading.Event()

    def trap() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())

    trap()
    runtime = Runtime(
        host=host,
        port=port,
        address=address,
        progress=say,
        verbose=verbose,
        grpc_port=grpc_port,
        forward_logs=verbose or log_format == "json",
        json_logs=log_format == "json",
    )
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
        _announce(host, port, grpc_port, models, manager, settings.registry_url, runtime.ports, shown, say)
        while not stop.wait(0.5):
            pass
    except LockgateError as e:
        say(f"error: {e}", "ERROR", err=True)
        code = 2
    finally:
        say("shutting down ...")
        runtime.shutdown()
        manager.audit("server_stop", actor(), detail={"host": host, "port": port, "exit_code": code})
        say("stopped.")
        restore_stdio()
    sys.exit(code)


def _without_password(url: str) -> str:
    """A database URL as it may be printed: its password masked."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: print none of it
        return "(a URL SQLAlchemy cannot read)"


def _check_startup(manager: PluginManager, host: str, insecure: bool, say: _Say | None = None) -> None:
    """Refuse to start when a start-up gatekeeper says so (``lockgate_check_startup``)."""
    say = say or _Say("text")
    for status in manager.failed():
        say(f"warning: plugin {status.name} failed: {status.error}", "WARNING", err=True)
    if not manager.has("lockgate_authenticate"):
        say("warning: no authentication plugin is loaded: every caller is anonymous and may do everything", "WARNING", err=True)
    denials = manager.check_startup(host, insecure)
    if denials:
        raise StartupError("; ".join(d.reason or f"refused by plugin '{d.plugin}'" for d in denials))


@click.command()
def cleanup() -> None:
    """Stop HAProxy processes left behind by a lockgate or Serve run that was killed."""
    from ..hosting.serve_compat import orphaned_haproxy_pids, stop_haproxy

    pids = orphaned_haproxy_pids()
    if not pids:
        click.echo("nothing to clean up")
        return
    stop_haproxy(pids)
    click.echo(f"stopped HAProxy (pid {', '.join(map(str, pids))})")


def _announce(
    host: str,
    port: int,
    grpc_port: int,
    models: dict[str, Any],
    manager: Any,
    registry_url: str,
    ports: dict[str, int],
    shown: Any,
    say: _Say,
) -> None:
    """What a started server prints: where it serves, the other ports it took, curls to try."""
    url_host = f"[{host}]" if ":" in host else ("127.0.0.1" if host in ("0.0.0.0", "") else host)
    base = f"http://{url_host}:{port}"
    grpc = f" and gRPC on {url_host}:{grpc_port}" if grpc_port else ""
    say(f"lockgate is serving {len(models)} model(s) on {base}{grpc}", "INFO", "green")
    for lines in manager.observe("lockgate_startup_notes", host=host):
        for line in lines:
            say(f"  {line}", "WARNING")
    say(f"  models: {', '.join(models)}; registry: {_without_password(registry_url)}")
    if ports:
        say(f"  other ports: {', '.join(f'{what} {p}' for what, p in ports.items())}")
    say("try:")
    say(f"  curl -s {base}/v2/health/ready")
    say(f"  curl -s {base}/v2/models/{shown.name}")
    say(
        f"  curl -s -X POST {base}/v2/models/{shown.name}/infer -H 'Content-Type: application/json' -d '{_example(shown, models[shown.name])}'"
    )
    say(f"  curl -s {base}/metrics")
    say("Ctrl-C stops the server.")


class _Say:
    """What ``lockgate serve`` prints: lines as they are ('text'), or each line as one JSON object
    on stdout ('json'; logger ``lockgate.serve``), like every log line of its replicas."""

    def __init__(self, log_format: str) -> None:
        self.json = log_format == "json"
        self._formatter = JsonFormatter() if self.json else None

    def __call__(self, text: str, level: str = "INFO", color: str | None = None, *, err: bool = False) -> None:
        if self._formatter is None:
            click.secho(text, fg=color or {"WARNING": "yellow", "ERROR": "red"}.get(level), err=err)
            return
        record = logging.LogRecord("lockgate.serve", getattr(logging, level), __file__, 0, text.strip(), None, None)
        click.echo(self._formatter.format(record))


def _log_environment(log_format: str, access_log: bool) -> Callable[[], None]:
    """Set this process's logging, and the environment Ray's processes start with, for
    ``log_format``; the function that undoes what must be undone at exit. JSON: Ray forwards
    every replica line as it is (no worker prefix, colour or de-duplication), Serve's own replica
    logs stay in Ray's log files, and anything else printed to this process's stdout or stderr,
    by it or a process it starts, is wrapped as JSON (``json_stdio``)."""
    os.environ["LOCKGATE_LOG_FORMAT"] = log_format
    os.environ["LOCKGATE_ACCESS_LOG"] = "1" if access_log else "0"
    configure_logs(log_format, access=access_log)
    if log_format != "json":
        return lambda: None
    for key, value in (
        ("RAY_DISABLE_WORKER_LOG_PREFIX", "1"),
        ("RAY_COLOR_PREFIX", "0"),
        ("RAY_DEDUP_LOGS", "0"),
        ("RAY_SERVE_LOG_TO_STDERR", "0"),
    ):
        os.environ.setdefault(key, value)
    return json_stdio()
