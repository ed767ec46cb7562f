"""The smoke stage of benches/bench_gpu_check.py: lna-profile itself on the device, as a user runs it.

A tiny random-weight Mistral saved to a temporary folder; on the device, in float32 so that
counts compare exactly:
- profile_cli: `lna-profile --dataset demo` (given responses, force-decoded);
- sampling_cli: `lna-profile` on the demo questions without responses, so it samples them
  and counts them while it samples (hf generate, lna's per-response sampler, the counting
  kernel in decoding steps), then again with `--force-decode`, which must draw the same
  responses (a seed per question) and count them in a second pass;
each store read back (the carried zarr wheels) and its counts compared with the naive
two-pass hooks of bench_profile.py on the same model and device. Counts may differ only
where a gate lies within rounding of zero (the paths run matmuls of different shapes): every
difference must be explained by gates within NEAR_ZERO of zero in an independent batch-1
hook count (bench_count_agreement.py); the fraction that differs is reported.
"""
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import common

QUESTIONS = dict(langs=("en", "zh", "sw"), per_language=3)
NEAR_ZERO = 1e-5  # fp32: as the tests' naive reference allows


def run(stage):
    common.lna_kernels()
    stage.section("profile_cli", profile_cli, stage.device)
    stage.section("sampling_cli", sampling_cli, stage.device)


def _tiny(tmp):
    from lna.models.tiny import build_tiny

    return build_tiny(Path(tmp) / "tiny-mistral", "mistral", hidden=64, layers=2, intermediate=96, heads=2,
                      kv_heads=1)


def _profile(model, dataset, out, device, *extra):
    from lna.cli import run as run_cli
    from lna.cli.profile import profile

    started = time.time()
    status = run_cli(profile, "lna-profile", ["-q", "--model", str(model), "--dataset", str(dataset), "--out",
                                              str(out), "--device", device, "--dtype", "float32", *extra])
    return status, round(time.time() - started, 2)


def _against_naive(model, out, device) -> dict:
    """The store at `out` against naive hooks over the responses file beside it."""
    import torch

    import bench_profile
    from lna.inputs import data, responses
    from lna.models import loading
    from lna.storage.store import open_store

    store = open_store(out, allow_partial=False)
    _, questions = data.load(str(out.with_suffix(".responses.jsonl")))
    samples = responses.samples(questions)
    net, _ = loading.load(loading.resolve(str(model)), device=device, dtype="float32")
    with torch.inference_mode():
        naive, _ = bench_profile.naive_two_pass(net, samples, list(store.languages), 4096, device)
    counts = np.asarray(store.counts).astype(np.int64)
    tokens_ok = [int(t) for t in store.tokens] == [sum(len(s.response) for s in samples if s.lang == k)
                                                  for k in store.languages]
    same_shape = counts.shape == naive.shape
    diff = np.abs(counts - naive) if same_shape else None
    explained = same_shape
    if same_shape and diff.any():  # near-zero gates behind every difference?
        from bench_count_agreement import reference

        with torch.inference_mode():
            _, near = reference(net, samples, list(store.languages), device, (NEAR_ZERO,))
        explained = bool((diff <= near[NEAR_ZERO]).all())
    return {"ok": bool(tokens_ok and explained), "languages": list(store.languages), "samples": len(samples),
            "tokens_match": tokens_ok, "counts_shape": list(counts.shape),
            "counts_differing_from_naive_fraction": float((diff > 0).mean()) if same_shape else 1.0,
            "count_flips": int(diff.sum()) if same_shape else None,
            f"differences_explained_by_gates_within_{NEAR_ZERO:g}": explained,
            "counted_during": store.meta.get("counted_during")}


def profile_cli(device):
    with tempfile.TemporaryDirectory(prefix="lna-gpu-smoke-") as tmp:
        model, out = _tiny(tmp), Path(tmp) / "demo.zarr"
        status, seconds = _profile(model, "demo", out, device, "--langs", ",".join(QUESTIONS["langs"]),
                                   "--limit", "4")
        if status != 0:
            return {"ok": False, "exit_status": status}
        return {"exit_status": status, "seconds": seconds, **_against_naive(model, out, device)}


def sampling_cli(device):
    from lna.inputs import demo

    with tempfile.TemporaryDirectory(prefix="lna-gpu-smoke-") as tmp:
        model, tmp = _tiny(tmp), Path(tmp)
        recs = [{k: v for k, v in r.items() if k != "responses"} for r in demo.records()
                if r["lang"] in QUESTIONS["langs"] and r["id"] < QUESTIONS["per_language"]]
        dataset = tmp / "questions.jsonl"
        dataset.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
        sampling = ["-n", "2", "--max-new-tokens", "24"]
        result = {}
        for name, extra in (("while_sampling", []), ("force_decoded", ["--force-decode"])):
            out = tmp / f"{name}.zarr"
            status, seconds = _profile(model, dataset, out, device, *sampling, *extra)
            if status != 0:
                return {"ok": False, "exit_status": status, "failed": name, **result}
            result[name] = {"seconds": seconds, **_against_naive(model, out, device)}

        def drawn(name):
            path = tmp / f"{name}.responses.jsonl"
            return {r["key"]: r["response_ids"] for r in map(json.loads, path.read_text().splitlines())}

        same = drawn("while_sampling") == drawn("force_decoded")
        return {"ok": bool(same and all(r["ok"] for r in result.values())), "same_responses_both_runs": same,
                "questions": len(recs), **result}
