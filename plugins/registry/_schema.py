"""Registry tables (SQLAlchemy Core). Rows of model versions are never updated or deleted."""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "alias_history",
    "alias_splits",
    "aliases",
    "events",
    "metadata",
    "model_versions",
    "models",
    "references",
    "shadow_windows",
    "shadows",
]

metadata = sa.MetaData()

models = sa.Table(
    "lockgate_models",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("config", sa.JSON, nullable=False, default=dict),
    sa.Column("created_at", sa.Float(precision=53), nullable=False),
    sa.Column("created_by", sa.String(256), nullable=False),
)

model_versions = sa.Table(
    "lockgate_model_versions",
    metadata,
    sa.Column("name", sa.String(128), sa.ForeignKey("lockgate_models.name"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("signature", sa.JSON, nullable=False),
    sa.Column("created_by", sa.String(256), nullable=False),
    sa.Column("created_at", sa.Float(precision=53), nullable=False),
    sa.Column("lineage", sa.JSON, nullable=False),
    sa.Column("card", sa.Text, nullable=False, default=""),
)

aliases = sa.Table(
    "lockgate_aliases",
    metadata,
    sa.Column("name", sa.String(128), sa.ForeignKey("lockgate_models.name"), primary_key=True),
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("set_by", sa.String(256), nullable=False),
    sa.Column("set_at", sa.Float(precision=53), nullable=False),
)

# A canary: an alias whose traffic is split between versions by weight (percent, summing to
# 100). ``aliases`` keeps the version with the largest weight, for everything that reads one
# version per alias; a plain alias move removes the split.
alias_splits = sa.Table(
    "lockgate_alias_splits",
    metadata,
    sa.Column("name", sa.String(128), sa.ForeignKey("lockgate_models.name"), primary_key=True),
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("weight", sa.Integer, nullable=False),
    sa.Column("set_by", sa.String(256), nullable=False),
    sa.Column("set_at", sa.Float(precision=53), nullable=False),
)

alias_history = sa.Table(
    "lockgate_alias_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False, index=True),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=True),  # None: the alias was removed
    sa.Column("previous", sa.Integer, nullable=True),
    sa.Column("set_by", sa.String(256), nullable=False),
    sa.Column("set_at", sa.Float(precision=53), nullable=False),
)

events = sa.Table(
    "lockgate_registry_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float(precision=53), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("name", sa.String(128), nullable=True),
    sa.Column("version", sa.Integer, nullable=True),
    sa.Column("detail", sa.JSON, nullable=False),
)

# A version's reference sample (inputs as an .npz, capped in rows) and the baseline computed
# from it: what drift is measured against and what explanations take as background.
references = sa.Table(
    "lockgate_references",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("sample", sa.LargeBinary, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("baseline", sa.JSON, nullable=False),
    sa.Column("source_sha256", sa.String(64), nullable=False),
    sa.Column("set_by", sa.String(256), nullable=False),
    sa.Column("set_at", sa.Float(precision=53), nullable=False),
)

# A shadow run: a share of the traffic the default alias receives is copied, after its answer,
# to ``version`` in a replica of its own; the client gets production's answer only. One run per
# model; the row goes when the run stops (the events table keeps every start and stop).
shadows = sa.Table(
    "lockgate_shadows",
    metadata,
    sa.Column("name", sa.String(128), sa.ForeignKey("lockgate_models.name"), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("share", sa.Float(precision=53), nullable=False),
    sa.Column("until", sa.Float(precision=53), nullable=True),  # epoch seconds; None: until stopped
    sa.Column("set_by", sa.String(256), nullable=False),
    sa.Column("set_at", sa.Float(precision=53), nullable=False),
)

# What a shadow replica compared in one window of time, against one production version: rows
# are only ever added, and retention is the operator's.
shadow_windows = sa.Table(
    "lockgate_shadow_windows",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("baseline", sa.Integer, nullable=False),  # the production version it was compared with
    sa.Column("start", sa.Float(precision=53), nullable=False),
    sa.Column("end", sa.Float(precision=53), nullable=False),
    sa.Column("compared", sa.Integer, nullable=False),  # copies answered by both
    sa.Column("errors", sa.Integer, nullable=False),  # copies the shadow failed on (or answered in another shape)
    sa.Column("dropped", sa.Integer, nullable=False),  # copies production did not send: its queue was full
    sa.Column("classified", sa.Integer, nullable=False),  # rows with a predicted class on both sides
    sa.Column("agreed", sa.Integer, nullable=False),  # of those, rows where the classes are the same
    sa.Column("shadow_ms", sa.Float(precision=53), nullable=False),  # sums of model time (queue + compute), ms
    sa.Column("baseline_ms", sa.Float(precision=53), nullable=False),
    sa.Column("shadow_ms_max", sa.Float(precision=53), nullable=False),
    sa.Column("baseline_ms_max", sa.Float(precision=53), nullable=False),
    sa.Column("outputs", sa.JSON, nullable=False),  # output -> {max_abs, sum_abs, elements}
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Index("ix_lockgate_shadow_windows_name_version", "name", "version", "start"),
)
