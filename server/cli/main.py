"""The ``lockgate`` command line: the root group, its core commands, and the commands that
plugins add through ``lockgate_register_commands``."""

from __future__ import annotations

import click

from lockgate.plugins import PluginManager

from ..serving.settings import plugin_filter_from_env
from .common import CONTEXT
from .metrics import metrics
from .models import models, plugins
from .report import report
from .serve import cleanup, demo_repo, serve

__all__ = ["LockgateGroup", "main"]


class LockgateGroup(click.Group):
    """The root group: the core commands, then, on first use, every plugin's commands.

    Plugins are loaded when the command line first lists or looks up a command, not when this
    module is imported."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._plugin_commands_added = False

    def _add_plugin_commands(self) -> None:
        if self._plugin_commands_added:
            return
        self._plugin_commands_added = True
        allow, block = plugin_filter_from_env()
        manager = PluginManager(allow=allow, block=block)
        manager.load_entry_points()  # not configured: adding commands needs no settings
        manager.observe("lockgate_register_commands", cli=self, context=CONTEXT)
        audit = self.commands.get("audit")
        if isinstance(audit, click.Group):  # replaying needs the serving code, which plugins never import
            from .replay import explain, replay_command

            audit.add_command(replay_command)
            audit.add_command(explain)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._add_plugin_commands()
        return super().get_command(ctx, cmd_name)


@click.group(cls=LockgateGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lockgate")
def main() -> None:
    """lockgate: low-latency, governed ONNX inference on Ray Serve (Open Inference Protocol v2)."""


for _command in (serve, cleanup, demo_repo, models, plugins, metrics, report):
    main.add_command(_command)
