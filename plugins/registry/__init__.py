"""The built-in model registry plugin (entry point ``registry``).

Versions are immutable and stored by sha256; aliases point to versions and keep their
history; the hash is checked at every load. See ``Registry`` for the API.
"""

from __future__ import annotations

from typing import Any

from .. import hookimpl
from .._onnx import onnx_operators, onnx_opsets, onnx_signature
from .._types import ModelVersionRecord, Principal, Settings
from ..errors import AliasRefused, RegistrationError, UnknownModel
from ._store import Registry

__all__ = [
    "LOCKGATE_PLUGIN_API",
    "AliasRefused",
    "RegistrationError",
    "Registry",
    "RegistryPlugin",
    "UnknownModel",
    "onnx_operators",
    "onnx_opsets",
    "onnx_signature",
    "plugin",
]

LOCKGATE_PLUGIN_API = "1.3"


class RegistryPlugin:
    """Provides the registry to the process; built lazily on first use."""

    LOCKGATE_PLUGIN_API = LOCKGATE_PLUGIN_API

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._manager: Any = None
        self._registry: Registry | None = None

    @hookimpl
    def lockgate_configure(self, settings: Settings, manager: Any) -> None:
        self._settings = settings
        self._manager = manager
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    @hookimpl
    def lockgate_model_registry(self) -> Registry | None:
        if self._settings is None:
            return None
        if self._registry is None:
            m = self._manager
            self._registry = Registry(
                self._settings.registry_url,
                self._settings.artifact_dir,
                default_alias=self._settings.default_alias,
                check_registration=m.check_registration if m is not None else None,
                check_alias=(lambda n, a, v, who: m.check_alias(Principal(who), n, a, v)) if m is not None else None,
                audit=m.audit if m is not None else None,
            )
        return self._registry

    @hookimpl
    def lockgate_resolve_model(self, name: str, reference: str | None) -> ModelVersionRecord | None:
        registry = self.lockgate_model_registry()
        return None if registry is None else registry.resolve(name, reference)


plugin = RegistryPlugin()
