"""The governance plugin: API keys and roles, four-eyes approval, the library and operator
policy. All of its hooks are gatekeepers, so every doubt denies."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .. import hookimpl
from .._options import parse_section
from .._shadow import shadow_evidence
from .._storage import make_engine
from .._types import CommandContext, Decision, ModelVersionRecord, Principal, RegistrationCandidate, RequestInfo, Settings
from ..errors import ConfigError, GovernanceError
from ._approvals import Approval, Approvals
from ._keys import ROLE_ACTIONS, KeyCache, KeyStore
from ._policy import Policy
from ._sbom import build_sbom

__all__ = ["LOCKGATE_PLUGIN_API", "OPEN_MODE_APPROVER", "GovernanceOptions", "GovernancePlugin", "plugin"]

LOCKGATE_PLUGIN_API = "1.5"

log = logging.getLogger("lockgate.governance")

# Who approves a version imported while no API key exists (open mode).
OPEN_MODE_APPROVER = "open-mode"


class GovernanceOptions(BaseModel):
    """The ``governance`` section of the server configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(None, description="SQLAlchemy URL for keys and approvals. Default: the registry's database.")
    protected_aliases: list[str] = Field(
        ["production"], description="Aliases that may point only to a version approved by someone other than who registered it."
    )
    required_card_fields: list[str] = Field(
        [], description="Model-card fields that must be filled before a version can be approved."
    )
    min_shadow_requests: int = Field(
        0,
        ge=0,
        description="Requests a version must have been compared on in a shadow run (lockgate models shadow) before it can "
        "be approved, while a protected alias points to another version; 0: no minimum.",
    )
    serve_pending: bool = Field(
        True, description="Versions awaiting approval may serve by explicit version or unprotected alias (for evaluation)."
    )
    key_refresh_s: float = Field(
        1.0, gt=0, le=5, description="How often each process re-reads the key table: the revocation delay."
    )
    key_max_stale_s: float = Field(5.0, gt=0, description="Refuse every key when the table could not be read for this long.")
    policy: Policy = Field(default_factory=Policy, description="The library and operator policy.")


