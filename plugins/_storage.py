"""Shared storage helpers: SQLAlchemy engines (SQLite by default, PostgreSQL by URL) and
content-addressed artifact stores: a local folder, or S3-compatible object storage with a
local cache on every node."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import sqlalchemy as sa
from sqlalchemy import event

from .errors import ArtifactMismatch

__all__ = [
    "ArtifactStore",
    "ObjectArtifactStore",
    "artifact_store",
    "create_tables",
    "make_engine",
    "sha256_file",
    "sqlite_busy",
    "sqlite_file",
    "writing",
]

log = logging.getLogger("lockgate.plugins")

CHUNK = 1 << 20
SQLITE_BUSY_S = 30.0  # how long a SQLite connection waits for another's lock


def make_engine(url: str, *, durable: bool = False) -> sa.Engine:
    """An engine for ``url``. SQLite: WAL, a busy timeout, and writers (connections with the
    execution option ``write=True``) serialised with BEGIN IMMEDIATE, so concurrent
    registrations queue instead of failing. ``durable``: SQLite syncs the WAL at every commit
    (synchronous=FULL), so a committed transaction survives a power cut, not only a crash;
    PostgreSQL commits are durable by default."""
    if url.startswith("sqlite"):
        path = sqlite_file(url)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # Owner-only from the first byte (keys' hashes, approvals, the audit log live here);
            # SQLite gives its -wal and -shm files the database file's mode.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_S, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record):  # pragma: no cover - driver callback
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
            _write_ahead_log(dbapi_connection)
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):  # pragma: no cover - driver callback
            # Writers take the lock up front (no upgrade deadlock); readers stay deferred under WAL.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def sqlite_file(url: str, *, plain: bool = False) -> str | None:
    """The path of the SQLite file ``url`` names; None for another database or a memory one.
    ``plain``: None also for a URL with options (``?...``), which only the driver reads."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    if plain and parsed.query:
        return None
    return parsed.database


def _write_ahead_log(dbapi_connection: Any, timeout_s: float = SQLITE_BUSY_S) -> None:
    """``PRAGMA journal_mode=WAL``, tried again until it holds or ``timeout_s`` passes. On a new
    file that other processes open at the same moment (a node's replicas starting together),
    SQLite answers the mode change "database is locked" at once, without waiting out its busy
    timeout: 4 of 30 starts of six processes here."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        cur = dbapi_connection.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if not sqlite_busy(e) or time.monotonic() > deadline:
                raise
        finally:
            cur.close()
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def sqlite_busy(error: BaseException) -> bool:
    """SQLite's answer when another connection holds the lock it needs."""
    text = str(error)
    return "database is locked" in text or "database is busy" in text


# The key of the PostgreSQL advisory lock ``create_tables`` holds ("lockgate" in ASCII).
SCHEMA_LOCK = 0x6C6F636B67617465


def create_tables(engine: sa.Engine, metadata: sa.MetaData) -> None:
    """``metadata.create_all`` in one write transaction, one process at a time. Processes that
    start together on a new database (a node's replicas, a cluster's) would otherwise each find
    the tables missing and create them: on SQLite the loser's upgrade to a writer fails at once
    with "database is locked", without waiting out the busy timeout (BEGIN IMMEDIATE makes it
    wait); on PostgreSQL the second CREATE TABLE fails on the catalog's unique index (six
    processes on a new database: every trial failed). There a transaction-scoped advisory lock
    makes each wait, and find the tables made once it has the lock."""
    with writing(engine) as c, c.begin():
        if c.dialect.name == "postgresql":
            c.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        metadata.create_all(c)


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
    """Files stored by sha256 under ``root``: ``root/ab/abcdef....onnx``; written once, atomically.

    The interface every artifact store keeps: ``path_for`` (the local file), ``stage`` (copy in,
    hashing), ``commit`` (make a staged file the artifact of its sha256), ``discard`` (undo a
    commit no row refers to) and ``read_verified`` (the bytes, hash-checked)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __str__(self) -> str:
        return str(self.root)

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

    def discard(self, sha256: str) -> None:
        """Remove the artifact of ``sha256`` (a commit rolled back: no row refers to it)."""
        self.path_for(sha256).unlink(missing_ok=True)

    def read_verified(self, sha256: str) -> bytes:
        """The artifact's bytes, after checking they still hash to ``sha256``."""
        path = self.path_for(sha256)
        data = path.read_bytes()
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise ArtifactMismatch(path, sha256, got)
        return data


