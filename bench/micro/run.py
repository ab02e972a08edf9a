"""Runs the microbenchmarks and prints each compiled kernel's speed-up over its twin, and the batcher's cost.

python bench/micro/run.py        # make bench-micro
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    out = Path(tempfile.mkdtemp()) / "micro.json"
    code = subprocess.call(
        [
            sys.executable,
            "-m",
            "pytest",
            str(HERE),
            "-q",
            "-p",
            "no:cacheprovider",
            "--benchmark-only",
            "--benchmark-min-rounds=20",
            f"--benchmark-json={out}",
            "-o",
            "addopts=",
            "-o",
            "testpaths=",
        ],
    )
    if code != 0:
        return code
    data = json.loads(out.read_text())
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for b in data["benchmarks"]:
        label = b["param"] if b.get("param") else b["name"].removeprefix("test_")
        groups[b["group"]][label] = b["stats"]["median"]
    print()
    for group, times in groups.items():
        if {"cython", "python"} <= times.keys():
            print(
                f"{group}: compiled {times['cython'] * 1e6:.1f} us, twin {times['python'] * 1e6:.1f} us -> {times['python'] / times['cython']:.1f}x"
            )
        elif {"plain_await", "gate"} <= times.keys():
            n = int(group.split(":")[1].split()[0])
            asked = times.get("gate_asked_every_time")
            also = f", asked every time {asked / n * 1e6:.2f} us" if asked else ""
            print(
                f"{group}: per request, the key's allow held {times['gate'] / n * 1e6:.2f} us{also} "
                f"(a plain await and sleep(0): {times['plain_await'] / n * 1e6:.2f} us)"
            )
        elif {"event_dataclass_init", "event_slot_init"} <= times.keys():
            n = int(group.split(":")[1].split()[0])
            slot, generated = times["event_slot_init"] / n * 1e6, times["event_dataclass_init"] / n * 1e6
            print(
                f"{group}: {slot:.2f} us each, against {generated:.2f} us with dataclass's frozen __init__ -> {generated / slot:.1f}x"
            )
        elif "audit_entry" in times:
            n = int(group.split(":")[1].split()[0])
            print(f"{group}: {times['audit_entry'] / n * 1e6:.2f} us each")
        elif {"plain_await", "batcher"} <= times.keys():
            n = int(group.split(":")[1].split()[0])
            added = (times["batcher"] - times["plain_await"]) / n * 1e6
            print(
                f"{group}: plain await {times['plain_await'] * 1e3:.2f} ms, batcher {times['batcher'] * 1e3:.2f} ms -> {added:.2f} us added per request"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
