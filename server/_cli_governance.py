"""``lockgate keys``, ``models approve|reject|revoke|approvals``, ``policy check`` and
``sbom``: governance from the command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from ._cli_common import _fail, checked_actor, loaded_plugin, settings_from, with_registry_options

__all__ = ["approval_commands", "keys", "open_mode_approver", "policy", "sbom"]

OPEN_MODE_APPROVER = "open-mode"


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


def _governance(manager) -> Any:
    return loaded_plugin(manager, "governance")


def open_mode_approver(manager) -> Callable[[str, int], None] | None:
    """For a repository import: while no API key exists (open mode, loopback only), approve a
    pending version in the name of 'open-mode', so the demo serves; recorded in the audit log."""
    governance = manager.plugin("governance")
    if governance is None or not governance.open_mode():
        return None

    def approve(name: str, version: int) -> None:
        if governance.approvals.get(name, version).state == "pending":
            governance.decide("approve", name, version, actor=OPEN_MODE_APPROVER, reason="open mode: no API keys exist; approved on import")

    return approve


# -- keys ----------------------------------------------------------------------------------------


@click.group()
@with_registry_options
@click.pass_context
def keys(ctx: click.Context, registry_url: str | None, artifact_dir: str | None) -> None:
    """API keys: create (shown once), list, revoke. Needs an admin key once keys exist (LOCKGATE_API_KEY)."""
    ctx.obj = (registry_url, artifact_dir)


@keys.command("create")
@click.option("--principal", "principal", required=True, help="Who the key belongs to (a person or a service).")
@click.option("--role", "roles", multiple=True, required=True, help="viewer, invoker, deployer, approver or admin (repeatable).")
@click.option("--models", "models", default="*", show_default=True, help="Comma-separated model names the key may use, or '*'.")
@click.option("--expires", default=None, help="Expiry: a duration (30d, 12h) or an ISO date; default never.")
@click.pass_obj
def keys_create(args, principal: str, roles: tuple[str, ...], models: str, expires: str | None) -> None:
    """Create a key and print it once; only its salted hash is stored."""
    from lockgate.plugins.governance import GovernanceError, parse_expiry

    manager = settings_from(*args).manager()
    governance = _governance(manager)
    who = checked_actor(manager, "keys")
    try:
        key, info = governance.create_key(
            principal, list(roles), [m.strip() for m in models.split(",") if m.strip()], actor=who, expires_at=parse_expiry(expires)
        )
    except (ValueError, GovernanceError) as e:
        _fail(e)
    click.echo(key)
    click.echo(
        f"key {info.key_id} for '{principal}' ({', '.join(info.roles)}; models {', '.join(info.models)}; "
        f"expires {_when(info.expires_at)}). It is shown only this once.",
        err=True,
    )


@keys.command("list")
@click.pass_obj
def keys_list(args) -> None:
    """Every key: id, principal, roles, models, state (never the secret)."""
    manager = settings_from(*args).manager()
    governance = _governance(manager)
    checked_actor(manager, "keys")
    found = governance.keys.list()
    if not found:
        click.echo("no API keys (open mode: the server answers anyone on 127.0.0.1)")
    for k in found:
        click.echo(f"{k.key_id}  {k.principal:<20} {','.join(k.roles):<24} models {','.join(k.models):<20} {k.state():<8} expires {_when(k.expires_at)}")


@keys.command("revoke")
@click.argument("key_id")
@click.pass_obj
def keys_revoke(args, key_id: str) -> None:
    """Revoke KEY_ID; servers refuse it within the key refresh interval (1 s by default)."""
    manager = settings_from(*args).manager()
    governance = _governance(manager)
    who = checked_actor(manager, "keys")
    try:
        info = governance.revoke_key(key_id, actor=who)
    except LookupError as e:
        _fail(e)
    click.echo(f"revoked key {info.key_id} of '{info.principal}'")


# -- approvals (under `lockgate models`) --------------------------------------------------------------


def _decide(action: str) -> click.Command:
    @click.command(action)
    @click.argument("name")
    @click.argument("version", type=int)
    @click.option("--reason", default="", help="Why; kept in the audit log.")
    @click.pass_context
    def command(ctx, name: str, version: int, reason: str) -> None:
        from lockgate.plugins.governance import GovernanceError

        manager = settings_from(ctx.obj["registry_url"], ctx.obj["artifact_dir"]).manager()
        governance = _governance(manager)
        who = checked_actor(manager, action, name, version)
        try:
            result = governance.decide(action, name, version, actor=who, reason=reason)
        except GovernanceError as e:
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(4 if e.status == 403 else 2)
        except LookupError as e:
            _fail(e)
        click.echo(f"{name} version {version} is {result.state} (by {who})")

    command.help = {
        "approve": "Approve VERSION of model NAME (not by who registered it): protected aliases may then point to it.",
        "reject": "Reject VERSION of model NAME, which is pending: it never serves.",
        "revoke": "Revoke an approved VERSION of model NAME: replicas stop serving it within seconds (503).",
    }[action]
    return command


@click.command("approvals")
@click.argument("name")
@click.pass_context
def approvals_list(ctx, name: str) -> None:
    """Each version of NAME with its approval state, who registered and who decided."""
    manager = settings_from(ctx.obj["registry_url"], ctx.obj["artifact_dir"]).manager()
    governance = _governance(manager)
    checked_actor(manager, "metadata", name)
    try:
        versions = manager.registry().versions(name)
    except LookupError as e:
        _fail(e)
    states = governance.approvals.states(name)
    for record in versions:
        a = states.get(record.version)
        decided = f"by {a.decided_by} at {_when(a.decided_at)}" if a else ""
        click.echo(f"{name} version {record.version:<4} {(a.state if a else 'pending'):<9} registered by {record.created_by:<16} {decided}")


approval_commands = [_decide("approve"), _decide("reject"), _decide("revoke"), approvals_list]


# -- policy and sbom --------------------------------------------------------------------------------


@click.group()
def policy() -> None:
    """The library and operator policy (governance.policy in the configuration)."""


@policy.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--lineage", "lineage", multiple=True, help="Lineage field KEY=VALUE the registration would carry (repeatable).")
@click.option("--model-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None, help="The model's folder with its config.yaml (custom-op libraries).")
def policy_check(file: Path, lineage: tuple[str, ...], model_dir: Path | None) -> None:
    """Dry run: would FILE pass registration? Prints every reason it would not."""
    import onnx

    from lockgate.plugins import RegistrationCandidate
    from lockgate.plugins._storage import sha256_file
    from lockgate.plugins.registry import onnx_operators, onnx_opsets, onnx_signature

    from ._cli_models import _pairs
    from .config import load_model_config

    manager = settings_from(None, None).manager()
    governance = _governance(manager)
    try:
        model = onnx.load(str(file))
    except Exception as e:  # noqa: BLE001 - protobuf raises several types
        _fail(ValueError(f"{file} is not an ONNX model: {type(e).__name__}: {e}"))
    sha, size = sha256_file(file)
    libraries = {}
    if model_dir is not None:
        for library in load_model_config(model_dir).onnxruntime.custom_op_libraries:
            libraries[library.path] = sha256_file(Path(library.path))[0]
    candidate = RegistrationCandidate(
        name=file.stem, path=str(file), sha256=sha, size=size, signature=onnx_signature(model), created_by="policy-check",
        lineage=_pairs(lineage, "--lineage"), opsets=onnx_opsets(model), operators=onnx_operators(model),
        custom_op_libraries=libraries,
    )
    reasons = governance.options.policy.check(candidate)
    runtime = governance.options.policy.runtime_problem()
    if runtime:
        reasons.append(f"serving: {runtime}")
    if reasons:
        click.secho(f"{file}: refused by the policy:", fg="red")
        for r in reasons:
            click.echo(f"  - {r}")
        sys.exit(1)
    click.secho(f"{file}: complies with the policy (sha256 {sha})", fg="green")


@click.command("sbom")
@click.option("--model", "models", multiple=True, help="Only this model (repeatable); default every model with an alias.")
@click.option("--all-versions", is_flag=True, help="Every registered version, not only those an alias points to.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write here instead of stdout.")
@with_registry_options
def sbom(models: tuple[str, ...], all_versions: bool, out: Path | None, registry_url: str | None, artifact_dir: str | None) -> None:
    """CycloneDX 1.5 JSON: this runtime's packages and each served model version (sha256, opsets, operators)."""
    from lockgate.plugins.governance import build_sbom

    manager = settings_from(registry_url, artifact_dir).manager()
    checked_actor(manager, "sbom")
    registry = manager.registry()
    parts = []
    try:
        for name in models or registry.list_models():
            aliases = registry.aliases(name)
            wanted = [r.version for r in registry.versions(name)] if all_versions else sorted(set(aliases.values()))
            for version in wanted:
                record = registry.get_version(name, version)
                parts.append((record, registry.read_verified(record), [a for a, v in aliases.items() if v == version]))
    except (LookupError, OSError) as e:
        _fail(e)
    text = json.dumps(build_sbom(parts), indent=2)
    if out is None:
        click.echo(text)
    else:
        out.write_text(text + "\n", encoding="utf-8")
        click.echo(f"wrote {out} ({len(parts)} model version(s))", err=True)
