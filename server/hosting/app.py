"""Serve application builders, for ``serve run`` and ``serve deploy`` with a Serve config file.

``lockgate serve`` deploys one application per model and a control application itself; a Serve
config file lists the same applications, each built here from its ``args``:

    applications:
      - name: lockgate-control
        route_prefix: /
        import_path: lockgate.server.hosting.app:build
        args: {}                      # the control application: /v2, /metrics
      - name: iris
        route_prefix: /v2/models/iris
        import_path: lockgate.server.hosting.app:build
        args: {model: iris}           # a model; its config.yaml comes from the registry

The builder runs where Serve builds applications (a task on the cluster), so the settings come
from that process's environment: LOCKGATE_REGISTRY_URL (PostgreSQL in a cluster),
LOCKGATE_ARTIFACTS (a folder every node sees), LOCKGATE_HOME, LOCKGATE_CONFIG; the config file
sets them in the applications' ``runtime_env`` (examples/serve/lockgate.yaml).
"""

# No `from __future__ import annotations` here: Serve reads build()'s parameter annotation as a
# class to validate the config file's args into BuildArgs; a string annotation would skip that.
from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from ..serving.config import parse_model_config
from ..serving.settings import LockgateSettings
from .deployments import build_control_app, build_model_app

__all__ = ["BuildArgs", "build"]


class BuildArgs(BaseModel):
    """The ``args`` of a lockgate application in a Serve config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(None, description="The model this application serves; absent: the control application.")
    models: list[str] | None = Field(
        None, description="Control application only: the models it answers for (404 for others). Default: every registered model."
    )
    control_cpus: float = Field(0.05, gt=0, description="Control application only: CPUs of its replica.")


def build(args: BuildArgs) -> Application:
    """One lockgate application from the settings of this process's environment."""
    settings = LockgateSettings.from_env()
    registry = settings.manager().registry()
    if args.model is None:
        models = args.models if args.models is not None else [m for m in registry.list_models() if registry.versions(m)]
        return build_control_app(sorted(models), settings, num_cpus=args.control_cpus)
    if args.models is not None:
        raise ValueError("'models' is for the control application; a model application takes 'model' only")
    config = parse_model_config(
        registry.model_config(args.model), source=f"model {args.model}"
    )  # LookupError names the registered ones
    if not registry.versions(args.model):
        raise LookupError(f"model '{args.model}' has no registered versions")
    return build_model_app(args.model, config, settings)
