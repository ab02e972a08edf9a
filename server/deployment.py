"""Ray Serve deployments: one application per model, and the control application.

A model application is mounted at ``/v2/models/<name>``; the control application
at ``/v2`` answers everything else under it (Serve routes by longest prefix). Each
replica builds its ASGI app in the constructor and Serve's direct ingress hands it
the requests, so no Serve proxy and no Ray call sits on the request path.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray import serve
from ray.serve import Application

from .config import ModelConfig
from .http import ControlApp, ModelApp, ModelService
from .repository import ModelEntry

__all__ = [
    "CONTROL_APP",
    "ControlDeployment",
    "ModelDeployment",
    "build_control_app",
    "build_model_app",
    "deployment_options",
    "route_prefix",
]

CONTROL_APP = "lockgate-control"


def route_prefix(model: str) -> str:
    return f"/v2/models/{model}"


@serve.ingress()
class ModelDeployment:
    """A replica of one model: every served version, loaded once, with its batcher."""

    def __init__(self, entry: ModelEntry) -> None:
        self._service = ModelService(entry)
        self._app = ModelApp(self._service)

    def __serve_build_asgi_app__(self) -> ModelApp:
        return self._app


@serve.ingress()
class ControlDeployment:
    """The ``/v2`` routes: health, server metadata and OIP 404s for unknown models."""

    def __init__(self, models: list[str]) -> None:
        self._models = list(models)
        self._checked = 0.0
        self._waiting: list[str] = list(models)
        self._app = ControlApp(self._models, self._not_ready)

    def __serve_build_asgi_app__(self) -> ControlApp:
        return self._app

    async def _not_ready(self) -> list[str]:
        if time.monotonic() - self._checked > 1.0:
            status = await asyncio.to_thread(serve.status)
            apps = status.applications
            self._waiting = [m for m in self._models if m not in apps or apps[m].status != "RUNNING"]
            self._checked = time.monotonic()
        return self._waiting


def deployment_options(config: ModelConfig) -> dict[str, Any]:
    """Serve deployment options for a model's config: CPUs, replicas or autoscaling, concurrency."""
    batch = max(config.max_batch_size or 32, 1)
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": config.num_cpus},
        # The batcher holds the queue; Serve's own limit only has to stay out of its way.
        "max_ongoing_requests": config.dynamic_batching.max_queue_size + batch,
    }
    if config.autoscaling is not None:
        a = config.autoscaling
        options["autoscaling_config"] = {
            "min_replicas": a.min_replicas,
            "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
            "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s,
        }
    else:
        options["num_replicas"] = config.replicas
    return options


def build_model_app(entry: ModelEntry) -> Application:
    deployment = serve.deployment(ModelDeployment, name=f"model-{entry.name}", **deployment_options(entry.config))
    return deployment.bind(entry)


def build_control_app(models: list[str], num_cpus: float = 0.05) -> Application:
    deployment = serve.deployment(
        ControlDeployment, name="control", ray_actor_options={"num_cpus": num_cpus}, max_ongoing_requests=256
    )
    return deployment.bind(models)
