"""Fault injection, count stores: damaged stores (missing, truncated, altered chunks; metadata,
manifest, integrity record), stores of lna 0.1, failed store writes (ENOSPC, EACCES, EIO) at
merge, import and profile checkpoints, stale temporaries, merge onto an existing store.
Each: one line, non-zero exit, nothing left behind.
"""
import builtins
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import legacy
from lna import cli
from lna.storage import store as store_module
from lna.storage.store import open_store

from faults.faultkit import REPO, DATA, Unchanged, one_line, only, write_jsonl


# == store faults (trust-store) ===================================================================
LANGS = ("en", "de", "th")


@pytest.fixture(scope="module")
def built(tiny_models, tmp_path_factory):
    """A real store, and a second one of other languages of the same model (to merge)."""
    root = tmp_path_factory.mktemp("built")
    for name, langs in (("s.zarr", ",".join(LANGS)), ("ja.zarr", "ja")):
        assert cli.run(cli._commands()["profile"], "lna-profile",
                       ["-q", "--model", tiny_models["llama"], "--dataset", "demo", "--langs", langs, "--limit", "2",
                        "--out", str(root / name)]) == 0
    return root


@pytest.fixture
def store(built, tmp_path):
    """A fresh copy of the real store (without its responses file) in an empty folder."""
    for name in ("s.zarr", "ja.zarr"):
        shutil.copytree(built / name, tmp_path / name)
    return tmp_path / "s.zarr"


def chunk(store, lang="de"):
    return store / "counts" / "c" / "0" / str(LANGS.index(lang)) / "0"


def write_through_zarr(store, name, change):
    """An altered but valid store: values rewritten through zarr, the record left as it was."""
    import zarr

    arr = zarr.open_group(str(store), mode="r+", use_consolidated=False)[name]
    values = arr[...]
    change(values)
    arr[...] = values


def _attrs(store, edit):
    meta = json.loads((store / "zarr.json").read_text())
    edit(meta["attributes"])
    (store / "zarr.json").write_text(json.dumps(meta))


STORE_FAULTS = {
    "counts chunk missing": (lambda s: chunk(s).unlink(), ["array counts, language de", "chunk missing"]),
    "counts chunk truncated": (lambda s: chunk(s).write_bytes(chunk(s).read_bytes()[:40]),
                               ["array counts, language de", "unreadable"]),
    "counts chunk empty": (lambda s: chunk(s).write_bytes(b""), ["array counts, language de", "unreadable"]),
    "counts chunk random bytes": (lambda s: chunk(s).write_bytes(np.random.default_rng(0).bytes(
        chunk(s).stat().st_size)), ["array counts, language de", "unreadable"]),
    "counts altered, valid chunk": (lambda s: write_through_zarr(s, "counts", lambda v: v.__setitem__(
        (0, 1, 3), v[0, 1, 3] + 1)), ["array counts, language de", "chunk altered"]),
    "chunk of en swapped in for de": (lambda s: shutil.copy(chunk(s, "en"), chunk(s)),
                                      ["array counts, language de", "chunk altered"]),
    "tokens chunk missing": (lambda s: (s / "tokens" / "c" / "0").unlink(), ["array tokens", "chunk missing"]),
    "tokens altered": (lambda s: write_through_zarr(s, "tokens", lambda v: v.__setitem__(1, v[1] + 1)),
                       ["array tokens, language de:", "chunk altered"]),
    "counts metadata missing": (lambda s: (s / "counts" / "zarr.json").unlink(), ["array counts", "missing"]),
    "sample manifest altered": (lambda s: write_through_zarr(s, "sample_id", lambda v: v.__setitem__(0, v[0] ^ 1)),
                                ["array sample_id", "sample manifest differs"]),
    "sample keys altered": (lambda s: write_through_zarr(s, "sample_keys", lambda v: v.__setitem__(0, v[0] ^ 1)),
                            ["array sample_keys", "chunk altered"]),
    "integrity record removed": (lambda s: _attrs(s, lambda a: a.pop("integrity")), ["integrity record is missing"]),
    "group zarr.json torn": (lambda s: (s / "zarr.json").write_text((s / "zarr.json").read_text()[:100]),
                             ["zarr.json is unreadable"]),
}


@pytest.mark.parametrize("fault", list(STORE_FAULTS))
def test_damaged_store(store, lna, fault):
    damage, words = STORE_FAULTS[fault]
    damage(store)
    folder = store.parent
    for args in (["identify", store, "-o", folder / "n.json"], ["report", store, "-o", folder / "rep"],
                 ["merge", folder / "ja.zarr", store, "-o", folder / "m.zarr"]):
        err = one_line(lna(*args), f"{store}: damaged count store", *words)
        assert "re-run lna-profile" in err
    only(folder, "s.zarr", "ja.zarr")


