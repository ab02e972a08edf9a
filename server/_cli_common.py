"""Helpers shared by the command-line modules."""

from __future__ import annotations

import sys

import click

__all__ = ["_fail", "actor", "settings_from", "with_registry_options"]


def _fail(error: Exception) -> None:
    click.secho(f"error: {error}", fg="red", err=True)
    sys.exit(2)


def actor() -> str:
    """Who runs this command, for the registry's records (LOCKGATE_ACTOR, else the OS user)."""
    import getpass
    import os

    return os.environ.get("LOCKGATE_ACTOR") or getpass.getuser()


registry_options = [
    click.option("--registry-url", default=None, help="SQLAlchemy URL of the registry [env LOCKGATE_REGISTRY_URL; default sqlite in LOCKGATE_HOME]."),
    click.option("--artifacts", "artifact_dir", default=None, help="Artifact folder [env LOCKGATE_ARTIFACTS; default LOCKGATE_HOME/artifacts]."),
]


def with_registry_options(fn):
    for option in reversed(registry_options):
        fn = option(fn)
    return fn


def settings_from(registry_url: str | None, artifact_dir: str | None):
    from .settings import LockgateSettings

    return LockgateSettings.from_env(registry_url=registry_url, artifact_dir=artifact_dir)
