"""Four-eyes approval of model versions: pending -> approved or rejected; approved -> revoked.

A version with no approval row is pending. The one who registered a version cannot approve
it. Required model-card fields must be filled before approval.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import yaml

from .._storage import create_tables, writing
from ..errors import GovernanceError
from . import _schema as t

__all__ = ["Approval", "Approvals", "card_fields"]

TRANSITIONS = {"approve": ("pending", "approved"), "reject": ("pending", "rejected"), "revoke": ("approved", "revoked")}


@dataclass(frozen=True, slots=True)
class Approval:
    name: str
    version: int
    state: str  # pending | approved | rejected | revoked
    decided_by: str | None = None
    decided_at: float | None = None
    reason: str = ""
    approved_by: str | None = None


def card_fields(card: str) -> set[str]:
    """Filled fields of a model card: keys of a YAML mapping (or YAML front matter) with a
    value, and Markdown headings followed by text; names lower-cased, spaces as '_'."""
    text = card.strip()
    if not text:
        return set()
    try:
        data = yaml.safe_load(text.split("\n---", 1)[0].removeprefix("---")) if text.startswith("---") else yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    fields: set[str] = set()
    if isinstance(data, dict):
        fields |= {_norm(str(k)) for k, v in data.items() if v not in (None, "", [], {})}
    sections = re.split(r"^#{1,6}\s+(.+)$", text, flags=re.M)
    for heading, body in zip(sections[1::2], sections[2::2]):
        if body.strip():
            fields.add(_norm(heading))
    return fields


def _norm(name: str) -> str:
    return re.sub(r"[\s-]+", "_", name.strip().lower())


class Approvals:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        create_tables(engine, t.metadata)

    def states(self, name: str) -> dict[int, Approval]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(t.approvals).where(t.approvals.c.name == name)).all()
        return {r.version: _approval(r) for r in rows}

    def get(self, name: str, version: int) -> Approval:
        return self.states(name).get(version) or Approval(name, version, "pending")

    def history(self, name: str, version: int | None = None) -> list[dict[str, Any]]:
        q = sa.select(t.approval_history).where(t.approval_history.c.name == name)
        if version is not None:
            q = q.where(t.approval_history.c.version == version)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q.order_by(t.approval_history.c.id))]

    def decide(
        self,
        action: str,
        name: str,
        version: int,
        *,
        actor: str,
        reason: str,
        registered_by: str,
        card: str,
        required_card_fields: list[str],
    ) -> Approval:
        before, after = TRANSITIONS[action]
        if action == "approve":
            if actor == registered_by:
                raise GovernanceError(
                    f"'{actor}' registered version {version} of '{name}' and cannot approve it: a second person must (four-eyes rule)",
                    403,
                )
            missing = [f for f in required_card_fields if _norm(f) not in card_fields(card)]
            if missing:
                raise GovernanceError(
                    f"version {version} of '{name}' cannot be approved: its model card lacks {', '.join(missing)}", 422
                )
        now = time.time()
        with writing(self.engine) as c, c.begin():
            row = c.execute(sa.select(t.approvals).where(t.approvals.c.name == name, t.approvals.c.version == version)).first()
            state = row.state if row is not None else "pending"
            if state != before:
                raise GovernanceError(f"version {version} of '{name}' is {state}; only a {before} version can be {after}", 409)
            values = dict(state=after, decided_by=actor, decided_at=now, reason=reason)
            if action == "approve":
                values["approved_by"] = actor
            if row is None:
                c.execute(t.approvals.insert().values(name=name, version=version, **values))
            else:
                c.execute(
                    t.approvals.update().where(t.approvals.c.name == name, t.approvals.c.version == version).values(**values)
                )
            c.execute(
                t.approval_history.insert().values(name=name, version=version, state=after, actor=actor, at=now, reason=reason)
            )
        return self.get(name, version)


def _approval(r: Any) -> Approval:
    return Approval(r.name, r.version, r.state, r.decided_by, r.decided_at, r.reason or "", r.approved_by)
