"""Helpers shared by the built-in plugins, and offered to anyone's: the one public module they
import from each other, so no plugin reaches into another's private modules.

- storage: SQLAlchemy engines (SQLite by default, PostgreSQL by URL), write transactions,
  files stored by sha256;
- ONNX: a model's signature, opsets, operators in every graph, tensors with external data;
- configuration: a section of the server configuration as a pydantic model;
- commands: the caller's key check, failing with an exit code, dates, KEY=VALUE options;
- shadow runs: a version's evidence summed from its windows, and as text.
"""

from __future__ import annotations

from ._commands import actor, checked_actor, checked_principal, fail, iso_time, key_values, parse_time, registry_options
from ._onnx import external_data_tensors, onnx_nodes, onnx_operators, onnx_opsets, onnx_signature
from ._options import parse_section
from ._shadow import evidence_lines, shadow_evidence
from ._storage import ArtifactStore, ObjectArtifactStore, artifact_store, create_tables, make_engine, sha256_file, writing

__all__ = [
    "ArtifactStore",
    "ObjectArtifactStore",
    "actor",
    "artifact_store",
    "checked_actor",
    "checked_principal",
    "create_tables",
    "evidence_lines",
    "external_data_tensors",
    "fail",
    "iso_time",
    "key_values",
    "make_engine",
    "onnx_nodes",
    "onnx_operators",
    "onnx_opsets",
    "onnx_signature",
    "parse_section",
    "parse_time",
    "registry_options",
    "sha256_file",
    "shadow_evidence",
    "writing",
]
