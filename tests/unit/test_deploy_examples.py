"""The Serve config file, the KubeRay RayService and the cluster launcher file in examples/ are
valid against their schemas (Serve's ServeDeploySchema, the RayService fields lockgate needs,
Ray's cluster-launcher JSON schema), and their applications build with lockgate's builder."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from lockgate.server.hosting.app import BuildArgs, build
from lockgate.server.hosting.serve_compat import INGRESS_ENV

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
INGRESS = INGRESS_ENV  # what `lockgate serve` sets before Ray starts; a cluster needs the same


def check_serve_config(doc: dict) -> list:
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(doc)
    apps = config.applications
    assert apps[0].name == "lockgate-control" and apps[0].route_prefix == "/"
    for app in apps:
        assert app.import_path == "lockgate.server.hosting.app:build"
        args = BuildArgs.model_validate(app.args)
        if args.model is not None:
            assert app.route_prefix == f"/v2/models/{args.model}" and app.name == args.model
    assert len({a.route_prefix for a in apps}) == len(apps)
    return apps


def test_the_serve_config_file_is_valid():
    doc = yaml.safe_load((EXAMPLES / "serve" / "lockgate.yaml").read_text())
    apps = check_serve_config(doc)
    env = apps[0].runtime_env["env_vars"]
    assert env["LOCKGATE_REGISTRY_URL"].startswith("postgresql") and all(a.runtime_env["env_vars"] == env for a in apps)


def test_the_rayservice_has_what_lockgate_needs():
    doc = yaml.safe_load((EXAMPLES / "kuberay" / "rayservice.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService"
    spec = doc["spec"]
    check_serve_config(yaml.safe_load(spec["serveConfigV2"]))
    cluster = spec["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    import ray

    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    groups = cluster["workerGroupSpecs"]
    for container in [head] + [g["template"]["spec"]["containers"][0] for g in groups]:
        env = {e["name"]: e for e in container["env"]}
        assert all(env[k]["value"] == v for k, v in INGRESS.items()), container["name"]
        assert "secretKeyRef" in env["LOCKGATE_REGISTRY_URL"]["valueFrom"]  # the password is not in the manifest
        assert 8000 in {p["containerPort"] for p in container["ports"]}
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        # artifacts in object storage, credentials from a secret; the node's cache in its home
        assert env["LOCKGATE_ARTIFACTS"]["value"].startswith("s3://") and env["LOCKGATE_HOME"]["value"] in mounts
        assert all("secretKeyRef" in env[k]["valueFrom"] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    for group in groups:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["groupName"] and "rayStartParams" in group
        # Kubernetes asks lockgate's OIP health routes on the node's ingress (tests/integration's
        # governed server checks that they, and KubeRay's /-/healthz, answer without an API key)
        container = group["template"]["spec"]["containers"][0]
        probes = {k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
        assert probes["livenessProbe"] == probes["startupProbe"] == {"path": "/v2/health/live", "port": 8000}
        assert probes["readinessProbe"] == {"path": "/v2/health/ready", "port": 8000}
    # the head keeps KubeRay's own probes: the operator deploys Serve only once the head is ready
    assert not {"livenessProbe", "readinessProbe", "startupProbe"} & set(head)
    # a GPU group: Ray learns its GPUs from rayStartParams, Kubernetes schedules them from the limits
    gpu = [g for g in groups if "num-gpus" in g["rayStartParams"]]
    assert gpu, "no GPU worker group"
    for group in gpu:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == group["rayStartParams"]["num-gpus"]


def test_the_cluster_launcher_file_passes_rays_schema():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    doc = yaml.safe_load((EXAMPLES / "ray-cluster" / "lockgate.yaml").read_text())
    jsonschema.validate(doc, schema)
    workers = {k: v for k, v in doc["available_node_types"].items() if k != doc["head_node_type"]}
    assert workers and all(0 <= v["min_workers"] <= v["max_workers"] <= doc["max_workers"] for v in workers.values())
    for command in doc["head_start_ray_commands"][1:] + doc["worker_start_ray_commands"][1:]:
        # the launcher runs each command in bash: let bash read the assignments before `ray start`
        assignments = command.split(" ray start ", 1)[0].replace("\n", " ")
        out = subprocess.run(
            ["bash", "-c", f"{assignments} env -0"], env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, check=True
        ).stdout
        env = dict(line.split("=", 1) for line in out.split("\0") if line.startswith("RAY_"))
        # every node starts with the ingress switches and the token the launcher copied to it
        assert env.pop("RAY_AUTH_MODE") == "token" and env.pop("RAY_AUTH_TOKEN_PATH") in doc["file_mounts"]
        assert env == INGRESS


def test_the_builder_builds_the_control_and_a_model_application(tmp_path, monkeypatch, demo_repo):
    from lockgate.server.serving.settings import LockgateSettings
    from lockgate.server.tools.repository import announce_imports, import_repository

    monkeypatch.setenv("LOCKGATE_HOME", str(tmp_path / "home"))
    manager = LockgateSettings.from_env(anonymous=True).manager()
    import_repository(demo_repo, manager.registry(), actor="tester", before_alias=announce_imports(manager, "tester"))
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    control = build(BuildArgs())
    iris = call_user_app_builder_with_args_if_necessary(build, {"model": "iris"})  # as `serve run/deploy` calls it
    with pytest.raises(ValueError, match="modle"):
        call_user_app_builder_with_args_if_necessary(build, {"modle": "iris"})
    assert type(control).__name__ == type(iris).__name__ == "Application"
    with pytest.raises(LookupError, match="unknown model 'ghost'"):
        build(BuildArgs(model="ghost"))
    with pytest.raises(ValueError, match="'models' is for the control application"):
        build(BuildArgs(model="iris", models=["iris"]))
    with pytest.raises(ValueError):
        BuildArgs.model_validate({"modle": "iris"})  # a typo is refused, not ignored
