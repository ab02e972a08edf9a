"""The built-in model registry plugin (entry point ``registry``).

Versions are immutable and stored by sha256; aliases point to versions and keep their
history; the hash is checked at every load. See ``Registry`` for the API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from .. import hookimpl
from .._onnx import onnx_operators, onnx_opsets, onnx_signature
from .._options import parse_section
from .._types import ModelVersionRecord, Principal, Settings
from ..errors import AliasRefused, RegistrationError, UnknownModel
from ._store import Registry

__all__ = [
    "LOCKGATE_PLUGIN_API",
    "AliasRefused",
    "ObjectStoreOptions",
    "RegistrationError",
    "Registry",
    "RegistryOptions",
    "RegistryPlugin",
    "UnknownModel",
    "onnx_operators",
    "onnx_opsets",
    "onnx_signature",
    "plugin",
]

LOCKGATE_PLUGIN_API = "1.4"


class ObjectStoreOptions(BaseModel):
    """``registry.object_store``: how to reach the S3-compatible store that ``LOCKGATE_ARTIFACTS``
    (``s3://bucket/prefix``) names. Unset fields come from the environment's credential chain
    (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, profiles, instance roles), as boto3 finds them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str | None = Field(None, description="The store's URL (MinIO, Ceph, R2, a regional endpoint).")
    region: str | None = Field(None, description="The bucket's region.")
    access_key_id: str | None = Field(None, description="Only where the environment gives no credentials.")
    secret_access_key: SecretStr | None = Field(None, description="Never logged; prefer the environment.")


class RegistryOptions(BaseModel):
    """The ``registry`` section of the server configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    object_store: ObjectStoreOptions | None = None


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
                artifact_cache=Path(self._settings.home) / "artifact-cache" if self._settings.home else None,
                artifact_options=self._object_store(),
            )
        return self._registry

    def _object_store(self) -> dict[str, Any]:
        assert self._settings is not None
        store = parse_section(self._settings.options, "registry", RegistryOptions).object_store
        if store is None:
            return {}
        options = store.model_dump(exclude_none=True)
        if store.secret_access_key is not None:
            options["secret_access_key"] = store.secret_access_key.get_secret_value()
        return options

    @hookimpl
    def lockgate_resolve_model(self, name: str, reference: str | None) -> ModelVersionRecord | None:
        registry = self.lockgate_model_registry()
        return None if registry is None else registry.resolve(name, reference)


plugin = RegistryPlugin()
