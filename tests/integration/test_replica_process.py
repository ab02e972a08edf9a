"""What each replica's constructor set up, read inside the running replica processes."""

from __future__ import annotations

import gc

import ray


def _young_generation(name: str, namespace: str) -> int | None:
    """The young generation's collection threshold of the replica process named ``name``; None
    when that replica stopped after it was listed (another test scaled its model down)."""
    try:
        replica = ray.get_actor(name, namespace=namespace)
        return ray.get(replica.__ray_call__.remote(lambda self: gc.get_threshold()[0]), timeout=60)
    except (ValueError, ray.exceptions.RayActorError):
        return None


def test_every_replica_collects_its_young_generation_at_the_configured_threshold(server):
    """The configuration's ``replica.gc_threshold`` (7,000 when not set; Python's own is 700) is
    what the collector of every running replica uses: the model replicas and the control replica
    (``start_replica`` sets it before a replica serves)."""
    named = ray.util.list_named_actors(all_namespaces=True)
    replicas = [(a["name"], a["namespace"]) for a in named if a["name"].startswith("SERVE_REPLICA::")]
    found = {name: _young_generation(name, namespace) for name, namespace in replicas}
    thresholds = {name: value for name, value in found.items() if value is not None}
    apps = {name.removeprefix("SERVE_REPLICA::").split("#")[0] for name in thresholds}
    assert {"mlp", "cnn", "iris"} <= apps and any("control" in name for name in thresholds), sorted(found)
    assert set(thresholds.values()) == {7000}, thresholds
