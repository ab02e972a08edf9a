"""The audit plugin's commands: ``lockgate audit verify | export | trace | prune | migrate`` (added
through ``lockgate_register_commands``)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click

from .._types import CommandContext
from ..errors import AuditError, PruneRefused
from ..shared import checked_actor, fail, iso_time, parse_time

__all__ = ["audit_commands"]


def _iso(epoch: float | None) -> str:
    return iso_time(epoch, "milliseconds")


def audit_commands(context: CommandContext, plugin: Any) -> click.Group:
    """The ``audit`` group, acting on ``plugin``'s log once ``context`` built the command's manager."""

    def start(ctx: click.Context, registry_url: str | None, artifact_dir: str | None) -> None:
        ctx.obj = _Env(context, plugin, registry_url, artifact_dir)

    group = click.Group(
        "audit",
        callback=click.pass_context(start),
        help="The audit log: verify, export, trace, prune, migrate. Needs an admin key once keys exist (LOCKGATE_API_KEY).",
        commands=_audit_group.commands,
    )
    return context.registry_options(group)


@dataclass(frozen=True)
class _Env:
    """What an audit command acts with: the plugin, and how to build this command's manager."""

    context: CommandContext
    plugin: Any
    registry_url: str | None
    artifact_dir: str | None

    def open(self) -> tuple[Any, str]:
        """This command's plugin manager and actor, after the audit role check (not at --help)."""
        manager = self.context.manager(self.registry_url, self.artifact_dir)
        who = checked_actor(manager, "audit")
        if self.plugin.error:
            fail(AuditError(self.plugin.error))
        return manager, who


@click.group()
def _audit_group() -> None:
    """Holds the audit commands; ``audit_commands`` gives them a group of their own per command line."""


@_audit_group.command()
@click.pass_obj
def verify(env: _Env) -> None:
    """Check every record's hash and link, the sequence, and the signed checkpoints."""
    env.open()
    report = env.plugin.audit_log.verify(retention_days=env.plugin.options.retention_days)
    where = f"seq {report.first}..{report.last}" if report.records else "no records"
    anchor = f", anchored at checkpoint {report.anchored_at}" if report.anchored_at else ""
    click.echo(f"{report.records} records ({where}{anchor}), {report.checkpoints} signed checkpoints")
    if report.ok:
        click.secho("audit log verified: intact", fg="green")
        return
    for problem in report.problems[:50]:
        click.secho(f"  - {problem}", fg="red")
    if len(report.problems) > 50:
        click.echo(f"  ... and {len(report.problems) - 50} more")
    click.secho("audit log verification FAILED", fg="red")
    sys.exit(1)


@_audit_group.command()
@click.option("--since", default=None, help="From (ISO 8601, or a span back from now: 24h, 30d).")
@click.option("--until", default=None, help="Until, exclusive (same forms).")
@click.option("--model", default=None, help="Only records of this model.")
@click.option("--kind", default=None, help="Only this kind of record (infer, register, approve, ...).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write here instead of stdout.")
@click.pass_obj
def export(
    env: _Env, since: str | None, until: str | None, model: str | None, kind: str | None, fmt: str, out: Path | None
) -> None:
    """Records as JSON lines (each with its hash) or CSV."""
    env.open()
    log = env.plugin.audit_log
    filters = {"since": parse_time(since, "--since"), "until": parse_time(until, "--until"), "model": model, "kind": kind}
    if out is None:
        log.export(sys.stdout, fmt, **filters)
        return
    with open(out, "w", encoding="utf-8", newline="") as f:
        n = log.export(f, fmt, **filters)
    click.echo(f"wrote {n} records to {out}", err=True)


