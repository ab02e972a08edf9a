"""``lockgate models ...`` and ``lockgate plugins ...``: the registry and plugins from the command line."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from lockgate.plugins.shared import (
    checked_actor,
    evidence_lines,
    fail,
    iso_time,
    key_values,
    onnx_signature,
    parse_time,
    registry_options,
    shadow_evidence,
)

from ..errors import ConfigError, LockgateError
from ..tools.reference import import_references, read_reference, set_reference
from ..tools.repository import announce_imports, import_repository
from .common import import_actor, manager_from, settings_from

__all__ = ["models", "plugins"]


@click.group()
@registry_options
@click.pass_context
def models(ctx: click.Context, registry_url: str | None, artifact_dir: str | None) -> None:
    """The model registry: register, list, show, aliases and their history."""
    ctx.obj = {"registry_url": registry_url, "artifact_dir": artifact_dir}


@models.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Model name.")
@click.option("--training-data", default=None, help="Reference to the training data (URI, table, data-set id).")
@click.option("--training-data-sha256", default=None, help="sha256 of the training data.")
@click.option("--code-version", default=None, help="Version of the training code (a git commit, a tag).")
@click.option("--param", "params", multiple=True, help="Training parameter KEY=VALUE (repeatable).")
@click.option("--metric", "metrics", multiple=True, help="Evaluation metric KEY=VALUE (repeatable).")
@click.option("--parent-version", type=int, default=None, help="The version this one was derived from.")
@click.option(
    "--card",
    "card_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Model card (Markdown or text file).",
)
@click.option(
    "--reference",
    "reference_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Reference sample of inputs (.npy, .npz, .csv, .parquet): the drift baseline and the explanations' background.",
)
@click.pass_context
def register(
    ctx, file, name, training_data, training_data_sha256, code_version, params, metrics, parent_version, card_file, reference_file
) -> None:
    """Register FILE (an ONNX model) as a new immutable version of --name."""
    lineage = {
        k: v
        for k, v in {
            "training_data": training_data,
            "training_data_sha256": training_data_sha256,
            "code_version": code_version,
            "parameters": key_values(params, "--param") or None,
            "metrics": key_values(metrics, "--metric") or None,
            "parent_version": parent_version,
        }.items()
        if v is not None
    }
    card = card_file.read_text(encoding="utf-8") if card_file else ""
    manager = manager_from(ctx.obj["registry_url"], ctx.obj["artifact_dir"])
    who = checked_actor(manager, "register", name)
    if reference_file is not None:
        checked_actor(manager, "reference", name)
        import onnx

        try:
            signature = onnx_signature(onnx.load(str(file), load_external_data=False))
        except Exception:  # noqa: BLE001 - not ONNX: the registration below says why
            signature = None
        if signature is not None:
            try:  # before anything is written: a sample that does not fit refuses the registration
                read_reference(reference_file, signature)
            except ConfigError as e:
                fail(e)
    try:
        record = manager.registry().register(file, name, created_by=who, lineage=lineage, card=card)
    except (LockgateError, LookupError) as e:
        fail(e)
    click.echo(f"registered {record.name} version {record.version} (sha256 {record.sha256})")
    if reference_file is not None:
        _store_reference(manager, name, record.version, reference_file, who)


def _store_reference(manager, name: str, version: int, path: Path, who: str) -> None:
    try:
        baseline = set_reference(manager, name, version, path, actor=who)
    except (ConfigError, LookupError) as e:
        fail(e)
    click.echo(
        f"reference sample of {name} version {version}: {baseline['rows']} rows, {len(baseline['features'])} features in the baseline"
    )


@models.command()
@click.argument("name")
@click.argument("version", type=int)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def reference(ctx, name, version, file) -> None:
    """Set (or replace) the reference sample of NAME VERSION from FILE (.npy, .npz, .csv, .parquet):
    the drift baseline, and the background of explanations."""
    manager = manager_from(ctx.obj["registry_url"], ctx.obj["artifact_dir"])
    who = checked_actor(manager, "reference", name, version)
    _store_reference(manager, name, version, file, who)


@models.command("list")
@click.pass_context
def list_(ctx) -> None:
    """Every model with its versions and aliases."""
    manager = manager_from(ctx.obj["registry_url"], ctx.obj["artifact_dir"])
    checked_actor(manager, "metadata")
    registry = manager.registry()
    names = registry.list_models()
    if not names:
        click.echo("no models registered")
    for name in names:
        versions = [v.version for v in registry.versions(name)]
        splits: dict[str, dict[int, int]] = getattr(registry, "alias_splits", lambda _: {})(name)
        aliases = (
            ", ".join(
                f"{a}=" + ("+".join(f"{v}:{w}%" for v, w in sorted(splits[a].items())) if a in splits else str(v))
                for a, v in sorted(registry.aliases(name).items())
            )
            or "-"
        )
        click.echo(f"{name:<24} versions {','.join(map(str, versions)) or '-':<16} aliases {aliases}")


@models.command()
@click.argument("reference")
@click.pass_context
def show(ctx, reference: str) -> None:
    """Show a version: NAME (the default alias), NAME@ALIAS or NAME:VERSION."""
    manager = manager_from(ctx.obj["registry_url"], ctx.obj["artifact_dir"])
    checked_actor(manager, "metadata", reference.split("@")[0].split(":")[0])
    registry = manager.registry()
    if "@" in reference:
        name, ref = reference.split("@", 1)
    elif ":" in reference:
        name, ref = reference.split(":", 1)
        if not ref.isdigit():
            fail(click.BadParameter(f"version must be a number, got {ref!r}"))
    else:
        name, ref = reference, None
    try:
        record = manager.hook.lockgate_resolve_model(name=name, reference=ref)
    except LookupError as e:
        fail(e)
    if record is None:
        fail(LookupError(f"no plugin resolves model '{name}'"))
    described = registry.describe(record)
    described["created_at"] = iso_time(record.created_at)
    click.echo(json.dumps(described, indent=2))


@models.group()
def alias() -> None:
    """Aliases: names (production, staging, ...) that point to versions."""


@alias.command("set")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@click.argument("versions", nargs=-1, required=True, metavar="VERSION | VERSION=WEIGHT...")
@click.pass_context
def alias_set(ctx, name: str, alias_name: str, versions: tuple[str, ...]) -> None:
    """Point ALIAS of model NAME at VERSION, or split it between versions by weight, a canary:
    `production 2=90 3=10` sends 10% of callers to version 3, each caller always to the same
    version while the weights hold (serving replicas follow within a second)."""
    weights = _weights(versions)
    manager = manager_from(ctx.obj["registry_url"], ctx.obj["artifact_dir"])
    who = ""
    for version in sorted(weights):
        who = checked_actor(manager, "alias", name, version)
    registry = manager.registry()
    try:
        if len(weights) == 1 and "=" not in versions[0]:
            version = next(iter(weights))
            previous = registry.set_alias(name, alias_name, version, actor=who)
            shown = f"version {version}"
        else:
            split = getattr(registry, "set_alias_split", None)
            if split is None:
                fail(LockgateError("this registry cannot split an alias between versions"))
            previous = split(name, alias_name, weights, actor=who)
            shown = ", ".join(f"version {v} {w}%" for v, w in sorted(weights.items()))
    except PermissionError as e:
        click.secho(f"error: {e}", fg="red", err=True)
        sys.exit(4)
    except (LookupError, ValueError, LockgateError) as e:
        fail(e)
    was = f" (was {previous})" if previous is not None else ""
    click.echo(f"{name}@{alias_name} -> {shown}{was}")


def _weights(versions: tuple[str, ...]) -> dict[int, int]:
    """VERSION, or VERSION=WEIGHT pairs, as {version: weight}."""
    if len(versions) == 1 and "=" not in versions[0]:
        if not versions[0].isdigit():
            raise click.BadParameter(f"{versions[0]!r} is not a version number", param_hint="VERSION")
        return {int(versions[0]): 100}
    out: dict[int, int] = {}
    for item in versions:
        version, _, weight = item.partition("=")
        if not (version.isdigit() and weight.isdigit()):
            raise click.BadParameter(f"{item!r}: give VERSION=WEIGHT, as in 2=90 3=10", param_hint="VERSION=WEIGHT")
        if int(version) in out:
            raise click.BadParameter(f"version {version} is given twice", param_hint="VERSION=WEIGHT")
        out[int(version)] = int(weight)
    return out


@models.command()
@click.argument("name")
@click.option("--alias", "alias_name", default=None, help="Only this alias.")
@click.option("--at", "at", default=None, help="Which version each alias pointed to at this time (ISO 8601, UTC if no zone).")
@click.pass_context
def history(ctx, name: str, alias_name: str | None, at: str | None) -> None:
    """Alias history of NAME: every move with who made it and when."""
    manager = manager_from(ctx.obj["registry_url"], ctx.obj["artifact_dir"])
    checked_actor(manager, "metadata", name)
    registry = manager.registry()
    try:
        registry.model_config(name)
    except LookupError as e:
        fail(e)
    if at is not None:
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            fail(click.BadParameter(f"--at must be ISO 8601, got {at!r}"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        aliases = [alias_name] if alias_name else sorted({h["alias"] for h in registry.alias_history(name)})
        for a in aliases:
            version = registry.alias_at(name, a, when.timestamp())
            click.echo(f"{name}@{a} at {when.isoformat()}: {version if version is not None else 'not set'}")
        return
    # A split's weights are in the registry's events (alias_split), at the move's time.
    splits = (
        {(e["detail"].get("alias"), e["at"]): e["detail"].get("weights") for e in registry.events(name, "alias_split")}
        if hasattr(registry, "events")
        else {}
    )
    for h in registry.alias_history(name, alias_name):
        was = f" (was {h['previous']})" if h["previous"] is not None else ""
        weights = splits.get((h["alias"], h["set_at"]))
        shown = "+".join(f"{v}:{w}%" for v, w in sorted(weights.items(), key=lambda i: int(i[0]))) if weights else h["version"]
        click.echo(f"{iso_time(h['set_at'])}  {h['alias']:<12} -> {shown}{was}  by {h['set_by']}")


@models.command()
@click.argument("name")
@click.argument("version", type=int, required=False)
@click.option(
    "--share",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=0.1,
    show_default=True,
    help="Share of production's requests copied to VERSION.",
)
@click.option("--until", default=None, help="End: a span from now (90m, 24h, 7d) or ISO 8601 [default: until stopped].")
@click.option("--stop", is_flag=True, help="Stop the shadow run of NAME (its evidence stays).")
@click.pass_context
def shadow(ctx, name: str, version: int | None, share: float, until: str | None, stop: bool) -> None:
    """Shadow VERSION of model NAME, whatever its approval state, with production's traffic: a share of
    the requests the default alias answers is copied, after the answer, to VERSION in a replica
    of its own, and the two answers are compared (lockgate models evidence NAME VERSION).
    Clients get production's answer only. One run per model; a new one replaces it."""
    manager = manager_from(ctx.obj["registry_url"], ctx.obj["artifact_dir"])
    registry: Any = manager.registry()  # shadow runs are a registry's optional methods
    if getattr(registry, "start_shadow", None) is None:
        fail(LockgateError("this registry keeps no shadow runs"))
    try:
        if stop:
            who = checked_actor(manager, "alias", name, version)
            ended = registry.stop_shadow(name, actor=who, reason="stopped from the command line")
            click.echo(f"{name}: no shadow run" if ended is None else f"{name}: shadow of version {ended.version} stopped")
            return
        if version is None:
            raise click.UsageError("give the VERSION to shadow, or --stop")
        who = checked_actor(manager, "alias", name, version)
        end = parse_time(until, "--until", ahead=True)
        replaced = registry.start_shadow(name, version, share, end, actor=who)
    except (LookupError, ValueError, LockgateError) as e:
        fail(e)
    lasting = "until stopped" if end is None else f"until {iso_time(end)}"
    was = "" if replaced is None else f" (replaces the shadow of version {replaced.version})"
    click.echo(f"{name} version {version} shadows production with {share:.0%} of its requests, {lasting}{was}")
    click.echo(f"evidence: lockgate models evidence {name} {version}")


