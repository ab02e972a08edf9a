"""The registry on both back ends: SQLite (always) and PostgreSQL (LOCKGATE_TEST_POSTGRES_URL; required in CI)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import onnx
import pytest

from lockgate.plugins import Decision
from lockgate.plugins.errors import ArtifactMismatch
from lockgate.plugins.registry import RegistrationError, Registry, UnknownModel
from lockgate.server.tools.demo import build_iris, build_mlp


@pytest.fixture
def registry_url(db_url):
    return db_url


@pytest.fixture
def make_registry(registry_url, tmp_path):
    made = []

    def make(**kwargs):
        r = Registry(registry_url, tmp_path / "artifacts", **kwargs)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    onnx.save(build_mlp(seed=0), str(root / "mlp0.onnx"))
    onnx.save(build_mlp(seed=1), str(root / "mlp1.onnx"))
    onnx.save(build_iris(), str(root / "iris.onnx"))
    data = (root / "mlp0.onnx").read_bytes()
    (root / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (root / "text.onnx").write_text("not a model")
    bad = build_mlp(seed=0)
    bad.graph.node[0].op_type = "NoSuchOperator"
    (root / "checker.onnx").write_bytes(bad.SerializeToString())
    return root


def artifacts(tmp_path):
    root = tmp_path / "artifacts"
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_register_records_everything(make_registry, files):
    r = make_registry()
    lineage = {
        "training_data": "s3://bucket/iris.csv",
        "training_data_sha256": "ab" * 32,
        "code_version": "abc123",
        "parameters": {"C": 1.0},
        "metrics": {"accuracy": 0.97},
    }
    rec = r.register(files / "iris.onnx", "iris", created_by="alice", lineage=lineage, card="# Iris\nA classifier.")
    assert (rec.name, rec.version, rec.created_by) == ("iris", 1, "alice")
    assert len(rec.sha256) == 64 and rec.size == (files / "iris.onnx").stat().st_size
    assert rec.signature["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in rec.signature["outputs"]] == ["label", "probabilities"]
    again = r.get_version("iris", 1)
    assert again.lineage == lineage and again.card.startswith("# Iris") and again.sha256 == rec.sha256
    assert r.read_verified(again) == (files / "iris.onnx").read_bytes()
    assert r.events(name="iris", kind="register")[0]["actor"] == "alice"


def test_versions_are_immutable_rows_and_numbers_grow(make_registry, files):
    r = make_registry()
    assert [r.register(files / f, "m", created_by="a").version for f in ("mlp0.onnx", "mlp1.onnx", "mlp0.onnx")] == [1, 2, 3]
    assert [v.version for v in r.versions("m")] == [1, 2, 3]
    assert r.versions("m")[0].sha256 == r.versions("m")[2].sha256


def test_concurrent_registrations_get_distinct_versions(make_registry, files):
    r = make_registry()
    with ThreadPoolExecutor(8) as pool:
        versions = list(pool.map(lambda i: r.register(files / "mlp0.onnx", "m", created_by=f"u{i}").version, range(16)))
    assert sorted(versions) == list(range(1, 17))


def test_concurrent_registrations_from_separate_registries(make_registry, files):
    """Two processes' worth of engines on the same store."""
    a, b = make_registry(), make_registry()
    results: list[int] = []
    lock = threading.Lock()

    def go(reg, n):
        for _ in range(n):
            v = reg.register(files / "mlp1.onnx", "shared", created_by="x").version
            with lock:
                results.append(v)

    threads = [threading.Thread(target=go, args=(reg, 6)) for reg in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(1, 13))


