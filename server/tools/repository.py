"""The model repository: Triton's folder layout.

::

    <repository>/<model>/config.yaml          (or config.json; optional)
    <repository>/<model>/<version>/model.onnx  (version: a positive integer)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockgate.plugins import MODEL_NAME, model_name_problem

from ..errors import ConfigError
from ..serving.config import ModelConfig, load_model_config

__all__ = ["MODEL_NAME", "ModelEntry", "announce_imports", "import_repository", "scan_repository"]

MODEL_FILE = "model.onnx"


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model of the repository: its config and the version files that serve."""

    name: str
    path: Path
    config: ModelConfig
    files: dict[int, Path]  # served versions only, by version number

    @property
    def versions(self) -> list[int]:
        return sorted(self.files, reverse=True)


def _entry(model_dir: Path) -> ModelEntry:
    name = model_dir.name
    problem = model_name_problem(name)
    if problem is not None:
        raise ConfigError(problem, source=str(model_dir))
    config = load_model_config(model_dir)
    available: dict[int, Path] = {}
    for child in model_dir.iterdir():
        if child.is_dir() and child.name.isdigit() and int(child.name) > 0 and (child / MODEL_FILE).is_file():
            available[int(child.name)] = child / MODEL_FILE
    if not available:
        raise ConfigError(
            f"model {name!r} has no version folder with a {MODEL_FILE} (expected {name}/1/{MODEL_FILE})", source=str(model_dir)
        )
    chosen = config.version_policy.select(list(available))
    if not chosen:
        raise ConfigError(
            f"model {name!r}: version_policy selects none of the versions present ({sorted(available)})",
            source=str(model_dir),
        )
    return ModelEntry(name, model_dir, config, {v: available[v] for v in chosen})


def scan_repository(root: Path | str) -> list[ModelEntry]:
    """Every model folder of ``root``, sorted by name; a bad folder is a ConfigError naming it."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError("model repository is not a directory", source=str(root))
    entries = [_entry(d) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    if not entries:
        raise ConfigError("model repository holds no model folders", source=str(root))
    return entries


def import_repository(
    root: Path | str,
    registry: Any,
    *,
    actor: str,
    default_alias: str = "production",
    before_alias: Callable[[str, int], None] | None = None,
    refused: list[str] | None = None,
) -> list[tuple[str, int, bool]]:
    """Register every served version of a Triton-style repository, keeping its version numbers.

    Idempotent: a version already registered with the same file is left as it is. A model
    whose ``default_alias`` is unset gets it on its highest imported version:
    ``before_alias(model, version)`` runs first (the open mode's approval), and an alias move
    a gatekeeper refuses is appended to ``refused`` (raised when it is None). Returns
    ``(model, version, newly registered)`` for each version.
    """
    done = []
    for entry in scan_repository(root):
        config = entry.config.model_dump(mode="json", exclude_none=True)
        before = {v.version: v.sha256 for v in registry.versions(entry.name)}  # one query per model
        for version in sorted(entry.files):
            record = registry.register(
                entry.files[version],
                entry.name,
                created_by=actor,
                version=version,
                config=config,
                lineage={"source": str(entry.files[version].resolve())},
            )
            done.append((entry.name, record.version, before.get(version) != record.sha256))
        if default_alias not in registry.aliases(entry.name):
            if before_alias is not None:
                before_alias(entry.name, max(entry.files))
            try:
                registry.set_alias(entry.name, default_alias, max(entry.files), actor=actor)
            except PermissionError as e:  # a protected alias and a version awaiting approval
                if refused is None:
                    raise
                refused.append(str(e))
    return done


def announce_imports(manager: Any, actor: str) -> Callable[[str, int], None]:
    """``before_alias`` for ``import_repository``: tells the plugins (``lockgate_imported_version``)
    which version the import is about to alias, in the name of ``actor``."""

    def announce(name: str, version: int) -> None:
        manager.observe("lockgate_imported_version", name=name, version=version, actor=actor)

    return announce
