"""lockgate.server: the Open Inference Protocol v2 server for ONNX models on Ray Serve.

serving/ is the request path, hosting/ everything that imports Ray, tools/ offline work, cli/
the command line (docs/architecture.md)."""

from .errors import (
    BadRequest,
    ConfigError,
    DeadlineExceeded,
    LockgateError,
    MethodNotAllowed,
    ModelFailed,
    ModelLoadError,
    NotFound,
    PayloadTooLarge,
    RequestError,
    StartupError,
    Unavailable,
)
from .serving.config import ModelConfig, load_model_config
from .tools.repository import ModelEntry, scan_repository

__all__ = [
    "BadRequest",
    "ConfigError",
    "DeadlineExceeded",
    "LockgateError",
    "MethodNotAllowed",
    "ModelConfig",
    "ModelEntry",
    "ModelFailed",
    "ModelLoadError",
    "NotFound",
    "PayloadTooLarge",
    "RequestError",
    "StartupError",
    "Unavailable",
    "load_model_config",
    "scan_repository",
]
