"""lockgate.server: the Open Inference Protocol v2 server for ONNX models on Ray Serve."""

from ._errors import (
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
from .config import ModelConfig, load_model_config
from .repository import ModelEntry, scan_repository

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
