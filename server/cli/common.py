"""What the command-line modules share: the plugin manager of a command, and the context that
plugins' commands get (``lockgate_register_commands``)."""

from __future__ import annotations

from pathlib import Path

from lockgate.plugins import CommandContext, PluginManager
from lockgate.plugins.shared import checked_actor, registry_options

from ..serving.settings import LockgateSettings
from ..tools.repository import scan_repository

__all__ = ["CONTEXT", "import_actor", "is_loopback", "manager_from", "settings_from"]


def settings_from(registry_url: str | None, artifact_dir: str | None) -> LockgateSettings:
    """The settings of this process's environment, with the command's registry options. A
    command runs on this machine with this user's access to the database, so it may act
    anonymously while no API key exists (the first key is made so)."""
    return LockgateSettings.from_env(registry_url=registry_url, artifact_dir=artifact_dir, anonymous=True)


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches."""
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def manager_from(registry_url: str | None, artifact_dir: str | None) -> PluginManager:
    """The plugin manager a command runs with: plugins loaded and configured."""
    return settings_from(registry_url, artifact_dir).manager()


CONTEXT = CommandContext(manager=manager_from, registry_options=registry_options)


def import_actor(manager: PluginManager, repository: Path) -> str:
    """Who imports ``repository``, after the gatekeepers agreed that they may register every
    model in it: a key granted some models imports those, not the others (and does not rewrite
    their configuration). Exits 3 or 4 naming the first model refused."""
    names = [entry.name for entry in scan_repository(repository)]
    who = checked_actor(manager, "register")
    for name in names:
        checked_actor(manager, "register", name)
    return who