class GovernancePlugin:
    """Gatekeepers on top of three stores: ``keys``, ``approvals`` and the ``policy``.

    Open mode: until the first API key is created, requests need no key and every caller may
    do everything; ``lockgate serve`` allows that on loopback only and says so."""

    LOCKGATE_PLUGIN_API = LOCKGATE_PLUGIN_API

    def __init__(self) -> None:
        self.options = GovernanceOptions()
        self.error: str | None = None
        self.manager: Any = None
        self.settings: Settings | None = None
        self._keys: KeyStore | None = None
        self._cache: KeyCache | None = None
        self._approvals: Approvals | None = None

    @hookimpl
    def lockgate_configure(self, settings: Settings, manager: Any) -> None:
        self.settings, self.manager = settings, manager
        if self._cache is not None:
            self._cache.stop()
        self._keys = self._cache = self._approvals = None
        self.error = None
        try:
            self.options = parse_section(settings.options, "governance", GovernanceOptions)
        except ConfigError as e:
            self.error = str(e)
            log.error("%s; every request and control action is refused until fixed", self.error)

    # -- stores, built on first use ------------------------------------------------------------

    def _engine(self) -> Any:
        if self.error is not None:
            raise GovernanceError(self.error, 503)
        if self.settings is None:
            raise GovernanceError("the governance plugin is not configured", 503)
        return make_engine(self.options.url or self.settings.registry_url)

    @property
    def keys(self) -> KeyStore:
        if self._keys is None:
            self._keys = KeyStore(self._engine())
        return self._keys

    @property
    def cache(self) -> KeyCache:
        if self._cache is None:
            self._cache = KeyCache(self.keys, refresh_s=self.options.key_refresh_s, max_stale_s=self.options.key_max_stale_s)
        self._cache.ensure_started()
        return self._cache

    @property
    def approvals(self) -> Approvals:
        if self._approvals is None:
            self._approvals = Approvals(self.keys.engine)
        return self._approvals

    def no_keys(self) -> bool:
        """True while no API key was ever created."""
        return not self.keys.any()

    def open_mode(self) -> bool:
        """True while no API key was ever created and this process may take anonymous callers
        (``Settings.anonymous``: a loopback-only ``lockgate serve``, or the local command line)."""
        return self.settings is not None and self.settings.anonymous and self.no_keys()

    def _anonymous_ok(self, cache: Any) -> bool:
        return bool(cache.open) and self.settings is not None and self.settings.anonymous

    # -- actions (CLI) ---------------------------------------------------------------------------

    def create_key(
        self,
        principal: str,
        roles: list[str],
        models: list[str],
        *,
        actor: str,
        expires_at: float | None = None,
        creator: Principal | None = None,
    ) -> tuple[str, Any]:
        """Create a key; ``creator`` (the caller's principal, once keys exist) bounds what it may
        hold: no action the creator's roles lack, no model the creator is not granted."""
        first = self.no_keys()
        if first and "admin" not in roles:
            raise GovernanceError("the first API key must have the admin role: it is the one that creates the others", 409)
        if creator is not None and not first:
            _within(creator, roles, models)
        key, info = self.keys.create(principal, roles, models, created_by=actor, expires_at=expires_at)
        detail = {
            "key_id": info.key_id,
            "principal": principal,
            "roles": list(info.roles),
            "models": list(info.models),
            "expires_at": expires_at,
        }
        self.manager.audit("key_create", actor, detail=detail)
        return key, info

    def revoke_key(self, key_id: str, *, actor: str) -> Any:
        info = self.keys.revoke(key_id, actor=actor)
        self.manager.audit("key_revoke", actor, detail={"key_id": info.key_id, "principal": info.principal})
        return info

    def decide(self, action: str, name: str, version: int, *, actor: str, reason: str = "") -> Approval:
        """Approve, reject or revoke a version; recorded in the audit log, refused or done."""
        record = self.manager.registry().get_version(name, version)
        try:
            if action == "approve" and self.options.min_shadow_requests and actor != OPEN_MODE_APPROVER:
                self._check_shadow_sample(name, version)
            result = self.approvals.decide(
                action,
                name,
                version,
                actor=actor,
                reason=reason,
                registered_by=record.created_by,
                card=record.card,
                required_card_fields=self.options.required_card_fields,
            )
        except GovernanceError as e:
            self.manager.audit(f"{action}_refused", actor, model=name, version=version, detail={"reason": str(e)})
            raise
        self.manager.audit(
            action,
            actor,
            model=name,
            version=version,
            detail={"reason": reason, "sha256": record.sha256, "registered_by": record.created_by},
        )
        return result

    def _check_shadow_sample(self, name: str, version: int) -> None:
        """The policy's minimum shadow sample: a version is approved for a protected alias only
        after it answered that many of production's requests in a shadow run. A model no
        protected alias serves yet has no production to shadow: its first version is exempt; so
        is open mode's approval on import (no keys: nothing is governed yet)."""
        registry = self.manager.registry()
        protected = set(self.options.protected_aliases)
        serving = {v for a, v in registry.aliases(name).items() if a in protected and v != version}
        if not serving:
            return
        read = getattr(registry, "shadow_windows", None)
        compared = shadow_evidence(read(name, version))["compared"] if read is not None else 0
        needed = self.options.min_shadow_requests
        if compared < needed:
            raise GovernanceError(
                f"version {version} of '{name}' cannot be approved yet: the policy needs {needed} requests compared in a "
                f"shadow run (governance.min_shadow_requests), it has {compared} "
                f"(lockgate models shadow {name} {version} --share 0.1)",
                409,
            )

    # -- gatekeepers -----------------------------------------------------------------------------

    @hookimpl
    def lockgate_authenticate(self, request: RequestInfo) -> Principal | Decision | None:
        if self.error is not None:
            return Decision.deny(self.error, status=503)
        cache = self._cache or self.cache  # a dead refresher shows as a stale table below
        if cache.stale():
            return Decision.deny("cannot check API keys now: the key store has not been readable for a while", status=503)
        header = request.headers.get("authorization")
        if header is None:
            if self._anonymous_ok(cache):
                return None
            if cache.open:
                return Decision.deny(
                    "no API key exists yet, and this server takes no anonymous callers (open mode is for a loopback-only "
                    "`lockgate serve`): create one with `lockgate keys create --principal NAME --role admin`"
                )
            return Decision.deny("missing 'Authorization: Bearer <API key>' header")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Decision.deny("the Authorization header must read 'Bearer <API key>'")
        result = cache.check(token.strip())
        return result if isinstance(result, Principal) else Decision.deny(result)

    @hookimpl
    def lockgate_reuse_allow(self, principal: Principal) -> float | None:
        # An allow of an API key's principal stands until the key table's next reload (or the
        # key's expiry): a revoked key stops working then, as when every request is checked. An
        # anonymous caller's (open mode) stands until then too: the first key ends open mode.
        cache = self._cache
        if self.error is not None or cache is None:
            return None
        anonymous = "key_id" not in principal.attributes and principal.name == "anonymous" and not principal.roles
        if anonymous and not (self.settings is not None and self.settings.anonymous):
            return None
        return cache.reusable_until(principal, anonymous=anonymous)

    @hookimpl
    def lockgate_authorize(self, principal: Principal, action: str, model: str | None, version: str | None) -> Decision | None:
        if self.error is not None:
            return Decision.deny(self.error, status=503)
        if principal.name == "anonymous" and not principal.roles:
            if self._anonymous_ok(self._cache or self.cache):
                return None
            return Decision.deny("anonymous callers may do nothing here: send an API key", status=401)
        actions = principal.attributes.get("actions")
        if actions is None:  # a principal from another authenticator: its roles decide
            actions = frozenset().union(*(ROLE_ACTIONS.get(r, frozenset()) for r in principal.roles))
        if action not in actions:
            roles = ", ".join(sorted(principal.roles)) or "no role"
            return Decision.deny(f"'{principal.name}' ({roles}) may not {action}")
        models = principal.attributes.get("models")
        if model is not None and models is not None and model not in models:
            return Decision.deny(f"'{principal.name}' is not granted model '{model}'")
        return None

    @hookimpl
    def lockgate_check_registration(self, candidate: RegistrationCandidate) -> Decision | None:
        if self.error is not None:
            return Decision.deny(self.error)
        reasons = self.options.policy.check(candidate)
        return Decision.deny("; ".join(reasons)) if reasons else None

    @hookimpl
    def lockgate_check_alias(self, principal: Principal, model: str, alias: str, version: int) -> Decision | None:
        if self.error is not None:
            return Decision.deny(self.error)
        if alias not in self.options.protected_aliases:
            return None
        approval = self.approvals.get(model, version)
        if approval.state != "approved":
            return Decision.deny(
                f"'{alias}' is a protected alias and version {version} is {approval.state}; "
                f"it needs the approval of someone other than who registered it (lockgate models approve {model} {version})"
            )
        return None

    @hookimpl
    def lockgate_check_serving(self, record: ModelVersionRecord, aliases: list[str]) -> Decision | None:
        if self.error is not None:
            return Decision.deny(self.error, status=503)
        problem = self.options.policy.runtime_problem()
        if problem is not None:
            return Decision.deny(problem, status=503)
        approval = self.approvals.get(record.name, record.version)  # fresh: asked once a poll, off the hot path
        if approval.state in ("revoked", "rejected"):
            return Decision.deny(
                f"version {record.version} of '{record.name}' was {approval.state} by {approval.decided_by}"
                + (f": {approval.reason}" if approval.reason else ""),
                status=503,
            )
        if approval.state != "approved":
            protected = [a for a in aliases if a in self.options.protected_aliases]
            if protected or not self.options.serve_pending:
                return Decision.deny(f"version {record.version} of '{record.name}' is not approved", status=503)
        return None

    @hookimpl
    def lockgate_check_startup(self, host: str, insecure: bool) -> Decision | None:
        if self.error is not None:
            return Decision.deny(self.error)
        problem = self.options.policy.runtime_problem()
        if problem is not None:
            return Decision.deny(f"refusing to start: {problem}")
        loopback = host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
        if not loopback and not insecure and self.no_keys():
            return Decision.deny(
                f"refusing to serve on {host} without API keys: anyone on the network could call every model. "
                "Create a key (`lockgate keys create --principal NAME --role admin`), bind 127.0.0.1, or pass --insecure"
            )
        return None

    @hookimpl
    def lockgate_startup_notes(self, host: str) -> list[str] | None:
        if self.error is None and self.open_mode():
            return [
                "open mode: no API keys exist, so anyone who can reach this address may call every model; "
                "create one with `lockgate keys create --principal NAME --role admin`"
            ]
        return None

    @hookimpl
    def lockgate_imported_version(self, name: str, version: int, actor: str) -> None:
        """In open mode (loopback only, no key yet) an imported version is approved in the name of
        'open-mode', so the demo serves; the approval is in the audit log like any other."""
        if self.error is None and self.open_mode() and self.approvals.get(name, version).state == "pending":
            self.decide(
                "approve", name, version, actor=OPEN_MODE_APPROVER, reason="open mode: no API keys exist; approved on import"
            )

    @hookimpl
    def lockgate_approval_states(self, model: str) -> dict[int, str] | None:
        return {version: approval.state for version, approval in self.approvals.states(model).items()}

    @hookimpl
    def lockgate_sbom(self, models: Sequence[tuple[ModelVersionRecord, bytes, list[str]]]) -> dict[str, Any]:
        return build_sbom(list(models))

    @hookimpl
    def lockgate_register_commands(self, cli: Any, context: CommandContext) -> None:
        from .cli import add_commands

        add_commands(cli, context, self)


def _within(creator: Principal, roles: list[str], models: list[str]) -> None:
    """GovernanceError unless a key of ``roles`` and ``models`` grants nothing ``creator`` lacks."""
    held = creator.attributes.get("actions")
    if held is None:
        held = frozenset().union(*(ROLE_ACTIONS.get(r, frozenset()) for r in creator.roles))
    wanted = frozenset().union(*(ROLE_ACTIONS.get(r, frozenset()) for r in roles))
    if not wanted <= held:
        raise GovernanceError(
            f"'{creator.name}' may not create a key that may {', '.join(sorted(wanted - held))}: its own roles cannot"
        )
    granted = creator.attributes.get("models")
    if granted is not None:
        asked = {m.strip() for m in models if m.strip()} or {"*"}
        if "*" in asked or not asked <= granted:
            beyond = "every model" if "*" in asked else ", ".join(sorted(asked - granted))
            raise GovernanceError(
                f"'{creator.name}' is granted {', '.join(sorted(granted))} only and may not create a key for {beyond}"
            )


plugin = GovernancePlugin()
