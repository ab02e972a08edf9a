"""The wheel carries the compiled codec and runs without the .pyx/.c sources, in a fresh venv."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_loads_the_extension(tmp_path):
    dist = tmp_path / "dist"
    source = tmp_path / "source"  # build from a copy: a build writes egg-info and build/ into its tree
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "*.so", "models", "results")
    )
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(source)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = dist.glob("lockgate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("lockgate/fastpath/_codec.") and n.endswith(".so") for n in names), names
    assert not [n for n in names if n.endswith((".pyx", ".c"))]
    assert "lockgate/fastpath/_codec_py.py" in names
    assert "lockgate/plugins/registry/_store.py" in names
    top = {n.split("/")[0] for n in names}
    assert top <= {"lockgate", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}, top

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # The dependencies come from this test's environment; lockgate itself only from the wheel.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    probe = (
        "import lockgate.fastpath as f, lockgate.server.cli, lockgate.plugins, numpy as np;"
        "assert f.IMPLEMENTATION == 'cython', f.IMPLEMENTATION;"
        "assert f.decode_json_data([[1, 2]], 'FP32', (1, 2)).tolist() == [[1.0, 2.0]];"
        "print(f.__file__)"
    )
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(site))
    cli = subprocess.run([env_dir / "bin" / "lockgate", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert cli.returncode == 0 and "demo-repo" in cli.stdout
