"""Request and response bodies kept in audit records (``audit.payloads``), sealed at rest.

A body is stored as ``base64(nonce || AES-256-GCM(body))`` under a key kept in a file outside the
database (``audit.payload_key_file``, default LOCKGATE_HOME/audit-payload.key, mode 0600),
with the record's request id and which body it is (``input``/``output``) as associated data: a
sealed body moved to another record, or edited, does not open. Whoever reads the database alone
learns the bodies' sizes and digests, not the bodies. The key's id (the first 16 hex digits of
its sha256) is kept with each body, so a rotated key is named when a body does not open.
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["PayloadSealer"]

DOMAIN = b"lockgate/audit/payload/v1\x00"


class PayloadSealer:
    """Seals and opens audit payloads with one AES-256-GCM key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the audit payload key must be 32 bytes")
        self._aead = AESGCM(key[:32])
        self.key_id = hashlib.sha256(key[:32]).hexdigest()[:16]

    def seal(self, body: bytes, request_id: str, which: str) -> str:
        nonce = os.urandom(12)
        return base64.b64encode(nonce + self._aead.encrypt(nonce, body, _context(request_id, which))).decode("ascii")

    def open(self, sealed: str, request_id: str, which: str, key_id: str | None = None) -> bytes:
        """The body; ValueError naming why it does not open (another key, or altered)."""
        if key_id is not None and key_id != self.key_id:
            raise ValueError(f"the {which} body was sealed with key {key_id}, not the key in use ({self.key_id})")
        raw = base64.b64decode(sealed)
        try:
            return self._aead.decrypt(raw[:12], raw[12:], _context(request_id, which))
        except InvalidTag:
            raise ValueError(f"the sealed {which} body does not open: altered, or moved from another record") from None


def _context(request_id: str, which: str) -> bytes:
    return DOMAIN + request_id.encode("utf-8", "surrogatepass") + b"\x00" + which.encode("ascii")
