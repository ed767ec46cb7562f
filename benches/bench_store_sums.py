"""The count store with and without activation sums, at the study's shape (32 layers x 10
languages x 14336 neurons): size on disk, write (lna-profile's checkpoint: the whole store,
atomically) and open (with every integrity check). Random counts and sums of a profile's
magnitudes (sums are float64 and compress little).

  python benches/bench_store_sums.py     # writes benches/results/store_sums_cpu.json
"""
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from lna.storage.counts import CountStore  # noqa: E402
from lna.storage.store import open_store, save_store  # noqa: E402

SHAPE = (32, 10, 14336)


def store(sums: bool) -> CountStore:
    rng = np.random.default_rng(0)
    tokens = rng.integers(300_000, 400_000, SHAPE[1])
    p = rng.beta(0.5, 1.5, SHAPE)
    counts = (p * tokens[None, :, None]).astype(np.int64)
    extra = {}
    if sums:
        mean = rng.normal(0.05, 0.1, SHAPE)
        extra = {"sums": mean * tokens[None, :, None], "active_sums": counts * np.abs(rng.normal(0.3, 0.1, SHAPE))}
    return CountStore(counts, tokens, [f"l{k}" for k in range(SHAPE[1])], {"model": "bench"}, **extra)


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(repeats=5):
    report = {"bench": "store_sums", "machine": common.machine("cpu"), "versions": common.versions(),
              "shape": {"layers": SHAPE[0], "languages": SHAPE[1], "neurons": SHAPE[2]}, "repeats_median_of": repeats}
    with tempfile.TemporaryDirectory() as tmp:
        for sums in (False, True):
            s, path = store(sums), Path(tmp) / f"s{int(sums)}.zarr"
            write = [(time.perf_counter(), save_store(s, path), time.perf_counter()) for _ in range(repeats)]
            read = [(time.perf_counter(), open_store(path), time.perf_counter()) for _ in range(repeats)]
            key = "with_sums" if sums else "counts_only"
            report[key] = {"bytes_on_disk": du(path), "write_s": statistics.median(b - a for a, _, b in write),
                           "open_s": statistics.median(b - a for a, _, b in read)}
            print(key, report[key], flush=True)
    c, w = report["counts_only"], report["with_sums"]
    report["ratios_with_sums"] = {k: w[k] / c[k] for k in ("bytes_on_disk", "write_s", "open_s")}
    print(report["ratios_with_sums"])
    print("wrote", common.write(common.results_name("store_sums", "cpu"), report))


if __name__ == "__main__":
    main()
