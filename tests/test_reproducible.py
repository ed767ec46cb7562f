"""lna adds no nondeterminism of its own: identical lna-profile runs on a CPU, each a fresh
process, write identical stores bit for bit when torch computes on one thread
(OMP_NUM_THREADS=1, as docs/backends.md says). With two threads, runs of this model differed here
in a count cell (and most activation sums) about one time in two: torch's multi-threaded CPU
forward does not sum in the same order every run."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from lna.storage.store import open_store
from lna.models.tiny import build_tiny


def test_identical_runs_in_separate_processes_write_identical_stores(tmp_path):
    model = build_tiny(tmp_path / "tiny", "mistral", hidden=64, layers=2, intermediate=96, heads=2, kv_heads=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    stores = []
    for k in range(4):
        out = tmp_path / f"run{k}.zarr"
        subprocess.run([str(Path(sys.executable).parent / "lna-profile"), "-q", "--model", str(model), "--dataset",
                        "demo", "--langs", "en,zh,sw", "--limit", "4", "--out", str(out), "--device", "cpu",
                        "--dtype", "float32"], env=env, check=True, capture_output=True, timeout=300)
        stores.append(open_store(out))
    for other in stores[1:]:
        np.testing.assert_array_equal(other.counts, stores[0].counts)
        np.testing.assert_array_equal(other.sums, stores[0].sums)
        np.testing.assert_array_equal(other.active_sums, stores[0].active_sums)
