"""Artifacts in S3-compatible object storage, against a real server process (moto's): register
uploads by sha256, an empty cache fetches and verifies, a tampered or missing object is refused
with the model named, and a changed cached copy is fetched again."""

from __future__ import annotations

import hashlib
import logging

import onnx
import pytest

from lockgate.plugins.errors import ArtifactMismatch
from lockgate.plugins.registry import Registry
from lockgate.plugins.shared import ObjectArtifactStore, artifact_store
from lockgate.server.errors import ModelLoadError
from lockgate.server.serving.config import ModelConfig
from lockgate.server.serving.service import ModelService
from lockgate.server.tools.demo import build_iris

pytest.importorskip("boto3", reason="boto3 is the object store's client (lockgate[s3])")


@pytest.fixture
def iris_file(tmp_path):
    path = tmp_path / "iris.onnx"
    onnx.save(build_iris(), str(path))
    return path


@pytest.fixture
def store_url(object_store, monkeypatch):
    for key, value in object_store.env.items():
        monkeypatch.setenv(key, value)
    return f"s3://{object_store.bucket()}/models"


def registry(tmp_path, url, cache: str, **kw) -> Registry:
    return Registry(f"sqlite:///{tmp_path}/registry.db", url, artifact_cache=tmp_path / cache, **kw)


def test_register_uploads_by_sha256_and_an_empty_cache_fetches_and_verifies(tmp_path, store_url, object_store, iris_file):
    events = []
    writer = registry(tmp_path, store_url, "cache-a", audit=lambda *a, **k: events.append((a, k)))
    record = writer.register(iris_file, "iris", created_by="alice")
    data = iris_file.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    bucket = store_url.split("/")[2]
    stored = object_store.client().get_object(Bucket=bucket, Key=f"models/{sha[:2]}/{sha}.onnx")
    assert stored["Body"].read() == data and stored["Metadata"]["sha256"] == sha
    assert str(writer.store) == store_url
    # another node: the same registry database, a cache of its own, empty
    reader = registry(tmp_path, store_url, "cache-b")
    assert not (tmp_path / "cache-b").exists()
    assert reader.read_verified(record) == data
    cached = tmp_path / "cache-b" / sha[:2] / f"{sha}.onnx"
    assert cached.read_bytes() == data
    # the cached copy is read from disk, not fetched again: the object's removal does not matter now
    object_store.client().delete_object(Bucket=bucket, Key=f"models/{sha[:2]}/{sha}.onnx")
    assert reader.read_verified(record) == data
    writer.close()
    reader.close()


def test_a_tampered_object_is_refused_and_recorded_and_a_missing_one_named(tmp_path, store_url, object_store, iris_file):
    events = []
    r = registry(tmp_path, store_url, "cache-a", audit=lambda *a, **k: events.append((a, k)))
    record = r.register(iris_file, "iris", created_by="alice")
    bucket, key = store_url.split("/")[2], f"models/{record.sha256[:2]}/{record.sha256}.onnx"
    object_store.client().put_object(Bucket=bucket, Key=key, Body=iris_file.read_bytes() + b"\x00")
    fresh = registry(tmp_path, store_url, "cache-b", audit=lambda *a, **k: events.append((a, k)))
    with pytest.raises(ArtifactMismatch) as info:
        fresh.read_verified(record)
    assert f"s3://{bucket}/{key}" in str(info.value) and "refusing to load it" in str(info.value)
    assert not (tmp_path / "cache-b" / record.sha256[:2] / f"{record.sha256}.onnx").exists()  # nothing cached
    assert [e for e in fresh.events("iris", "load_refused")]
    assert any(a[0] == "load_refused" for a, _ in events)
    # what a replica says: the model and version named
    service_registry = registry(tmp_path, store_url, "cache-c")
    with pytest.raises(ModelLoadError) as load:
        ModelService("iris", ModelConfig(), service_registry)
    assert "iris" in str(load.value) and "was changed" in str(load.value)
    object_store.client().delete_object(Bucket=bucket, Key=key)
    with pytest.raises(FileNotFoundError, match=f"artifact s3://{bucket}/{key} is missing from the object store"):
        registry(tmp_path, store_url, "cache-d").read_verified(record)
    for each in (r, fresh, service_registry):
        each.close()


def test_a_changed_cached_copy_is_fetched_again(tmp_path, store_url, iris_file, caplog):
    r = registry(tmp_path, store_url, "cache")
    record = r.register(iris_file, "iris", created_by="alice")
    cached = tmp_path / "cache" / record.sha256[:2] / f"{record.sha256}.onnx"
    cached.chmod(0o644)
    cached.write_bytes(b"changed on this node")
    with caplog.at_level(logging.WARNING, logger="lockgate.plugins"):
        assert r.read_verified(record) == iris_file.read_bytes()
    assert "fetching it again" in caplog.text and cached.read_bytes() == iris_file.read_bytes()
    r.close()


def test_a_missing_bucket_is_named_and_a_bad_url_refused(tmp_path, object_store, monkeypatch):
    for key, value in object_store.env.items():
        monkeypatch.setenv(key, value)
    store = artifact_store("s3://no-such-bucket-here/p", tmp_path / "cache")
    assert isinstance(store, ObjectArtifactStore)
    with pytest.raises(FileNotFoundError, match="bucket 'no-such-bucket-here' of s3://no-such-bucket-here/p does not exist"):
        store.read_verified("ab" * 32)
    with pytest.raises(ValueError, match="s3://bucket"):
        ObjectArtifactStore("s3:///nobucket", tmp_path)
    assert not isinstance(artifact_store(tmp_path / "folder"), ObjectArtifactStore)


def test_credentials_from_the_config_reach_the_client_and_are_never_logged(tmp_path, object_store, caplog, iris_file):
    """No AWS_* variables: endpoint and keys come from registry.object_store in the config."""
    from lockgate.plugins import Settings
    from lockgate.plugins.registry import plugin

    bucket = object_store.bucket()
    secret = object_store.env["AWS_SECRET_ACCESS_KEY"]
    options = {
        "registry": {
            "object_store": {
                "endpoint_url": object_store.endpoint,
                "region": "us-east-1",
                "access_key_id": object_store.env["AWS_ACCESS_KEY_ID"],
                "secret_access_key": secret,
            }
        }
    }
    settings = Settings(f"sqlite:///{tmp_path}/r.db", f"s3://{bucket}", options=options, home=str(tmp_path / "home"))
    with caplog.at_level(logging.DEBUG):
        plugin.lockgate_configure(settings=settings, manager=None)
        r = plugin.lockgate_model_registry()
        record = r.register(iris_file, "iris", created_by="alice")
        assert r.read_verified(record) == iris_file.read_bytes()
    assert (tmp_path / "home" / "artifact-cache" / record.sha256[:2]).is_dir()
    assert secret not in caplog.text
    plugin.lockgate_configure(settings=settings, manager=None)  # closes the registry
