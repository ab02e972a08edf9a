"""lockgate.plugins: the plugin interface (pluggy) and the built-in plugins.

Plugin authors write ``from lockgate.plugins import hookimpl``, declare
``LOCKGATE_PLUGIN_API = "1.0"`` on their plugin module or object, and expose it under the
entry-point group ``lockgate.plugins``. The hooks are in ``lockgate.plugins.hookspecs``
and docs/plugins.md.
"""

import pluggy

PROJECT_NAME = "lockgate"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
hookspec = pluggy.HookspecMarker(PROJECT_NAME)

from ._manager import ENTRY_POINT_GROUP, PLUGIN_API_VERSION, PluginManager, PluginStatus, build_manager  # noqa: E402
from ._types import (  # noqa: E402
    MODEL_NAME,
    RESERVED_MODEL_NAMES,
    AuditEvent,
    CommandContext,
    Decision,
    InferenceEvent,
    ModelRegistry,
    ModelVersionRecord,
    Principal,
    Reference,
    RegistrationCandidate,
    RequestInfo,
    ServiceLevel,
    Settings,
    ShadowRun,
    model_name_problem,
)
from .errors import RecordFailed  # noqa: E402

__all__ = [
    "ENTRY_POINT_GROUP",
    "MODEL_NAME",
    "RESERVED_MODEL_NAMES",
    "PLUGIN_API_VERSION",
    "PROJECT_NAME",
    "AuditEvent",
    "CommandContext",
    "Decision",
    "InferenceEvent",
    "ModelRegistry",
    "ModelVersionRecord",
    "PluginManager",
    "PluginStatus",
    "Principal",
    "RecordFailed",
    "Reference",
    "RegistrationCandidate",
    "RequestInfo",
    "ServiceLevel",
    "Settings",
    "ShadowRun",
    "build_manager",
    "hookimpl",
    "hookspec",
    "model_name_problem",
]
