"""``lockgate report``: SLOs and KPIs of a period, as a table and an HTML page with plots."""

from __future__ import annotations

from pathlib import Path

import click

from lockgate.plugins.shared import checked_actor, fail, parse_time, registry_options

from ..errors import LockgateError
from .common import manager_from

__all__ = ["report"]


@click.command()
@click.option("--since", default="24h", show_default=True, help="Start: ISO 8601 or a span back from now (90m, 24h, 7d).")
@click.option("--until", default=None, help="End: ISO 8601 or a span back from now [default: now].")
@click.option("--model", "models", multiple=True, help="Only this model (repeatable) [default: every model].")
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("lockgate-report.html"),
    show_default=True,
    help="Where to write the HTML report.",
)
@registry_options
def report(
    since: str, until: str | None, models: tuple[str, ...], html_path: Path, registry_url: str | None, artifact_dir: str | None
) -> None:
    """Traffic, latency percentiles, error rate, availability and error budget against each
    model's SLO (monitoring.slo / monitoring.slos), drift, versions served, deployment lead
    time and pending approvals, read from the audit log and the registry."""
    from ..tools.report import gather, render_html, render_text

    start, end = parse_time(since, "--since") or 0.0, parse_time(until, "--until")
    manager = manager_from(registry_url, artifact_dir)
    checked_actor(manager, "report")
    try:
        known = manager.registry().list_models()
        unknown = [m for m in models if m not in known]
        if unknown:
            raise LookupError(f"unknown model(s) {', '.join(unknown)}; registered: {', '.join(known) or 'none'}")
        result = gather(manager, start, end, list(models) or None)
        page = render_html(result)
    except (LookupError, LockgateError) as e:
        fail(e)
    click.echo(render_text(result))
    html_path.write_text(page, encoding="utf-8")
    click.echo(f"HTML report: {html_path}")
