"""Fault injection: every fault a user can meet gives one line on stderr (what, where, how
to fix), a non-zero exit, and leaves no output or temporary file behind.

Each test builds real inputs (tiny models, stores and responses written by lna-profile,
neuron sets), runs the command through its console entry point and checks the exit status,
the message and the folders afterwards. The faults, section by section:

store (real stores written by lna-profile on a tiny model)
- a chunk of one language's counts missing, truncated, empty, random bytes, altered into
  another valid chunk, or swapped in from another language -> lna-identify, lna-report and
  lna merge name the store, the array and the language
- the tokens chunk missing or altered; an array's metadata missing; the sample manifest
  or its keys altered; the integrity record removed; the group's zarr.json torn
- a store of lna 0.1 (no checksums) with a missing chunk; an intact one opens with a note
- ENOSPC, EACCES or EIO while writing a store (lna merge, lna import-counts, lna-profile at
  its first write and at a checkpoint): the previous store is unchanged, nothing is left
  behind (no hidden .NAME.zarr.tmp-PID folder, even a moment later), and a profile resumes
- temporaries of earlier crashed writes beside a store are removed by the next write
- lna merge -o onto an existing store without --force
outputs (a full disk or a read-only place, simulated by patching the writers: the files
opened for writing under the test's folder share `room` bytes, then fail as a full disk does)
- neuron sets, the .pt export, report and compare folders, the ablation folder and its
  state, the responses file (first write, and an append in the middle of sampling), the
  built-in model's cache, lna-steer's run record and its outputs in the middle of a run
model folders
- config.json without tokenizer, without weights, with truncated weights (profile, ablate)
devices
- --device tpu, cuda:x, cpu:0; cuda and cuda:N without such a GPU
options
- out-of-range values of every numeric option (--lambda -1, --top-rate 0, --top-p 0, ...)
data and responses
- a language whose responses are all empty (given, or sampled)
- a torn last line in a responses file: reported, repaired, counted as if never torn
interrupts
- SIGTERM to a running lna-profile / lna-ablate (a real subprocess): a checkpoint, exit
  143, one line; the rerun equals an uninterrupted run
- progress and checkpoints move after every forward batch
shards and lna launch
- a bad --shard spec (no slash, not numbers, N of 0) and K out of 1..N; a shard run into
  the store of another shard, of an unsharded run, or of another run's shard
- lna merge of shards with one missing (named), one given twice (even empty), one
  unfinished, or shards of two runs (never completing each other); --partial records it
- lna launch without Ray installed, with an unreachable or malformed --ray address, with
  --shards 0; (tests/test_ray.py, on a local cluster: more GPUs per shard than any node
  has, a shard failing on a user error, an existing --out)
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
from conftest import SMALL_DATA as DATA, interrupt_counting, one_line, write_jsonl
from lna import cli
from lna.storage import store as store_module
from lna.storage.store import open_store

REPO = Path(__file__).resolve().parents[1]


# == running commands ===============================================================================
def _entry(name):
    """The console entry point of `lna-NAME`, or `lna NAME` for subcommands without a script."""
    return getattr(cli, f"{name.replace('-', '_')}_main", None) or (lambda argv: cli.main([name, *argv]))


@pytest.fixture
def lna(capsys):
    """lna(command, *args) -> (exit status, stdout, stderr), through the console entry point."""
    def call(name, *args):
        with pytest.raises(SystemExit) as done:
            _entry(name)([str(a) for a in args])
        out, err = capsys.readouterr()
        return done.value.code, out, err
    return call


def only(folder, *names):
    """Nothing but `names` in `folder` (no output, no temporary), now and a moment later
    (a writer thread finishing late would recreate its folder)."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)
    time.sleep(0.1)
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


class Unchanged:
    """`with Unchanged(folder):` - nothing appears, disappears or changes under it."""

    def __init__(self, root: Path):
        self.root = root

    def _state(self):
        return {str(p.relative_to(self.root)): p.stat().st_mtime_ns if p.is_file() else None
                for p in self.root.rglob("*")}

    def __enter__(self):
        self.before = self._state()
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            after = self._state()
            assert after == self.before, set(after.items()) ^ set(self.before.items())


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


