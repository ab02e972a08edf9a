"""The object store's client, chosen by measurement: boto3 against obstore, on the same
S3-compatible server (moto's, started here on loopback), for what lockgate does with it:
- import: what a replica pays once, on its first fetch (a fresh interpreter, median of 5);
- a small object's HEAD and GET (the registration's existence check; a tiny model's fetch),
  median of 50;
- a 64 MiB object's GET into memory (a large model's fetch on a node with an empty cache),
  median of 5, in MB/s.

    python bench/object_store.py

moto is a Python server: the large fetch measures the server as much as the client, so both
clients are bounded by it; the figures rank the clients' own costs, not S3's throughput.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from run import free_port

PY = sys.executable
ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"}


def import_ms(statement: str) -> float:
    times = []
    for _ in range(5):
        out = subprocess.run(
            [PY, "-c", f"import time; t=time.perf_counter(); {statement}; print((time.perf_counter()-t)*1e3)"],
            capture_output=True,
            text=True,
            check=True,
        )
        times.append(float(out.stdout.strip()))
    return statistics.median(times)


def median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> int:
    import boto3
    import obstore
    from obstore.store import S3Store

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [PY, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        os.environ.update(ENV)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        for _ in range(100):
            try:
                s3.list_buckets()
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.1)
        s3.create_bucket(Bucket="bench")
        small, large = os.urandom(20_000), os.urandom(64 << 20)
        s3.put_object(Bucket="bench", Key="small.onnx", Body=small)
        s3.put_object(Bucket="bench", Key="large.onnx", Body=large)
        store = S3Store(
            "bench",
            endpoint=endpoint,
            region="us-east-1",
            access_key_id=ENV["AWS_ACCESS_KEY_ID"],
            secret_access_key=ENV["AWS_SECRET_ACCESS_KEY"],
            client_options={"allow_http": True},
        )
        rows = {
            "import + client (ms)": (
                import_ms("import boto3; boto3.client('s3', region_name='us-east-1')"),
                import_ms("from obstore.store import S3Store; S3Store('b', region='us-east-1', skip_signature=True)"),
            ),
            "HEAD small (ms)": (
                median_ms(lambda: s3.head_object(Bucket="bench", Key="small.onnx"), 50),
                median_ms(lambda: obstore.head(store, "small.onnx"), 50),
            ),
            "GET 20 kB (ms)": (
                median_ms(lambda: s3.get_object(Bucket="bench", Key="small.onnx")["Body"].read(), 50),
                median_ms(lambda: bytes(obstore.get(store, "small.onnx").bytes()), 50),
            ),
        }
        big_boto = median_ms(lambda: s3.get_object(Bucket="bench", Key="large.onnx")["Body"].read(), 5)
        big_obs = median_ms(lambda: bytes(obstore.get(store, "large.onnx").bytes()), 5)
        rows["GET 64 MiB (MB/s)"] = ((64 << 20) / 1e6 / (big_boto / 1e3), (64 << 20) / 1e6 / (big_obs / 1e3))
        assert s3.get_object(Bucket="bench", Key="large.onnx")["Body"].read() == large
        assert bytes(obstore.get(store, "large.onnx").bytes()) == large
    finally:
        server.terminate()
        server.wait(10)
    print(f"{'':24} {'boto3':>10} {'obstore':>10}")
    for name, (b, o) in rows.items():
        print(f"{name:24} {b:10.2f} {o:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