@pytest.mark.parametrize(
    "name,fragment",
    [
        ("text.onnx", "is not an ONNX model"),
        ("truncated.onnx", "not an ONNX model (or is truncated)"),
        ("checker.onnx", "fails onnx.checker"),
    ],
)
def test_bad_files_are_refused_and_leave_nothing(make_registry, files, tmp_path, name, fragment):
    r = make_registry()
    with pytest.raises(RegistrationError) as info:
        r.register(files / name, "m", created_by="a")
    assert fragment in str(info.value)
    assert r.list_models() == [] and artifacts(tmp_path) == []
    assert r.events(kind="register_refused")[0]["detail"]["reasons"]


def test_failed_transaction_leaves_neither_artifact_nor_rows(make_registry, files, tmp_path, monkeypatch):
    r = make_registry()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full while recording")

    monkeypatch.setattr(r, "_event", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        r.register(files / "mlp0.onnx", "m", created_by="a")
    monkeypatch.undo()
    assert r.list_models() == [] and artifacts(tmp_path) == []
    assert r.register(files / "mlp0.onnx", "m", created_by="a").version == 1


def test_registration_gatekeepers_deny_with_every_reason(make_registry, files, tmp_path):
    def check(candidate):
        assert "Gemm" in candidate.operators and candidate.opsets["ai.onnx"] == 17
        return [Decision(False, "no Gemm allowed", "policy-a"), Decision(False, "too big", "policy-b")]

    r = make_registry(check_registration=check)
    with pytest.raises(RegistrationError) as info:
        r.register(files / "mlp0.onnx", "m", created_by="a")
    assert info.value.reasons == ["no Gemm allowed (plugin policy-a)", "too big (plugin policy-b)"]
    assert artifacts(tmp_path) == []


def test_aliases_and_their_history(make_registry, files):
    r = make_registry()
    for f in ("mlp0.onnx", "mlp1.onnx", "mlp0.onnx"):
        r.register(files / f, "m", created_by="a")
    assert r.set_alias("m", "production", 1, actor="bob") is None
    t1 = time.time()
    time.sleep(0.02)
    assert r.set_alias("m", "production", 2, actor="carol") == 1
    r.set_alias("m", "staging", 3, actor="bob")
    assert r.aliases("m") == {"production": 2, "staging": 3}
    assert r.resolve("m").version == 2 and r.resolve("m", "staging").version == 3 and r.resolve("m", "1").version == 1
    assert r.alias_at("m", "production", t1) == 1
    assert r.alias_at("m", "production", time.time()) == 2
    assert r.alias_at("m", "production", t1 - 3600) is None
    hist = r.alias_history("m", "production")
    assert [(h["version"], h["previous"], h["set_by"]) for h in hist] == [(1, None, "bob"), (2, 1, "carol")]


@pytest.mark.parametrize("alias,fragment", [("", "alias"), ("123", "not only digits"), ("a b", "alias")])
def test_bad_alias_names(make_registry, files, alias, fragment):
    r = make_registry()
    r.register(files / "mlp0.onnx", "m", created_by="a")
    with pytest.raises(ValueError, match=fragment):
        r.set_alias("m", alias, 1, actor="a")


def test_unknowns_are_named(make_registry, files):
    r = make_registry()
    r.register(files / "mlp0.onnx", "m", created_by="a")
    with pytest.raises(UnknownModel, match="unknown model 'x'; registered: m"):
        r.resolve("x", "1")
    with pytest.raises(UnknownModel, match="has no version 7; registered: 1"):
        r.get_version("m", 7)
    with pytest.raises(UnknownModel, match="has no alias 'production'"):
        r.resolve("m")
    with pytest.raises(UnknownModel):
        r.set_alias("m", "production", 9, actor="a")


def test_explicit_version_import_is_idempotent(make_registry, files):
    r = make_registry()
    a = r.register(files / "mlp0.onnx", "m", created_by="a", version=3)
    b = r.register(files / "mlp0.onnx", "m", created_by="b", version=3)
    assert a.version == b.version == 3 and b.created_by == "a"
    with pytest.raises(RegistrationError, match="version 3 of model 'm' is already registered with another artifact"):
        r.register(files / "mlp1.onnx", "m", created_by="a", version=3)


def test_a_changed_artifact_is_refused_and_recorded(make_registry, files):
    r = make_registry()
    rec = r.register(files / "mlp0.onnx", "m", created_by="a")
    path = r.store.path_for(rec.sha256)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-1] + b"X")
    with pytest.raises(ArtifactMismatch, match="it was changed; refusing to load it"):
        r.read_verified(rec)
    refused = r.events(name="m", kind="load_refused")
    assert len(refused) == 1 and refused[0]["detail"]["sha256"] == rec.sha256