def _write_atomically(folder: Path, final: Path, data: bytes) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".fetching-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o444)
        os.replace(tmp, final)  # replicas of one node fetching at once: the last rename wins, same bytes
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ObjectArtifactStore(ArtifactStore):
    """Artifacts in S3-compatible object storage at ``s3://bucket/prefix``, keyed by sha256
    (``prefix/ab/abcdef....onnx``), with a local cache folder on every node, so a cluster needs
    no shared filesystem.

    ``commit`` uploads (with the object's SHA-256 checksum, which the server checks) and keeps
    the file in the cache; ``read_verified`` reads the cache, or fetches the object into it, and
    checks the hash on every load: a cached copy that no longer matches is fetched again, an
    object that does not match is refused. ``options``: ``endpoint_url``, ``region``, and, where
    the environment's credential chain (AWS_* variables, profiles, instance roles) is not used,
    ``access_key_id`` / ``secret_access_key``; they are handed to boto3 and never logged.
    """

    def __init__(self, url: str, cache: str | Path, options: Mapping[str, Any] | None = None, client: Any = None) -> None:
        super().__init__(cache)
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"an object store URL is s3://bucket[/prefix], not {url!r}")
        self.url = url.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.options = dict(options or {})
        self._client = client

    def __str__(self) -> str:
        return self.url

    @property
    def client(self) -> Any:
        """The boto3 S3 client, made on first use (importing boto3 costs a replica ~0.2 s)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            o = self.options
            self._client = boto3.client(
                "s3",
                endpoint_url=o.get("endpoint_url"),
                region_name=o.get("region"),
                aws_access_key_id=o.get("access_key_id"),
                aws_secret_access_key=o.get("secret_access_key"),
                config=Config(retries={"max_attempts": 5, "mode": "standard"}),
            )
        return self._client

    def key_for(self, sha256: str) -> str:
        return "/".join(p for p in (self.prefix, sha256[:2], f"{sha256}.onnx") if p)

    def location(self, sha256: str) -> str:
        return f"s3://{self.bucket}/{self.key_for(sha256)}"

    def _exists(self, sha256: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key_for(sha256))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def commit(self, staged: Path, sha256: str) -> bool:
        """Upload a staged file unless its object exists (True when uploaded); keep it in the cache."""
        uploaded = False
        if not self._exists(sha256):
            checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
            with open(staged, "rb") as body:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self.key_for(sha256),
                    Body=body,
                    ChecksumSHA256=checksum,
                    Metadata={"sha256": sha256},
                )
            uploaded = True
        super().commit(staged, sha256)
        return uploaded

    def discard(self, sha256: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key_for(sha256))
        super().discard(sha256)

    def read_verified(self, sha256: str) -> bytes:
        path = self.path_for(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            pass
        else:
            if hashlib.sha256(data).hexdigest() == sha256:
                return data
            log.warning("cached artifact %s does not hash to its name; fetching it again", path)
            path.unlink(missing_ok=True)
        data = self._fetch(sha256)
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise ArtifactMismatch(self.location(sha256), sha256, got)
        self.root.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.root, path, data)
        return data

    def _fetch(self, sha256: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key_for(sha256))
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(f"artifact {self.location(sha256)} is missing from the object store") from None
            if code == "NoSuchBucket":
                raise FileNotFoundError(f"bucket {self.bucket!r} of {self.url} does not exist") from None
            raise
        data: bytes = answer["Body"].read()
        return data


def artifact_store(
    location: str | Path, cache: str | Path | None = None, options: Mapping[str, Any] | None = None
) -> ArtifactStore:
    """The store at ``location``: ``s3://bucket/prefix`` (cached under ``cache``), else a folder."""
    text = str(location)
    if text.startswith("s3://"):
        if cache is None:
            cache = Path(tempfile.gettempdir()) / "lockgate-artifact-cache"
        return ObjectArtifactStore(text, cache, options)
    return ArtifactStore(text)
