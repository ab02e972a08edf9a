"""The built-in governance plugin (entry point ``governance``): API keys and roles, four-eyes
approval of model versions, the library and operator policy, and the SBOM."""

from __future__ import annotations

from ..errors import GovernanceError
from ._approvals import Approval, Approvals, card_fields
from ._keys import ROLE_ACTIONS, ROLES, KeyCache, KeyInfo, KeyStore, parse_expiry
from ._plugin import LOCKGATE_PLUGIN_API, GovernanceOptions, GovernancePlugin, plugin
from ._policy import Policy, onnxruntime_version
from ._sbom import build_sbom, model_component, runtime_components

__all__ = [
    "LOCKGATE_PLUGIN_API",
    "ROLES",
    "ROLE_ACTIONS",
    "Approval",
    "Approvals",
    "GovernanceError",
    "GovernanceOptions",
    "GovernancePlugin",
    "KeyCache",
    "KeyInfo",
    "KeyStore",
    "Policy",
    "build_sbom",
    "card_fields",
    "model_component",
    "onnxruntime_version",
    "parse_expiry",
    "plugin",
    "runtime_components",
]
