"""The model registry: immutable versions stored by sha256, aliases with history, lineage."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import onnx
import sqlalchemy as sa

from .._onnx import external_data_tensors, onnx_operators, onnx_opsets, onnx_signature
from .._storage import ArtifactStore, artifact_store, create_tables, make_engine, sha256_file, writing
from .._types import Decision, ModelVersionRecord, Reference, RegistrationCandidate, ShadowRun, model_name_problem
from ..errors import AliasRefused, ArtifactMismatch, RegistrationError, UnknownModel
from . import _schema as t

__all__ = ["Registry"]

ALIAS_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def _record(row: Any, store: ArtifactStore) -> ModelVersionRecord:
    return ModelVersionRecord(
        name=row.name,
        version=row.version,
        sha256=row.sha256,
        size=row.size,
        signature=row.signature,
        created_by=row.created_by,
        created_at=row.created_at,
        lineage=row.lineage,
        card=row.card,
        artifact_path=str(store.path_for(row.sha256)),
    )


class Registry:
    """The built-in registry on SQLAlchemy Core.

    ``check_registration`` returns the denials of the registration gatekeepers for a
    candidate; ``check_alias(name, alias, version, actor)`` the decision on an alias move;
    ``audit`` records control actions. They come from the plugin manager; the defaults
    allow everything and record nothing.
    """

    def __init__(
        self,
        url: str,
        artifact_dir: str | Path,
        *,
        default_alias: str = "production",
        check_registration: Callable[[RegistrationCandidate], list[Decision]] | None = None,
        check_alias: Callable[[str, str, int, str], Decision] | None = None,
        audit: Callable[..., None] | None = None,
        artifact_cache: str | Path | None = None,
        artifact_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.engine = make_engine(url)
        # A folder, or s3://bucket/prefix with this node's cache in ``artifact_cache``.
        self.store: ArtifactStore = artifact_store(artifact_dir, artifact_cache, artifact_options)
        self.default_alias = default_alias
        self._check = check_registration or (lambda candidate: [])
        self._check_alias = check_alias or (lambda name, alias, version, actor: Decision(True))
        self._audit = audit or (lambda *a, **k: None)
        create_tables(self.engine, t.metadata)

    # -- registration ------------------------------------------------------------------------

    def _validate(self, path: Path, name: str) -> tuple[onnx.ModelProto, list[str]]:
        reasons: list[str] = []
        problem = model_name_problem(name)
        if problem is not None:
            reasons.append(problem)
        if not path.is_file():
            return onnx.ModelProto(), [*reasons, f"{path} is not a file"]
        if path.stat().st_size == 0:
            return onnx.ModelProto(), [*reasons, f"{path} is empty"]
        try:
            # Never the external data: its locations are the file's word, and could name any file here.
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - protobuf raises several types
            return onnx.ModelProto(), [*reasons, f"{path.name} is not an ONNX model (or is truncated): {type(e).__name__}: {e}"]
        external = external_data_tensors(model)
        if external:
            return model, [
                *reasons,
                f"{path.name} keeps tensor data outside the model file (external data: {', '.join(external[:5])}"
                f"{', ...' if len(external) > 5 else ''}); only the model file is stored and hashed, so save the model "
                "with its data inside (onnx.save_model(model, path, save_as_external_data=False))",
            ]
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as e:  # noqa: BLE001
            reasons.append(f"{path.name} fails onnx.checker: {str(e).splitlines()[0]}")
        if not model.graph.output:
            reasons.append(f"{path.name} has no graph outputs")
        return model, reasons

    def register(
        self,
        path: str | Path,
        name: str,
        *,
        created_by: str,
        lineage: Mapping[str, Any] | None = None,
        card: str = "",
        version: int | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> ModelVersionRecord:
        """Register ``path`` as a new immutable version of ``name``: the artifact and the rows, or neither.

        ``version`` asks for a specific number (import of a Triton repository); by default the
        next free number. Registering a file whose sha256 equals an existing version of the
        same model with ``version`` given returns that version unchanged.
        """
        path = Path(path)
        lineage = dict(lineage or {})
        model, reasons = self._validate(path, name)
        if reasons:
            self._refused(name, created_by, reasons)
        staged, sha, size = self.store.stage(path)
        committed_new = config_changed = False
        try:
            candidate = RegistrationCandidate(
                name=name,
                path=str(path),
                sha256=sha,
                size=size,
                signature=onnx_signature(model),
                created_by=created_by,
                lineage=lineage,
                opsets=onnx_opsets(model),
                operators=onnx_operators(model),
                custom_op_libraries=self._libraries(name, config, reasons),
            )
            reasons += [f"{d.reason} (plugin {d.plugin})" for d in self._check(candidate)]
            if reasons:
                self._refused(name, created_by, reasons)
            for attempt in range(20):
                try:
                    with writing(self.engine) as c, c.begin():
                        existing = self._same_file(c, name, sha, version)
                        if existing is not None:
                            staged.unlink(missing_ok=True)
                            return _record(existing, self.store)
                        now = time.time()
                        current = c.execute(sa.select(t.models.c.config).where(t.models.c.name == name)).first()
                        if current is None:
                            c.execute(
                                t.models.insert().values(
                                    name=name, config=dict(config or {}), created_at=now, created_by=created_by
                                )
                            )
                        elif config is not None and dict(current.config or {}) != dict(config):
                            c.execute(t.models.update().where(t.models.c.name == name).values(config=dict(config)))
                            config_changed = True
                        number = version
                        if number is None:
                            top = c.execute(
                                sa.select(sa.func.max(t.model_versions.c.version)).where(t.model_versions.c.name == name)
                            ).scalar()
                            number = (top or 0) + 1
                        row = dict(
                            name=name,
                            version=number,
                            sha256=sha,
                            size=size,
                            signature=candidate.signature,
                            created_by=created_by,
                            created_at=now,
                            lineage=lineage,
                            card=card,
                        )
                        c.execute(t.model_versions.insert().values(**row))
                        committed_new = self.store.commit(staged, sha)
                        self._event(c, "register", created_by, name, number, {"sha256": sha, "size": size})
                    break
                except sa.exc.IntegrityError:
                    if version is not None:
                        raise RegistrationError(
                            name, [f"version {version} of model '{name}' is already registered with another artifact"]
                        ) from None
                    if committed_new:  # rolled back after the file landed: it belongs to no row
                        self.store.discard(sha)
                        committed_new = False
                        staged, _, _ = self.store.stage(path)
                    time.sleep(0.005 * (attempt + 1))
            else:
                raise RegistrationError(name, ["too many concurrent registrations; try again"])
        except BaseException:
            staged.unlink(missing_ok=True)
            if committed_new and not self._referenced(sha):
                self.store.discard(sha)
            raise
        record = ModelVersionRecord(artifact_path=str(self.store.path_for(sha)), **row)  # type: ignore[arg-type]
        self._audit(
            "register", created_by, model=name, version=record.version, detail={"sha256": sha, "size": size, "lineage": lineage}
        )
        if config_changed:
            self._audit("config_set", created_by, model=name, version=record.version, detail={"config": dict(config or {})})
        return record

    def _libraries(self, name: str, config: Mapping[str, Any] | None, reasons: list[str]) -> dict[str, str]:
        """The custom-op libraries the model's configuration loads, by path, with their actual sha256."""
        if config is None:
            try:
                config = self.model_config(name)
            except UnknownModel:
                config = {}
        out = {}
        for library in (config.get("onnxruntime") or {}).get("custom_op_libraries") or []:
            path = Path(str(library.get("path", "")))
            try:
                got, _ = sha256_file(path)
            except OSError as e:
                reasons.append(f"custom-op library {path}: {e.strerror or e}")
                continue
            if got != library.get("sha256"):
                reasons.append(f"custom-op library {path} has sha256 {got}, not the configured {library.get('sha256')}")
            out[str(path)] = got
        return out

    def _same_file(self, c: sa.Connection, name: str, sha: str, version: int | None) -> Any:
        if version is None:
            return None
        row = c.execute(
            sa.select(t.model_versions).where(t.model_versions.c.name == name, t.model_versions.c.version == version)
        ).first()
        return row if row is not None and row.sha256 == sha else None

    def _referenced(self, sha: str) -> bool:
        with self.engine.connect() as c:
            return (
                c.execute(sa.select(t.model_versions.c.name).where(t.model_versions.c.sha256 == sha).limit(1)).first() is not None
            )

    def _refused(self, name: str, actor: str, reasons: list[str]) -> None:
        with writing(self.engine) as c, c.begin():
            self._event(c, "register_refused", actor, name, None, {"reasons": reasons})
        self._audit("register_refused", actor, model=name, detail={"reasons": reasons})
        raise RegistrationError(name, reasons)

    @staticmethod
    def _event(
        c: sa.Connection,
        kind: str,
        actor: str,
        name: str | None,
        version: int | None,
        detail: Mapping[str, Any],
        at: float | None = None,
    ) -> None:
        at = time.time() if at is None else at
        c.execute(t.events.insert().values(at=at, kind=kind, actor=actor, name=name, version=version, detail=dict(detail)))

    def record_event(
        self, kind: str, actor: str, name: str | None = None, version: int | None = None, detail: Mapping[str, Any] | None = None
    ) -> None:
        with writing(self.engine) as c, c.begin():
            self._event(c, kind, actor, name, version, detail or {})

    # -- aliases -----------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int, *, actor: str) -> int | None:
        """Point ``alias`` of ``name`` at ``version``; returns the version it pointed to before.
        A split of the alias between versions (``set_alias_split``) ends."""
        _check_alias_name(alias)
        self.get_version(name, version)  # unknown model or version: UnknownModel, before any gatekeeper
        self._gate_alias(name, alias, version, actor)
        with writing(self.engine) as c, c.begin():
            self._version_row(c, name, version)
            ended = c.execute(
                t.alias_splits.delete().where(t.alias_splits.c.name == name, t.alias_splits.c.alias == alias)
            ).rowcount
            previous = c.execute(
                sa.select(t.aliases.c.version).where(t.aliases.c.name == name, t.aliases.c.alias == alias)
            ).scalar()
            now = time.time()
            if previous is None:
                c.execute(t.aliases.insert().values(name=name, alias=alias, version=version, set_by=actor, set_at=now))
            else:
                c.execute(
                    t.aliases.update()
                    .where(t.aliases.c.name == name, t.aliases.c.alias == alias)
                    .values(version=version, set_by=actor, set_at=now)
                )
            c.execute(
                t.alias_history.insert().values(
                    name=name, alias=alias, version=version, previous=previous, set_by=actor, set_at=now
                )
            )
            detail = {"alias": alias, "previous": previous, **({"split_ended": True} if ended else {})}
            self._event(c, "alias_set", actor, name, version, detail)
        self._audit("alias_set", actor, model=name, version=version, detail=detail)
        return previous

    def _gate_alias(self, name: str, alias: str, version: int, actor: str) -> None:
        decision = self._check_alias(name, alias, version, actor)
        if not decision.allow:
            detail = {"alias": alias, "reason": decision.reason, "plugin": decision.plugin}
            self._audit("alias_refused", actor, model=name, version=version, detail=detail)
            raise AliasRefused(name, alias, version, decision.reason, decision.plugin)

    def set_alias_split(self, name: str, alias: str, weights: Mapping[int, int], *, actor: str) -> int | None:
        """Split ``alias`` of ``name`` between versions by ``weights`` (version: percent, at least
        two versions, each weight 1..99, summing to 100): a canary. Each version passes the
        alias gatekeepers as a plain move would (a protected alias takes approved versions only).
        ``aliases`` keeps the heaviest version (the lowest number of equal weights); the move is
        in the alias history and the audit log with its weights. Returns the version the alias
        pointed to before."""
        _check_alias_name(alias)
        if len(weights) < 2 or any(not 0 < w < 100 for w in weights.values()) or sum(weights.values()) != 100:
            raise ValueError(
                f"a split of alias {alias!r} needs two or more versions with weights from 1 to 99 summing to 100, "
                f"not {dict(weights)}"
            )
        for version in sorted(weights):
            self.get_version(name, version)
        for version in sorted(weights):
            self._gate_alias(name, alias, version, actor)
        main = min(weights, key=lambda v: (-weights[v], v))
        split = {str(v): w for v, w in sorted(weights.items())}
        with writing(self.engine) as c, c.begin():
            for version in weights:
                self._version_row(c, name, version)
            previous = c.execute(
                sa.select(t.aliases.c.version).where(t.aliases.c.name == name, t.aliases.c.alias == alias)
            ).scalar()
            now = time.time()
            c.execute(t.aliases.delete().where(t.aliases.c.name == name, t.aliases.c.alias == alias))
            c.execute(t.aliases.insert().values(name=name, alias=alias, version=main, set_by=actor, set_at=now))
            c.execute(t.alias_splits.delete().where(t.alias_splits.c.name == name, t.alias_splits.c.alias == alias))
            for version, weight in weights.items():
                c.execute(
                    t.alias_splits.insert().values(
                        name=name, alias=alias, version=version, weight=weight, set_by=actor, set_at=now
                    )
                )
            c.execute(
                t.alias_history.insert().values(name=name, alias=alias, version=main, previous=previous, set_by=actor, set_at=now)
            )
            detail = {"alias": alias, "previous": previous, "weights": split}
            self._event(c, "alias_split", actor, name, main, detail, at=now)  # at the history row's time
        self._audit("alias_split", actor, model=name, version=main, detail=detail)
        return previous

    def alias_splits(self, name: str) -> dict[str, dict[int, int]]:
        """The aliases of ``name`` that are split between versions: alias -> {version: weight}."""
        out: dict[str, dict[int, int]] = {}
        with self.engine.connect() as c:
            for r in c.execute(sa.select(t.alias_splits).where(t.alias_splits.c.name == name)):
                out.setdefault(r.alias, {})[r.version] = r.weight
        return out

    def aliases(self, name: str) -> dict[str, int]:
        with self.engine.connect() as c:
            return {r.alias: r.version for r in c.execute(sa.select(t.aliases).where(t.aliases.c.name == name))}

    def alias_history(self, name: str, alias: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(t.alias_history).where(t.alias_history.c.name == name)
        if alias is not None:
            q = q.where(t.alias_history.c.alias == alias)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q.order_by(t.alias_history.c.id))]

    def alias_at(self, name: str, alias: str, when: float) -> int | None:
        """The version ``alias`` pointed to at time ``when`` (epoch seconds), or None."""
        q = (
            sa.select(t.alias_history.c.version)
            .where(t.alias_history.c.name == name, t.alias_history.c.alias == alias, t.alias_history.c.set_at <= when)
            .order_by(t.alias_history.c.set_at.desc(), t.alias_history.c.id.desc())
            .limit(1)
        )
        with self.engine.connect() as c:
            return c.execute(q).scalar()

    # -- shadow runs -------------------------------------------------------------------------

    def start_shadow(self, name: str, version: int, share: float, until: float | None = None, *, actor: str) -> ShadowRun | None:
        """Copy ``share`` (0..1] of the traffic the default alias of ``name`` receives to
        ``version`` (pending or approved) until ``until`` (epoch seconds; None: until stopped).
        One run per model: a new one replaces the running one, which is returned."""
        if not 0.0 < share <= 1.0:
            raise ValueError(f"a shadow's share is a fraction of production's traffic in (0, 1], not {share}")
        now = time.time()
        if until is not None and until <= now:
            raise ValueError("a shadow run's end must be in the future")
        self.get_version(name, version)  # unknown model or version: UnknownModel
        serving = self.aliases(name).get(self.default_alias)
        if serving == version and version not in self.alias_splits(name).get(self.default_alias, {}):
            raise ValueError(
                f"version {version} is what {name}@{self.default_alias} serves; a shadow runs another version beside it"
            )
        with writing(self.engine) as c, c.begin():
            self._version_row(c, name, version)
            row = c.execute(sa.select(t.shadows).where(t.shadows.c.name == name)).first()
            c.execute(t.shadows.delete().where(t.shadows.c.name == name))
            c.execute(t.shadows.insert().values(name=name, version=version, share=share, until=until, set_by=actor, set_at=now))
            detail = {"share": share, "until": until, "replaces": None if row is None else row.version}
            self._event(c, "shadow_started", actor, name, version, detail, at=now)
        self._audit("shadow_started", actor, model=name, version=version, detail=detail)
        return None if row is None else _shadow(row)

    def stop_shadow(self, name: str, *, actor: str, reason: str = "") -> ShadowRun | None:
        """End the shadow run of ``name``; returns it (None: none was running). Its evidence stays."""
        if name not in self.list_models():
            raise UnknownModel(self._unknown(name))
        with writing(self.engine) as c, c.begin():
            row = c.execute(sa.select(t.shadows).where(t.shadows.c.name == name)).first()
            if row is None:
                return None
            c.execute(t.shadows.delete().where(t.shadows.c.name == name))
            detail = {"reason": reason, "share": row.share}
            self._event(c, "shadow_stopped", actor, name, row.version, detail)
        self._audit("shadow_stopped", actor, model=name, version=row.version, detail=detail)
        return _shadow(row)

    def shadow_runs(self, name: str | None = None) -> dict[str, ShadowRun]:
        """The shadow runs that were started and not stopped (an expired one included: its
        ``active`` says), of ``name`` or of every model: model -> run."""
        q = sa.select(t.shadows)
        if name is not None:
            q = q.where(t.shadows.c.name == name)
        with self.engine.connect() as c:
            return {r.name: _shadow(r) for r in c.execute(q)}

    def add_shadow_window(self, name: str, version: int, window: Mapping[str, Any]) -> None:
        """Keep one window of a shadow's comparisons (the columns of ``lockgate_shadow_windows``)."""
        columns = {c.name for c in t.shadow_windows.columns} - {"id", "name", "version", "last_error"}
        missing = sorted(columns - window.keys())
        if missing:
            raise ValueError(f"a shadow window needs {', '.join(missing)}")
        values = {k: window[k] for k in columns}
        values["last_error"] = (window.get("last_error") or None) and str(window["last_error"])[:2000]
        with writing(self.engine) as c, c.begin():
            c.execute(t.shadow_windows.insert().values(name=name, version=version, **values))

    def shadow_windows(
        self, name: str, version: int | None = None, since: float | None = None, until: float | None = None
    ) -> list[dict[str, Any]]:
        """The kept windows of the shadow runs of ``name`` (of ``version``), oldest first."""
        q = sa.select(t.shadow_windows).where(t.shadow_windows.c.name == name)
        if version is not None:
            q = q.where(t.shadow_windows.c.version == version)
        if since is not None:
            q = q.where(t.shadow_windows.c.end >= since)
        if until is not None:
            q = q.where(t.shadow_windows.c.start <= until)
        with self.engine.connect() as c:
            rows = [dict(r._mapping) for r in c.execute(q.order_by(t.shadow_windows.c.start, t.shadow_windows.c.id))]
        for r in rows:
            r.pop("id", None)
        return rows

    # -- reference samples -------------------------------------------------------------------

    def set_reference(
        self, name: str, version: int, sample: Mapping[str, Any], baseline: Mapping[str, Any], *, actor: str, source_sha256: str
    ) -> None:
        """Store (or replace) the reference sample of a version, inputs by name, and its
        baseline statistics. The version must exist; the sample is kept as an .npz."""
        import numpy as np

        rows = {int(np.asarray(a).shape[0]) if np.asarray(a).ndim else 1 for a in sample.values()}
        if not sample or len(rows) != 1:
            raise ValueError(f"a reference sample needs every input with the same number of rows, got {sorted(rows)}")
        buffer = io.BytesIO()
        np.savez(buffer, **{k: np.asarray(v) for k, v in sample.items()})  # type: ignore[arg-type]
        now = time.time()
        with writing(self.engine) as c, c.begin():
            self._version_row(c, name, version)
            key = (t.references.c.name == name) & (t.references.c.version == version)
            c.execute(t.references.delete().where(key))
            c.execute(
                t.references.insert().values(
                    name=name,
                    version=version,
                    sample=buffer.getvalue(),
                    rows=rows.pop(),
                    baseline=json.loads(json.dumps(baseline)),
                    source_sha256=source_sha256,
                    set_by=actor,
                    set_at=now,
                )
            )
        self._audit(
            "reference_set",
            actor,
            model=name,
            version=version,
            detail={"source_sha256": source_sha256, "rows": int(next(iter(sample.values())).shape[0])},
        )

    def reference(self, name: str, version: int) -> Reference | None:
        """The reference sample and baseline of a version, or None when it has none."""
        import numpy as np

        with self.engine.connect() as c:
            row = c.execute(sa.select(t.references).where(t.references.c.name == name, t.references.c.version == version)).first()
        if row is None:
            return None
        with np.load(io.BytesIO(row.sample), allow_pickle=False) as data:
            sample = {k: data[k] for k in data.files}
        return Reference(name, version, sample, dict(row.baseline), row.rows, row.source_sha256, row.set_by, row.set_at)

    # -- reading -----------------------------------------------------------------------------

    def list_models(self) -> list[str]:
        with self.engine.connect() as c:
            return [r.name for r in c.execute(sa.select(t.models.c.name).order_by(t.models.c.name))]

    def model_config(self, name: str) -> dict[str, Any]:
        with self.engine.connect() as c:
            row = c.execute(sa.select(t.models.c.config).where(t.models.c.name == name)).first()
        if row is None:
            raise UnknownModel(self._unknown(name))
        return dict(row.config or {})

    def versions(self, name: str) -> list[ModelVersionRecord]:
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(t.model_versions).where(t.model_versions.c.name == name).order_by(t.model_versions.c.version)
            ).all()
        return [_record(r, self.store) for r in rows]

    def _version_row(self, c: sa.Connection, name: str, version: int) -> Any:
        row = c.execute(
            sa.select(t.model_versions).where(t.model_versions.c.name == name, t.model_versions.c.version == version)
        ).first()
        if row is None:
            known = [r.version for r in c.execute(sa.select(t.model_versions.c.version).where(t.model_versions.c.name == name))]
            if not known:
                raise UnknownModel(self._unknown(name))
            raise UnknownModel(f"model '{name}' has no version {version}; registered: {', '.join(map(str, sorted(known)))}")
        return row

    def get_version(self, name: str, version: int) -> ModelVersionRecord:
        with self.engine.connect() as c:
            return _record(self._version_row(c, name, version), self.store)

    def _unknown(self, name: str) -> str:
        known = self.list_models()
        return f"unknown model '{name}'; registered: {', '.join(known) or 'none'}"

    def resolve(self, name: str, reference: str | None = None) -> ModelVersionRecord:
        """``reference``: None (the default alias), an alias, or a version number as text."""
        ref = self.default_alias if reference is None else reference
        if ref.isdigit():
            return self.get_version(name, int(ref))
        version = self.aliases(name).get(ref)
        if version is None:
            self.model_config(name)  # unknown model -> UnknownModel
            raise UnknownModel(f"model '{name}' has no alias '{ref}'")
        return self.get_version(name, version)

    def read_verified(self, record: ModelVersionRecord, *, actor: str = "lockgate") -> bytes:
        """The artifact's bytes after the sha256 check; a changed artifact is refused and recorded."""
        try:
            return self.store.read_verified(record.sha256)
        except (ArtifactMismatch, FileNotFoundError) as e:
            detail = {"sha256": record.sha256, "error": str(e)}
            self.record_event("load_refused", actor, record.name, record.version, detail)
            self._audit("load_refused", actor, model=record.name, version=record.version, detail=detail)
            raise

    def events(self, name: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(t.events)
        if name is not None:
            q = q.where(t.events.c.name == name)
        if kind is not None:
            q = q.where(t.events.c.kind == kind)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q.order_by(t.events.c.id))]

    def describe(self, record: ModelVersionRecord) -> dict[str, Any]:
        out = {k: getattr(record, k) for k in ModelVersionRecord.__slots__}
        out["aliases"] = sorted(a for a, v in self.aliases(record.name).items() if v == record.version)
        return json.loads(json.dumps(out, default=str))

    def close(self) -> None:
        self.engine.dispose()


def _shadow(row: Any) -> ShadowRun:
    return ShadowRun(row.name, row.version, row.share, row.until, row.set_by, row.set_at)


def _check_alias_name(alias: str) -> None:
    if not alias or not set(alias) <= ALIAS_NAME_CHARS or alias.isdigit() or len(alias) > 64:
        raise ValueError(f"alias {alias!r}: use letters, digits, '_', '-', '.', not only digits, up to 64 characters")
