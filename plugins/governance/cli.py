"""The governance plugin's commands: ``lockgate keys``, ``models approve|reject|revoke|approvals``,
``policy check`` and ``sbom`` (added through ``lockgate_register_commands``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .._types import CommandContext, RegistrationCandidate
from ..errors import GovernanceError, LockgateError
from ..shared import (
    actor,
    checked_actor,
    checked_principal,
    evidence_lines,
    external_data_tensors,
    fail,
    iso_time,
    key_values,
    onnx_operators,
    onnx_opsets,
    onnx_signature,
    sha256_file,
    shadow_evidence,
)
from ._keys import parse_expiry

__all__ = ["add_commands"]


def add_commands(cli: click.Group, context: CommandContext, plugin: Any) -> None:
    """Add the governance commands to ``cli``; the approval commands go under ``models``."""
    for command in _commands(context, plugin):
        cli.add_command(command)
    models = cli.commands.get("models")
    if isinstance(models, click.Group):
        for command in _approval_commands(context, plugin):
            models.add_command(command)


def _commands(context: CommandContext, plugin: Any) -> list[click.Command]:
    return [_keys(context, plugin), _policy(context, plugin), _sbom(context)]


# -- keys ----------------------------------------------------------------------------------------


def _keys(context: CommandContext, governance: Any) -> click.Group:
    @click.group()
    @context.registry_options
    @click.pass_context
    def keys(ctx: click.Context, registry_url: str | None, artifact_dir: str | None) -> None:
        """API keys: create (shown once), list, revoke. Needs an admin key once keys exist (LOCKGATE_API_KEY)."""
        ctx.obj = (registry_url, artifact_dir)

    @keys.command("create")
    @click.option("--principal", "principal", required=True, help="Who the key belongs to (a person or a service).")
    @click.option(
        "--role", "roles", multiple=True, required=True, help="viewer, invoker, deployer, approver or admin (repeatable)."
    )
    @click.option(
        "--models", "models", default="*", show_default=True, help="Comma-separated model names the key may use, or '*'."
    )
    @click.option("--expires", default=None, help="Expiry: a duration (30d, 12h) or an ISO date; default never.")
    @click.pass_obj
    def keys_create(
        args: tuple[str | None, str | None], principal: str, roles: tuple[str, ...], models: str, expires: str | None
    ) -> None:
        """Create a key and print it once; only its salted hash is stored."""
        manager = context.manager(*args)
        creator = checked_principal(manager, "keys")
        who = actor() if creator.name == "anonymous" else creator.name
        try:
            key, info = governance.create_key(
                principal,
                list(roles),
                [m.strip() for m in models.split(",") if m.strip()],
                actor=who,
                expires_at=parse_expiry(expires),
                creator=creator,
            )
        except (ValueError, LockgateError) as e:
            fail(e)
        click.echo(key)
        click.echo(
            f"key {info.key_id} for '{principal}' ({', '.join(info.roles)}; models {', '.join(info.models)}; "
            f"expires {iso_time(info.expires_at)}). It is shown only this once.",
            err=True,
        )

    @keys.command("list")
    @click.pass_obj
    def keys_list(args: tuple[str | None, str | None]) -> None:
        """Every key: id, principal, roles, models, state (never the secret)."""
        manager = context.manager(*args)
        checked_actor(manager, "keys")
        found = governance.keys.list()
        if not found:
            click.echo("no API keys (open mode: the server answers anyone on 127.0.0.1)")
        for k in found:
            click.echo(
                f"{k.key_id}  {k.principal:<20} {','.join(k.roles):<24} models {','.join(k.models):<20} {k.state():<8} "
                f"expires {iso_time(k.expires_at)}"
            )

    @keys.command("revoke")
    @click.argument("key_id")
    @click.pass_obj
    def keys_revoke(args: tuple[str | None, str | None], key_id: str) -> None:
        """Revoke KEY_ID; servers refuse it within the key refresh interval (1 s by default)."""
        manager = context.manager(*args)
        who = checked_actor(manager, "keys")
        try:
            info = governance.revoke_key(key_id, actor=who)
        except LookupError as e:
            fail(e)
        click.echo(f"revoked key {info.key_id} of '{info.principal}'")

    return keys


# -- approvals (under `lockgate models`) --------------------------------------------------------------

_DECISION_HELP = {
    "approve": "Approve VERSION of model NAME (not by who registered it): protected aliases may then point to it.",
    "reject": "Reject VERSION of model NAME, which is pending: it never serves.",
    "revoke": "Revoke an approved VERSION of model NAME: replicas stop serving it within seconds (503).",
}


def _show_evidence(registry: Any, name: str, version: int) -> None:
    """What the approver sees before deciding: the version's shadow evidence, if any was kept."""
    read = getattr(registry, "shadow_windows", None)
    try:
        windows = [] if read is None else read(name, version)
    except LookupError as e:
        fail(e)
    for line in evidence_lines(name, version, shadow_evidence(windows)):
        click.echo(line)


