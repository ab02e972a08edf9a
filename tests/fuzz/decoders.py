"""Coverage-guided fuzzing (atheris, libFuzzer) of the request decoders, run by
tests/unit/test_fuzz_atheris.py for a fixed budget.

Each input is one raw HTTP request, fed to a model replica's listener protocol (httptools
framing, limits, the OIP decoder, the codec, the batcher, onnxruntime) in-process; the same
bytes also go, as a body, to both codec implementations side by side. A crash is: an
exception out of the listener, a 500 or no answer to a complete request, a replica that
stops answering, or the two codecs disagreeing on a value or on whether it is an error.
The pure-Python code is instrumented for coverage; the compiled codec is checked against it.

    python tests/fuzz/decoders.py [libFuzzer flags, e.g. -max_total_time=60] [corpus dirs]
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["lockgate"]):
    from lockgate.fastpath import _codec, _codec_py
    from lockgate.fastpath._common import CodecError
    from lockgate.plugins.registry import Registry
    from lockgate.server.serving.config import ModelConfig
    from lockgate.server.serving.limits import LimitOptions
    from lockgate.server.serving.listener import FastServer, _Protocol
    from lockgate.server.serving.model_app import ModelApp
    from lockgate.server.serving.service import ModelService
    from lockgate.server.tools.demo import write_demo_repository
    from lockgate.server.tools.repository import import_repository

IRIS = b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}'
BINARY = b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}], "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}]}'


def http(body: bytes, extra: bytes = b"", path: bytes = b"/v2/models/iris/infer") -> bytes:
    return b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n%s\r\n" % (path, len(body), extra) + body


SEEDS = [
    http(IRIS),
    http(BINARY + b"\x00" * 16, b"inference-header-content-length: %d\r\n" % len(BINARY)),
    b"GET /v2/models/iris HTTP/1.1\r\nhost: x\r\n\r\n",
    b"GET /v2/models/iris/versions/1/ready HTTP/1.1\r\n\r\n",
    b'POST /v2/models/iris/infer HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{"inp\r\n0\r\n\r\n',
    http(b'{"inputs": [{"name": "input", "datatype": "BYTES", "shape": [2], "data": ["a", [1]]}]}'),
    http(IRIS) + http(IRIS, b"connection: close\r\n"),
    # The classes that once answered 500 (or split the twins): huge integers, lone surrogates,
    # array- and object-valued parameters, extreme shapes.
    http(b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [' + b"9" * 4400 + b", 1, 2, 3]}]}"),
    http(b'{"id": "\\ud800", "parameters": {"data": [1, 2], "timeout": {"a": 1}, "x": ' + b"9" * 4400 + b"}, " + IRIS[1:]),
    http(b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [0, 4611686018427387904], "data": []}]}'),
]


class Transport:
    """Enough of asyncio.Transport for the protocol: collects what it writes."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed or not data, "write after close"
        self.out += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return False

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 1) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def fallback(scope, receive, send):
    await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"error": "no route"}'})


def statuses(out: bytes) -> list[int]:
    found = []
    for line in out.split(b"\r\n"):
        if line.startswith(b"HTTP/1.1 ") and line[9:12].isdigit():
            found.append(int(line[9:12]))
    return found


def same(a, b) -> bool:
    if hasattr(a, "dtype"):
        if not (hasattr(b, "dtype") and a.dtype == b.dtype and a.shape == b.shape):
            return False
        return a.tolist() == b.tolist() if a.dtype == object else a.tobytes() == b.tobytes()
    return type(a) is type(b) and (a == b or a != a)  # NaN equals itself here


def plain(value) -> str:
    """A parsed document as text; number arrays (the compiled codec keeps them as spans) as lists."""
    return json.dumps(value, sort_keys=True, default=lambda o: o.tolist())


def outcome(call):
    try:
        return "ok", call()
    except CodecError as e:
        return "error", type(e).__name__
    except RecursionError:
        return "error", "RecursionError"


class Harness:
    def __init__(self) -> None:
        root = Path(tempfile.mkdtemp(prefix="lockgate-fuzz-"))
        write_demo_repository(root / "repo", ["iris"])
        registry = Registry(f"sqlite:///{root}/registry.db", root / "artifacts")
        import_repository(root / "repo", registry, actor="fuzzer")
        self.service = ModelService(
            "iris", ModelConfig.model_validate(registry.model_config("iris")), registry, limits=LimitOptions(max_body_bytes=65536)
        )
        limits = LimitOptions(max_body_bytes=65536, max_header_bytes=8192, max_tensor_elements=4096)
        app = ModelApp(self.service)  # through ``whole``, as a model replica's listener calls it
        self.server = FastServer(app, fallback, "/v2/models/iris", limits, whole=app.whole)
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.runs = 0
        self.seen: Counter = Counter()

    async def _feed(self, data: bytes, split: int) -> Transport:
        transport = Transport()
        proto = _Protocol(self.server)
        proto.connection_made(transport)  # type: ignore[arg-type]
        for part in (data[:split], data[split:]):
            if part and not transport.closed:
                proto.data_received(part)
        for _ in range(200):  # let its requests finish
            await asyncio.sleep(0)
            if not proto.busy:
                break
        while proto.busy:
            await asyncio.sleep(0.001)
        proto.connection_lost(None)
        return transport

    def one(self, data: bytes) -> None:
        self.runs += 1
        split = data[0] % (len(data) + 1) if data else 0
        transport = self.loop.run_until_complete(self._feed(data, split))
        answered = statuses(bytes(transport.out))
        assert 500 not in answered, bytes(transport.out)[:500]
        self.seen.update(answered)
        if self.runs & (self.runs - 1) == 0 and self.runs >= 1024:  # now and then, what the inputs reach
            print(f"#{self.runs} answers so far: {dict(sorted(self.seen.items()))}", file=sys.stderr, flush=True)
        assert self.server.in_flight == 0
        # both codecs agree on the same bytes taken as a JSON body and as binary tensor data
        py, cy = outcome(lambda: _codec_py.parse_json(data)), outcome(lambda: _codec.parse_json(data))
        assert py[0] == cy[0] and (py[0] == "error" or plain(py[1]) == plain(cy[1])), (py, cy)
        for dtype in ("FP32", "INT8", "BOOL", "BYTES", "FP16", "UINT64"):
            shape = (len(data) // 4,) if dtype != "BYTES" else (1,)
            py = outcome(lambda d=dtype, s=shape: _codec_py.decode_binary(data, d, s))
            cy = outcome(lambda d=dtype, s=shape: _codec.decode_binary(data, d, s))
            assert py[0] == cy[0] and (py[0] == "error" or same(py[1], cy[1])), (dtype, py, cy)
        # and the replica still answers a good request
        if self.runs % 64 == 0:
            transport = self.loop.run_until_complete(self._feed(http(IRIS, b"connection: close\r\n"), 0))
            assert statuses(bytes(transport.out)) == [200], bytes(transport.out)[:300]


def main() -> None:
    harness = Harness()
    argv = list(sys.argv)
    corpora = [a for a in argv[1:] if not a.startswith("-")]
    if not corpora:
        corpora = [tempfile.mkdtemp(prefix="lockgate-fuzz-corpus-")]
        argv.append(corpora[0])
    first = Path(corpora[0])
    if first.is_dir() and not any(first.iterdir()):  # start from valid requests of every kind
        for i, seed in enumerate(SEEDS):
            (first / f"seed{i}").write_bytes(seed)
    atheris.Setup(argv, harness.one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
