"""Sections of the server configuration, validated into the pydantic model that declares them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import ConfigError

__all__ = ["parse_section"]

M = TypeVar("M", bound=BaseModel)


def parse_section(options: Mapping[str, Any], name: str, model: type[M]) -> M:
    """Section ``name`` of the server configuration (``settings.options``) as ``model``.

    A missing section gives the model's defaults. A ConfigError names the section, the first
    wrong key and what pydantic says of it, for example
    ``audit options invalid: mode: Input should be 'sync' or 'async'``."""
    try:
        return model.model_validate(dict(options.get(name) or {}))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"])) or name
        raise ConfigError(f"{where}: {first['msg']}", source=f"{name} options invalid") from None
