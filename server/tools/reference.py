"""A version's reference sample: read from a file, checked against the model, stored with its baseline.

The file holds example inputs as clients send them to the model (before any configured
preprocessing): ``.npy`` (one array, for a model with one input), ``.npz`` (arrays by input
name), ``.csv`` (one row per example, an optional header line; for a model with one
``[batch, n]`` input) or ``.parquet`` (one column per feature, same rule). At most
``MAX_ROWS`` rows are kept (a seeded random subset). The model is run on the sample once, so
that the baseline also holds the distribution of its predicted classes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, LockgateError, require_extra

__all__ = ["MAX_ROWS", "REFERENCE_FILES", "import_references", "read_reference", "set_reference"]

MAX_ROWS = 10_000
# A model repository may keep a version's reference sample next to its model file.
REFERENCE_FILES = ("reference.npy", "reference.npz", "reference.csv", "reference.parquet")


def _one_input(inputs: list[dict[str, Any]], path: Path, what: str) -> dict[str, Any]:
    if len(inputs) != 1:
        names = ", ".join(i["name"] for i in inputs)
        raise ConfigError(
            f"{what} gives one array, but the model has inputs {names}; use an .npz with one array per input", source=str(path)
        )
    return inputs[0]


def _table(path: Path) -> np.ndarray:
    if path.suffix == ".parquet":
        pq = require_extra("pyarrow.parquet", "parquet", "a .parquet reference sample")

        table = pq.read_table(path)
        return np.column_stack([table.column(i).to_numpy(zero_copy_only=False) for i in range(table.num_columns)])
    with path.open(encoding="utf-8") as f:
        first = f.readline()
    try:
        [float(x) for x in first.strip().split(",") if x.strip()]
        skip = 0
    except ValueError:
        skip = 1  # a header line
    return np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)


def read_reference(path: str | Path, signature: dict[str, Any]) -> dict[str, np.ndarray]:
    """The reference sample in ``path`` as arrays by input name, cast and shape-checked
    against the model ``signature``; a ConfigError says what does not fit."""
    from lockgate.fastpath.codec import DATATYPES

    path = Path(path)
    inputs = list(signature.get("inputs", []))
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        elif suffix == ".npy":
            arrays = {_one_input(inputs, path, "an .npy file")["name"]: np.load(path, allow_pickle=False)}
        elif suffix in (".csv", ".parquet"):
            arrays = {_one_input(inputs, path, f"a {suffix} file")["name"]: _table(path)}
        else:
            raise ConfigError(f"unknown reference format '{suffix}'; use .npy, .npz, .csv or .parquet", source=str(path))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the reference sample: {e}", source=str(path)) from None
    by_name = {i["name"]: i for i in inputs}
    unknown = sorted(set(arrays) - set(by_name))
    missing = sorted(set(by_name) - set(arrays))
    if unknown or missing:
        raise ConfigError(
            f"the sample's arrays ({', '.join(sorted(arrays))}) must be the model's inputs ({', '.join(by_name)})",
            source=str(path),
        )
    rows = {a.shape[0] if a.ndim else 0 for a in arrays.values()}
    if len(rows) != 1 or 0 in rows:
        raise ConfigError(f"every input needs the same number of rows, at least one; got {sorted(rows)}", source=str(path))
    n = rows.pop()
    keep = np.sort(np.random.default_rng(0).choice(n, MAX_ROWS, replace=False)) if n > MAX_ROWS else slice(None)
    out = {}
    for name, spec in by_name.items():
        array = arrays[name][keep]
        shape = spec["shape"]
        if len(shape) != array.ndim or any(d != -1 and d != a for d, a in zip(shape[1:], array.shape[1:])):
            raise ConfigError(
                f"input '{name}' has shape {list(shape)} in the model; the sample's is {list(array.shape)}", source=str(path)
            )
        dtype = DATATYPES.get(spec["datatype"])
        if dtype is None or dtype.name == "BYTES":
            raise ConfigError(f"input '{name}' is {spec['datatype']}: not supported in a reference sample", source=str(path))
        try:
            out[name] = np.ascontiguousarray(
                array.astype(dtype.dtype, casting="same_kind" if array.dtype.kind == dtype.dtype.kind else "unsafe")
            )
        except TypeError as e:
            raise ConfigError(f"input '{name}': {e}", source=str(path)) from None
    return out


def set_reference(manager: Any, name: str, version: int, path: str | Path, *, actor: str) -> Mapping[str, Any]:
    """Read ``path``, run the version on it, and store sample and baseline in the registry.
    The baseline comes from the plugin that measures drift (``lockgate_build_baseline``).
    Returns the baseline."""
    import onnxruntime as ort

    registry = manager.registry()
    record = registry.get_version(name, version)
    sample = read_reference(path, dict(record.signature))
    session = ort.InferenceSession(registry.read_verified(record), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    try:
        results = session.run(outputs, sample)
    except Exception as e:  # noqa: BLE001 - the sample does not fit the model after all
        raise ConfigError(f"the model did not run on the sample: {e}", source=str(path)) from None
    baseline = manager.provide("lockgate_build_baseline", inputs=sample, outputs=dict(zip(outputs, results)))
    if baseline is None:
        raise ConfigError("no plugin builds drift baselines (is the built-in 'monitoring' plugin blocked?)", source="reference")
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    registry.set_reference(name, version, sample, baseline, actor=actor, source_sha256=digest)
    return baseline


def import_references(manager: Any, root: str | Path, imported: list[tuple[str, int, bool]], *, actor: str) -> list[str]:
    """For each imported version whose folder holds a ``reference.*`` file and that has no
    reference sample yet, store it. Returns a line per version set (or refused, with why)."""
    registry = manager.registry()
    said = []
    for name, version, _ in imported:
        folder = Path(root) / name / str(version)
        found = next((folder / f for f in REFERENCE_FILES if (folder / f).is_file()), None)
        if found is None or registry.reference(name, version) is not None:
            continue
        try:
            baseline = set_reference(manager, name, version, found, actor=actor)
        except LockgateError as e:  # a sample that does not fit, or a registry that keeps none
            said.append(f"reference sample of {name} version {version} not set: {e}")
            continue
        said.append(f"reference sample of {name} version {version}: {baseline['rows']} rows from {found.name}")
    return said
