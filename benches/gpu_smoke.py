"""The smoke stage of benches/gpu_check.py: lna-profile itself on the device, as a user runs it.

A tiny random-weight Mistral saved to a temporary folder, `lna-profile --dataset demo` on the
device (float32, so that counts compare exactly), the zarr store read back (the carried
zarr wheels), and the counts compared with the naive two-pass hooks of bench_profile.py on
the same model and device. Counts may differ only where a gate lies within rounding of zero
(the two paths run matmuls of different shapes); the fraction that differs is reported.
"""
import tempfile
import time
from pathlib import Path

import numpy as np

import common


def run(stage):
    common.lna_kernels()
    stage.section("profile_cli", profile_cli, stage.device)


def profile_cli(device):
    import torch

    import bench_profile
    from lna import data, models, responses
    from lna.cli import run as run_cli
    from lna.cli.profile import profile
    from lna.store import open_store
    from lna.tiny import build_tiny

    with tempfile.TemporaryDirectory(prefix="lna-gpu-smoke-") as tmp:
        model = build_tiny(Path(tmp) / "tiny-mistral", "mistral", hidden=64, layers=2, intermediate=96, heads=2,
                           kv_heads=1)
        out = Path(tmp) / "demo.zarr"
        started = time.time()
        status = run_cli(profile, "lna-profile", ["-q", "--model", str(model), "--dataset", "demo", "--langs",
                                                  "en,zh,sw", "--limit", "4", "--out", str(out), "--device", device,
                                                  "--dtype", "float32"])
        seconds = time.time() - started
        if status != 0:
            return {"ok": False, "exit_status": status}
        store = open_store(out, allow_partial=False)
        _, questions = data.load(str(Path(tmp) / "demo.responses.jsonl"))
        samples = responses.samples(questions)
        net, _ = models.load(models.resolve(str(model)), device=device, dtype="float32")
        with torch.inference_mode():
            naive, _ = bench_profile.naive_two_pass(net, samples, list(store.languages), 4096, device)
        counts = np.asarray(store.counts)
        tokens_ok = [int(t) for t in store.tokens] == [sum(len(s.response) for s in samples if s.lang == k)
                                                      for k in store.languages]
        differ = float((counts != naive).mean())
        return {"ok": bool(tokens_ok and counts.shape == naive.shape and differ < 1e-3), "exit_status": status,
                "seconds": round(seconds, 2), "languages": list(store.languages), "samples": len(samples),
                "tokens_match": tokens_ok, "counts_shape": list(counts.shape),
                "counts_differing_from_naive_fraction": differ,
                "count_flips": int(np.abs(counts.astype(np.int64) - naive).sum())}
