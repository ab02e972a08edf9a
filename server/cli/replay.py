"""``lockgate audit replay`` and ``lockgate audit explain``: a recorded inference request, re-run
(lockgate.server.tools.replay). Added to the audit plugin's ``audit`` group, whose role check
(an admin or auditor key once keys exist) runs first."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from lockgate.plugins.shared import fail, iso_time

from ..errors import LockgateError

__all__ = ["explain", "replay_command"]


def _open(ctx: click.Context) -> tuple[Any, str]:
    """The command's plugin manager and actor, from the ``audit`` group it runs in."""
    opener = getattr(ctx.obj, "open", None)
    if opener is None:
        fail(LockgateError("run this as `lockgate audit ...`"))
    return opener()  # type: ignore[no-any-return]


def _run(ctx: click.Context, request_id: str, input_file: Path | None, version: int | None, explain: bool) -> Any:
    from ..tools.replay import replay

    manager, _ = _open(ctx)
    body = input_file.read_bytes() if input_file is not None else None
    try:
        return manager, replay(
            manager,
            request_id,
            input_body=body,
            input_from=str(input_file) if input_file else None,
            version=version,
            explain=explain,
        )
    except (LockgateError, LookupError, ValueError) as e:
        fail(e)


_options = [
    click.argument("request_id"),
    click.option(
        "--input",
        "input_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="The request body a client kept (JSON or binary tensors), instead of the one the record keeps.",
    ),
    click.option("--version", type=int, default=None, help="Replay on this version instead of the recorded one."),
    click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
]


def _with_options(f: Any) -> Any:
    for option in reversed(_options):
        f = option(f)
    return f


@click.command("replay")
@_with_options
@click.pass_context
def replay_command(ctx: click.Context, request_id: str, input_file: Path | None, version: int | None, as_json: bool) -> None:
    """Re-run inference request REQUEST_ID on the version its audit record names (its artifact
    hash-checked) with the stored request (audit.payloads) or --input, and compare the answer's
    sha256 with the recorded one. Exit 0: identical; 1: it differs, and why is named."""
    _, found = _run(ctx, request_id, input_file, version, explain=False)
    if as_json:
        click.echo(json.dumps(found.as_dict(), indent=2))
    else:
        _print_replay(found)
    sys.exit(0 if found.identical else 1)


@click.command("explain")
@_with_options
@click.pass_context
def explain(ctx: click.Context, request_id: str, input_file: Path | None, version: int | None, as_json: bool) -> None:
    """What a regulator asks of inference request REQUEST_ID: its audit record, the version that
    answered (registration, lineage, approvals), the replay of the request and, for a model that
    explains (tabular, with a reference sample), the attributions of its inputs."""
    manager, found = _run(ctx, request_id, input_file, version, explain=True)
    registry = manager.registry()
    registered = registry.resolve(found.model, str(found.recorded_version))
    decisions = [
        {k: r.get(k) for k in ("at", "kind", "actor", "detail")}
        for kind in ("register", "approve", "reject", "revoke", "alias_set")
        for r in manager.provide("lockgate_audit_records", since=None, until=None, kind=kind, model=found.model) or []
        if r.get("version") == found.recorded_version
    ]
    decisions.sort(key=lambda r: r["at"])
    states = manager.provide("lockgate_approval_states", model=found.model) or {}
    report = {
        "record": found.record,
        "version": {
            "model": registered.name,
            "version": registered.version,
            "sha256": registered.sha256,
            "registered_by": registered.created_by,
            "registered_at": iso_time(registered.created_at),
            "lineage": dict(registered.lineage),
            "approval": states.get(registered.version),
            "decisions": decisions,
        },
        "replay": found.as_dict(),
    }
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        sys.exit(0 if found.identical else 1)
    r = found.record
    detail = r.get("detail") or {}
    click.echo(f"request {found.request_id}")
    click.echo(
        f"  at {iso_time(r.get('at'))}, by {r.get('actor')}: {found.model} version {found.recorded_version}, "
        f"status {detail.get('status')}, {detail.get('latency_ms')} ms (audit record seq {r.get('seq')}, hash {str(r.get('hash'))[:16]}...)"
    )
    click.echo(f"version {registered.version} of {registered.name}")
    click.echo(f"  artifact sha256 {registered.sha256}")
    click.echo(
        f"  registered by {registered.created_by} at {iso_time(registered.created_at)}; approval: {states.get(registered.version, 'n/a')}"
    )
    if registered.lineage:
        click.echo(f"  lineage: {json.dumps(dict(registered.lineage), sort_keys=True)}")
    for d in decisions:
        click.echo(f"  {iso_time(d['at'])} {d['kind']} by {d['actor']}")
    _print_replay(found)
    if found.explanation is not None:
        click.echo("attributions of the replayed request:")
        click.echo("  " + json.dumps(found.explanation, sort_keys=True)[:2000])
    sys.exit(0 if found.identical else 1)


def _print_replay(found: Any) -> None:
    click.echo(f"replay of request {found.request_id}: {found.model} version {found.version}, input from {found.input_from}")
    click.echo(f"  input sha256    {found.input_sha256}")
    click.echo(f"  recorded answer {found.recorded_output_sha256}")
    click.echo(f"  replayed answer {found.output_sha256} (status {found.status})")
    for name, diff in sorted(found.max_abs_diff.items()):
        click.echo(f"  output {name}: largest difference {diff:.3g}")
    if found.identical:
        click.secho("  identical: the replay gives the recorded answer, byte for byte", fg="green")
    else:
        click.secho("  differs:", fg="red")
        for problem in found.problems:
            click.echo(f"  - {problem}")
