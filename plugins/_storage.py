"""Shared storage helpers: SQLAlchemy engines (SQLite by default, PostgreSQL by URL) and
content-addressed artifact files."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event

from .errors import ArtifactMismatch

__all__ = ["ArtifactStore", "make_engine", "sha256_file", "writing"]

CHUNK = 1 << 20


def make_engine(url: str, *, durable: bool = False) -> sa.Engine:
    """An engine for ``url``. SQLite: WAL, a busy timeout, and writers (connections with the
    execution option ``write=True``) serialised with BEGIN IMMEDIATE, so concurrent
    registrations queue instead of failing. ``durable``: SQLite syncs the WAL at every commit
    (synchronous=FULL), so a committed transaction survives a power cut, not only a crash;
    PostgreSQL commits are durable by default."""
    if url.startswith("sqlite"):
        path = sa.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # Owner-only from the first byte (keys' hashes, approvals, the audit log live here);
            # SQLite gives its -wal and -shm files the database file's mode.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record):  # pragma: no cover - driver callback
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):  # pragma: no cover - driver callback
            # Writers take the lock up front (no upgrade deadlock); readers stay deferred under WAL.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def writing(engine: sa.Engine) -> sa.Connection:
    """A connection for a write transaction: ``with writing(engine) as c, c.begin(): ...``."""
    return engine.connect().execution_options(write=True)


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class ArtifactStore:
    """Files stored by sha256 under ``root``: ``root/ab/abcdef....onnx``; written once, atomically."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.onnx"

    def stage(self, source: Path) -> tuple[Path, str, int]:
        """Copy ``source`` into a hidden temporary file of the store; return it with its sha256 and size."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".staging-", dir=self.root)
        h = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            os.unlink(tmp)
            raise
        return Path(tmp), h.hexdigest(), size

    def commit(self, staged: Path, sha256: str) -> bool:
        """Move a staged file to its final place; False (and the staged file removed) when it was there already."""
        final = self.path_for(sha256)
        if final.exists():
            staged.unlink(missing_ok=True)
            return False
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(staged, 0o444)
        os.replace(staged, final)
        return True

    def read_verified(self, sha256: str) -> bytes:
        """The artifact's bytes, after checking they still hash to ``sha256``."""
        path = self.path_for(sha256)
        data = path.read_bytes()
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise ArtifactMismatch(path, sha256, got)
        return data
