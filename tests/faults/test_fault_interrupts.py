"""Fault injection, interrupts: SIGTERM to a running lna-profile / lna-ablate (a real
subprocess) checkpoints, exits 143 in one line, and the rerun equals an uninterrupted run;
progress and checkpoints move after every forward batch.
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