@models.command()
@click.argument("name")
@click.argument("version", type=int)
@click.option("--json", "as_json", is_flag=True, help="The evidence and its windows as JSON.")
@click.pass_context
def evidence(ctx, name: str, version: int, as_json: bool) -> None:
    """What shadowing VERSION of model NAME showed so far: requests compared, class agreement
    with production, differences per output, model time of each side, failures, per window."""
    manager = manager_from(ctx.obj["registry_url"], ctx.obj["artifact_dir"])
    checked_actor(manager, "metadata", name, version)
    registry = manager.registry()
    try:
        registry.get_version(name, version)
        read = getattr(registry, "shadow_windows", None)
        windows = [] if read is None else read(name, version)
        runs: dict[str, Any] = getattr(registry, "shadow_runs", lambda n: {})(name)
    except (LookupError, LockgateError) as e:
        fail(e)
    summary = shadow_evidence(windows)
    run = runs.get(name)
    running = run is not None and run.version == version and run.active(time.time())
    if as_json:
        click.echo(
            json.dumps({"model": name, "version": version, "running": running, **summary, "per_window": windows}, indent=2)
        )
        return
    for line in evidence_lines(name, version, summary):
        click.echo(line)
    if running and run is not None:
        click.echo(
            f"  the run goes on: {run.share:.0%} of production's requests, until {iso_time(run.until) if run.until else 'stopped'}"
        )
    if windows:
        click.echo(
            f"{'window start':<26}{'vs':>4}{'compared':>10}{'errors':>8}{'dropped':>9}{'agreement':>11}{'shadow ms':>11}{'prod ms':>9}"
        )
        for w in windows:
            agree = f"{w['agreed'] / w['classified']:.2%}" if w["classified"] else "-"
            n = w["compared"] or 1
            click.echo(
                f"{iso_time(w['start']):<26}{w['baseline']:>4}{w['compared']:>10}{w['errors']:>8}{w['dropped']:>9}{agree:>11}"
                f"{w['shadow_ms'] / n:>11.3f}{w['baseline_ms'] / n:>9.3f}"
            )


