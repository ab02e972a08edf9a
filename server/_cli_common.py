"""Helpers shared by the command-line modules."""

from __future__ import annotations

import sys

import click

__all__ = ["_fail", "actor", "checked_actor", "loaded_plugin", "settings_from", "with_registry_options"]


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


def checked_actor(manager, action: str, model: str | None = None, version: int | None = None) -> str:
    """Who runs this command, after the gatekeepers agreed that they may do ``action``.

    The caller's API key comes from LOCKGATE_API_KEY. Once keys exist, control commands need
    one whose role allows the action, and the key's principal is the actor of the record.
    While none exist (open mode) the actor is LOCKGATE_ACTOR or the OS user.
    """
    import asyncio
    import os

    from lockgate.plugins import RequestInfo

    key = os.environ.get("LOCKGATE_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    info = RequestInfo("CLI", f"lockgate {action}", headers, "cli", model, None if version is None else str(version))
    if manager.request_gates_are_sync():
        who, denied = manager.check_request(info, action)
    else:
        who, denied = asyncio.run(manager.check_request_async(info, action))
    if who is None:
        click.secho(f"error: not authenticated: {denied.reason} (set LOCKGATE_API_KEY)", fg="red", err=True)
        sys.exit(3)
    if denied is not None:
        click.secho(f"error: forbidden: {denied.reason}", fg="red", err=True)
        sys.exit(4)
    return actor() if who.name == "anonymous" else who.name


def loaded_plugin(manager, name: str):
    """The plugin ``name`` of this process, or exit naming it when it is not loaded."""
    plugin = manager.plugin(name)
    if plugin is None:
        _fail(LookupError(f"the {name} plugin is not loaded (see `lockgate plugins list`)"))
    return plugin
