"""The exception tree of lockgate, as the server imports it.

The tree itself, drawn in its docstring, is ``lockgate.plugins.errors``: plugins raise the
same errors, and ``lockgate.plugins`` may not import the server. Every name here is that
module's.
"""

from __future__ import annotations

from lockgate.plugins.errors import (
    AliasRefused,
    ArtifactMismatch,
    AuditError,
    BadRequest,
    ConfigError,
    Conflict,
    DeadlineExceeded,
    Forbidden,
    GovernanceError,
    LockgateError,
    MethodNotAllowed,
    MissingExtra,
    ModelFailed,
    ModelLoadError,
    NotFound,
    PayloadTooLarge,
    PruneRefused,
    RecordFailed,
    RegistrationError,
    RegistryError,
    RequestError,
    RequestTimeout,
    SequencerStopped,
    StartupError,
    Unauthorized,
    Unavailable,
    UnknownModel,
    require_extra,
)

__all__ = [
    "AliasRefused",
    "ArtifactMismatch",
    "AuditError",
    "BadRequest",
    "ConfigError",
    "Conflict",
    "DeadlineExceeded",
    "Forbidden",
    "GovernanceError",
    "LockgateError",
    "MethodNotAllowed",
    "MissingExtra",
    "ModelFailed",
    "ModelLoadError",
    "NotFound",
    "PayloadTooLarge",
    "PruneRefused",
    "RecordFailed",
    "RegistrationError",
    "RegistryError",
    "RequestError",
    "RequestTimeout",
    "SequencerStopped",
    "StartupError",
    "Unauthorized",
    "Unavailable",
    "UnknownModel",
    "require_extra",
]
