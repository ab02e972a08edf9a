"""lockgate.plugins: the plugin interface (pluggy) and the built-in plugins.

``hookimpl`` marks a plugin's hook implementations; the hook specifications and
the plugin manager build on the project name below.
"""

import pluggy

PROJECT_NAME = "lockgate"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
hookspec = pluggy.HookspecMarker(PROJECT_NAME)

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]
