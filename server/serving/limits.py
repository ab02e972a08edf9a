"""What one client may ask of a model replica: request size, tensor size, time, connections.

The ``limits`` section of the server configuration file (LOCKGATE_CONFIG). Every limit is
answered with an error that names it: 413 for a body or tensor over the limit, 400 for
headers over it, 408 for a request not received in time, 503 with Retry-After for a
connection over the limit. HAProxy, in front, has limits of its own (docs/reliability.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lockgate.plugins.shared import parse_section

__all__ = ["DEFAULT_LIMITS", "LimitOptions", "limit_options"]


class LimitOptions(BaseModel):
    """The ``limits`` section of the server configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest request body (413 above it; Triton's default).")
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="Largest sum of header names and values (400 above it).")
    max_url_bytes: int = Field(8 * 1024, ge=256, description="Longest request URL (414 above it).")
    max_tensor_elements: int = Field(
        16 * 1024 * 1024, ge=1, description="Most elements in one input tensor, by its declared shape (413 above it)."
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="Longest a request may take to arrive, from its first byte to its last (408 after it)."
    )
    idle_timeout_s: float = Field(
        120.0, gt=0, description="A connection idle this long between requests is closed (HAProxy reconnects)."
    )
    max_connections: int = Field(
        4096, ge=1, description="Open connections one replica's listener holds; more are answered 503 and closed."
    )


DEFAULT_LIMITS = LimitOptions()


def limit_options(options: Mapping[str, Any]) -> LimitOptions:
    """The ``limits`` section of the server configuration; ConfigError says what is wrong."""
    return parse_section(options, "limits", LimitOptions)