def _approval_commands(context: CommandContext, governance: Any) -> list[click.Command]:
    def decide(action: str) -> click.Command:
        @click.command(action, help=_DECISION_HELP[action])
        @click.argument("name")
        @click.argument("version", type=int)
        @click.option("--reason", default="", help="Why; kept in the audit log.")
        @click.option("--yes", is_flag=True, help="Do not ask for confirmation after the evidence (asked on a terminal only).")
        @click.pass_context
        def command(ctx: click.Context, name: str, version: int, reason: str, yes: bool) -> None:
            manager = context.manager(ctx.obj["registry_url"], ctx.obj["artifact_dir"])
            who = checked_actor(manager, action, name, version)
            if action == "approve":
                _show_evidence(manager.registry(), name, version)
                if not yes and sys.stdin.isatty():
                    click.confirm(f"approve version {version} of {name}?", abort=True)
            try:
                result = governance.decide(action, name, version, actor=who, reason=reason)
            except (GovernanceError, LookupError) as e:
                fail(e)
            click.echo(f"{name} version {version} is {result.state} (by {who})")

        return command

    @click.command("approvals")
    @click.argument("name")
    @click.pass_context
    def approvals_list(ctx: click.Context, name: str) -> None:
        """Each version of NAME with its approval state, who registered and who decided."""
        manager = context.manager(ctx.obj["registry_url"], ctx.obj["artifact_dir"])
        checked_actor(manager, "metadata", name)
        try:
            versions = manager.registry().versions(name)
        except LookupError as e:
            fail(e)
        states = governance.approvals.states(name)
        for record in versions:
            a = states.get(record.version)
            decided = f"by {a.decided_by} at {iso_time(a.decided_at)}" if a else ""
            click.echo(
                f"{name} version {record.version:<4} {(a.state if a else 'pending'):<9} registered by {record.created_by:<16} {decided}"
            )

    return [decide("approve"), decide("reject"), decide("revoke"), approvals_list]


# -- policy and sbom --------------------------------------------------------------------------------


def _custom_op_libraries(model_dir: Path) -> dict[str, str]:
    """Path -> sha256 of each custom-operator library the model folder's config.yaml loads."""
    import yaml

    for name in ("config.yaml", "config.yml", "config.json"):
        file = model_dir / name
        if file.is_file():
            config = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
            libraries = ((config.get("onnxruntime") or {}).get("custom_op_libraries")) or []
            return {str(lib["path"]): sha256_file(Path(lib["path"]))[0] for lib in libraries}
    return {}


def _policy(context: CommandContext, governance: Any) -> click.Group:
    @click.group()
    def policy() -> None:
        """The library and operator policy (governance.policy in the configuration)."""

    @policy.command("check")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option(
        "--lineage", "lineage", multiple=True, help="Lineage field KEY=VALUE the registration would carry (repeatable)."
    )
    @click.option(
        "--model-dir",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        default=None,
        help="The model's folder with its config.yaml (custom-op libraries).",
    )
    def policy_check(file: Path, lineage: tuple[str, ...], model_dir: Path | None) -> None:
        """Dry run: would FILE pass registration? Prints every reason it would not."""
        import onnx

        context.manager(None, None)
        if governance.error:
            fail(LockgateError(governance.error))
        try:
            model = onnx.load(str(file), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - protobuf raises several types
            fail(ValueError(f"{file} is not an ONNX model: {type(e).__name__}: {e}"))
        sha, size = sha256_file(file)
        candidate = RegistrationCandidate(
            name=file.stem,
            path=str(file),
            sha256=sha,
            size=size,
            signature=onnx_signature(model),
            created_by="policy-check",
            lineage=key_values(lineage, "--lineage"),
            opsets=onnx_opsets(model),
            operators=onnx_operators(model),
            custom_op_libraries=_custom_op_libraries(model_dir) if model_dir is not None else {},
        )
        reasons = governance.options.policy.check(candidate)
        external = external_data_tensors(model)
        if external:
            reasons.append(
                f"keeps tensor data outside the model file (external data: {', '.join(external[:5])}); lockgate refuses it"
            )
        runtime = governance.options.policy.runtime_problem()
        if runtime:
            reasons.append(f"serving: {runtime}")
        if reasons:
            click.secho(f"{file}: refused by the policy:", fg="red")
            for r in reasons:
                click.echo(f"  - {r}")
            sys.exit(1)
        click.secho(f"{file}: complies with the policy (sha256 {sha})", fg="green")

    return policy


def _sbom(context: CommandContext) -> click.Command:
    @click.command("sbom")
    @click.option("--model", "models", multiple=True, help="Only this model (repeatable); default every model with an alias.")
    @click.option("--all-versions", is_flag=True, help="Every registered version, not only those an alias points to.")
    @click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write here instead of stdout.")
    @context.registry_options
    def sbom(
        models: tuple[str, ...], all_versions: bool, out: Path | None, registry_url: str | None, artifact_dir: str | None
    ) -> None:
        """CycloneDX 1.5 JSON: this runtime's packages and each served model version (sha256, opsets, operators)."""
        from ._sbom import build_sbom

        manager = context.manager(registry_url, artifact_dir)
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
        except (LookupError, OSError, LockgateError) as e:
            fail(e)
        text = json.dumps(build_sbom(parts), indent=2)
        if out is None:
            click.echo(text)
        else:
            out.write_text(text + "\n", encoding="utf-8")
            click.echo(f"wrote {out} ({len(parts)} model version(s))", err=True)

    return sbom
