"""The exception tree of lockgate.

::

    LockgateError                 any error lockgate raises on purpose
    ├── ConfigError               a model or server configuration that cannot be used
    ├── ModelLoadError            a model file that onnxruntime cannot load (names the model)
    ├── StartupError              the server cannot start (port in use, Ray unreachable)
    └── RequestError              a request answered with an error status (OIP error body)
        ├── BadRequest            400: the client's request is wrong
        ├── Unauthorized          401: no valid credentials
        ├── Forbidden             403: credentials valid, action not allowed
        ├── NotFound              404: unknown model, version or route
        ├── MethodNotAllowed      405
        ├── Conflict              409: the request is valid, the server's state does not allow it yet
        ├── PayloadTooLarge       413: body over the configured limit
        ├── ModelFailed           500: the model raised on input that passed validation
        ├── Unavailable           503: not ready, or shedding load
        └── DeadlineExceeded      504: the request's deadline passed before it ran

Every ``RequestError`` carries the HTTP status and renders as the Open Inference
Protocol error body ``{"error": "..."}``.
"""

from __future__ import annotations

import json

__all__ = [
    "BadRequest",
    "ConfigError",
    "Conflict",
    "DeadlineExceeded",
    "Forbidden",
    "LockgateError",
    "MethodNotAllowed",
    "ModelFailed",
    "ModelLoadError",
    "NotFound",
    "PayloadTooLarge",
    "RequestError",
    "StartupError",
    "Unauthorized",
    "Unavailable",
]


class LockgateError(Exception):
    """Root of every error lockgate raises on purpose."""


class ConfigError(LockgateError):
    """A configuration that cannot be used; ``source`` names the file or section."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(f"{source}: {message}" if source else message)
        self.source = source


class ModelLoadError(LockgateError):
    """A model that cannot be loaded; ``model`` and ``version`` say which."""

    def __init__(self, model: str, version: int | None, reason: str) -> None:
        where = model if version is None else f"{model} version {version}"
        super().__init__(f"model {where} failed to load: {reason}")
        self.model = model
        self.version = version
        self.reason = reason


class StartupError(LockgateError):
    """The server cannot start; the message says why and what to do."""


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


class Forbidden(RequestError):
    """403: the caller may not do this (an authorization gatekeeper said so)."""

    status = 403


class NotFound(RequestError):
    """404: unknown model, version or route."""

    status = 404


class MethodNotAllowed(RequestError):
    """405: the route exists but not for this method."""

    status = 405


class Conflict(RequestError):
    """409: valid, but the server's state does not allow it (a version without a reference sample)."""

    status = 409


class Unavailable(RequestError):
    """503: the model or server is not ready, or is shedding load."""

    status = 503


class PayloadTooLarge(RequestError):
    """413: the body is larger than the server accepts."""

    status = 413


class ModelFailed(RequestError):
    """500: onnxruntime raised on a request that passed every check lockgate makes."""

    status = 500


class DeadlineExceeded(RequestError):
    """504: the request's deadline (Triton's ``timeout`` parameter) passed before it ran."""

    status = 504