# == outputs on a full disk (or a place that refuses writes) =========================================
class _Filling:
    """A file object whose writes fail once the disk's room is used up (partly written first)."""

    def __init__(self, f, disk, name):
        self._f, self._disk, self.name = f, disk, name

    def write(self, data):
        if len(data) > self._disk.room:
            if self._disk.room:
                self._f.write(data[: self._disk.room])
                self._f.flush()
            self._disk.room = 0
            self._disk.failures += 1
            raise OSError(self._disk.errno, os.strerror(self._disk.errno), str(self.name))
        self._disk.room -= len(data)
        return self._f.write(data)

    def __getattr__(self, attr):
        return getattr(self._f, attr)

    def __iter__(self):
        return iter(self._f)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


class Disk:
    """Files opened for writing under `root` share `room` bytes; then writes fail with `errno`."""

    def __init__(self, root, room=0, code=errno.ENOSPC):
        self.root, self.room, self.errno, self.failures = Path(root).resolve(), room, code, 0

    def patch(self, monkeypatch):
        real = io.open

        def opener(file, mode="r", *args, **kwargs):
            f = real(file, mode, *args, **kwargs)
            if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+"):
                if Path(os.path.abspath(file)).is_relative_to(self.root):
                    return _Filling(f, self, file)
            return f

        monkeypatch.setattr(builtins, "open", opener)
        monkeypatch.setattr(io, "open", opener)
        return self


@pytest.fixture
def disk_fills(monkeypatch, tmp_path):
    """disk_fills(room=0, code=ENOSPC): from now on writes under tmp_path/out fail."""
    (tmp_path / "out").mkdir()

    def fill(room=0, code=errno.ENOSPC):
        return Disk(tmp_path / "out", room, code).patch(monkeypatch)

    return fill


# -- inputs made by lna: a store, its responses, neuron sets --

@pytest.fixture(scope="module")
def model(tiny_models):
    return Path(tiny_models["llama"])


@pytest.fixture(scope="module")
def made(tmp_path_factory, model):
    """A dataset, the count store and responses lna-profile made of it, and neuron sets."""
    root = tmp_path_factory.mktemp("made")
    data = write_jsonl(root / "d.jsonl", DATA)
    store = root / "s.zarr"
    assert cli.run(cli._commands()["profile"], "lna-profile",
                   ["-q", "--model", str(model), "--dataset", str(data), "--out", str(store)]) == 0
    assert cli.run(cli._commands()["identify"], "lna-identify",
                   [str(store), "-o", str(root / "n.json"), "--top-rate", "0.05"]) == 0
    return {"root": root, "data": data, "store": store, "responses": root / "s.responses.jsonl",
            "neurons": root / "n.json"}


OUTPUT_FAULTS = {  # command line (OUT: the folder that fills up), what the message names, the
    # room for a disk that fills up mid-write (after some files, inside another)
    "identify: neuron sets": (["identify", "{store}", "-o", "OUT/n.json"], "OUT/n.json", 300),
    "identify: .pt export": (["identify", "{store}", "-o", "OUT/n.json", "--export-pt", "OUT/m.pt"],
                             "OUT/", 1000),  # 1000: the JSON fits, the .pt does not; neither stays
    "report: folder": (["report", "{neurons}", "-o", "OUT/report"], "OUT/report", 1000),
    "report from a store: folder": (["report", "{store}", "-o", "OUT/report", "--top-rate", "0.05"],
                                    "OUT/report", 1000),
    "compare: folder": (["compare", "{neurons}", "{neurons}", "-o", "OUT/cmp"], "OUT/cmp", 1000),
    "ablate: state and outputs": (["ablate", "-q", "--model", "{model}", "--neurons", "{neurons}", "--responses",
                                   "{responses}", "-o", "OUT/ab"], "OUT/ab", 1000),
    "profile: responses file": (["profile", "-q", "--model", "{model}", "--dataset", "{data}", "--out",
                                 "OUT/p.zarr"], "OUT/p.responses.jsonl", 1000),
    "steer: run record": (["steer", "-q", "--model", "{model}", "--neurons", "{neurons}", "--store", "{store}",
                           "--from", "en", "--to", "zh", "--dataset", "{data}", "--strengths", "1",
                           "--max-new-tokens", "3", "-o", "OUT/st"], "OUT/st", 100),
}


