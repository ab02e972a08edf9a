"""Triton's statistics extension: per model version, what was run and how long it took.

Every replica tallies its requests and batches in memory (a few integer additions each) and
writes its totals to a file of its own in the node's metrics folder (the folder the Prometheus
metric files of every process share; ``LockgateSettings.metrics_dir``), at most 0.5 s after a
change. A statistics request sums the files of every process, live or gone, so counts never go
back when Ray restarts a replica, and the replica answering writes its own totals first.
Without a folder (a service built in a test, say) the process's own tallies are the answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

__all__ = ["STAT_KINDS", "Statistics", "VersionStats", "read_statistics"]

log = logging.getLogger("lockgate.server")

# Triton's duration statistics of a version (inference_stats), each a count and nanoseconds.
STAT_KINDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")
_BATCH_KINDS = ("compute_input", "compute_infer", "compute_output")
FLUSH_S = 0.5  # a write is a file replaced on the event loop: at 0.05 s it was ~3% of a loaded loop
SUBDIR = "statistics"


class VersionStats:
    """The running totals of one model version in this process."""

    __slots__ = ("_booked", "batches", "counts", "executions", "inferences", "last_inference", "owner")

    def __init__(self, owner: Statistics) -> None:
        self.owner = owner
        self.counts: dict[str, list[int]] = {k: [0, 0] for k in STAT_KINDS}
        # what a success books, in the order answered() gives them
        self._booked = tuple(self.counts[k] for k in ("success", "queue", "compute_input", "compute_infer", "compute_output"))
        self.inferences = 0  # rows of successful executions
        self.executions = 0
        self.last_inference = 0  # ms since the epoch
        self.batches: dict[int, list[int]] = {}  # batch size -> [count, input ns, infer ns, output ns]

    def batch(self, rows: int, input_ns: int, infer_ns: int) -> None:
        """One executed batch of ``rows`` rows: the execution counts and the batch-size statistics."""
        self.inferences += rows
        self.executions += 1
        self.last_inference = int(time.time() * 1000)
        b = self.batches.get(rows)
        if b is None:
            b = self.batches[rows] = [0, 0, 0, 0]
        b[0] += 1
        b[1] += input_ns
        b[2] += infer_ns
        self.owner.changed()

    def answered(
        self, ok: bool, duration_ns: int, queue_ns: int = 0, input_ns: int = 0, infer_ns: int = 0, output_ns: int = 0
    ) -> None:
        """One request answered. A success books its queue wait and the compute of its batch with
        it, at once: readers (perf_analyzer) expect success, queue and the three compute counts to
        agree at every moment, in-flight requests included."""
        c = self.counts
        if not ok:
            entry = c["fail"]
            entry[0] += 1
            entry[1] += duration_ns
            self.owner.changed()
            return
        for entry, ns in zip(self._booked, (duration_ns, queue_ns, input_ns, infer_ns, output_ns)):
            entry[0] += 1
            entry[1] += ns
        self.owner.changed()

    def snapshot(self) -> dict[str, Any]:
        return {
            "inference_count": self.inferences,
            "execution_count": self.executions,
            "last_inference": self.last_inference,
            "inference_stats": {k: list(v) for k, v in self.counts.items()},
            "batch_stats": {str(size): list(v) for size, v in self.batches.items()},
        }


class Statistics:
    """This process's tallies of one model, written to ``directory`` (None: kept in memory)."""

    def __init__(self, model: str, directory: str | None) -> None:
        self.model = model
        self.directory = None if directory is None else Path(directory) / SUBDIR
        self.versions: dict[int, VersionStats] = {}
        self._path = None
        if self.directory is not None:
            self._path = self.directory / f"{model}-{os.getpid()}-{secrets.token_hex(4)}.json"
        self._pending: asyncio.TimerHandle | None = None

    def version(self, number: int) -> VersionStats:
        found = self.versions.get(number)
        if found is None:
            found = self.versions[number] = VersionStats(self)
            self.changed()
        return found

    def changed(self) -> None:
        """Write the totals soon: once per ``FLUSH_S`` at most, from the event loop."""
        if self._path is None or self._pending is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: write now
            self.flush()
            return
        self._pending = loop.call_later(FLUSH_S, self.flush)

    def _document(self) -> dict[str, Any]:
        """This process's totals, as its file holds them."""
        return {"model": self.model, "versions": {str(v): s.snapshot() for v, s in self.versions.items()}}

    def flush(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._path is None:
            return
        doc = self._document()
        tmp = self._path.with_suffix(".tmp")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(doc), encoding="utf-8")
            os.replace(tmp, self._path)
        except OSError as e:  # statistics are observations: serving goes on
            log.warning("statistics of %s not written: %s", self.model, e)

    async def answer(self, version: int | None = None) -> dict[str, Any]:
        """Triton's statistics response of this model (one version, or all), over every process
        of this node: this one's totals are written first, the files are read off the loop."""
        if self.directory is None:
            return _response([self._document()], self.model, version)
        self.flush()
        return await asyncio.to_thread(read_statistics, str(self.directory.parent), self.model, version)


def _load(directory: Path) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    if not directory.is_dir():
        return docs
    for path in sorted(directory.glob("*.json")):
        try:
            docs.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):  # being replaced, or gone: its last totals are in the next read
            continue
    return docs


def read_statistics(directory: str | None, model: str | None = None, version: int | None = None) -> dict[str, Any]:
    """Triton's statistics response from the files in ``directory`` (the metrics folder)."""
    return _response([] if directory is None else _load(Path(directory) / SUBDIR), model, version)


def _response(docs: list[dict[str, Any]], model: str | None, version: int | None) -> dict[str, Any]:
    totals: dict[tuple[str, int], dict[str, Any]] = {}
    for doc in docs:
        name = str(doc.get("model"))
        if model is not None and name != model:
            continue
        for text, snap in doc.get("versions", {}).items():
            number = int(text)
            if version is not None and number != version:
                continue
            _add(totals.setdefault((name, number), _empty()), snap)
    return {"model_stats": [_triton(name, number, t) for (name, number), t in sorted(totals.items())]}


def _empty() -> dict[str, Any]:
    return {
        "inference_count": 0,
        "execution_count": 0,
        "last_inference": 0,
        "inference_stats": {k: [0, 0] for k in STAT_KINDS},
        "batch_stats": {},
    }


def _add(total: dict[str, Any], snap: dict[str, Any]) -> None:
    total["inference_count"] += snap["inference_count"]
    total["execution_count"] += snap["execution_count"]
    total["last_inference"] = max(total["last_inference"], snap["last_inference"])
    for kind, (count, ns) in snap["inference_stats"].items():
        entry = total["inference_stats"].setdefault(kind, [0, 0])
        entry[0] += count
        entry[1] += ns
    for size, values in snap["batch_stats"].items():
        entry = total["batch_stats"].setdefault(size, [0, 0, 0, 0])
        for i, v in enumerate(values):
            entry[i] += v


def _triton(name: str, version: int, t: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "version": str(version),
        "last_inference": t["last_inference"],
        "inference_count": t["inference_count"],
        "execution_count": t["execution_count"],
        "inference_stats": {k: {"count": c, "ns": ns} for k, (c, ns) in t["inference_stats"].items()},
        "response_stats": {},
        "batch_stats": [
            {
                "batch_size": int(size),
                **{k: {"count": v[0], "ns": v[1 + i]} for i, k in enumerate(_BATCH_KINDS)},
            }
            for size, v in sorted(t["batch_stats"].items(), key=lambda kv: int(kv[0]))
        ],
        "memory_usage": [],
    }
