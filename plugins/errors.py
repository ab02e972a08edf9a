"""The one exception tree of lockgate: the server's errors and the built-in plugins'.

It lives here, in the plugins' public types, because every part of lockgate may import
``lockgate.plugins`` (the server, the built-in plugins, plugins of others), while
``lockgate.plugins`` imports nothing of the server. ``lockgate.server.errors`` re-exports it.

::

    LockgateError                     any error lockgate raises on purpose (exit code 2)
    ├── ConfigError                   a model or server configuration that cannot be used
    ├── StartupError                  the server cannot start (port in use, Ray unreachable)
    ├── MissingExtra                  a command needs a package of an extra that is not installed
    ├── ModelLoadError                a model version that cannot be loaded (names it)
    ├── ArtifactMismatch              an artifact whose bytes no longer hash to its sha256
    ├── RegistryError                 the model registry refused or found nothing
    │   ├── UnknownModel              no such model, version or alias (also a LookupError)
    │   ├── RegistrationError         a registration refused, every reason listed (also a ValueError)
    │   └── AliasRefused              an alias move a gatekeeper refused (also a PermissionError)
    ├── GovernanceError               a governance action refused (status 403, 409 or 422)
    ├── AuditError                    the audit log could not do what was asked
    │   ├── RecordFailed              an inference could not be recorded: its answer is withheld
    │   ├── SequencerStopped          the audit writer is not running
    │   └── PruneRefused              a prune that would break retention or the chain
    └── RequestError                  a request answered with an error status (OIP error body)
        ├── BadRequest                400: the client's request is wrong
        ├── Unauthorized              401: no valid credentials (exit code 3)
        ├── Forbidden                 403: credentials valid, action not allowed (exit code 4)
        ├── NotFound                  404: unknown model, version or route
        ├── MethodNotAllowed          405
        ├── RequestTimeout            408: the request did not arrive in time
        ├── Conflict                  409: valid, but the server's state does not allow it yet
        ├── PayloadTooLarge           413: body or tensor over the configured limit
        ├── ModelFailed               500: the model raised on input that passed validation
        ├── Unavailable               503: not ready, or shedding load
        └── DeadlineExceeded          504: the request's deadline passed before it ran

Every error has ``status`` (the HTTP status it answers with, None where it is not a request's
answer) and ``exit_code`` (what ``lockgate`` exits with when a command ends on it). The
compiled codec's ``lockgate.fastpath.CodecError`` is a ``ValueError`` outside this tree on
purpose: fastpath imports nothing of lockgate's (DESIGN.md); the protocol layer turns every
one into a ``BadRequest`` naming the input.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, ClassVar

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


class LockgateError(Exception):
    """Root of every error lockgate raises on purpose."""

    status: int | None = None
    exit_code: ClassVar[int] = 2


class ConfigError(LockgateError):
    """A configuration that cannot be used; ``source`` names the file or section."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(f"{source}: {message}" if source else message)
        self.source = source


class StartupError(LockgateError):
    """The server cannot start; the message says why and what to do."""


class MissingExtra(LockgateError):
    """A command needs ``module``, which comes with ``pip install 'lockgate[<extra>]'``."""

    def __init__(self, module: str, extra: str, what: str) -> None:
        super().__init__(f"{what} needs the package {module!r}, which is not installed: pip install 'lockgate[{extra}]'")
        self.module = module
        self.extra = extra


def require_extra(module: str, extra: str, what: str) -> Any:
    """Import ``module`` (a package of the ``extra``), or raise MissingExtra naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(module, extra, what) from None


class ModelLoadError(LockgateError):
    """A model that cannot be loaded; ``model`` and ``version`` say which, ``reason`` why."""

    def __init__(self, model: str, version: int | None, reason: str) -> None:
        where = model if version is None else f"{model} version {version}"
        super().__init__(f"model {where} failed to load: {reason}")
        self.model = model
        self.version = version
        self.reason = reason


class ArtifactMismatch(LockgateError):
    """An artifact's bytes no longer hash to the sha256 it was registered with."""

    def __init__(self, path: Path | str, expected: str, got: str) -> None:
        super().__init__(f"artifact {path} has sha256 {got}, but {expected} was registered: it was changed; refusing to load it")
        self.path = path
        self.expected = expected
        self.got = got


class RegistryError(LockgateError):
    """The model registry refused an action or found nothing."""


class UnknownModel(RegistryError, LookupError):
    """No such model, version or alias."""

    status = 404


class RegistrationError(RegistryError, ValueError):
    """A registration refused; ``reasons`` lists every reason, and nothing was written."""

    status = 422

    def __init__(self, name: str, reasons: list[str]) -> None:
        super().__init__(f"cannot register model '{name}': " + "; ".join(reasons))
        self.name = name
        self.reasons = reasons


class AliasRefused(RegistryError, PermissionError):
    """An alias move that a gatekeeper refused; ``reason`` says why and ``plugin`` who."""

    status = 403
    exit_code = 4

    def __init__(self, name: str, alias: str, version: int, reason: str, plugin: str) -> None:
        super().__init__(f"cannot point alias '{alias}' of model '{name}' at version {version}: {reason}")
        self.reason = reason
        self.plugin = plugin


class GovernanceError(LockgateError, PermissionError):
    """A governance action refused; ``status`` is the HTTP status it maps to (403, 409, 422)."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return 4 if self.status == 403 else 2


class AuditError(LockgateError):
    """The audit log could not do what was asked."""


class RecordFailed(AuditError):
    """A recorder could not record an inference request; its answer must not be sent."""

    status = 503


class SequencerStopped(AuditError, RuntimeError):
    """The sequencer is not running: nothing can be recorded."""

    status = 503


class PruneRefused(AuditError, ValueError):
    """A prune that would break retention or leave the chain unanchored."""


class RequestError(LockgateError):
    """An error answered to the client with ``status`` and an OIP error body."""

    status: int = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, decided_by: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.decided_by = decided_by  # the gatekeeper plugin that refused the request, if one did

    def body(self) -> bytes:
        return json.dumps({"error": self.message}).encode("utf-8")


class BadRequest(RequestError):
    """400: malformed body or framing, unknown or missing input, wrong datatype or shape."""

    status = 400


class Unauthorized(RequestError):
    """401: the request carries no valid credentials (an authentication gatekeeper said so)."""

    status = 401
    exit_code = 3


class Forbidden(RequestError):
    """403: the caller may not do this (an authorization gatekeeper said so)."""

    status = 403
    exit_code = 4


class NotFound(RequestError):
    """404: unknown model, version or route."""

    status = 404


class MethodNotAllowed(RequestError):
    """405: the route exists but not for this method."""

    status = 405


class RequestTimeout(RequestError):
    """408: the request did not arrive within the configured time."""

    status = 408


class Conflict(RequestError):
    """409: valid, but the server's state does not allow it (a version without a reference sample)."""

    status = 409


class PayloadTooLarge(RequestError):
    """413: the body or a tensor is larger than the server accepts."""

    status = 413


class ModelFailed(RequestError):
    """500: onnxruntime raised on a request that passed every check lockgate makes."""

    status = 500


class Unavailable(RequestError):
    """503: the model or server is not ready, or is shedding load."""

    status = 503


class DeadlineExceeded(RequestError):
    """504: the request's deadline (Triton's ``timeout`` parameter) passed before it ran."""

    status = 504
