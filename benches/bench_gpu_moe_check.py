"""The MoE path on a device, for a session with a GPU (this one was developed without):
1. the compiled Triton expert kernel (lna.kernels.expert_count) against the row-by-row
   reference, counts exact and outputs within the dtype rule, at realistic shapes;
2. MoERunner on tiny random models of every MoE family, on the device in float32, against
   the same runner on the CPU: expert counts, routed tokens and always-on counts (gates
   within 1e-5 of zero may differ, as between any two fp32 computation orders);
3. expert_silu_mul timed against the uncounted product (bench_expert_count's variants).
Writes benches/results/moe_check_<device>.json.

Run: python benches/bench_gpu_moe_check.py [--device cuda]   (about a minute on an H100; --device cpu: a dry run)
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import common  # noqa: E402


def kernel_cases(device):
    from lna.kernels.expert_count import expert_offsets, expert_silu_mul
    from lna.kernels.reference import expert_silu_mul_native

    out = {}
    for name, (tokens, experts, top_k, width) in {"qwen3moe": (512, 128, 8, 768), "mixtral": (256, 8, 2, 14336),
                                                  "odd": (77, 9, 3, 1001)}.items():
        for dtype in (torch.float32, torch.bfloat16):
            gen = torch.Generator().manual_seed(0)
            choice = torch.rand(tokens, experts, generator=gen).argsort(1)[:, :top_k]
            order, bounds = expert_offsets(choice.reshape(-1), experts)
            S = order.numel()
            gate_up = (torch.randn(S, 2 * width, generator=gen) * 3).to(dtype)
            lang = torch.randint(-1, 10, (tokens,), generator=gen, dtype=torch.int32)[order // top_k]
            want_counts = torch.zeros(experts, 10, width, dtype=torch.int64)
            # reference per segment on the CPU (row by row is too slow at these sizes): the
            # torch path, itself tested bit-equal to the row-by-row reference
            want = expert_silu_mul(gate_up[:, :width], gate_up[:, width:], bounds, lang_ids=lang,
                                   counts=want_counts, backend="torch")
            if S <= 300:
                ref_counts = torch.zeros_like(want_counts)
                expert_silu_mul_native(gate_up[:, :width], gate_up[:, width:], bounds, lang, ref_counts)
                assert torch.equal(ref_counts, want_counts)
            g = gate_up.to(device)
            counts = torch.zeros_like(want_counts, device=device)
            got = expert_silu_mul(g[:, :width], g[:, width:], bounds, lang_ids=lang.to(device), counts=counts)
            err = (got.cpu().float() - want.float()).abs().max().item()
            out[f"{name} {dtype}"] = {"counts_equal": bool(torch.equal(counts.cpu(), want_counts)),
                                      "max_abs_output_difference": err}
    return out


def runner_cases(device):
    from conftest import random_samples
    from lna.models.tiny import MOE_ARCHS, build_tiny
    from lna.runners.moe import MoERunner

    out = {}
    langs = ["en", "zh", "ja"]
    with tempfile.TemporaryDirectory() as root:
        for seed, arch in enumerate(MOE_ARCHS):
            path = str(build_tiny(Path(root) / arch, arch, hidden=64, layers=3, intermediate=96, heads=2, kv_heads=1,
                                  seed=seed))
            samples = random_samples(1, langs, questions=6, max_response=30)
            c0, t0, e0 = MoERunner(path, device="cpu").count(samples, langs)
            c1, t1, e1 = MoERunner(path, device=device).count(samples, langs)
            out[arch] = {"tokens_equal": bool(np.array_equal(t0, t1)),
                         "routed_equal": bool(np.array_equal(e0.routed, e1.routed)),
                         "expert_count_cells_differing": int((e0.counts != e1.counts).sum()),
                         "always_on_cells_differing": int((c0 != c1).sum()),
                         "expert_cells": int(e0.counts.size)}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    start = time.time()
    payload = {"argv": sys.argv, "kernel": kernel_cases(args.device), "runner": runner_cases(args.device)}
    import bench_expert_count

    payload["speed"] = bench_expert_count.run(args.device, 20 if args.device != "cpu" else 2, ["bfloat16"])
    payload.update(seconds=round(time.time() - start, 1), device=common.machine(args.device),
                   versions=common.versions(), git_commit=bench_expert_count._commit())
    path = common.write(f"moe_check_{args.device.split(':')[0]}", payload)
    print(payload["kernel"], payload["runner"], sep="\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
