"""The request path: ASGI helpers, the request gate, the model service and its ASGI app, the
control app, the Open Inference Protocol codec layer, batching, model sessions, explanations and
the replica's own HTTP listener. It imports neither Ray nor any other part of the server but
the errors, so REST and gRPC front ends, tests and benchmarks can run it anywhere."""

from __future__ import annotations

from .control_app import ControlApp
from .listener import FastServer
from .model_app import ModelApp
from .service import ModelService

__all__ = ["ControlApp", "FastServer", "ModelApp", "ModelService"]
