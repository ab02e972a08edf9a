"""Structured logs (lockgate.server.serving.logs): the JSON shape, the request's ids on its
lines, W3C traceparent parsing, and the stdout/stderr wrapper that makes every line JSON."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from lockgate.server.serving.logs import REQUEST, JsonFormatter, trace_id

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    "header,expected",
    [
        (f"00-{TRACE}-00f067aa0ba902b7-01", TRACE),
        (f"00-{TRACE.upper()}-00F067AA0BA902B7-01", TRACE),  # hex is case-insensitive
        (f"01-{TRACE}-00f067aa0ba902b7-01-extra", TRACE),  # a later version may add fields
        (f"ff-{TRACE}-00f067aa0ba902b7-01", None),  # version ff is invalid
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),  # the all-zero trace id is invalid
        (f"00-{TRACE[:-1]}g-00f067aa0ba902b7-01", None),
        ("00-abc-00f067aa0ba902b7-01", None),
        ("garbage", None),
    ],
)
def test_traceparent(header, expected):
    assert trace_id([(b"content-type", b"application/json"), (b"traceparent", header.encode())]) == expected


def test_no_traceparent_is_no_trace_id():
    assert trace_id([(b"x-other", b"1")]) is None


def test_a_line_is_one_json_object_with_the_requests_ids_and_fields():
    formatter = JsonFormatter()
    record = logging.LogRecord("lockgate.server", logging.WARNING, __file__, 1, "answer %s", ("withheld",), None)
    outside = json.loads(formatter.format(record))
    assert outside["message"] == "answer withheld" and outside["level"] == "WARNING" and "request_id" not in outside
    token = REQUEST.set(("ab" * 12, TRACE))
    try:
        record.fields = {"model": "iris", "status": 503}
        inside = json.loads(formatter.format(record))
    finally:
        REQUEST.reset(token)
    assert inside["request_id"] == "ab" * 12 and inside["trace_id"] == TRACE
    assert inside["model"] == "iris" and inside["status"] == 503 and inside["time"].endswith("Z")
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    line = formatter.format(failed)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


def test_every_line_a_process_and_its_children_print_becomes_json():
    program = """
import logging, subprocess, sys
from lockgate.server.serving.logs import configure, json_stdio
json_stdio()
configure("json")
print("plain text from this process")
logging.getLogger("lockgate.test").warning("a warning")
sys.stdout.write('{"already": "json"}\\n')
sys.stdout.flush()
subprocess.run([sys.executable, "-c", "import sys; print('from a child'); print('child error', file=sys.stderr)"])
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    err = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert [o.get("message", o) for o in out] == ["plain text from this process", {"already": "json"}, "from a child"]
    assert out[0]["logger"] == "stdout"
    assert {e["message"] for e in err} == {"a warning", "child error"}
    assert {e["logger"] for e in err} == {"lockgate.test", "stderr"}


def test_a_closed_output_costs_lines_not_the_process():
    """`lockgate serve --log-format json | head -1`: once the reader is gone, the process keeps
    running and logging (its lines are lost) instead of blocking on a full pipe."""
    program = """
import logging, sys, time
from lockgate.server.serving.logs import configure, json_stdio
json_stdio()
configure("json")
for i in range(20000):
    print("line", i, "x" * 100)
logging.getLogger("lockgate.test").warning("still here")
sys.stdout.flush()
open(sys.argv[1], "w").write("done")
"""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        done = f"{folder}/done"
        proc = subprocess.Popen([sys.executable, "-c", program, done], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        proc.stdout.close()  # the reader goes away after one line
        assert proc.wait(timeout=60) == 0
        assert json.loads(first)["message"].startswith("line 0")
        assert open(done).read() == "done"
