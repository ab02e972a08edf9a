from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests never start Ray: ray.init raises here."""
    import ray

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unit tests must not start Ray; put this test under tests/integration")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lockgate.server.demo import write_demo_repository

    root = tmp_path_factory.mktemp("repo")
    write_demo_repository(root)
    return root


@pytest.fixture(scope="session")
def demo_registry(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    """A SQLite registry holding the demo repository, with 'production' on version 1."""
    from lockgate.plugins.registry import Registry
    from lockgate.server.repository import import_repository

    home = tmp_path_factory.mktemp("home")
    registry = Registry(f"sqlite:///{home}/registry.db", home / "artifacts")
    import_repository(demo_repo, registry, actor="tester")
    yield registry
    registry.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLAlchemy URL on each back end: a fresh SQLite file, and PostgreSQL
    (LOCKGATE_TEST_POSTGRES_URL; required in CI) with every lockgate table dropped first."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/lockgate.db"
    url = os.environ.get("LOCKGATE_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("LOCKGATE_REQUIRE_POSTGRES") == "1":
            pytest.fail("LOCKGATE_REQUIRE_POSTGRES=1 but LOCKGATE_TEST_POSTGRES_URL is not set")
        pytest.skip("no PostgreSQL: set LOCKGATE_TEST_POSTGRES_URL (CI starts one with .ci/postgres.sh)")
    import sqlalchemy as sa

    from lockgate.plugins.audit import _schema as audit_schema
    from lockgate.plugins.governance import _schema as governance_schema
    from lockgate.plugins.registry import _schema as registry_schema

    engine = sa.create_engine(url)
    for schema in (audit_schema, governance_schema, registry_schema):
        schema.metadata.drop_all(engine)
    engine.dispose()
    return url