def test_damaged_store_of_lna_0_1(store, lna):
    s = open_store(store)
    old = store.parent / "old.zarr"
    legacy.write_store(old, s.counts, s.tokens, s.languages, {"model": "m", "model_fingerprint": "0123456789abcdef"})
    rc, out, err = lna("identify", old, "-o", store.parent / "n.json")
    assert rc == 0 and err.count("\n") == 1 and "note: " in err and "older lna" in err, err  # intact: a note
    (store.parent / "n.json").unlink()
    chunk(old).unlink()
    one_line(lna("identify", old, "-o", store.parent / "n.json"), "array counts, language de", "chunk missing")
    only(store.parent, "s.zarr", "ja.zarr", "old.zarr")


def store_writes_fail(monkeypatch, code=errno.ENOSPC, after=3):
    """Writes fail with `code` after `after` files, as a full disk would."""
    real = store_module._write_files

    def failing(root, files):
        kept = dict(list(files.items())[:after])
        real(root, kept)
        raise OSError(code, os.strerror(code), str(root / sorted(files)[after]))

    monkeypatch.setattr(store_module, "_write_files", failing)


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, ["No space left on device", "free space"]),
                                         (errno.EACCES, ["Permission denied", "not writable"]),
                                         (errno.EIO, ["Input/output error", "check that disk"])])
def test_store_write_fails(store, lna, monkeypatch, code, words):
    folder = store.parent
    before = open_store(store).counts.copy()
    store_writes_fail(monkeypatch, code)
    one_line(lna("merge", store, folder / "ja.zarr", "-o", folder / "m.zarr"), "m.zarr: could not write", *words)
    only(folder, "s.zarr", "ja.zarr")
    # replacing an existing store: it stays as it was
    one_line(lna("merge", store, folder / "ja.zarr", "-o", store, "--force"), *words)
    only(folder, "s.zarr", "ja.zarr")
    np.testing.assert_array_equal(open_store(store).counts, before)


def test_import_counts_on_a_full_disk(tmp_path, lna, monkeypatch):
    import torch

    src = tmp_path / "release"
    src.mkdir()
    for prefix, n in (("", 30), ("prefix.", 10)):
        torch.save({"total_tokens": n, "over_zero": torch.ones(2, 3, dtype=torch.long)}, src / f"{prefix}activation.en.t.pt")
    store_writes_fail(monkeypatch)
    one_line(lna("import-counts", src, "-o", tmp_path / "s.zarr"), "No space left on device")
    only(tmp_path, "release")


def test_profile_on_a_full_disk_keeps_its_checkpoint_and_resumes(tiny_models, built, tmp_path, lna, monkeypatch):
    args = ["-q", "--model", tiny_models["llama"], "--dataset", "demo", "--langs", ",".join(LANGS), "--limit", "2",
            "--token-budget", "32", "--checkpoint-every", "0", "--out", tmp_path / "p.zarr"]
    store_writes_fail(monkeypatch, after=0)
    one_line(lna("profile", *args), "p.zarr: could not write the count store", "No space left on device")
    only(tmp_path, "p.responses.jsonl")  # the responses, complete: a rerun uses them
    monkeypatch.undo()
    real, writes = store_module._write_files, []

    def second_write_fails(root, files):
        writes.append(root)
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(root))
        real(root, files)

    monkeypatch.setattr(store_module, "_write_files", second_write_fails)
    one_line(lna("profile", *args), "No space left on device")
    only(tmp_path, "p.zarr", "p.responses.jsonl")
    assert not open_store(tmp_path / "p.zarr").complete  # the first checkpoint, intact
    monkeypatch.undo()
    assert lna("profile", *args)[0] == 0
    whole = open_store(built / "s.zarr")
    np.testing.assert_array_equal(open_store(tmp_path / "p.zarr").counts, whole.counts)


def test_stale_temporaries_are_removed_by_the_next_write(store, lna):
    folder = store.parent
    dead = next(pid for pid in range(4_194_000, 4_000_000, -1) if not _alive(pid))
    for pid in (dead, os.getppid()):  # a crashed writer's leftover; a live writer's folder
        (folder / f".m.zarr.tmp-{pid}" / "counts").mkdir(parents=True)
    assert lna("merge", store, folder / "ja.zarr", "-o", folder / "m.zarr")[0] == 0
    only(folder, "s.zarr", "ja.zarr", "m.zarr", f".m.zarr.tmp-{os.getppid()}")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def test_merge_onto_an_existing_store_needs_force(store, lna):
    folder = store.parent
    before = open_store(folder / "ja.zarr").counts.copy()
    one_line(lna("merge", store, store, "-o", folder / "ja.zarr"), "ja.zarr: already exists", "--force")
    np.testing.assert_array_equal(open_store(folder / "ja.zarr").counts, before)
    only(folder, "s.zarr", "ja.zarr")

