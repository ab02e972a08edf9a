"""The hash chain and its signed checkpoints: canonical JSON, domain-separated hashing, HMAC.

A record's hash covers the previous record's hash and the record's canonical JSON (which
carries its sequence number), under a domain tag of its own, so no record, checkpoint or
other lockgate hash can stand in for another. A checkpoint is (seq, hash, at) signed with
HMAC-SHA256 under a key that lives outside the database: whoever rewrites the chain in the
database cannot re-sign the checkpoints.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Any

from lockgate.fastpath import canonical_json

__all__ = ["GENESIS", "canonical", "checkpoint_mac", "load_or_create_key", "prune_mac", "record_hash"]

GENESIS = "0" * 64
RECORD_DOMAIN = b"lockgate/audit/record/v1\x00"
CHECKPOINT_DOMAIN = b"lockgate/audit/checkpoint/v1\x00"
PRUNE_DOMAIN = b"lockgate/audit/prune/v1\x00"
PRUNE_FIELDS = ("pruned_through", "hash", "at", "cutoff", "retention_days")


# Sorted keys, no spaces, UTF-8 kept, NaN refused: one text per value. The compiled encoder of
# ``lockgate.fastpath`` (2.6x its twin, ``json``'s encoder with these options, on a record), which
# gives the twin's text or the twin's error; the name itself, no call in between, on the writer's path.
canonical = canonical_json


def record_hash(prev_hash: str, body: str) -> str:
    # prev_hash is always 64 hex characters, so the concatenation is unambiguous.
    return hashlib.sha256(RECORD_DOMAIN + prev_hash.encode("ascii") + body.encode("utf-8")).hexdigest()


def checkpoint_mac(key: bytes, checkpoint: dict[str, Any]) -> str:
    fields = {k: checkpoint[k] for k in ("seq", "hash", "at")}
    return hmac.new(key, CHECKPOINT_DOMAIN + canonical(fields).encode("utf-8"), hashlib.sha256).hexdigest()


def prune_mac(key: bytes, marker: dict[str, Any]) -> str:
    """The signature of a prune marker: which records were deleted, the hash of the last one,
    when, the cut-off and the retention period in force."""
    fields = {k: marker[k] for k in PRUNE_FIELDS}
    return hmac.new(key, PRUNE_DOMAIN + canonical(fields).encode("utf-8"), hashlib.sha256).hexdigest()


def load_or_create_key(path: str | Path) -> bytes:
    """The checkpoint key in ``path`` (hex); created with mode 0600 when missing."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first
            return load_or_create_key(path)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(os.urandom(32).hex())
            f.flush()
            os.fsync(f.fileno())
        return load_or_create_key(path)
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"checkpoint key file {path} does not hold a hex key") from None
    if len(key) < 16:
        raise ValueError(f"checkpoint key in {path} is shorter than 16 bytes")
    return key
