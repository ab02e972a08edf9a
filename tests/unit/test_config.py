"""Model configuration and the repository layout: validation names the key and what is accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockgate.server.errors import ConfigError
from lockgate.server.hosting.deployments import deployment_options
from lockgate.server.serving.config import ModelConfig, VersionPolicy, load_model_config, parse_model_config
from lockgate.server.tools.repository import scan_repository


def test_unknown_key_names_it_and_the_accepted_ones():
    with pytest.raises(ConfigError) as info:
        parse_model_config({"max_batch_sise": 4}, source="m/config.yaml")
    msg = str(info.value)
    assert "m/config.yaml" in msg and "unknown key 'max_batch_sise'" in msg and "max_batch_size" in msg


def test_unknown_nested_key_lists_that_sections_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'onnxruntime.threads'; accepted keys: intra_op_num_threads"):
        parse_model_config({"onnxruntime": {"threads": 2}}, source="x")


@pytest.mark.parametrize(
    "raw,fragment",
    [
        ({"max_batch_size": -1}, "max_batch_size"),
        ({"num_cpus": 0}, "num_cpus"),
        ({"autoscaling": {"min_replicas": 3, "max_replicas": 2}}, "max_replicas (2) must be at least min_replicas (3)"),
        (
            {"autoscaling": {"look_back_period_s": 1, "metrics_interval_s": 2}},
            "metrics_interval_s (2.0) must be below look_back_period_s (1.0)",
        ),
        ({"version_policy": {"latest": {}, "all": {}}}, "give one of latest, all, specific"),
        ({"dynamic_batching": {"preferred_batch_sizes": [0]}}, "preferred_batch_sizes"),
        ({"onnxruntime": {"graph_optimization_level": "max"}}, "graph_optimization_level"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_bad_values_are_refused(raw, fragment):
    with pytest.raises(ConfigError, match=r".*") as info:
        parse_model_config(raw, source="x")
    assert fragment in str(info.value)


def test_version_policy_follows_triton():
    present = [1, 2, 3, 5]
    assert VersionPolicy().select(present) == [5]
    assert VersionPolicy.model_validate({"latest": {"num_versions": 2}}).select(present) == [5, 3]
    assert VersionPolicy.model_validate({"all": {}}).select(present) == [5, 3, 2, 1]
    assert VersionPolicy.model_validate({"specific": {"versions": [1, 4]}}).select(present) == [1]


def _model(root: Path, name: str, versions: list[int], config: str | None = None) -> None:
    for v in versions:
        d = root / name / str(v)
        d.mkdir(parents=True)
        (d / "model.onnx").write_bytes(b"x")
    if config is not None:
        (root / name / "config.yaml").write_text(config)


def test_repository_layout(tmp_path):
    _model(tmp_path, "a", [1, 2, 3], "version_policy:\n  latest:\n    num_versions: 2\n")
    _model(tmp_path, "b", [7])
    (tmp_path / "a" / "notes").mkdir()
    entries = scan_repository(tmp_path)
    assert [(e.name, e.versions) for e in entries] == [("a", [3, 2]), ("b", [7])]


@pytest.mark.parametrize(
    "setup,fragment",
    [
        (lambda r: (r / "empty").mkdir(), "has no version folder"),
        (lambda r: _model(r, "bad name", [1]), "name 'bad name': use letters, digits"),
        (lambda r: _model(r, "c", [1], "name: other\n"), "does not match the folder name"),
        (lambda r: _model(r, "d", [1], "replicas: [\n"), "cannot parse"),
        (lambda r: _model(r, "e", [1], "version_policy:\n  specific:\n    versions: [4]\n"), "selects none"),
    ],
)
def test_repository_errors_name_the_model(tmp_path, setup, fragment):
    setup(tmp_path)
    with pytest.raises(ConfigError) as info:
        scan_repository(tmp_path)
    assert fragment in str(info.value)


def test_empty_or_missing_repository(tmp_path):
    with pytest.raises(ConfigError, match="holds no model folders"):
        scan_repository(tmp_path)
    with pytest.raises(ConfigError, match="not a directory"):
        scan_repository(tmp_path / "missing")


def test_default_config_when_file_absent(tmp_path):
    assert load_model_config(tmp_path) == ModelConfig()


def test_deployment_options_ask_for_fractional_cpus_and_map_autoscaling():
    opts = deployment_options(ModelConfig())
    assert opts["ray_actor_options"]["num_cpus"] < 1 and opts["num_replicas"] == 1
    assert "num_gpus" not in opts["ray_actor_options"]  # a CPU replica asks Ray for no GPU
    gpu = deployment_options(ModelConfig.model_validate({"num_gpus": 0.25}))
    assert gpu["ray_actor_options"] == {"num_cpus": 0.25, "num_gpus": 0.25}
    auto = deployment_options(ModelConfig.model_validate({"autoscaling": {"min_replicas": 0, "max_replicas": 3}}))
    assert auto["autoscaling_config"]["min_replicas"] == 0 and "num_replicas" not in auto
    # Serve accepts the mapping as it is, with lockgate's policy on the replicas' own load count
    from ray.serve.config import AutoscalingConfig

    config = AutoscalingConfig(**auto["autoscaling_config"])
    assert config.policy.policy_function == "lockgate.server.hosting.autoscaling:policy"
    assert config.max_replicas == 3 and config.metrics_interval_s < config.look_back_period_s


def test_the_example_config_is_valid_and_complete():
    import yaml

    path = Path(__file__).resolve().parents[2] / "examples" / "model-repository" / "config.yaml"
    raw = yaml.safe_load(path.read_text())
    config = parse_model_config(raw, source=str(path))
    assert set(raw) == set(ModelConfig.model_fields) - {"name", "autoscaling"}
    assert config.max_batch_size == 32


def test_the_example_server_config_is_valid_and_names_every_option():
    from lockgate.plugins.audit import AuditOptions
    from lockgate.plugins.governance import GovernanceOptions, Policy
    from lockgate.plugins.monitoring import DriftOptions, MonitoringOptions, Slo
    from lockgate.plugins.registry import ObjectStoreOptions, RegistryOptions
    from lockgate.server.serving.explain import ExplainOptions
    from lockgate.server.serving.limits import LimitOptions
    from lockgate.server.serving.settings import MetricsOptions, ReplicaOptions, load_options
    from lockgate.server.serving.shadow import ShadowOptions

    path = Path(__file__).resolve().parents[2] / "examples" / "lockgate.yaml"
    options = load_options(str(path), explicit=True)
    governance = GovernanceOptions.model_validate(options["governance"])
    audit = AuditOptions.model_validate(options["audit"])
    assert governance == GovernanceOptions() and audit == AuditOptions()  # the file shows the defaults
    assert MonitoringOptions.model_validate(options["monitoring"]) == MonitoringOptions()
    assert ExplainOptions.model_validate(options["explain"]) == ExplainOptions()
    assert LimitOptions.model_validate(options["limits"]) == LimitOptions()
    assert MetricsOptions.model_validate(options["metrics"]) == MetricsOptions()
    assert RegistryOptions.model_validate(options["registry"]) == RegistryOptions()
    assert ShadowOptions.model_validate(options["shadow"]) == ShadowOptions()
    assert ReplicaOptions.model_validate(options["replica"]) == ReplicaOptions()
    text = path.read_text()
    fields = [*GovernanceOptions.model_fields, *Policy.model_fields, *AuditOptions.model_fields, *MonitoringOptions.model_fields]
    for name in [
        *fields,
        *DriftOptions.model_fields,
        *Slo.model_fields,
        *ExplainOptions.model_fields,
        *LimitOptions.model_fields,
        *MetricsOptions.model_fields,
        *RegistryOptions.model_fields,
        *ObjectStoreOptions.model_fields,
        *ShadowOptions.model_fields,
        *ReplicaOptions.model_fields,
    ]:
        assert f"{name}:" in text, f"examples/lockgate.yaml does not mention {name}"


def test_a_named_config_file_must_exist_and_be_a_mapping_of_sections(tmp_path):
    from lockgate.server.errors import ConfigError
    from lockgate.server.serving.settings import load_options

    with pytest.raises(ConfigError, match="does not exist"):
        load_options(str(tmp_path / "missing.yaml"), explicit=True)
    assert load_options(str(tmp_path / "missing.yaml"), explicit=False) == {}
    (tmp_path / "bad.yaml").write_text("audit: sync\n")
    with pytest.raises(ConfigError, match="expected a mapping of plugin name"):
        load_options(str(tmp_path / "bad.yaml"), explicit=True)


def test_limit_options_name_what_is_wrong():
    from lockgate.server.errors import ConfigError
    from lockgate.server.serving.limits import limit_options

    assert limit_options({"limits": {"max_connections": 10}}).max_connections == 10
    with pytest.raises(ConfigError, match="max_body_bytes: Input should be greater than or equal to 1024"):
        limit_options({"limits": {"max_body_bytes": 10}})
    with pytest.raises(ConfigError, match="max_conections: Extra inputs are not permitted"):
        limit_options({"limits": {"max_conections": 10}})


def test_replica_options_set_the_young_generations_threshold_and_name_what_is_wrong():
    import gc

    from lockgate.server.errors import ConfigError
    from lockgate.server.serving.settings import ReplicaOptions, replica_options, tune_replica

    assert replica_options({}).gc_threshold == 7000
    assert replica_options({"replica": {"gc_threshold": 0}}).gc_threshold == 0
    with pytest.raises(ConfigError, match="gc_threshold: Input should be greater than or equal to 0"):
        replica_options({"replica": {"gc_threshold": -1}})
    with pytest.raises(ConfigError, match="gc_treshold: Extra inputs are not permitted"):
        replica_options({"replica": {"gc_treshold": 10}})
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 11, 12)
        tune_replica(ReplicaOptions(gc_threshold=5000))
        assert gc.get_threshold() == (5000, 11, 12)  # the older generations keep theirs
        tune_replica(ReplicaOptions(gc_threshold=0))
        assert gc.get_threshold() == (5000, 11, 12)  # 0: left as it is
    finally:
        gc.set_threshold(*before)
