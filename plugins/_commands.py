"""Helpers for ``lockgate`` commands, the built-in ones and those plugins add: the caller's
key check, failing with a message and an exit code, dates, KEY=VALUE options."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, NoReturn, TypeVar

import click

from ._types import Principal, RequestInfo
from .errors import LockgateError

__all__ = ["actor", "checked_actor", "checked_principal", "fail", "iso_time", "key_values", "parse_time", "registry_options"]

F = TypeVar("F", bound=Callable[..., Any])

_SPANS = {"m": 60, "h": 3600, "d": 86400, "w": 604800}


def fail(error: BaseException) -> NoReturn:
    """Print ``error`` and exit: with its ``exit_code`` for a LockgateError, else 2."""
    click.secho(f"error: {error}", fg="red", err=True)
    sys.exit(error.exit_code if isinstance(error, LockgateError) else 2)


def actor() -> str:
    """Who runs this command, for the records (LOCKGATE_ACTOR, else the OS user)."""
    import getpass

    return os.environ.get("LOCKGATE_ACTOR") or getpass.getuser()


def checked_actor(manager: Any, action: str, model: str | None = None, version: int | None = None) -> str:
    """Who runs this command, after the gatekeepers agreed that they may do ``action``.

    The caller's API key comes from LOCKGATE_API_KEY. Once keys exist, control commands need
    one whose role allows the action, and the key's principal is the actor of the record.
    While none exist (open mode) the actor is LOCKGATE_ACTOR or the OS user. Exits 3 when
    not authenticated, 4 when not allowed."""
    who = checked_principal(manager, action, model, version)
    return actor() if who.name == "anonymous" else str(who.name)


def checked_principal(manager: Any, action: str, model: str | None = None, version: int | None = None) -> Principal:
    """``checked_actor``'s caller as the gatekeepers know them: name, roles, attributes (the
    models a key is granted, say)."""
    key = os.environ.get("LOCKGATE_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    info = RequestInfo("CLI", f"lockgate {action}", headers, "cli", model, None if version is None else str(version))
    who, denied = manager.check_request(info, action)
    if who is None:
        click.secho(f"error: not authenticated: {denied.reason} (set LOCKGATE_API_KEY)", fg="red", err=True)
        sys.exit(3)
    if denied is not None:
        click.secho(f"error: forbidden: {denied.reason}", fg="red", err=True)
        sys.exit(4)
    return who


def registry_options(fn: F) -> F:
    """``--registry-url`` and ``--artifacts``, as every command that opens the registry has them."""
    fn = click.option(
        "--artifacts",
        "artifact_dir",
        default=None,
        help="Artifact folder [env LOCKGATE_ARTIFACTS; default LOCKGATE_HOME/artifacts].",
    )(fn)
    fn = click.option(
        "--registry-url",
        default=None,
        help="SQLAlchemy URL of the registry [env LOCKGATE_REGISTRY_URL; default sqlite in LOCKGATE_HOME].",
    )(fn)
    return fn


def parse_time(text: str | None, option: str, *, ahead: bool = False) -> float | None:
    """Epoch seconds of ISO 8601 (UTC when no zone) or of a span back from now (90m, 24h, 7d,
    6w); ``ahead``: a span forward from now (an end still to come)."""
    if text is None:
        return None
    if text[-1:] in _SPANS and text[:-1].isdigit():
        span = int(text[:-1]) * _SPANS[text[-1]]
        return datetime.now(timezone.utc).timestamp() + (span if ahead else -span)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"expected ISO 8601 or a span such as 24h or 7d, got {text!r}", param_hint=option) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def iso_time(epoch: float | None, timespec: str = "seconds") -> str:
    """ISO 8601 in UTC of ``epoch``, or '-' for None."""
    return "-" if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec=timespec)


def key_values(values: tuple[str, ...], option: str) -> dict[str, object]:
    """``KEY=VALUE`` options as a mapping; a VALUE that is JSON is parsed (numbers, lists)."""
    out: dict[str, object] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
