"""Fault injection, outputs on a full disk or a read-only place: neuron sets, the .pt export,
report and compare folders, ablation state and outputs, the responses file (first write, an
append mid-sampling), lna-steer's run record and outputs mid-run, the built-in model cache.
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
    from lna.interventions.steer import session as steering

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

