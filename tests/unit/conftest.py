from __future__ import annotations

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