@pytest.mark.parametrize("when", ["empty", "mid-write"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["ENOSPC", "EROFS"])
@pytest.mark.parametrize("fault", list(OUTPUT_FAULTS))
def test_output_on_a_full_disk(fault, code, when, made, model, tmp_path, disk_fills, lna):
    args, named, room = OUTPUT_FAULTS[fault]
    where = {"store": made["store"], "neurons": made["neurons"], "model": model, "responses": made["responses"],
             "data": made["data"]}
    out = tmp_path / "out"
    argv = [a.format(**where).replace("OUT", str(out)) for a in args]
    with Unchanged(made["root"]):
        disk = disk_fills(0 if when == "empty" else room, code)
        line = one_line(lna(*argv), named.replace("OUT", str(out)), os.strerror(code))
    assert disk.failures >= 1
    assert ("free space on the disk" if code == errno.ENOSPC else "somewhere you may write") in line
    only(out)  # no output, no temporary file


def test_responses_append_fails_mid_sampling(model, tmp_path, disk_fills, lna, monkeypatch):
    """Sampling appends a batch of questions at a time; the append that hits the full disk is
    cut back off, so the file holds whole lines only and the rerun continues from them (the
    checkpoint of the counts taken while sampling fails too, leaving nothing: the rerun
    force-decodes the kept batches)."""
    from lna.inputs import responses

    monkeypatch.setattr(responses, "BATCH_QUESTIONS", 1)
    data = write_jsonl(tmp_path / "q.jsonl", [{"lang": "en", "query": f"What is {i}+1?"} for i in range(3)])
    out = tmp_path / "out" / "g.zarr"
    disk = disk_fills(room=2000)
    args = ["profile", "-q", "--model", model, "--dataset", data, "--out", out, "-n", "2", "--max-new-tokens", "5"]
    one_line(lna(*args), "g.responses.jsonl", "No space left on device")
    assert disk.failures in (1, 2)  # and the checkpoint of the counts taken while sampling, if any
    kept = (tmp_path / "out" / "g.responses.jsonl").read_bytes()
    assert kept.endswith(b"\n") and 0 < kept.count(b"\n") < 3  # whole lines: the first batch(es)
    assert [json.loads(x)["key"] for x in kept.decode().splitlines()] == [f"q/en/{i}" for i in range(kept.count(b"\n"))]
    only(tmp_path / "out", "g.responses.jsonl")
    disk.room = 10**9
    rc, _, err = lna(*args)
    assert rc == 0 and "note:" not in err, err  # nothing was torn, nothing to repair
    assert len((tmp_path / "out" / "g.responses.jsonl").read_text().splitlines()) == 3


def test_steer_outputs_fail_mid_run_and_the_rerun_completes(made, model, tmp_path, disk_fills, lna, monkeypatch):
    """lna-steer appends each batch of answers to outputs.jsonl: the append that hits the full
    disk is cut back off (whole lines stay), and the rerun continues from them."""
    from lna.interventions import steering

    monkeypatch.setattr(steering, "BATCH", 2)
    args = ["steer", "-q", "--model", model, "--neurons", made["neurons"], "--store", made["store"], "--from", "en",
            "--to", "zh", "--dataset", made["data"], "--strengths", "1,2", "--max-new-tokens", "6",
            "-o", tmp_path / "out" / "st"]
    disk = disk_fills(room=1000)  # the run record (~700 bytes) and a few batches fit, not all 8 answers
    one_line(lna(*args), "outputs.jsonl", "No space left on device")
    kept = (tmp_path / "out" / "st" / "outputs.jsonl").read_text().splitlines()
    assert 0 < len(kept) < 8 and all(json.loads(line)["tokens"] is not None for line in kept)
    only(tmp_path / "out" / "st", "run.json", "outputs.jsonl")
    disk.room = 10**9
    rc, _, err = lna(*args)
    assert rc == 0, err
    assert len((tmp_path / "out" / "st" / "outputs.jsonl").read_text().splitlines()) == 8  # 4 settings x 2


def test_builtin_model_cache_on_a_full_disk(made, tmp_path, disk_fills, lna, monkeypatch):
    monkeypatch.setenv("LNA_CACHE", str(tmp_path / "out" / "cache"))
    disk_fills()
    line = one_line(lna("profile", "-q", "--model", "lna:tiny-llama", "--dataset", made["data"],
                        "--out", tmp_path / "s.zarr"), "No space left on device", "free space")
    assert "cache" in line
    assert not list((tmp_path / "out").rglob("*.safetensors")) and not list((tmp_path / "out").rglob(".*tmp*"))
    assert not (tmp_path / "s.zarr").exists()


# == model folders ======================================================================================
def _broken_model(model, tmp_path, kind):
    import shutil

    broken = tmp_path / f"no-{kind}"
    shutil.copytree(model, broken)
    if kind == "tokenizer":
        for f in broken.glob("tokenizer*"):
            f.unlink()
    elif kind == "weights":
        (broken / "model.safetensors").unlink()
    else:  # a download cut short
        size = (broken / "model.safetensors").stat().st_size
        os.truncate(broken / "model.safetensors", size // 2)
    return broken


@pytest.mark.parametrize("kind,words", [
    ("tokenizer", ["no tokenizer", "tokenizer.json", "copy the model's remaining files"]),
    ("weights", ["has config.json but no weights", "*.safetensors"]),
    ("truncated", ["could not load the weights"]),
])
@pytest.mark.parametrize("command", ["profile", "ablate"])
def test_incomplete_model_folder(command, kind, words, made, model, tmp_path, lna):
    broken = _broken_model(model, tmp_path, kind)
    out = tmp_path / "out"
    if command == "profile":
        args = ["profile", "--model", broken, "--dataset", made["data"], "--out", out / "s.zarr"]
    else:
        args = ["ablate", "--model", broken, "--neurons", made["neurons"], "--responses", made["responses"],
                "-o", out / "ab", "--allow-other-model"]
    with Unchanged(made["root"]):
        one_line(lna(*args), str(broken), *words)
    assert not out.exists()


# == devices ============================================================================================
@pytest.mark.parametrize("device,words", [
    ("tpu", ["--device", "tpu", "cpu, cuda or cuda:N"]),
    ("cuda:x", ["--device", "cuda:x"]),
    ("cpu:0", ["--device", "cpu:0"]),
    ("cuda", ["--device cuda", "no CUDA device", "--device cpu"]),
    ("cuda:3", ["--device cuda:3", "no CUDA device"]),
])
@pytest.mark.parametrize("command", ["profile", "ablate"])
def test_device(command, device, words, made, model, tmp_path, lna):
    import torch

    if device.startswith("cuda:") and device[5:].isdigit() and torch.cuda.is_available():
        if torch.cuda.device_count() > int(device[5:]):
            pytest.skip(f"this machine has a {device}")
        words = [f"--device {device}", "cuda:0..cuda:"]
    elif device == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present: --device cuda is valid here")
    if command == "profile":
        args = ["profile", "--model", model, "--dataset", made["data"], "--out", tmp_path / "s.zarr"]
    else:
        args = ["ablate", "--model", model, "--neurons", made["neurons"], "--responses", made["responses"],
                "-o", tmp_path / "ab"]
    with Unchanged(made["root"]), Unchanged(tmp_path):
        one_line(lna(*args, "--device", device), *words)


# == out-of-range options ===============================================================================
@pytest.mark.parametrize("command,option,value", [
    ("identify", "--lambda", "-1"), ("identify", "--lambda", "nan"), ("identify", "--lambda", "inf"),
    ("identify", "--top-rate", "-0.01"), ("identify", "--top-rate", "0"), ("identify", "--top-rate", "1.5"),
    ("identify", "--tau-quantile", "1"), ("identify", "--tau-quantile", "-0.5"),
    ("report", "--lambda", "-0.1"), ("report", "--top-rate", "-1"),
    ("compare", "--lambda", "-2"), ("compare", "--top-rate", "2"),
    ("profile", "--temperature", "-1"), ("profile", "--top-p", "0"), ("profile", "--top-p", "1.1"),
    ("profile", "--samples", "0"), ("profile", "--max-new-tokens", "0"), ("profile", "--limit", "-3"),
    ("profile", "--token-budget", "0"), ("profile", "--checkpoint-every", "-5"),
    ("ablate", "--limit", "0"), ("ablate", "--token-budget", "-1"), ("ablate", "--checkpoint-every", "-1"),
    ("steer", "--strengths", "-1"), ("steer", "--strengths", "nan"), ("steer", "--max-new-tokens", "0"),
    ("steer", "--limit", "0"),
])
def test_out_of_range_option(command, option, value, made, model, tmp_path, lna):
    base = {
        "identify": ["identify", made["store"], "-o", tmp_path / "n.json"],
        "report": ["report", made["store"], "-o", tmp_path / "r"],
        "compare": ["compare", made["store"], made["store"], "-o", tmp_path / "c"],
        "profile": ["profile", "--model", model, "--dataset", made["data"], "--out", tmp_path / "s.zarr"],
        "ablate": ["ablate", "--model", model, "--neurons", made["neurons"], "--responses", made["responses"],
                   "-o", tmp_path / "ab"],
        "steer": ["steer", "--model", model, "--neurons", made["neurons"], "--store", made["store"], "--from", "en",
                  "--to", "zh", "--dataset", made["data"], "-o", tmp_path / "st"],
    }[command]
    with Unchanged(made["root"]), Unchanged(tmp_path):
        one_line(lna(*base, option, value), option, value.lstrip("-") if value != "nan" else "nan")


# == data =================================================================================================
def test_language_whose_responses_are_all_empty(model, tmp_path, lna):
    data = write_jsonl(tmp_path / "d.jsonl", DATA + [{"lang": "th", "prompt": "x", "responses": ["", ""]},
                                                     {"lang": "th", "prompt": "y", "responses": [""]}])
    out = tmp_path / "out"
    with Unchanged(tmp_path):
        one_line(lna("profile", "--model", model, "--dataset", data, "--out", out / "s.zarr"),
                 "every response in th", "empty", "--langs")
    # where the responses are sampled, the check comes once they are: the model's answers
    # stay (they took time), the store is not written
    from lna.runners.hf import HFRunner

    ds = write_jsonl(tmp_path / "q.jsonl", [{"lang": "en", "query": "hi"}, {"lang": "fr", "query": "salut"}])
    def answers(prompts):
        return [[[5, 6]] if i == 0 else [[]] for i in range(len(prompts))]

    def counted(self, prompts, langs, languages, sums=False, **k):  # counting while sampling: the same answers
        tokens = np.array([2 if lang == langs[0] else 0 for lang in languages])
        tables = [np.zeros((self.layers, len(languages), self.neurons))] * (2 if sums else 0)
        return answers(prompts), np.zeros((self.layers, len(languages), self.neurons), np.int64), tokens, *tables

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(HFRunner, "generate", lambda self, prompts, **k: answers(prompts))
        mp.setattr(HFRunner, "generate_counting", counted)
        for way in ([], ["--force-decode"]):
            one_line(lna("profile", "-q", "--model", model, "--dataset", ds, "--out", out / "g.zarr", "-n", "1",
                         *way), "every response in fr is empty", "g.responses.jsonl")
            only(out, "g.responses.jsonl")


# == a torn responses file ================================================================================
def test_torn_responses_file_is_reported_repaired_and_counted_once(made, model, tmp_path, lna):
    """A crash mid-append leaves a torn last line: the rerun says so, cuts it off, prepares
    that question again, and the counts equal those of a run that never tore."""
    lines = made["responses"].read_text(encoding="utf-8").splitlines(keepends=True)
    torn = tmp_path / "s.responses.jsonl"
    torn.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2], encoding="utf-8")
    rc, _, err = lna("profile", "-q", "--model", model, "--dataset", made["data"],
                     "--out", tmp_path / "s.zarr")
    assert rc == 0, err
    notes = err.strip().splitlines()
    assert len(notes) == 1 and notes[0].startswith("note: ") and str(torn) in notes[0] and "torn last line" in notes[0]
    assert torn.read_text(encoding="utf-8") == "".join(lines)
    a, b = open_store(made["store"]), open_store(tmp_path / "s.zarr")
    assert np.array_equal(a.counts, b.counts) and np.array_equal(a.tokens, b.tokens)


