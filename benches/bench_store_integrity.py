"""What integrity costs: opening a 32 x 14336 x 10 count store with and without the checks,
and the model identity of a local weight file.

Side by side in the same run, on one core:
- plain open: what open_store did before the integrity record (zarr open, read counts and
  tokens, build and validate the CountStore), on the same files;
- open_store: the same read plus every check (per-language CRC-32 of the counts, tokens,
  coordinates, and the sample manifest where there is one), for an imported store (the
  released MGSM counts, no sample list) and for the same counts with a profiled store's
  manifest (2,500 samples per language, as MGSM with 10 samples per question);
- the checks alone (CRC-32 of all counts), and save_store (zarr in memory, plain fsync'd
  writes, swap) for the record;
- model identity (lna.models.fingerprint): sha256 of a 1 GiB weight file read from the page cache,
  extrapolated to a 7B model's 14.5 GB (on one core; and in its usual 3 shards hashed in
  parallel on 3 free cores); the cached second call (a stat per file).

Run: pytest benches/bench_store_integrity.py   (writes benches/results/store_integrity_cpu.json)
"""
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

from lna.models import fingerprint  # noqa: E402

from lna.storage import integrity
from lna.storage.import_counts import import_counts  # noqa: E402
from lna.storage.manifest import Counted  # noqa: E402
from lna.storage.counts import CountStore  # noqa: E402
from lna.storage.store import open_store, save_store  # noqa: E402

DATA = Path(os.environ.get("LNA_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
NPZ = DATA / "reference" / "mistralmathoctopus7b-mgsm-counts.npz"
SEVEN_B_BYTES = 14.5e9  # Mistral-7B in bf16 safetensors
REPEAT = 15


def timed(fn, repeat=REPEAT):
    return interleaved([fn], repeat)[0]


def interleaved(fns, repeat=REPEAT):
    """Each round runs every fn once, in turn: a shared machine's load drifts alike for all."""
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [{"median_s": round(statistics.median(ts), 5), "min_s": round(min(ts), 5)} for ts in times]


def plain_open(path):
    """open_store as it was before the integrity record: read the group, its counts and
    tokens, and build the store (structural validation included)."""
    import zarr

    root = zarr.open_group(str(path), mode="r", use_consolidated=False)
    attrs = dict(root.attrs)
    return CountStore(np.asarray(root["counts"][...]), np.asarray(root["tokens"][...]), attrs["languages"],
                      attrs["meta"])


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    if not NPZ.is_file():
        pytest.skip(f"released counts not found at {NPZ} (set LNA_SHARED_DATA)")
    root = tmp_path_factory.mktemp("stores")
    imported = import_counts([NPZ])
    profiled = import_counts([NPZ])
    rng = np.random.default_rng(0)
    profiled.samples = {lang: Counted(rng.integers(0, 2**63, 2500, dtype=np.uint64),
                                      [f"mgsm/{lang}/{q}/{j}" for q in range(250) for j in range(10)])
                        for lang in profiled.languages}
    return {"imported": (imported, save_store(imported, root / "imported.zarr")),
            "profiled": (profiled, save_store(profiled, root / "profiled.zarr"))}


def test_store_integrity_cost(stores, tmp_path, monkeypatch):
    with common.one_core():
        device = common.machine("cpu", threads=1)
        rows = {}
        for name, (store, path) in stores.items():
            open_store(path)  # warm the page cache
            plain, checked = interleaved([lambda: plain_open(path), lambda: open_store(path)], 2 * REPEAT)
            rows[name] = {
                "samples": int(sum(len(c.ids) for c in store.samples.values())),
                "plain_open": plain, "open_store": checked,
                "ratio_median": round(checked["median_s"] / plain["median_s"], 3),
                "files_bytes": sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()),
            }
        counts = stores["imported"][0].counts
        crc = timed(lambda: [integrity.lang_crc(counts, k) for k in range(counts.shape[1])])
        save = timed(lambda: save_store(stores["profiled"][0], tmp_path / "again.zarr"), repeat=5)

        weights = tmp_path / "model.safetensors"
        with open(weights, "wb") as fh:
            for _ in range(64):
                fh.write(os.urandom(16 << 20))
        size = weights.stat().st_size
        fingerprint._stream_sha256(weights)  # warm the page cache: the disk is not what is measured
        sha = timed(lambda: fingerprint._stream_sha256(weights), repeat=3)
        monkeypatch.setenv("LNA_CACHE", str(tmp_path / "cache"))
        fingerprint.file_sha256(weights)  # computes and caches
        cached = timed(lambda: fingerprint.file_sha256(weights))
    gbps = size / sha["median_s"] / 1e9
    result = {
        "benchmark": "count store integrity checks and model identity",
        "shape": {"layers": int(counts.shape[0]), "languages": int(counts.shape[1]), "neurons": int(counts.shape[2])},
        "counts_source": "released MGSM counts of MistralMathOctopus-7B (reference .npz)",
        "threads": 1,
        "open": rows,
        "checks_alone_crc32_all_counts": crc,
        "save_store_profiled": save,
        "identity": {
            "file_bytes": size,
            "sha256_warm_cache": sha,
            "sha256_GB_per_s": round(gbps, 2),
            "seven_b_one_core_s": round(SEVEN_B_BYTES / 1e9 / gbps, 1),
            "seven_b_three_shards_three_cores_s": round(SEVEN_B_BYTES / 3 / 1e9 / gbps, 1),
            "seven_b_note": "once per local folder (then cached), plus reading 14.5 GB from disk where it is "
                            "not in the page cache; shards hash in parallel where cores are free; free for "
                            "the Hugging Face cache (blob names)",
            "cached_second_call": cached,
        },
        "machine": device,
        "versions": {**common.versions(), "zarr": __import__("zarr").__version__},
    }
    print(common.write(common.results_name("store_integrity", "cpu"), result))
    assert all(r["open_store"]["median_s"] > 0 for r in rows.values())
