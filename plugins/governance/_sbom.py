"""CycloneDX 1.5 software bill of materials: the runtime's installed Python packages, and
each served model version (sha256, opsets, operators) as a machine-learning-model component."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from importlib.metadata import distributions, version
from typing import Any

import onnx

from .._onnx import onnx_operators, onnx_opsets
from .._types import ModelVersionRecord

__all__ = ["SPEC_VERSION", "build_sbom", "model_component", "runtime_components"]

SPEC_VERSION = "1.5"


def _purl_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_components() -> list[dict[str, Any]]:
    """Every installed distribution, once, sorted by name."""
    seen: dict[str, dict[str, Any]] = {}
    for dist in distributions():
        meta: Any = dist.metadata  # an email.message.Message: .get() is there, the protocol omits it
        name = meta.get("Name")
        if not name or _purl_name(name) in seen:
            continue
        purl = f"pkg:pypi/{_purl_name(name)}@{dist.version}"
        component: dict[str, Any] = {"type": "library", "bom-ref": purl, "name": name, "version": dist.version, "purl": purl}
        license_ = meta.get("License-Expression") or meta.get("License")
        if license_ and len(license_) < 100 and "\n" not in license_:
            component["licenses"] = (
                [{"expression": license_}] if meta.get("License-Expression") else [{"license": {"name": license_}}]
            )
        seen[_purl_name(name)] = component
    return [seen[k] for k in sorted(seen)]


def model_component(record: ModelVersionRecord, data: bytes, aliases: Iterable[str] = ()) -> dict[str, Any]:
    """A model version as a component: its hash, opsets, operators, producer and aliases."""
    model = onnx.load_model_from_string(data)
    opsets = onnx_opsets(model)
    operators = sorted(onnx_operators(model))
    properties = [{"name": f"lockgate:opset:{d}", "value": str(v)} for d, v in sorted(opsets.items())]
    properties += [
        {"name": "lockgate:operators", "value": ",".join(operators)},
        {"name": "lockgate:ir_version", "value": str(model.ir_version)},
        {"name": "lockgate:registered_by", "value": record.created_by},
    ]
    if model.producer_name:
        properties.append({"name": "lockgate:producer", "value": f"{model.producer_name} {model.producer_version}".strip()})
    aliases = sorted(aliases)
    if aliases:
        properties.append({"name": "lockgate:aliases", "value": ",".join(aliases)})
    return {
        "type": "machine-learning-model",
        "bom-ref": f"model:{record.name}@{record.version}",
        "name": record.name,
        "version": str(record.version),
        "hashes": [{"alg": "SHA-256", "content": record.sha256}],
        "properties": properties,
    }


def build_sbom(models: Iterable[tuple[ModelVersionRecord, bytes, Iterable[str]]] = (), *, runtime: bool = True) -> dict[str, Any]:
    """The whole document: lockgate as the subject, its packages and the given model versions."""
    try:
        own = version("lockgate")
    except Exception:  # noqa: BLE001 - running from a source tree
        own = "0+unknown"
    libraries = runtime_components() if runtime else []
    model_parts = [model_component(r, data, aliases) for r, data, aliases in models]
    return {
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tools": {"components": [{"type": "application", "name": "lockgate", "version": own}]},
            "component": {"type": "application", "bom-ref": "lockgate", "name": "lockgate", "version": own},
        },
        "components": libraries + model_parts,
        "dependencies": [
            {"ref": "lockgate", "dependsOn": [c["bom-ref"] for c in libraries + model_parts if c["bom-ref"] != "lockgate"]}
        ],
    }
