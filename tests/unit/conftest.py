from __future__ import annotations

from pathlib import Path

import pytest

from tests.postgres import fresh_postgres_url


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests never start Ray: ray.init raises here."""
    import ray

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unit tests must not start Ray; put this test under tests/integration")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lockgate.server.tools.demo import write_demo_repository

    root = tmp_path_factory.mktemp("repo")
    write_demo_repository(root)
    return root


@pytest.fixture(scope="session")
def demo_registry(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    """A SQLite registry holding the demo repository, with 'production' on version 1."""
    from lockgate.plugins.registry import Registry
    from lockgate.server.tools.repository import import_repository

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
    return fresh_postgres_url()


@pytest.fixture(scope="module")
def services(demo_registry):
    """A ModelService of every demo model, as a replica builds it (no Ray, no plugins)."""
    from lockgate.server.serving.config import ModelConfig
    from lockgate.server.serving.service import ModelService

    made = {
        name: ModelService(name, ModelConfig.model_validate(demo_registry.model_config(name)), demo_registry)
        for name in demo_registry.list_models()
    }
    yield made
    for s in made.values():
        s.close()
