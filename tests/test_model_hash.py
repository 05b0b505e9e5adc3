import hashlib
import json
import os

from ldm.checkpoints.hashing import cache_file, model_hash


def test_hash_is_a1111s_short_sha256_and_is_cached(tmp_path):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"weights" * 1000)
    expected = hashlib.sha256(model.read_bytes()).hexdigest()

    assert model_hash(model) == expected[:10]
    assert json.loads(cache_file().read_text())[str(model.resolve())]["sha256"] == expected


def test_cached_digest_is_used_until_the_file_changes(tmp_path):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"a" * 100)
    model_hash(model)
    cache = json.loads(cache_file().read_text())
    cache[str(model.resolve())]["sha256"] = "f" * 64  # proves the next call reads the cache, not the file
    cache_file().write_text(json.dumps(cache))
    assert model_hash(model) == "f" * 10

    model.write_bytes(b"b" * 101)  # new size and mtime: hashed again
    os.utime(model, ns=(1, 1))
    assert model_hash(model) == hashlib.sha256(b"b" * 101).hexdigest()[:10]


def test_corrupt_or_unwritable_cache_only_costs_time(tmp_path, monkeypatch):
    model = tmp_path / "model.ckpt"
    model.write_bytes(b"x")
    cache_file().parent.mkdir(parents=True, exist_ok=True)
    cache_file().write_text("{not json")
    assert model_hash(model) == hashlib.sha256(b"x").hexdigest()[:10]

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("LDM_CACHE", str(blocker / "sub"))  # a cache directory that cannot be created
    assert model_hash(model) == hashlib.sha256(b"x").hexdigest()[:10]


def test_folders_and_no_file_have_no_hash(tmp_path):
    assert model_hash(tmp_path) is None and model_hash(None) is None