@_audit_group.command()
@click.argument("request_id")
@click.pass_obj
def trace(env: _Env, request_id: str) -> None:
    """Which model version answered REQUEST_ID (the lockgate-request-id header, or the client's
    OIP id), its hash, who registered it and who approved it; the explanations of it, or, for
    an explanation, the request it explains."""
    manager, _ = env.open()
    log = env.plugin.audit_log
    found = [r for r in log.records(request_id=request_id) if r["kind"] in ("infer", "explain")]
    if not found:
        fail(LookupError(f"no inference or explanation record with request id {request_id!r}"))
    registry = manager.registry()
    for record in found:
        detail = record.get("detail", {})
        what = "explanation" if record["kind"] == "explain" else "request"
        click.echo(f"{what} {record.get('request_id')} (client id {record.get('client_id', '-')}) at {_iso(record['at'])}")
        if detail.get("explains"):
            click.echo(f"  explains request {detail['explains']}")
        if record["kind"] == "infer":
            for e in log.records(since=record["at"], model=record.get("model"), kind="explain"):
                if e.get("detail", {}).get("explains") == record.get("request_id"):
                    click.echo(
                        f"  explained by {e.get('request_id')} at {_iso(e['at'])} (caller {e['actor']}, status {e['detail'].get('status')})"
                    )
        click.echo(
            f"  caller: {record['actor']}; status {detail.get('status')}; {detail.get('latency_ms')} ms; audit seq {record['seq']}"
        )
        if detail.get("error"):
            click.echo(
                f"  error: {detail['error']}" + (f" (decided by {detail['decided_by']})" if detail.get("decided_by") else "")
            )
        if detail.get("input_sha256"):
            click.echo(f"  input sha256 {detail['input_sha256']}; output sha256 {detail.get('output_sha256', '-')}")
        if record.get("version") is None:
            continue
        name, version = record["model"], record["version"]
        click.echo(f"  model: {name} version {version}, artifact sha256 {detail.get('sha256', '-')}")
        try:
            registered = registry.get_version(name, version)
            click.echo(
                f"  registered by {registered.created_by} at {_iso(registered.created_at)}; lineage {dict(registered.lineage)}"
            )
        except LookupError:
            click.echo("  (the version is no longer in the registry)")
        decisions = [
            r for r in log.records(model=name) if r.get("version") == version and r["kind"] in ("approve", "reject", "revoke")
        ]
        for d in decisions:
            when = "before" if d["at"] <= record["at"] else "after"
            click.echo(
                f"  {d['kind']}d by {d['actor']} at {_iso(d['at'])} ({when} the request)"
                + (f": {d['detail'].get('reason')}" if d["detail"].get("reason") else "")
            )
        if not any(d["kind"] == "approve" for d in decisions):
            click.echo("  no approval on record")


@_audit_group.command()
@click.option(
    "--before",
    default=None,
    help="Delete records older than this (ISO 8601 or a span such as 200d); default the retention period.",
)
@click.pass_obj
def prune(env: _Env, before: str | None) -> None:
    """Delete records older than the retention period (audit.retention_days, 183 by default),
    up to a signed checkpoint, so what remains still verifies."""
    manager, who = env.open()
    plugin = env.plugin
    days = plugin.options.retention_days
    cutoff = (
        parse_time(before, "--before")
        if before
        else datetime.now(timezone.utc).timestamp() - timedelta(days=days).total_seconds()
    )
    try:
        deleted, anchor = plugin.audit_log.prune(cutoff, retention_days=days)
    except PruneRefused as e:
        fail(e)
    if deleted:
        manager.audit("audit_pruned", who, detail={"deleted": deleted, "up_to_seq": anchor, "before": cutoff})
        click.echo(f"pruned {deleted} records up to seq {anchor} (older than {_iso(cutoff)})")
    else:
        click.echo("nothing to prune")


@_audit_group.command()
@click.option("--dry-run", is_flag=True, help="Say what would change, change nothing.")
@click.pass_obj
def migrate(env: _Env, dry_run: bool) -> None:
    """Give a table made by an earlier lockgate the current indexes (fewer pages written per
    record). The records and their chain are not touched. Building an index reads the whole
    table; a running server's audit writes wait for it."""
    manager, who = env.open()
    log = env.plugin.audit_log
    drop, create = log.layout_changes()
    if not drop and not create:
        click.echo("the audit table has the current layout: nothing to do")
        return
    if dry_run:
        click.echo(f"would drop {', '.join(drop) or 'no index'}; would create {', '.join(create) or 'no index'}")
        return
    dropped, created = log.migrate_indexes()
    manager.audit("audit_migrated", who, detail={"dropped": dropped, "created": created})
    click.echo(f"dropped {', '.join(dropped) or 'no index'}; created {', '.join(created) or 'no index'}")
