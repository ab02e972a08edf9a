"""A registry plugin written here, with the built-in one blocked, serves a model repository.

The server reaches the registry only through the ``lockgate_model_registry`` hook and the
``ModelRegistry`` protocol, so a replacement that implements the protocol works wherever the
built-in does: ``lockgate serve --model-repository`` registers into it, aliases through it,
and every replica loads from it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import requests

from .conftest import free_port, lockgate, plugin_env, wait_ready

# A registry kept in one JSON file and a folder of artifacts named by sha256: every method of
# the ModelRegistry protocol, and nothing of lockgate's but the public plugin API.
MINIMAL_REGISTRY = textwrap.dedent(
    """
    import fcntl, hashlib, json, os, shutil, time
    from pathlib import Path

    from lockgate.plugins import ModelVersionRecord, Reference, hookimpl
    from lockgate.plugins.errors import ArtifactMismatch, UnknownModel
    from lockgate.plugins.shared import onnx_signature

    LOCKGATE_PLUGIN_API = "1.3"


    class MinimalRegistry:
        def __init__(self, root):
            self.root = Path(root)
            self.root.mkdir(parents=True, exist_ok=True)
            self.file = self.root / "registry.json"

        def _read(self):
            return json.loads(self.file.read_text()) if self.file.exists() else {}

        def _change(self, fn):
            with open(self.root / ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                data = self._read()
                result = fn(data)
                tmp = self.root / "registry.json.tmp"
                tmp.write_text(json.dumps(data))
                os.replace(tmp, self.file)
                return result

        def _model(self, data, name):
            if name not in data:
                raise UnknownModel(f"model '{name}' is not registered")
            return data[name]

        def _record(self, name, v):
            return ModelVersionRecord(name, v["version"], v["sha256"], v["size"], v["signature"], v["created_by"],
                                      v["created_at"], v["lineage"], v["card"], str(self.root / v["sha256"]))

        def list_models(self):
            return sorted(self._read())

        def model_config(self, name):
            return self._model(self._read(), name)["config"]

        def versions(self, name):
            model = self._read().get(name, {"versions": {}})
            return [self._record(name, v) for _, v in sorted(model["versions"].items(), key=lambda kv: int(kv[0]))]

        def get_version(self, name, version):
            found = self._model(self._read(), name)["versions"].get(str(version))
            if found is None:
                raise UnknownModel(f"model '{name}' has no version {version}")
            return self._record(name, found)

        def aliases(self, name):
            return dict(self._read().get(name, {}).get("aliases", {}))

        def resolve(self, name, reference=None):
            if reference is None or not reference.isdigit():
                aliases = self.aliases(name)
                alias = reference or "production"
                if alias not in aliases:
                    raise UnknownModel(f"model '{name}' has no alias '{alias}'")
                reference = str(aliases[alias])
            return self.get_version(name, int(reference))

        def read_verified(self, record):
            data = (self.root / record.sha256).read_bytes()
            got = hashlib.sha256(data).hexdigest()
            if got != record.sha256:
                raise ArtifactMismatch(self.root / record.sha256, record.sha256, got)
            return data

        def register(self, path, name, *, created_by, lineage=None, card="", version=None, config=None):
            import onnx

            raw = Path(path).read_bytes()
            sha = hashlib.sha256(raw).hexdigest()
            shutil.copyfile(path, self.root / sha)
            signature = onnx_signature(onnx.load_from_string(raw))

            def add(data):
                model = data.setdefault(name, {"versions": {}, "aliases": {}, "history": [], "config": {}, "references": {}})
                model["config"] = dict(config or model["config"])
                number = version or max(map(int, model["versions"]), default=0) + 1
                existing = model["versions"].get(str(number))
                if existing is None:
                    model["versions"][str(number)] = {
                        "version": number, "sha256": sha, "size": len(raw), "signature": signature, "created_by": created_by,
                        "created_at": time.time(), "lineage": dict(lineage or {}), "card": card,
                    }
                return number

            return self.get_version(name, self._change(add))

        def set_alias(self, name, alias, version, *, actor):
            self.get_version(name, version)

            def move(data):
                model = data[name]
                previous = model["aliases"].get(alias)
                model["aliases"][alias] = version
                model["history"].append({"alias": alias, "version": version, "previous": previous, "set_by": actor, "set_at": time.time()})
                return previous

            return self._change(move)

        def alias_history(self, name, alias=None):
            return [h for h in self._model(self._read(), name)["history"] if alias is None or h["alias"] == alias]

        def alias_at(self, name, alias, when):
            moves = [h for h in self.alias_history(name, alias) if h["set_at"] <= when]
            return moves[-1]["version"] if moves else None

        def describe(self, record):
            return {"name": record.name, "version": record.version, "sha256": record.sha256}

        def reference(self, name, version):
            import numpy as np

            meta = self._model(self._read(), name)["references"].get(str(version))
            if meta is None:
                return None
            with np.load(self.root / meta["file"], allow_pickle=False) as data:
                sample = {k: data[k] for k in data.files}
            return Reference(name, version, sample, meta["baseline"], meta["rows"], meta["source_sha256"], meta["set_by"], meta["set_at"])

        def set_reference(self, name, version, sample, baseline, *, actor, source_sha256):
            import numpy as np

            self.get_version(name, version)
            file = f"reference-{name}-{version}.npz"
            np.savez(self.root / file, **{k: np.asarray(v) for k, v in sample.items()})
            rows = int(np.asarray(next(iter(sample.values()))).shape[0])

            def store(data):
                data[name]["references"][str(version)] = {
                    "file": file, "baseline": json.loads(json.dumps(baseline)), "rows": rows, "source_sha256": source_sha256,
                    "set_by": actor, "set_at": time.time(),
                }

            self._change(store)


    class Plugin:
        LOCKGATE_PLUGIN_API = LOCKGATE_PLUGIN_API

        def __init__(self):
            self.registry = None

        @hookimpl
        def lockgate_configure(self, settings, manager):
            self.registry = MinimalRegistry(Path(settings.home) / "minimal-registry")

        @hookimpl
        def lockgate_model_registry(self):
            return self.registry


    plugin = Plugin()
    """
)


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The minimal registry as an installed plugin: its module and an entry point in a folder of its own."""
    site = tmp_path_factory.mktemp("site")
    (site / "minimal_registry.py").write_text(MINIMAL_REGISTRY)
    dist = site / "minimal_registry-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: minimal-registry\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[lockgate.plugins]\nminimal-registry = minimal_registry:plugin\n")
    return site


