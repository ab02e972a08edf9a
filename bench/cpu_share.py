"""Where a request's CPU goes: CPU microseconds per request of every process on the machine
while wrk loads one URL (user + system time from /proc, divided by the requests answered).

    lockgate serve --port 8000 &
    python bench/cpu_share.py http://127.0.0.1:8000/v2/models/mlp/infer --body body.json \
        [--authorization "Bearer KEY"] [--connections 64] [--seconds 10]

On a machine whose cores the load generator shares, throughput is set by the CPU all the
processes of a request take together, not by one of them: this is the per-stage breakdown that
says which stage to cut (HAProxy, Serve's HAProxy manager, the replica, the audit writer).
The machine's own counters (/proc/stat) come last: all its CPU per request, wrk's included, and
the share of its cores left idle. Idle cores while one process uses a whole core say that this
process, not the machine, sets the throughput.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def processes() -> dict[str, tuple[str, int]]:
    """pid -> (command line, CPU ticks used so far)."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        found[pid] = (command or stat[stat.index("(") + 1 : stat.rindex(")")], int(fields[11]) + int(fields[12]))
    return found


def machine() -> tuple[int, int]:
    """The machine's CPU ticks so far, all cores: (busy, idle); iowait counts as idle."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values[:8]) - idle, idle


def name(command: str) -> str:
    """A short, stable name for a process (the first words of its command line)."""
    words = command.split()
    if not words:
        return "?"
    if words[0].startswith("ray::"):
        return words[0]
    shown = [Path(words[0]).name, *words[1:4]]
    return " ".join(shown)[:70]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--body", type=Path, required=True, help="the request body (OIP JSON)")
    p.add_argument("--authorization", default=None)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--top", type=int, default=10)
    a = p.parse_args()
    env = {**os.environ, "BENCH_BODY": str(a.body)}
    if a.authorization:
        env["BENCH_AUTHORIZATION"] = a.authorization
    hz = os.sysconf("SC_CLK_TCK")
    before = processes()
    busy_before, idle_before = machine()
    threads = 2 if a.connections > 3 else 1
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{a.connections}", f"-d{a.seconds}s", "-s", str(HERE / "wrk_report.lua"), a.url],
        capture_output=True,
        text=True,
        env=env,
    )
    after = processes()
    busy_after, idle_after = machine()
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        print(f"wrk failed: {out.stdout}{out.stderr}", file=sys.stderr)
        return 1
    result = json.loads(lines[-1])
    requests = result["requests"]
    used: collections.Counter[str] = collections.Counter()
    for pid, (command, ticks) in after.items():
        spent = ticks - before[pid][1] if pid in before else ticks
        if spent > 0:
            used[name(command)] += spent
    print(
        f"{requests / a.seconds:.0f} req/s at c={a.connections}, p50 {result['p50_us'] / 1e3:.2f} ms "
        f"(wrk's own CPU is not counted: it has exited when the counts are read)"
    )
    for process, ticks in used.most_common(a.top):
        print(f"{ticks / hz / requests * 1e6:8.1f} us/request  {process}")
    print(f"{sum(used.values()) / hz / requests * 1e6:8.1f} us/request  all processes")
    busy, idle = busy_after - busy_before, idle_after - idle_before
    print(
        f"{busy / hz / requests * 1e6:8.1f} us/request  the machine, wrk and the kernel included "
        f"({idle / max(busy + idle, 1):.0%} of its cores idle)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
