"""Governance on both back ends: API keys, roles, four-eyes approval, the policy, the SBOM, and
what a request sees of them (the model app driven in-process)."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from pathlib import Path

import onnx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from onnx import TensorProto, helper

from lockgate.plugins import Principal, RegistrationCandidate, RequestInfo, Settings, build_manager, hookimpl
from lockgate.plugins.governance import GovernanceError, Policy, build_sbom, card_fields
from lockgate.plugins.governance import _schema as schema
from lockgate.plugins.registry import AliasRefused, RegistrationError
from lockgate.server.cli import main
from lockgate.server.serving.config import ModelConfig
from lockgate.server.serving.model_app import ModelApp
from lockgate.server.serving.service import ModelService
from lockgate.server.tools.demo import build_iris, build_mlp, write_demo_repository
from lockgate.server.tools.repository import import_repository
from tests.asgi import call

IRIS_BODY = json.dumps(
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}
).encode()


@pytest.fixture
def make_manager(db_url, tmp_path):
    managers = []

    def make(**options):
        settings = Settings(db_url, str(tmp_path / "artifacts"), "production", options, str(tmp_path / "home"), anonymous=True)
        manager = build_manager(settings)
        managers.append(manager)
        return manager

    yield make
    for m in managers:
        m.plugin("audit").close()


@pytest.fixture
def gov(make_manager):
    manager = make_manager()
    return manager, manager.plugin("governance")


def request(token: str | None = None, model: str = "iris") -> RequestInfo:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return RequestInfo("POST", f"/v2/models/{model}/infer", headers, "127.0.0.1", model, None)


def authenticate(manager, token=None, model="iris"):
    return asyncio.run(manager.authenticate(request(token, model)))


def authorize(manager, principal, action, model="iris"):
    return asyncio.run(manager.authorize(principal, action, model, None))


# -- keys --------------------------------------------------------------------------------------------


def test_keys_are_shown_once_and_stored_only_as_salted_hashes(gov):
    manager, g = gov
    key, info = g.create_key("root", ["admin"], ["*"], actor="ops")
    key2, _ = g.create_key("svc", ["invoker"], ["iris"], actor="root")
    secret = key.split("_", 2)[2]
    with g.keys.engine.connect() as c:
        rows = [dict(r._mapping) for r in c.execute(sa.select(schema.api_keys))]
    assert len(rows) == 2 and rows[0]["salt"] != rows[1]["salt"]
    assert not any(secret in json.dumps(r, default=str) or key2.split("_", 2)[2] in json.dumps(r, default=str) for r in rows)
    audit = manager.plugin("audit")
    audit.sequencer.flush()
    trail = json.dumps(list(audit.audit_log.records()))
    assert info.key_id in trail and secret not in trail and "key_create" in trail


def test_the_first_key_must_be_an_admin_key(gov):
    _, g = gov
    with pytest.raises(GovernanceError, match="first API key must have the admin role"):
        g.create_key("svc", ["invoker"], ["*"], actor="ops")


def test_authentication_outcomes(gov):
    manager, g = gov
    assert authenticate(manager).name == "anonymous"  # open mode: no key exists yet
    key, _ = g.create_key("root", ["admin"], ["*"], actor="ops")
    g.cache.reload()
    assert authenticate(manager, key).name == "root"
    missing = authenticate(manager)
    assert (missing.allow, missing.status, missing.plugin) == (
        False,
        401,
        "governance",
    ) and "missing 'Authorization" in missing.reason
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    unknown = "lg_0000000000000000_" + key.split("_", 2)[2]
    assert authenticate(manager, wrong).reason == authenticate(manager, unknown).reason == "invalid API key"
    assert "too long" in authenticate(manager, "lg_" + "x" * 300).reason
    assert "malformed" in authenticate(manager, "Basic-thing").reason
    basic = asyncio.run(manager.authenticate(RequestInfo("GET", "/", {"authorization": "Basic abc"}, None, "iris", None)))
    assert "must read 'Bearer" in basic.reason


def test_expired_and_revoked_keys_stop_working(gov):
    manager, g = gov
    admin, _ = g.create_key("root", ["admin"], ["*"], actor="ops")
    short, info = g.create_key("tmp", ["invoker"], ["*"], actor="root", expires_at=time.time() + 0.5)
    g.cache.reload()
    assert authenticate(manager, short).name == "tmp"
    time.sleep(0.6)
    assert authenticate(manager, short).reason == "API key expired"
    g.revoke_key(admin.split("_")[1], actor="root")
    g.cache.reload()
    assert authenticate(manager, admin).reason == "invalid API key"
    assert authenticate(manager).allow is False  # revoking every key does not reopen the server


def test_a_key_store_that_cannot_be_read_fails_closed(make_manager):
    manager = make_manager(governance={"key_refresh_s": 0.05, "key_max_stale_s": 0.3})
    g = manager.plugin("governance")
    key, _ = g.create_key("root", ["admin"], ["*"], actor="ops")
    assert authenticate(manager, key).name == "root"
    g.keys.active_rows = lambda: (_ for _ in ()).throw(sa.exc.OperationalError("select", {}, Exception("db down")))
    time.sleep(0.5)
    down = authenticate(manager, key)
    assert (down.allow, down.status) == (False, 503) and "cannot check API keys" in down.reason


def test_roles_and_model_grants(gov):
    manager, g = gov
    g.create_key("root", ["admin"], ["*"], actor="ops")
    keys = {
        name: g.create_key(name, roles, models, actor="root")[0]
        for name, roles, models in [
            ("viewer", ["viewer"], ["*"]),
            ("app", ["invoker"], ["iris"]),
            ("dep", ["deployer"], ["*"]),
            ("appr", ["approver"], ["*"]),
        ]
    }
    g.cache.reload()
    who = {name: authenticate(manager, key) for name, key in keys.items()}
    allowed = {
        (name, action, model)
        for name in who
        for action in ("metadata", "infer", "register", "alias", "approve", "keys")
        for model in ("iris", "digits")
        if authorize(manager, who[name], action, model).allow
    }
    assert allowed == {
        ("viewer", "metadata", "iris"),
        ("viewer", "metadata", "digits"),
        ("app", "metadata", "iris"),
        ("app", "infer", "iris"),
        *{("dep", a, m) for a in ("metadata", "register", "alias") for m in ("iris", "digits")},
        *{("appr", a, m) for a in ("metadata", "approve") for m in ("iris", "digits")},
    }
    denied = authorize(manager, who["app"], "infer", "digits")
    assert (denied.status, denied.reason) == (403, "'app' is not granted model 'digits'")
    assert authorize(manager, who["viewer"], "infer").reason == "'viewer' (viewer) may not infer"


def test_options_that_do_not_validate_close_everything(make_manager):
    manager = make_manager(governance={"protected_aliases": "production", "nonsense": 1})
    g = manager.plugin("governance")
    assert g.error and "governance options invalid" in g.error
    assert authenticate(manager).status == 503
    assert not manager.check_alias(Principal("a"), "iris", "staging", 1).allow


# -- approval ------------------------------------------------------------------------------------------


@pytest.fixture
def registered(make_manager, tmp_path):
    manager = make_manager(governance={"required_card_fields": ["intended_use", "limitations"]})
    path = tmp_path / "mlp.onnx"
    onnx.save(build_mlp(seed=0), str(path))
    registry = manager.registry()
    card = "intended_use: tests\nlimitations: none known\n"
    registry.register(path, "mlp", created_by="alice", card=card)
    registry.register(path, "mlp", created_by="alice", card="# MLP\n## Intended use\nTests.\n")
    return manager, manager.plugin("governance"), registry


def test_four_eyes_approval(registered):
    manager, g, registry = registered
    with pytest.raises(AliasRefused, match="protected alias and version 1 is pending"):
        registry.set_alias("mlp", "production", 1, actor="alice")
    registry.set_alias("mlp", "staging", 1, actor="alice")  # unprotected
    with pytest.raises(GovernanceError, match="'alice' registered version 1 of 'mlp' and cannot approve it") as e:
        g.decide("approve", "mlp", 1, actor="alice")
    assert e.value.status == 403
    assert g.decide("approve", "mlp", 1, actor="bob", reason="looks fine").state == "approved"
    with pytest.raises(GovernanceError, match="is approved; only a pending version can be approved") as e:
        g.decide("approve", "mlp", 1, actor="carol")
    assert e.value.status == 409
    registry.set_alias("mlp", "production", 1, actor="alice")
    with pytest.raises(GovernanceError, match="model card lacks limitations") as e:
        g.decide("approve", "mlp", 2, actor="bob")
    assert e.value.status == 422
    assert g.decide("reject", "mlp", 2, actor="bob").state == "rejected"
    assert g.decide("revoke", "mlp", 1, actor="carol", reason="bias found").state == "revoked"
    kinds = [
        (r["kind"], r["actor"], r.get("version")) for r in manager.plugin("audit").audit_log.records() if r["kind"] != "register"
    ]
    assert kinds == [
        ("alias_refused", "alice", 1),
        ("alias_set", "alice", 1),
        ("approve_refused", "alice", 1),
        ("approve", "bob", 1),
        ("approve_refused", "carol", 1),
        ("alias_set", "alice", 1),
        ("approve_refused", "bob", 2),
        ("reject", "bob", 2),
        ("revoke", "carol", 1),
    ]
    assert [h["state"] for h in g.approvals.history("mlp")] == ["approved", "rejected", "revoked"]


def test_serving_decisions(registered):
    manager, g, registry = registered
    v1, v2 = registry.get_version("mlp", 1), registry.get_version("mlp", 2)
    assert manager.check_serving(v2, []).allow  # pending, by explicit version: evaluation
    assert "not approved" in manager.check_serving(v2, ["production"]).reason
    g.decide("approve", "mlp", 1, actor="bob")
    assert manager.check_serving(v1, ["production"]).allow
    g.decide("revoke", "mlp", 1, actor="bob", reason="bias found")
    denied = manager.check_serving(v1, ["production"])
    assert (denied.allow, denied.status) == (False, 503) and denied.reason == "version 1 of 'mlp' was revoked by bob: bias found"


def test_serving_is_refused_on_an_onnxruntime_outside_the_policy(make_manager, tmp_path):
    manager = make_manager(governance={"policy": {"onnxruntime": "<1.0"}})
    path = tmp_path / "mlp.onnx"
    onnx.save(build_mlp(seed=0), str(path))
    record = manager.registry().register(path, "mlp", created_by="alice")
    assert "is outside the allowed range '<1.0'" in manager.check_serving(record, []).reason


def test_card_fields():
    assert card_fields("owner: a\nlimitations:\n") == {"owner"}
    assert card_fields("---\nowner: a\n---\n# Intended use\nscoring\n## Limitations\n\n") == {"owner", "intended_use"}
    assert card_fields("") == set()


# -- policy --------------------------------------------------------------------------------------------


def custom_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Secret", ["r"], ["y"], domain="com.example")]
    graph = helper.make_graph(nodes, "custom", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)])


def test_policy_lists_every_reason():
    policy = Policy(
        opset={"min": 14, "max": 20},
        forbidden_operators=["Relu"],
        max_artifact_bytes=10,
        required_lineage=["training_data", "code_version"],
        custom_op_libraries=["a" * 64],
    )
    model = custom_model()
    candidate = RegistrationCandidate(
        name="m",
        path="m.onnx",
        sha256="0" * 64,
        size=100,
        signature={},
        created_by="a",
        lineage={"code_version": "v1"},
        opsets={(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        operators=frozenset(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in model.graph.node),
        custom_op_libraries={"/opt/libsecret.so": "b" * 64},
    )
    assert policy.check(candidate) == [
        "artifact is 100 bytes, over the limit of 10",
        "ai.onnx opset 13 is outside the allowed range 14-20",
        "operator domain 'com.example' is not allowed (allowed: ai.onnx, ai.onnx.ml)",
        "operator 'Relu' is forbidden",
        f"custom-op library /opt/libsecret.so (sha256 {'b' * 64}) is not on the allowed list",
        "lineage lacks required field(s): training_data",
    ]
    with pytest.raises(ValueError, match="is not a version specifier"):
        Policy(onnxruntime="one point twenty")


def test_registration_runs_the_policy_and_writes_nothing_when_refused(make_manager, tmp_path):
    manager = make_manager(governance={"policy": {"forbidden_operators": ["Relu"], "required_lineage": ["training_data"]}})
    path = tmp_path / "custom.onnx"
    onnx.save(custom_model(), str(path))
    with pytest.raises(RegistrationError) as e:
        manager.registry().register(path, "custom", created_by="alice")
    assert "operator domain 'com.example' is not allowed" in str(e.value) and "operator 'Relu' is forbidden" in str(e.value)
    assert "lineage lacks required field(s): training_data (plugin governance)" in str(e.value)
    assert manager.registry().list_models() == []
    refused = [r for r in manager.plugin("audit").audit_log.records(kind="register_refused")]
    assert len(refused) == 1 and len(refused[0]["detail"]["reasons"]) == 1


def test_policy_check_is_a_dry_run(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCKGATE_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "lockgate.yaml").write_text(
        "governance:\n  policy:\n    forbidden_operators: [Relu]\n    required_lineage: [training_data]\n"
    )
    onnx.save(custom_model(), str(tmp_path / "custom.onnx"))
    onnx.save(build_iris(), str(tmp_path / "iris.onnx"))
    runner = CliRunner()
    bad = runner.invoke(main, ["policy", "check", str(tmp_path / "custom.onnx")])
    assert bad.exit_code == 1
    assert "operator 'Relu' is forbidden" in bad.output and "lineage lacks required field(s): training_data" in bad.output
    good = runner.invoke(main, ["policy", "check", str(tmp_path / "iris.onnx"), "--lineage", "training_data=s3://iris.csv"])
    assert good.exit_code == 0, good.output
    assert "complies with the policy" in good.output


# -- SBOM --------------------------------------------------------------------------------------------------


def test_sbom_is_valid_cyclonedx_with_runtime_and_models(tmp_path):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    from lockgate.plugins import ModelVersionRecord

    model = build_iris()
    data = model.SerializeToString()
    record = ModelVersionRecord("iris", 3, "ab" * 32, len(data), {}, "alice", 0.0, {}, "", "")
    document = build_sbom([(record, data, ["production"])])
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(json.dumps(document)) is None
    names = {c["name"]: c for c in document["components"]}
    assert {"onnxruntime", "numpy", "ray"} <= set(names)
    iris = names["iris"]
    assert iris["type"] == "machine-learning-model" and iris["version"] == "3"
    assert iris["hashes"] == [{"alg": "SHA-256", "content": "ab" * 32}]
    props = {p["name"]: p["value"] for p in iris["properties"]}
    assert props["lockgate:aliases"] == "production" and "lockgate:opset:ai.onnx" in props
    assert set(props["lockgate:operators"].split(",")) == {
        n.op_type if not n.domain else f"{n.domain}::{n.op_type}" for n in model.graph.node
    }


# -- what a request sees -------------------------------------------------------------------------------------


@pytest.fixture
def app(make_manager, tmp_path):
    manager = make_manager()
    repo = tmp_path / "repo"
    write_demo_repository(repo, ["iris"])
    from lockgate.server.tools.repository import announce_imports

    registry = manager.registry()
    import_repository(repo, registry, actor="alice", before_alias=announce_imports(manager, "tester"))
    g = manager.plugin("governance")
    keys = {"admin": g.create_key("root", ["admin"], ["*"], actor="alice")[0]}
    keys["app"] = g.create_key("app", ["invoker"], ["iris"], actor="root")[0]
    keys["other"] = g.create_key("other", ["invoker"], ["digits"], actor="root")[0]
    g.cache.reload()
    service = ModelService("iris", ModelConfig.model_validate(registry.model_config("iris")), registry, manager=manager)
    yield ModelApp(service), keys, manager
    service.close()


def infer(model_app, token=None, body=IRIS_BODY):
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return asyncio.run(call(model_app, "POST", "/v2/models/iris/infer", body, headers))


def test_requests_get_401_403_or_an_answer_and_every_one_is_recorded(app):
    model_app, keys, manager = app
    missing = infer(model_app)
    assert missing.status == 401 and missing.json() == {"error": "missing 'Authorization: Bearer <API key>' header"}
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert infer(model_app, "lg_0123456789abcdef_" + "A" * 43).json() == {"error": "invalid API key"}
    other = infer(model_app, keys["other"])
    assert other.status == 403 and other.json() == {"error": "'other' is not granted model 'iris'"}
    ok = infer(model_app, keys["app"])
    assert ok.status == 200 and len(ok.headers["lockgate-request-id"]) == 32
    records = [r for r in manager.plugin("audit").audit_log.records(kind="infer")]
    assert [(r["actor"], r["detail"]["status"], r["detail"].get("decided_by")) for r in records] == [
        ("anonymous", 401, "governance"),
        ("anonymous", 401, "governance"),
        ("other", 403, "governance"),
        ("app", 200, None),
    ]
    answered = records[-1]
    assert answered["request_id"] == ok.headers["lockgate-request-id"] and answered["version"] == 1
    assert answered["detail"]["sha256"] == manager.registry().get_version("iris", 1).sha256
    import hashlib

    assert answered["detail"]["input_sha256"] == hashlib.sha256(IRIS_BODY).hexdigest()
    assert answered["detail"]["output_sha256"] == hashlib.sha256(ok.body).hexdigest()
    for key in keys.values():
        assert key.split("_", 2)[2] not in json.dumps(records)


def test_an_answer_that_cannot_be_recorded_is_withheld(app):
    model_app, keys, manager = app
    audit = manager.plugin("audit")
    with audit.audit_log.engine.begin() as c:
        c.execute(sa.text("DROP TABLE lockgate_audit"))
    seen = []
    manager.observe = lambda hook, **kwargs: seen.append(kwargs["event"]) if hook == "lockgate_observe_inference" else None
    r = infer(model_app, keys["app"])
    assert r.status == 503 and "could not be recorded in the audit log, so its answer is withheld" in r.json()["error"]
    assert "outputs" not in r.json() and r.headers["retry-after"] == "1"
    assert model_app.observed and [e.status for e in seen] == [503]  # observers count what the client got


def test_a_revoked_version_stops_serving(app):
    model_app, keys, manager = app
    manager.plugin("governance").decide("revoke", "iris", 1, actor="bob", reason="bias")
    model_app.service.update_blocked()
    r = infer(model_app, keys["app"])
    assert r.status == 503 and r.json() == {
        "error": "model 'iris' version 1 is not served: version 1 of 'iris' was revoked by bob: bias"
    }
    stopped = list(manager.plugin("audit").audit_log.records(kind="serving_stopped"))
    assert stopped and stopped[0]["version"] == 1


def asked_gatekeepers(manager) -> list[str]:
    """The actions the request gatekeepers are asked about from now on."""
    asked: list[str] = []
    check = manager.check_request

    def counting(request, action):
        asked.append(action)
        return check(request, action)

    manager.check_request = counting
    return asked


def test_a_keys_allow_is_held_until_the_key_table_reloads_and_a_revoked_key_stops_within_a_second(app):
    """A key's allow is reused without asking the gatekeepers, for that key only (another key, a
    wrong secret, no key are each decided), until the key table's next reload: a key revoked
    meanwhile stops working within key_refresh_s (1 s) and one read of the table, as before."""
    model_app, keys, manager = app
    g = manager.plugin("governance")
    asked = asked_gatekeepers(manager)
    assert [infer(model_app, keys["app"]).status for _ in range(20)] == [200] * 20
    assert 1 <= len(asked) <= 2, asked  # once, or twice if the table reloaded meanwhile
    assert infer(model_app, keys["other"]).status == 403
    assert infer(model_app, keys["app"][:-4] + ("AAAA" if not keys["app"].endswith("AAAA") else "BBBB")).status == 401
    assert infer(model_app).status == 401
    revoked_at = time.monotonic()
    g.revoke_key(keys["app"].split("_")[1], actor="root")
    statuses = []
    while time.monotonic() - revoked_at < 3.0:
        statuses.append(infer(model_app, keys["app"]).status)
        if statuses[-1] != 200:
            break
        time.sleep(0.02)
    stopped_after = time.monotonic() - revoked_at
    assert statuses[-1] == 401 and set(statuses[:-1]) <= {200}, statuses
    assert stopped_after < g.options.key_refresh_s + 0.5, stopped_after
    assert infer(model_app, keys["app"]).json() == {"error": "invalid API key"}


def test_open_modes_allow_is_held_until_the_first_key_is_read(make_manager, tmp_path):
    """With no key yet (open mode), an anonymous caller's allow is held like a key's; once a key
    is created, anonymous requests are refused within key_refresh_s and one read."""
    manager = make_manager()
    write_demo_repository(tmp_path / "repo", ["iris"])
    registry = manager.registry()
    from lockgate.server.tools.repository import announce_imports

    import_repository(tmp_path / "repo", registry, actor="alice", before_alias=announce_imports(manager, "tester"))
    service = ModelService("iris", ModelConfig.model_validate(registry.model_config("iris")), registry, manager=manager)
    try:
        model_app = ModelApp(service)
        g = manager.plugin("governance")
        g.cache.reload()
        asked = asked_gatekeepers(manager)
        assert [infer(model_app).status for _ in range(10)] == [200] * 10
        assert 1 <= len(asked) <= 2, asked
        created_at = time.monotonic()
        g.create_key("root", ["admin"], ["*"], actor="ops")
        statuses = []
        while time.monotonic() - created_at < 3.0:
            statuses.append(infer(model_app).status)
            if statuses[-1] != 200:
                break
            time.sleep(0.02)
        assert statuses[-1] == 401 and set(statuses[:-1]) <= {200}, statuses
        assert time.monotonic() - created_at < g.options.key_refresh_s + 0.5
    finally:
        service.close()


def test_a_keys_allow_is_not_held_past_the_keys_expiry(app):
    model_app, keys, manager = app
    g = manager.plugin("governance")
    short, _ = g.create_key("tmp", ["invoker"], ["iris"], actor="root", expires_at=time.time() + 0.4)
    g.cache.reload()
    asked = asked_gatekeepers(manager)
    assert [infer(model_app, short).status for _ in range(5)] == [200] * 5
    assert 1 <= len(asked) <= 2, asked  # held (twice: the table reloaded between check and hold)
    time.sleep(0.45)
    expired = infer(model_app, short)
    assert expired.status == 401 and expired.json() == {"error": "API key expired"}


# -- starting a server ------------------------------------------------------------------------------------------


def test_serve_refuses_open_mode_off_loopback_and_a_runtime_outside_the_policy(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCKGATE_HOME", str(tmp_path / "home"))
    write_demo_repository(tmp_path / "repo", ["iris"])
    runner = CliRunner()
    r = runner.invoke(main, ["serve", "--model-repository", str(tmp_path / "repo"), "--host", "0.0.0.0", "--port", "8999"])
    assert r.exit_code == 2 and "refusing to serve on 0.0.0.0 without API keys" in r.output
    Path(tmp_path / "home" / "lockgate.yaml").write_text("governance:\n  policy:\n    onnxruntime: '>=99'\n")
    r = runner.invoke(main, ["serve", "--model-repository", str(tmp_path / "repo"), "--port", "8999"])
    assert r.exit_code == 2 and "refusing to start: onnxruntime" in r.output and "outside the allowed range '>=99'" in r.output
    Path(tmp_path / "home" / "lockgate.yaml").write_text("audit:\n  mode: sometimes\n")
    r = runner.invoke(main, ["serve", "--model-repository", str(tmp_path / "repo"), "--port", "8999"])
    assert r.exit_code == 2 and "refusing to start: audit options invalid" in r.output and "mode" in r.output


def test_a_second_authorization_header_makes_the_credentials_malformed(gov):
    from lockgate.server.serving.gate import Headers

    manager, g = gov
    key, _ = g.create_key("root", ["admin"], ["*"], actor="ops")
    g.cache.reload()
    one = Headers([(b"Authorization", f"Bearer {key}".encode())])
    two = Headers([(b"authorization", f"Bearer {key}".encode()), (b"AUTHORIZATION", b"Bearer lg_0000000000000000_x")])
    assert asyncio.run(manager.authenticate(RequestInfo("POST", "/", one, None, "iris", None))).name == "root"
    denied = asyncio.run(manager.authenticate(RequestInfo("POST", "/", two, None, "iris", None)))
    assert (denied.allow, denied.status, denied.reason) == (False, 401, "invalid API key")


def test_a_rejected_version_never_answers_while_it_loads_on_demand(app, tmp_path):
    """Version 2 is registered and rejected, not loaded: its first requests load it. The serving
    decision is taken before the loaded version is published, so none of them gets an answer
    (before: 3 of 400 got 200 while the decision was pending)."""
    model_app, keys, manager = app
    registry = manager.registry()
    path = tmp_path / "iris2.onnx"
    model = onnx.load(str(tmp_path / "repo" / "iris" / "1" / "model.onnx"))
    model.doc_string = "version 2"  # other bytes, the same model
    onnx.save(model, str(path))
    assert registry.register(path, "iris", created_by="alice").version == 2
    manager.plugin("governance").decide("reject", "iris", 2, actor="bob", reason="failed review")
    headers = {"authorization": f"Bearer {keys['app']}"}

    class SlowToDecide:  # a serving gatekeeper that takes its time (a remote policy service, say)
        LOCKGATE_PLUGIN_API = "1.3"

        @hookimpl
        def lockgate_check_serving(self, record, aliases):
            time.sleep(0.3)

    assert manager.register(SlowToDecide(), "slow-to-decide").state == "loaded"

    async def client(out: list, start_s: float) -> None:  # one request after the other, as a kept-alive client sends them
        await asyncio.sleep(start_s)
        for _ in range(50):
            out.append((await call(model_app, "POST", "/v2/models/iris/versions/2/infer", IRIS_BODY, headers)).status)
            await asyncio.sleep(0.005)

    async def clients() -> list:
        out: list = []
        await asyncio.gather(*(client(out, 0.05 * i) for i in range(8)))
        return out

    statuses = collections.Counter(asyncio.run(clients()))
    assert statuses == {503: 400}, statuses


def test_anonymous_callers_are_refused_where_open_mode_was_not_chosen(db_url, tmp_path):
    """No key exists, yet a server built from a Serve config (KubeRay, serve deploy) takes no
    anonymous callers: open mode is a setting lockgate serve makes for a loopback-only server
    (Settings.anonymous), not the absence of keys."""
    settings = Settings(db_url, str(tmp_path / "artifacts"), "production", {}, str(tmp_path / "home"))
    manager = build_manager(settings)
    try:
        assert not manager.plugin("governance").open_mode()
        who, denied = manager.check_request(RequestInfo("POST", "/v2/models/iris/infer", {}, "10.0.0.9", "iris", None), "infer")
        assert who is None and denied is not None and denied.status == 401
        assert "no API key exists yet, and this server takes no anonymous callers" in denied.reason
        denied_sbom = asyncio.run(manager.authorize(Principal("anonymous"), "sbom", None, None))
        assert not denied_sbom.allow and denied_sbom.status == 401
    finally:
        manager.plugin("audit").close()


def test_request_ids_are_uuid7_unique_time_ordered_and_a_forked_child_draws_its_own():
    import os
    import time
    import uuid

    from lockgate.server.serving.gate import new_request_id

    before_ms = time.time_ns() // 1_000_000
    ids = [new_request_id() for _ in range(5000)]  # more than one pool of OS randomness
    after_ms = time.time_ns() // 1_000_000
    assert len(set(ids)) == 5000
    for i in ids:
        u = uuid.UUID(hex=i)
        assert len(i) == 32 and u.version == 7 and u.variant == uuid.RFC_4122
        assert before_ms <= int(i[:12], 16) <= after_ms  # the Unix time in milliseconds
    # Made later, sorted later: across milliseconds the order is the order they were made.
    stamps = [int(i[:12], 16) for i in ids]
    assert stamps == sorted(stamps)
    time.sleep(0.002)
    assert new_request_id() > max(ids)
    # The 74 random bits are not a counter: ids of one millisecond are not in the order made.
    same_ms = [i for i in ids if i[:12] == ids[0][:12]]
    assert len(same_ms) < 3 or same_ms != sorted(same_ms)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what it draws next must not be what the parent draws next
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child[12:] != new_request_id()[12:] and len(child) == 32


def test_a_protected_alias_splits_only_between_approved_versions(registered):
    manager, g, registry = registered
    g.decide("approve", "mlp", 1, actor="bob")
    registry.set_alias("mlp", "production", 1, actor="alice")
    with pytest.raises(AliasRefused, match="protected alias and version 2 is pending"):
        registry.set_alias_split("mlp", "production", {1: 90, 2: 10}, actor="alice")
    assert registry.alias_splits("mlp") == {}
    registry.set_alias_split("mlp", "staging", {1: 90, 2: 10}, actor="alice")  # unprotected: a pending canary
    kinds = [(r["kind"], r.get("version")) for r in manager.plugin("audit").audit_log.records() if r["kind"].startswith("alias")]
    assert kinds[-2:] == [("alias_refused", 2), ("alias_split", 1)]