@models.command("import-repo")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.pass_context
def import_repo(ctx, directory: Path) -> None:
    """Register every version of a Triton-style model repository DIRECTORY (idempotent)."""
    settings = settings_from(ctx.obj["registry_url"], ctx.obj["artifact_dir"])
    manager = settings.manager()
    who = import_actor(manager, directory)
    refused: list[str] = []
    try:
        done = import_repository(
            directory,
            manager.registry(),
            actor=who,
            default_alias=settings.default_alias,
            before_alias=announce_imports(manager, who),
            refused=refused,
        )
    except LockgateError as e:
        fail(e)
    for name, version, new in done:
        click.echo(f"{'registered' if new else 'already registered'}: {name} version {version}")
    for line in refused:
        click.echo(f"not aliased: {line}")
    for line in import_references(manager, directory, done, actor=who):
        click.echo(line)


@click.group()
def plugins() -> None:
    """Installed plugins."""


@plugins.command("list")
def plugins_list() -> None:
    """Each plugin of the entry-point group 'lockgate.plugins': loaded, failed (why) or blocked."""
    settings = settings_from(None, None)
    manager = settings.manager()
    if not manager.statuses:
        click.echo("no plugins installed")
    for s in manager.statuses:
        line = f"{s.name:<20} {s.state:<8} {s.source}"
        if s.api_version:
            line += f"  (plugin API {s.api_version})"
        if s.error:
            line += f"\n{'':<21}{s.error}"
        click.echo(line)