def test_a_registry_that_keeps_no_reference_samples_is_reported_not_fatal(demo_registry, demo_repo):
    """A replacement registry may keep no reference samples (set_reference raises RegistryError):
    a repository import says so for each sample it could not store and goes on."""
    from lockgate.plugins import PluginManager, hookimpl
    from lockgate.plugins.errors import RegistryError
    from lockgate.server.tools.reference import import_references

    class NoSamples:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def reference(self, name, version):
            return None

        def set_reference(self, *args, **kwargs):
            raise RegistryError("this registry keeps no reference samples")

    class Provider:
        LOCKGATE_PLUGIN_API = "1.3"

        @hookimpl
        def lockgate_model_registry(self):
            return NoSamples(demo_registry)

        @hookimpl
        def lockgate_build_baseline(self, inputs, outputs):
            return {"rows": len(next(iter(inputs.values()))), "features": {}}

    manager = PluginManager()
    manager.register(Provider(), "no-samples")
    said = import_references(manager, demo_repo, [("iris", 1, True), ("mlp", 1, True)], actor="tester")
    assert said == [
        "reference sample of iris version 1 not set: this registry keeps no reference samples",
        "reference sample of mlp version 1 not set: this registry keeps no reference samples",
    ]


def test_the_control_applications_name_is_reserved(make_registry, files, tmp_path):
    """A model named like the control application would replace it in Serve (one app per name)."""
    from lockgate.plugins import RESERVED_MODEL_NAMES
    from lockgate.server.errors import ConfigError
    from lockgate.server.hosting.deployments import CONTROL_APP
    from lockgate.server.tools.repository import scan_repository

    assert CONTROL_APP in RESERVED_MODEL_NAMES
    registry = make_registry()
    with pytest.raises(RegistrationError, match="name 'lockgate-control' is reserved"):
        registry.register(files / "iris.onnx", "lockgate-control", created_by="alice")
    assert "lockgate-control" not in registry.list_models()
    (tmp_path / "repo" / "lockgate-control" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "lockgate-control" / "1" / "model.onnx").write_bytes((files / "iris.onnx").read_bytes())
    with pytest.raises(ConfigError, match="reserved"):
        scan_repository(tmp_path / "repo")


def test_sqlite_databases_are_created_owner_only(tmp_path):
    """The registry, keys, approvals and audit log are in these files: 0600, as the audit key."""
    from lockgate.plugins.shared import make_engine

    url = f"sqlite:///{tmp_path}/fresh/registry.db"
    engine = make_engine(url)
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        c.exec_driver_sql("INSERT INTO t VALUES (1)")
    engine.dispose()
    for name in ("registry.db", "registry.db-wal", "registry.db-shm"):
        path = tmp_path / "fresh" / name
        if path.exists():
            assert (path.stat().st_mode & 0o777) == 0o600, (name, oct(path.stat().st_mode))
    assert (tmp_path / "fresh" / "registry.db").exists()


def test_serve_prints_the_registry_url_without_its_password():
    from lockgate.server.cli.serve import _without_password

    shown = _without_password("postgresql+psycopg://lockgate:s3cret@db.internal:5432/lockgate")
    assert "s3cret" not in shown and shown == "postgresql+psycopg://lockgate:***@db.internal:5432/lockgate"
    assert _without_password("sqlite:////var/lib/lockgate/registry.db") == "sqlite:////var/lib/lockgate/registry.db"