def test_the_minimal_registry_has_every_method_of_the_protocol(plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect

    from lockgate.plugins import ModelRegistry

    monkeypatch.syspath_prepend(str(plugin_site))
    module = __import__("minimal_registry")
    registry = module.MinimalRegistry(plugin_site / "probe")
    assert isinstance(registry, ModelRegistry)
    protocol = {n for n, v in vars(ModelRegistry).items() if inspect.isfunction(v) and not n.startswith("_")}
    assert protocol <= set(dir(registry)), protocol - set(dir(registry))


@pytest.mark.slow
def test_serve_model_repository_runs_on_a_replacement_registry(plugin_site: Path, tmp_path: Path) -> None:
    from lockgate.server.tools.demo import write_demo_repository

    write_demo_repository(tmp_path / "repo", ["iris"])
    home = tmp_path / "home"
    env = plugin_env(plugin_site, LOCKGATE_PLUGINS_BLOCK="registry", LOCKGATE_HOME=str(home))
    listed = subprocess.run(
        [sys.executable, "-m", "lockgate.server.cli", "plugins", "list"], env=env, capture_output=True, text=True, timeout=60
    )
    assert "minimal-registry" in listed.stdout and "registry " in listed.stdout and "blocked" in listed.stdout, listed.stdout
    port = free_port()
    proc = lockgate(
        "serve", "--model-repository", str(tmp_path / "repo"), "--port", str(port), "--grpc-port", str(free_port()), env=env
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc)
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}
        r = requests.post(f"{base}/v2/models/iris/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == "1"
        meta = requests.get(f"{base}/v2/models/iris", timeout=30).json()
        assert meta["versions"] == ["1"]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=120)
    # Everything went into the replacement: the built-in registry's database was never made.
    assert (home / "minimal-registry" / "registry.json").exists(), out
    assert "registered: iris version 1" in out, out
    assert "reference sample of iris version 1: 150 rows" in out, out  # the repository's reference.npy, stored in it
    assert (home / "minimal-registry" / "reference-iris-1.npz").exists()
    assert not (home / "artifacts").exists(), out
