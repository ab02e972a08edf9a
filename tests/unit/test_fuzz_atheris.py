"""The coverage-guided fuzzer (tests/fuzz/decoders.py, atheris) over the request decoders and
both codecs, for a fixed budget: LOCKGATE_FUZZ_SECONDS (60 by default). A finding fails the
test with the input libFuzzer wrote; memory is capped at 2 GB, each input at 10 s."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[1] / "fuzz" / "decoders.py"


def test_coverage_guided_fuzzing_finds_no_crash_500_hang_or_codec_disagreement(tmp_path):
    budget = int(os.environ.get("LOCKGATE_FUZZ_SECONDS", "60"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            f"-max_total_time={budget}",
            "-rss_limit_mb=2048",
            "-timeout=10",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=budget + 300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(HARNESS.parents[2])},
    )
    log = done.stderr
    findings = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-", "leak-")))
    assert done.returncode == 0 and not findings, f"findings {findings}:\n{log[-4000:]}"
    runs = int(re.search(r"Done (\d+) runs", log).group(1))
    reached = re.findall(r"answers so far: (\{.*\})", log)
    coverage = re.findall(r"cov: (\d+)", log)
    rss = max(int(x) for x in re.findall(r"rss: (\d+)Mb", log))
    assert runs > 1000 and reached and "200:" in reached[-1], log[-2000:]
    print(
        f"\natheris: {runs} inputs in {budget} s, coverage {coverage[-1] if coverage else '?'} edges, "
        f"corpus {len(list(corpus.iterdir()))} inputs, peak RSS {rss} MB; answers {reached[-1]}"
    )
