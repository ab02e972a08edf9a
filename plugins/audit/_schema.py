"""Audit tables (SQLAlchemy Core). Records are only ever inserted, and deleted by retention."""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["EARLIER_INDEXES", "head", "metadata", "records"]

metadata = sa.MetaData()

# Each index is a page more that every commit writes (SQLite's WAL writes whole pages: a lone
# record's commit wrote 10 of them with one index per filter column). So: ``seq`` is SQLite's
# rowid (its own B-tree, no index of its own), ``kind`` has none (its queries also name a time or a
# model), ``model`` shares one with ``at``, and ``client_id`` indexes only the records that have one.
records = sa.Table(
    "lockgate_audit",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=False),
    sa.Column("at", sa.Float(precision=53), nullable=False, index=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("model", sa.String(128), nullable=True),
    sa.Column("version", sa.Integer, nullable=True),
    sa.Column("request_id", sa.String(64), nullable=True, index=True),
    sa.Column("client_id", sa.String(256), nullable=True),
    sa.Column("body", sa.Text, nullable=False),  # the canonical JSON that was hashed
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Index("ix_lockgate_audit_model_at", "model", "at"),
    sa.Index(
        "ix_lockgate_audit_client_id_given",
        "client_id",
        sqlite_where=sa.text("client_id IS NOT NULL"),
        postgresql_where=sa.text("client_id IS NOT NULL"),
    ),
)

# Indexes of the earlier layout that the current one does without: ``lockgate audit migrate``
# drops them from a table made before (``AuditLog.migrate_indexes``).
EARLIER_INDEXES = frozenset({"ix_lockgate_audit_kind", "ix_lockgate_audit_model", "ix_lockgate_audit_client_id"})

# One row (id 1): the chain's head, locked by every writer, so that processes append in turn.
head = sa.Table(
    "lockgate_audit_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("checkpoint_seq", sa.BigInteger, nullable=False),
    sa.Column("checkpoint_at", sa.Float(precision=53), nullable=False),
)