def test_an_alias_split_between_versions_a_canary(make_registry, files):
    r = make_registry()
    for f in ("mlp0.onnx", "mlp1.onnx", "iris.onnx"):
        r.register(files / f, "m", created_by="a")
    r.set_alias("m", "production", 1, actor="bob")
    for weights, fragment in (
        ({1: 100}, "two or more versions"),
        ({1: 90, 2: 20}, "summing to 100"),
        ({1: 100, 2: 0}, "from 1 to 99"),
    ):
        with pytest.raises(ValueError, match=fragment):
            r.set_alias_split("m", "production", weights, actor="bob")
    with pytest.raises(LookupError, match="version"):
        r.set_alias_split("m", "production", {1: 50, 9: 50}, actor="bob")
    assert r.alias_splits("m") == {} and r.aliases("m") == {"production": 1}  # refused: nothing changed

    assert r.set_alias_split("m", "production", {1: 90, 2: 10}, actor="carol") == 1
    assert r.alias_splits("m") == {"production": {1: 90, 2: 10}}
    assert r.aliases("m") == {"production": 1}  # one version per alias for everything else: the heaviest
    r.set_alias_split("m", "production", {1: 30, 2: 70}, actor="carol")  # the weights move
    assert r.aliases("m") == {"production": 2} and r.alias_splits("m") == {"production": {1: 30, 2: 70}}
    events = [e for e in r.events("m") if e["kind"] == "alias_split"]
    assert [e["detail"]["weights"] for e in events] == [{"1": 90, "2": 10}, {"1": 30, "2": 70}]
    history = r.alias_history("m", "production")
    assert [(h["version"], h["set_by"]) for h in history][-2:] == [(1, "carol"), (2, "carol")]
    assert [e["at"] for e in events] == [h["set_at"] for h in history][-2:]  # each split's weights at its move
    r.set_alias("m", "production", 3, actor="bob")  # a plain move ends the split
    assert r.alias_splits("m") == {} and r.aliases("m") == {"production": 3}
    assert r.events("m")[-1]["detail"]["split_ended"] is True


def _create_tables_at_once(url: str, barrier, results) -> None:
    from lockgate.plugins.audit import _schema as audit_tables
    from lockgate.plugins.governance import _schema as governance_tables
    from lockgate.plugins.registry import _schema as registry_tables
    from lockgate.plugins.shared import create_tables, make_engine

    engine = make_engine(url)
    barrier.wait()
    try:
        for metadata in (audit_tables.metadata, registry_tables.metadata, governance_tables.metadata):
            create_tables(engine, metadata)
        results.put("ok")
    except Exception as e:  # noqa: BLE001 - reported to the test
        results.put(f"{type(e).__name__}: {e}")


def test_processes_starting_together_on_a_new_database_all_create_its_tables(db_url):
    """A node's replicas start together and each creates the tables of a new database. With
    ``metadata.create_all(engine)`` most of six such processes failed at once: on SQLite with
    "database is locked" (a deferred read transaction cannot become a writer after another
    process wrote), on PostgreSQL on the catalog's unique index (two CREATE TABLEs of one name).
    ``create_tables`` takes SQLite's write lock, or an advisory lock on PostgreSQL, first, so
    each waits its turn and finds the tables made."""
    import multiprocessing

    import sqlalchemy as sa

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(6), ctx.Queue()
    url = db_url
    processes = [ctx.Process(target=_create_tables_at_once, args=(url, barrier, results)) for _ in range(6)]
    for p in processes:
        p.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for p in processes:
        p.join(timeout=60)
    assert outcomes == ["ok"] * 6, outcomes
    engine = sa.create_engine(url)
    try:
        present = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"lockgate_audit", "lockgate_audit_head", "lockgate_models", "lockgate_api_keys"} <= present, present