# == interrupts, progress and checkpoints ===================================================================
SLOW_RUNNER = """
import sys, time
from pathlib import Path
from lna.runners.hf import HFRunner

def slow(real):  # a slow machine: time to send the signal; "batches" tells the test it is counting
    def call(*args, **kwargs):
        time.sleep(1.0)
        result = real(*args, **kwargs)
        Path("batches").write_text("1")
        return result
    return call

HFRunner.count, HFRunner.nll = slow(HFRunner.count), slow(HFRunner.nll)
from lna.cli import {name}_main
{name}_main(sys.argv[1:])
"""


def _terminate_when_counting(name, args, cwd):
    """Run lna-NAME ARGS in a subprocess, SIGTERM it after its first batch; (status, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUNNER.format(name=name), *map(str, args)],
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    try:
        deadline = time.monotonic() + 120
        while not (cwd / "batches").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"finished before it could be stopped: {proc.stderr.read()}"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, err


def test_sigterm_checkpoints_profile_and_the_rerun_is_exact(made, model, tmp_path, lna):
    args = ["-q", "--model", model, "--dataset", made["data"], "--token-budget", "48", "--checkpoint-every", "3600"]
    whole, out = tmp_path / "whole.zarr", tmp_path / "cut.zarr"
    assert lna("profile", *args, "--out", whole)[0] == 0
    # no timed checkpoint in the hour: what is on disk after SIGTERM is SIGTERM's checkpoint
    rc, err = _terminate_when_counting("profile", [*args, "--out", out], tmp_path)
    assert rc == 143 and err.strip() == "lna-profile: interrupted; run the same command again to resume", err
    cut, whole = open_store(out), open_store(whole)
    assert not cut.complete and 0 < cut.tokens.sum() < whole.tokens.sum()
    assert (cut.counts <= whole.counts).all()
    rc, _, err = lna("profile", *args, "--out", out)
    assert rc == 0, err
    done = open_store(out)
    assert done.complete and np.array_equal(done.counts, whole.counts) and np.array_equal(done.tokens, whole.tokens)


def test_sigterm_checkpoints_ablate_and_the_rerun_is_exact(made, model, tmp_path, lna):
    whole, out = tmp_path / "whole", tmp_path / "cut"
    args = ["-q", "--model", model, "--neurons", made["neurons"], "--responses", made["responses"],
            "--token-budget", "48", "--checkpoint-every", "0"]
    assert lna("ablate", *args, "-o", whole)[0] == 0
    rc, err = _terminate_when_counting("ablate", [*args, "-o", out], tmp_path)
    assert rc == 143 and err.strip() == "lna-ablate: interrupted; run the same command again to resume", err
    with np.load(out / "nll.npz") as z:
        missing = np.isnan(z["nll"])
    assert 0 < missing.sum() < missing.size and not (out / "ppl.json").exists()
    rc, _, err = lna("ablate", *args, "-o", out)
    assert rc == 0, err
    assert json.loads((out / "ppl.json").read_text()) == json.loads((whole / "ppl.json").read_text())


def test_profile_progress_and_checkpoints_move_every_batch(made, model, tmp_path, lna, monkeypatch):
    """The bar moves after every forward batch by that batch's tokens; with
    --checkpoint-every 0 the store is saved after every batch, each save holding whole
    batches only (what a kill at that moment would keep)."""
    from lna.profiling import profile as driver
    from lna.core import progress
    from lna.runners.hf import HFRunner

    forwards, updates, saves = [], [], []
    real_forward, real_save = HFRunner._forward, driver.save_store
    monkeypatch.setattr(HFRunner, "_forward", lambda self, batch: forwards.append(
        int((batch.lang_ids >= 0).sum())) or real_forward(self, batch))
    monkeypatch.setattr(progress.Bar, "update", lambda self, n: updates.append(n))
    monkeypatch.setattr(driver, "save_store", lambda store, path: saves.append(
        (int(store.tokens.sum()), store.complete)) or real_save(store, path))
    rc, _, err = lna("profile", "--model", model, "--dataset", made["data"], "--out", tmp_path / "s.zarr",
                     "--token-budget", "48", "--checkpoint-every", "0")
    assert rc == 0, err
    assert len(forwards) >= 4 and updates == forwards  # one step per batch, by its response tokens
    assert [t for t, _ in saves] == list(np.cumsum(forwards)) + [sum(forwards)]
    assert [c for _, c in saves] == [False] * len(forwards) + [True]


# == shards and lna launch ================================================================================
@pytest.mark.parametrize("spec, words", [
    ("3", ["--shard", "3", "give K/N"]), ("a/b", ["a/b", "give K/N"]), ("1/0", ["1/0", "N must be at least 1"]),
    ("0/4", ["0/4", "K must be from 1 to 4", "numbered from 1"]), ("5/4", ["5/4", "K must be from 1 to 4"]),
])
def test_bad_shard_spec(spec, words, made, model, tmp_path, lna):
    with Unchanged(made["root"]), Unchanged(tmp_path):
        one_line(lna("profile", "--model", model, "--dataset", made["data"], "--out", tmp_path / "s.zarr",
                     "--shard", spec), *words)


@pytest.fixture(scope="module")
def sharded(made, model, tmp_path_factory):
    """Shards 1..3 of 3 of the made data, and shards 1..2 of 2 of the same data less a question."""
    root = tmp_path_factory.mktemp("sharded")
    other = write_jsonl(root / "other.jsonl", DATA[:-1])
    for data, n in ((made["data"], 3), (other, 2)):
        for k in range(1, n + 1):
            assert cli.run(cli._commands()["profile"], "lna-profile",
                           ["-q", "--model", str(model), "--dataset", str(data), "--shard", f"{k}/{n}",
                            "--out", str(root / f"{data.stem}-{k}of{n}.zarr")]) == 0
    return root


def test_merge_refuses_missing_repeated_and_foreign_shards(sharded, lna, tmp_path):
    s = {name: sharded / f"{name}.zarr" for name in ("d-1of3", "d-2of3", "d-3of3", "other-1of2", "other-2of2")}
    out = tmp_path / "m.zarr"
    with Unchanged(sharded):
        one_line(lna("merge", s["d-1of3"], s["d-3of3"], "-o", out), "shard 2 of 3", "is missing", "--partial")
        one_line(lna("merge", s["d-1of3"], "-o", out), "shards 2,3 of 3", "are missing")
        one_line(lna("merge", s["d-1of3"], s["d-2of3"], s["d-3of3"], s["d-2of3"], "-o", out),
                 "shard 2/3 is given twice", str(s["d-2of3"]))
        # shards of two runs never complete each other
        one_line(lna("merge", s["d-1of3"], s["d-2of3"], s["other-2of2"], "-o", out), "missing",
                 "shards of several runs")
        one_line(lna("merge", s["other-1of2"], s["d-2of3"], "-o", out), "missing")
        # --partial: one run's incomplete set at a time
        one_line(lna("merge", s["d-1of3"], s["other-1of2"], "-o", out, "--partial"), "one run at a time")
    assert not out.exists()
    only(tmp_path)


def test_merge_refuses_an_unfinished_shard(made, model, tmp_path, lna, monkeypatch, sharded):
    big = max((1, 2, 3), key=lambda k: int(open_store(sharded / f"d-{k}of3.zarr").tokens.sum()))
    interrupt_counting(monkeypatch, after=1)
    cut = tmp_path / "cut.zarr"
    assert lna("profile", "-q", "--model", model, "--dataset", made["data"], "--shard", f"{big}/3",
               "--token-budget", "32", "--checkpoint-every", "0", "--out", cut)[0] == 130
    monkeypatch.undo()
    assert not open_store(cut).complete
    others = [sharded / f"d-{k}of3.zarr" for k in (1, 2, 3) if k != big]
    one_line(lna("merge", *others, cut, "-o", tmp_path / "m.zarr"), f"{cut}", f"shard {big}/3", "unfinished",
             "rerun its lna-profile --shard command")
    assert not (tmp_path / "m.zarr").exists()


@pytest.mark.parametrize("spec, words", [("2/3", ["holds shard 1/3", "this run is shard 2/3"]),
                                         ("1/2", ["holds shard 1/3", "this run is shard 1/2"]),
                                         (None, ["holds shard 1/3 of a run", "rerun with --shard 1/3"])])
def test_shard_run_into_another_shards_store(spec, words, sharded, made, model, tmp_path, lna):
    target = tmp_path / "s.zarr"
    shutil.copytree(sharded / "d-1of3.zarr", target)
    with Unchanged(tmp_path):
        one_line(lna("profile", "-q", "--model", model, "--dataset", made["data"], "--out", target,
                     *(["--shard", spec] if spec else [])), str(target), *words)
    # and the same shard of other data (another run)
    with Unchanged(tmp_path):
        one_line(lna("profile", "-q", "--model", model, "--dataset", sharded / "other.jsonl", "--out", target,
                     "--shard", "1/3"), "holds shard 1/3 of another run", "choose another --out")
    # an unsharded store continued as a shard
    with Unchanged(made["root"]):
        one_line(lna("profile", "-q", "--model", model, "--dataset", made["data"], "--out", made["store"],
                     "--shard", "1/3"), "holds an unsharded profile", "choose another --out")


def test_launch_without_ray(made, model, tmp_path, lna, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` fails
    with Unchanged(tmp_path):
        one_line(lna("launch", "--shards", "2", "--model", model, "--dataset", made["data"], "--out",
                     tmp_path / "m.zarr"), "needs Ray", "pip install 'lna[ray]'")


def test_launch_bad_shards_option(made, model, tmp_path, lna):
    with Unchanged(tmp_path):
        one_line(lna("launch", "--shards", "0", "--model", model, "--dataset", made["data"]), "--shards", "0")


@pytest.mark.parametrize("address, words", [("127.0.0.1:{port}", ["cannot reach the Ray cluster at 127.0.0.1:",
                                                                   "ray start --head"]),
                                             ("nohostport", ["--ray nohostport", "host:port"])])
def test_launch_unreachable_ray_address(address, words, made, model, tmp_path, lna):
    pytest.importorskip("ray", reason="needs the extra: pip install 'lna[ray]' (.ci/run installs it)")
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with Unchanged(tmp_path):
        one_line(lna("launch", "--shards", "2", "--ray", address.format(port=port), "--model", model,
                     "--dataset", made["data"], "--out", tmp_path / "m.zarr"), *words)
    assert time.monotonic() - start < 30  # Ray itself would retry such an address for minutes
