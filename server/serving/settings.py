"""Server-wide settings: where the registry and artifacts live, the default alias, plugins.

Read from ``LOCKGATE_*`` environment variables, overridable by CLI options; a frozen,
picklable value handed to every replica.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lockgate.plugins import PluginManager, Settings, build_manager
from lockgate.plugins.shared import parse_section

from ..errors import ConfigError

__all__ = [
    "LockgateSettings",
    "MetricsOptions",
    "ReplicaOptions",
    "load_options",
    "plugin_filter_from_env",
    "replica_options",
    "tune_replica",
]


def _names(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(n.strip() for n in value.split(",") if n.strip())


def load_options(path: str, *, explicit: bool) -> dict[str, dict[str, Any]]:
    """The plugin sections of a YAML configuration file: ``{plugin name: {option: value}}``.

    A missing default file means no options; a missing file that was named explicitly, or a
    file that is not a mapping of mappings, is a ConfigError naming the file."""
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        if explicit:
            raise ConfigError(f"configuration file {file} does not exist", source="LOCKGATE_CONFIG")
        return {}
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}", source=str(file)) from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(
            "expected a mapping of plugin name -> mapping of options (for example 'audit: {mode: sync}')", source=str(file)
        )
    return {str(k): dict(v) for k, v in data.items()}


def plugin_filter_from_env() -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    """The plugin names to allow (None: every one) and to block, from LOCKGATE_PLUGINS_ALLOW and
    LOCKGATE_PLUGINS_BLOCK (comma-separated)."""
    return _names(os.environ.get("LOCKGATE_PLUGINS_ALLOW")), _names(os.environ.get("LOCKGATE_PLUGINS_BLOCK")) or ()


def host_port(host: str, port: int) -> str:
    """``host:port`` as a URL or a bind address writes it: an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class MetricsOptions(BaseModel):
    """The ``metrics`` section of the server configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dir: str | None = Field(
        None, description="Where a node's processes keep their metric files (one folder per node). Default LOCKGATE_HOME/metrics."
    )


class ReplicaOptions(BaseModel):
    """The ``replica`` section of the server configuration: the Python process of each replica."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gc_threshold: int = Field(
        7000,
        ge=0,
        description="Container objects allocated (net) between two collections of the interpreter's youngest "
        "generation (Python's gc threshold0, 700 by default). At 700 a replica at load collected about 120 times a "
        "second, 4.5-5.7 us of CPU per request (docs/decisions.md); 0 keeps the interpreter's own setting.",
    )


def replica_options(options: Mapping[str, Any]) -> ReplicaOptions:
    """The ``replica`` section of the server configuration; ConfigError says what is wrong."""
    return parse_section(options, "replica", ReplicaOptions)


def tune_replica(options: ReplicaOptions) -> None:
    """Set this replica process's garbage collector as ``options`` say (the older generations'
    thresholds are kept). Called by each replica's constructor, before it serves."""
    if options.gc_threshold:
        gc.set_threshold(options.gc_threshold, *gc.get_threshold()[1:])


@dataclass(frozen=True, slots=True)
class LockgateSettings:
    """``home``: folder for the default SQLite registry and the artifacts (LOCKGATE_HOME,
    default ~/.lockgate). ``registry_url``: SQLAlchemy URL (LOCKGATE_REGISTRY_URL; SQLite in
    home by default, ``postgresql+psycopg://...`` for clusters). ``artifact_dir``
    (LOCKGATE_ARTIFACTS). ``default_alias``: what ``/v2/models/<m>/infer`` serves
    (LOCKGATE_DEFAULT_ALIAS, ``production``). ``plugins_allow`` / ``plugins_block``: plugin
    names (LOCKGATE_PLUGINS_ALLOW / LOCKGATE_PLUGINS_BLOCK, comma-separated).
    ``replica_listener``: model replicas answer on their own HTTP listener instead of Serve's
    ASGI wrapper (LOCKGATE_REPLICA_LISTENER=0 turns it off; see lockgate.server.serving.listener).
    ``options``: each plugin's section of the server configuration file (LOCKGATE_CONFIG,
    default LOCKGATE_HOME/lockgate.yaml when it exists), by plugin name."""

    home: str
    registry_url: str
    artifact_dir: str
    default_alias: str = "production"
    plugins_allow: tuple[str, ...] | None = None
    plugins_block: tuple[str, ...] = ()
    alias_poll_s: float = 1.0
    replica_listener: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    anonymous: bool = False  # open mode allowed (plugins' Settings.anonymous); set by lockgate serve and the CLI only
    # Where the gRPC ingress listens ("host:port", LOCKGATE_GRPC; "off" or unset: no gRPC).
    # lockgate serve sets it from --host and --grpc-port.
    grpc_address: str | None = None
    # Logs of every lockgate process (lockgate.server.serving.logs): 'text' or 'json'
    # (LOCKGATE_LOG_FORMAT), and one line per inference request (LOCKGATE_ACCESS_LOG=1).
    log_format: str = "text"
    access_log: bool = False

    @classmethod
    def from_env(cls, **overrides: object) -> LockgateSettings:
        env = os.environ
        home = str(overrides.pop("home", None) or env.get("LOCKGATE_HOME") or Path.home() / ".lockgate")
        home = str(Path(home).expanduser().resolve())
        base = cls(
            home=home,
            registry_url=env.get("LOCKGATE_REGISTRY_URL") or f"sqlite:///{home}/registry.db",
            artifact_dir=env.get("LOCKGATE_ARTIFACTS") or f"{home}/artifacts",
            default_alias=env.get("LOCKGATE_DEFAULT_ALIAS") or "production",
            plugins_allow=plugin_filter_from_env()[0],
            plugins_block=plugin_filter_from_env()[1],
            replica_listener=env.get("LOCKGATE_REPLICA_LISTENER", "1") != "0",
            grpc_address=None if env.get("LOCKGATE_GRPC", "off") == "off" else env["LOCKGATE_GRPC"],
            log_format=env.get("LOCKGATE_LOG_FORMAT") or "text",
            access_log=env.get("LOCKGATE_ACCESS_LOG", "0") == "1",
            options=load_options(env.get("LOCKGATE_CONFIG") or f"{home}/lockgate.yaml", explicit="LOCKGATE_CONFIG" in env),
        )
        if base.log_format not in ("text", "json"):
            raise ConfigError(f"LOCKGATE_LOG_FORMAT must be 'text' or 'json', not {base.log_format!r}")
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]

    @property
    def metrics_dir(self) -> str:
        """This node's metrics folder: ``metrics.dir`` of the configuration, else LOCKGATE_HOME/metrics."""
        configured = parse_section(self.options, "metrics", MetricsOptions).dir
        return str(Path(configured or Path(self.home) / "metrics").expanduser().resolve())

    def plugin_settings(self) -> Settings:
        return Settings(self.registry_url, self.artifact_dir, self.default_alias, self.options, self.home, self.anonymous)

    def manager(self) -> PluginManager:
        """This process's plugin manager: entry points loaded, plugins configured."""
        return build_manager(self.plugin_settings(), allow=self.plugins_allow, block=self.plugins_block)
