"""What the command-line modules share: the plugin manager of a command, and the context that
plugins' commands get (``lockgate_register_commands``)."""

from __future__ import annotations

from lockgate.plugins import CommandContext, PluginManager
from lockgate.plugins.shared import registry_options

from ..serving.settings import LockgateSettings

__all__ = ["CONTEXT", "manager_from", "settings_from"]


def settings_from(registry_url: str | None, artifact_dir: str | None) -> LockgateSettings:
    """The settings of this process's environment, with the command's registry options."""
    return LockgateSettings.from_env(registry_url=registry_url, artifact_dir=artifact_dir)


def manager_from(registry_url: str | None, artifact_dir: str | None) -> PluginManager:
    """The plugin manager a command runs with: plugins loaded and configured."""
    return settings_from(registry_url, artifact_dir).manager()


CONTEXT = CommandContext(manager=manager_from, registry_options=registry_options)
