"""Model identity from the files on disk: tells a one-weight fine-tune apart, the same for
every dtype and backend, free for the Hugging Face cache, cached for local folders; merge
and lna-ablate refuse to mix models; artefacts of lna 0.1 keep working with a note."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from conftest import one_line
import legacy
from lna.core import errors
from lna.models import fingerprint, loading
from lna.cli import run
from lna.cli.ablate import ablate
from lna.cli.merge import merge
from lna.cli.profile import profile
from lna.identification.neurons import NeuronSets, save
from lna.storage.store import open_store

Q_PROJ = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def changed(tiny_models, tmp_path_factory):
    """A copy of the tiny llama with one element of one attention weight changed: what no
    cheap sample of embedding or MLP rows can see."""
    import torch
    from safetensors.torch import load_file, save_file

    path = tmp_path_factory.mktemp("changed") / "llama"
    shutil.copytree(tiny_models["llama"], path)
    tensors = load_file(path / "model.safetensors")
    tensors[Q_PROJ][5, 7] += torch.tensor(1e-3, dtype=tensors[Q_PROJ].dtype)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    return str(path)


def info(path):
    return loading.resolve(str(path))


def test_one_changed_attention_weight_changes_the_identity(tiny_models, changed):
    a, b = fingerprint.of(info(tiny_models["llama"])), fingerprint.of(info(changed))
    assert a.startswith(fingerprint.PREFIX) and b.startswith(fingerprint.PREFIX) and a != b
    # lna 0.1's fingerprint could not tell them apart (the point of the new one)
    assert fingerprint.legacy(info(tiny_models["llama"])) == fingerprint.legacy(info(changed))


def test_legacy_fingerprint_is_the_one_lna_0_1_recorded(tiny_models):
    for path in tiny_models.values():
        assert fingerprint.legacy(info(path)) == legacy.fingerprint(path)


def test_identity_is_the_files_sha256(tiny_models):
    """Independent reference: sha256 of config (normalised) and of each weight file."""
    path = info(tiny_models["mistral"]).path
    cfg = json.loads((path / "config.json").read_text())
    for key in ("torch_dtype", "dtype", "transformers_version", "_name_or_path"):
        cfg.pop(key, None)
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
    h.update(f"model.safetensors\0{hashlib.sha256((path / 'model.safetensors').read_bytes()).hexdigest()}\n".encode())
    assert fingerprint.of(info(path)) == fingerprint.PREFIX + h.hexdigest()[:32]


def test_same_identity_for_every_dtype(tiny_models):
    from lna.runners.hf import HFRunner

    fp32 = HFRunner(tiny_models["llama"], dtype="float32")
    bf16 = HFRunner(tiny_models["llama"], dtype="bfloat16")
    assert fp32.fingerprint == bf16.fingerprint == fingerprint.of(info(tiny_models["llama"]))
    assert fp32.legacy_fingerprint == bf16.legacy_fingerprint == legacy.fingerprint(tiny_models["llama"])
    wrapped = HFRunner.wrap(fp32.model, fp32.tokenizer, fp32.info)
    assert wrapped.fingerprint == "unsaved" and wrapped.legacy_fingerprint is None


def test_hub_cache_blob_names_are_used_without_reading(tiny_models, tmp_path, monkeypatch):
    src = info(tiny_models["llama"]).path
    repo = tmp_path / "models--org--tiny"
    snap = repo / "snapshots" / ("0" * 40)
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in src.iterdir():
        sha = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, repo / "blobs" / sha)
        (snap / f.name).symlink_to(os.path.relpath(repo / "blobs" / sha, snap))
    plain = fingerprint.of(info(src))

    def no_reading(file, stop=None):
        raise AssertionError(f"read {file}: the blob's name is its sha256")

    monkeypatch.setattr(fingerprint, "_stream_sha256", no_reading)
    monkeypatch.setattr(fingerprint, "CACHE_MIN_BYTES", 0)
    assert fingerprint.of(info(snap)) == plain  # a hub snapshot and a plain copy agree


def test_local_weights_are_hashed_once(tiny_models, tmp_path, monkeypatch):
    path = tmp_path / "m"
    shutil.copytree(tiny_models["llama"], path)
    monkeypatch.setenv("LNA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fingerprint, "CACHE_MIN_BYTES", 0)
    real, calls = fingerprint._stream_sha256, []
    monkeypatch.setattr(fingerprint, "_stream_sha256", lambda f, stop=None: calls.append(f) or real(f, stop))
    first = fingerprint.of(info(path))
    assert [f.name for f in calls] == ["model.safetensors"]
    assert fingerprint.of(info(path)) == first and len(calls) == 1  # from the cache
    entry = json.loads(next((tmp_path / "cache" / "identity").iterdir()).read_text())
    assert entry["sha256"] == hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    st = (path / "model.safetensors").stat()
    os.utime(path / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 1000))  # rewritten in place
    assert fingerprint.of(info(path)) == first and len(calls) == 2


def test_a_file_rewritten_with_its_mtime_set_back_is_hashed_again(tiny_models, tmp_path, monkeypatch):
    """The cache key holds ctime too: a weight changed in place, its size and mtime restored
    (as cp -p or rsync -t leave them), is not taken for the old file."""
    import time

    path = tmp_path / "m"
    shutil.copytree(tiny_models["llama"], path)
    monkeypatch.setenv("LNA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fingerprint, "CACHE_MIN_BYTES", 0)
    first = fingerprint.of(info(path))
    weights = path / "model.safetensors"
    st = weights.stat()
    time.sleep(0.05)  # file times tick in jiffies
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # the last byte of the last tensor
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert weights.stat().st_size == st.st_size and weights.stat().st_mtime_ns == st.st_mtime_ns
    second = fingerprint.of(info(path))
    assert second != first
    assert second == fingerprint.PREFIX + _reference(path)


def _reference(path) -> str:
    """The identity computed independently (sha256 of the config and of the weight file)."""
    cfg = json.loads((path / "config.json").read_text())
    for key in ("torch_dtype", "dtype", "transformers_version", "_name_or_path"):
        cfg.pop(key, None)
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
    h.update(f"model.safetensors\0{hashlib.sha256((path / 'model.safetensors').read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()[:32]


@pytest.mark.parametrize("damage", ["another digest", "digest and check redone badly", "truncated", "not json",
                                    "another file's stat", "empty"])
def test_a_damaged_cache_entry_is_ignored_never_believed(tiny_models, tmp_path, monkeypatch, capsys, damage):
    """Fault injection: whatever happened to a cache entry, the identity stays the files'
    sha256 (hashed again, the entry rewritten), with one note line."""
    path = tmp_path / "m"
    shutil.copytree(tiny_models["llama"], path)
    monkeypatch.setenv("LNA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fingerprint, "CACHE_MIN_BYTES", 0)
    truth = fingerprint.PREFIX + _reference(path)
    assert fingerprint.of(info(path)) == truth
    entry = next((tmp_path / "cache" / "identity").iterdir())
    good = entry.read_text()
    rec = json.loads(good)
    if damage == "another digest":
        rec["sha256"] = "0" * 64
        entry.write_text(json.dumps(rec))
    elif damage == "digest and check redone badly":
        rec["sha256"], rec["check"] = "f" * 64, "0" * 16
        entry.write_text(json.dumps(rec))
    elif damage == "truncated":
        entry.write_text(good[: len(good) // 2])
    elif damage == "not json":
        entry.write_bytes(b"\x00\xff" * 10)
    elif damage == "another file's stat":
        rec["inode"] += 1
        rec["check"] = fingerprint._check({k: v for k, v in rec.items() if k != "check"})
        entry.write_text(json.dumps(rec))
    else:
        entry.write_text("")
    capsys.readouterr()
    real, calls = fingerprint._stream_sha256, []
    monkeypatch.setattr(fingerprint, "_stream_sha256", lambda f, stop=None: calls.append(f) or real(f, stop))
    monkeypatch.setattr(errors, "_noted", set())  # notes print once per process
    assert fingerprint.of(info(path)) == truth
    assert len(calls) == 1  # hashed again
    err = capsys.readouterr().err
    assert f"{entry}: a damaged identity cache entry; ignored" in err
    assert all(line.startswith("note: ") for line in err.splitlines())
    assert json.loads(entry.read_text())["sha256"] == json.loads(good)["sha256"]  # rewritten whole
    assert fingerprint.of(info(path)) == truth and len(calls) == 1  # and believed again


def test_hashing_while_loading_gives_the_identity_and_stops_with_a_failed_load(tiny_models, tmp_path,
                                                                               monkeypatch):
    path = tmp_path / "m"
    shutil.copytree(tiny_models["llama"], path)
    monkeypatch.setenv("LNA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fingerprint, "CACHE_MIN_BYTES", 0)
    with fingerprint.hashing(info(path)) as identity:
        pass
    assert identity.result() == (fingerprint.PREFIX + _reference(path), legacy.fingerprint(path))
    shutil.rmtree(tmp_path / "cache")
    import threading

    began, stopped = threading.Event(), []

    def slow(file, stop=None):  # a hash long enough to be stopped midway
        began.set()
        stopped.append(stop is not None and stop.wait(10))
        return None

    monkeypatch.setattr(fingerprint, "_stream_sha256", slow)
    with pytest.raises(RuntimeError, match="load failed"):
        with fingerprint.hashing(info(path)) as identity:
            assert began.wait(10)  # the load fails while the weights are being hashed
            raise RuntimeError("load failed")
    identity._thread.join(10)
    assert not identity._thread.is_alive() and stopped == [True]  # stopped, not left reading
    assert identity.result()[0] is None
    assert not (tmp_path / "cache" / "identity").exists() or not any((tmp_path / "cache" / "identity").iterdir())


def test_weight_files_follow_the_index(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors"}}))
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "consolidated.safetensors"):
        (tmp_path / name).write_bytes(b"x")
    assert [f.name for f in fingerprint.weight_files(tmp_path)] == ["model-00001-of-00002.safetensors",
                                                                 "model-00002-of-00002.safetensors"]
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(Exception, match="model-00002-of-00002.safetensors listed in .* is missing"):
        fingerprint.weight_files(tmp_path)


# -- merge and ablate refuse to mix them ----------------------------------------------------------
def call(command, name, capsys, *args):
    rc = run(command, name, [str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def stores(tiny_models, changed, tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    out = {}
    for name, model in (("base", tiny_models["llama"]), ("changed", changed)):
        out[name] = root / f"{name}.zarr"
        assert run(profile, "lna-profile", ["-q", "--model", model, "--dataset", "demo", "--langs", "en,zh",
                                            "--limit", "2", "--out", str(out[name])]) == 0
    return out


def test_merge_refuses_a_fine_tune(stores, tmp_path, capsys):
    assert open_store(stores["base"]).meta["model_fingerprint"] != open_store(stores["changed"]).meta["model_fingerprint"]
    err = one_line(call(merge, "lna-merge", capsys, stores["base"], stores["changed"], "-o", tmp_path / "m.zarr"), "error:")
    assert "different models" in err and "weights differ" not in err  # two paths: named apart already
    assert not (tmp_path / "m.zarr").exists()


def sets_of(source: dict) -> NeuronSets:
    per_layer = [np.arange(i, i + 5, dtype=np.int64) for i in range(3)]
    general = [np.zeros(0, np.int64)] * 3
    return NeuronSets("ternary", 0.01, 0.1, 0.5, ["en", "zh"], 3, 96, {"en": per_layer, "zh": per_layer},
                      general, source)


def ablate_cli(capsys, model, neurons, out, *extra):
    return call(ablate, "lna-ablate", capsys, "-q", "--model", model, "--neurons", neurons, "--dataset", "demo",
                "--langs", "en,zh", "--limit", "1", "-o", out, *extra)


def test_ablate_refuses_sets_of_a_fine_tune(tiny_models, changed, stores, tmp_path, capsys):
    # sets identified on the fine-tune, ablated on the base model of the same name
    src = open_store(stores["changed"]).meta
    source = {"model": tiny_models["llama"], **{k: src.get(k) for k in fingerprint.KEYS}}
    neurons = save(sets_of(source), tmp_path / "n.json")
    err = one_line(ablate_cli(capsys, tiny_models["llama"], neurons, tmp_path / "out"), "error:")
    assert "different models" in err and "whose weights differ" in err and "--allow-other-model" in err
    assert not (tmp_path / "out").exists()
    rc, _, err = ablate_cli(capsys, tiny_models["llama"], neurons, tmp_path / "out", "--allow-other-model")
    assert rc == 0, err


def test_ablate_with_sets_of_lna_0_1(tiny_models, tmp_path, capsys):
    """Sets recorded with lna 0.1's fingerprint: checked on it, with a note."""
    model = tiny_models["llama"]
    neurons = save(sets_of({"model": model, "model_fingerprint": legacy.fingerprint(model)}), tmp_path / "old.json")
    rc, _, err = ablate_cli(capsys, model, neurons, tmp_path / "ok")
    assert rc == 0, err
    assert "records the older, weaker model identity" in err
    other = save(sets_of({"model": model, "model_fingerprint": legacy.fingerprint(tiny_models["mistral"])}),
                 tmp_path / "other.json")
    err = one_line(ablate_cli(capsys, model, other, tmp_path / "no"), "error:")
    assert "different models" in err
