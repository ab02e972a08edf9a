"""Everything that imports Ray: starting Ray, Serve and HAProxy, the deployments, the Serve
application builder, autoscaling, the per-node metrics files, and ``serve_compat``, the one
module that touches private Ray Serve names. Nothing is imported here: ``import
lockgate.server.hosting`` does not import Ray."""

from __future__ import annotations

__all__: list[str] = []
