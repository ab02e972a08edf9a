"""Governance tables (SQLAlchemy Core): API keys (salted hashes only), approvals and their history."""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["api_keys", "approval_history", "approvals", "metadata"]

metadata = sa.MetaData()

api_keys = sa.Table(
    "lockgate_api_keys",
    metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),  # public part of the key, for lookup
    sa.Column("salt", sa.String(64), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),  # sha256(domain, salt, secret); never the secret
    sa.Column("principal", sa.String(256), nullable=False),
    sa.Column("roles", sa.JSON, nullable=False),
    sa.Column("models", sa.JSON, nullable=False),  # ["*"] or model names
    sa.Column("created_by", sa.String(256), nullable=False),
    sa.Column("created_at", sa.Float(precision=53), nullable=False),
    sa.Column("expires_at", sa.Float(precision=53), nullable=True),
    sa.Column("revoked_at", sa.Float(precision=53), nullable=True),
    sa.Column("revoked_by", sa.String(256), nullable=True),
)

approvals = sa.Table(
    "lockgate_approvals",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),  # approved | rejected | revoked (no row: pending)
    sa.Column("decided_by", sa.String(256), nullable=False),
    sa.Column("decided_at", sa.Float(precision=53), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("approved_by", sa.String(256), nullable=True),
)

approval_history = sa.Table(
    "lockgate_approval_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False, index=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("at", sa.Float(precision=53), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, default=""),
)
