"""GPU benchmark of the fused kernels (standalone; needs CUDA and Triton).

At T in {512, 2048, 8192} tokens, I = 14336 neurons, bf16, side by side in one run:
- fused+count: lna's Triton kernel counting 10 languages (vLLM's packed [T, 2I] input, and
  two contiguous tensors as the transformers runner passes them);
- fused: the same kernel without counting (plain fused SiLU*up);
- fused+mask: masking with 4 masks chosen per token (the ablation path);
- unfused torch: F.silu(gate) * up, then (gate > 0) summed per language (hook style);
- lna torch path on CUDA (the fallback without Triton);
- copy: device-to-device copy, the bandwidth ceiling.
Times are CUDA events around each call, median of many, warm-up excluded, L2 flushed
before every timed call. GB/s counts the bytes the fused function must move (read gate
and up, write the output). Targets (design.md): counting adds <= 2% to the plain fused
kernel; fused+count reaches >= 90% of copy bandwidth at T = 8192.

Also: a sweep of launch configurations at T = 8192 (the defaults should be the best or
near it), correctness on the device (exact counts; output against torch and float64, fp32
included), and the GEMM-epilogue variant against cuBLAS + the fused kernel (kept only if
it wins).

Run: python benches/gpu_silu_mul.py [--quick] [--name gpu_silu_mul]   (writes benches/results/<name>.json)
The results file is rewritten after every section ("complete": false until the end).
"""
import argparse
import importlib.util
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKENS = (512, 2048, 8192)
N_NEURONS, HIDDEN, N_LANGS, N_MASKS = 14336, 4096, 10, 4
DTYPE = torch.bfloat16
DEVICE = "cuda"  # a module constant so that the script can be smoke-tested on CPU


def import_kernels():
    """lna.kernels, installed or straight from this checkout (kernels/ ships as lna.kernels)."""
    try:
        installed = importlib.util.find_spec("lna.kernels") is not None
    except ImportError:  # no lna package at all
        installed = False
    if not installed:
        sys.path.insert(0, str(ROOT))
        spec = importlib.util.spec_from_file_location(
            "lna.kernels", ROOT / "kernels" / "__init__.py", submodule_search_locations=[str(ROOT / "kernels")])
        module = importlib.util.module_from_spec(spec)
        sys.modules["lna.kernels"] = module
        spec.loader.exec_module(module)
    import lna.kernels.gemm_silu_mul as gemm
    import lna.kernels.silu_mul_triton as fused
    from lna.kernels import silu_mul_native
    from lna.kernels.silu_mul_torch import silu_mul_torch
    return fused, gemm, silu_mul_native, silu_mul_torch


class Timer:
    """Median milliseconds of fn over `reps` calls, each after flushing L2, warm-up excluded."""

    def __init__(self, reps, warmup=5):
        self.reps, self.warmup = reps, warmup
        self.flush = torch.empty(512 * 2**20, dtype=torch.uint8, device=DEVICE)  # > any L2

    def __call__(self, fn, reps=None):
        reps = reps or self.reps
        for _ in range(self.warmup):
            fn()
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in events:
            self.flush.zero_()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(start.elapsed_time(end) for start, end in events)


def make_inputs(n_tokens, seed=0):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    gate_up = torch.randn(n_tokens, 2 * N_NEURONS, device=DEVICE, generator=gen).to(DTYPE)
    lang_ids = torch.randint(-1, N_LANGS, (n_tokens,), device=DEVICE, generator=gen, dtype=torch.int32)
    masks = torch.rand(N_MASKS, N_NEURONS, device=DEVICE, generator=gen) < 0.01
    mask_ids = torch.randint(-1, N_MASKS, (n_tokens,), device=DEVICE, generator=gen, dtype=torch.int32)
    return gate_up, lang_ids, masks, mask_ids


def copy_bandwidth(timer):
    src = torch.empty(2**30, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src), reps=50)
    return 2 * src.numel() / (ms * 1e-3) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, no configuration sweep")
    parser.add_argument("--name", default="gpu_silu_mul", help="results file: benches/results/<name>.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_silu_mul: no CUDA device here; this benchmark needs one (nothing written)", file=sys.stderr)
        return 2
    if importlib.util.find_spec("triton") is None:
        print("gpu_silu_mul: the triton package is not installed (nothing written)", file=sys.stderr)
        return 2
    fused, gemm, silu_mul_native, silu_mul_torch = import_kernels()
    timer = Timer(reps=20 if args.quick else 100)
    machine = common.machine(DEVICE)
    result = {
        "benchmark": "fused SiLU*up with per-language counts (lna.kernels) on the GPU",
        "complete": False,
        # name, sms and memory_gib: this file's keys from before common.machine
        "device": machine | {"name": machine["gpu"], "sms": machine["gpu_sms"], "memory_gib": machine["gpu_memory_gib"]},
        "versions": common.versions(),
        "shape": {"tokens": list(TOKENS), "neurons": N_NEURONS, "hidden": HIDDEN, "languages": N_LANGS,
                  "masks": N_MASKS, "dtype": str(DTYPE).removeprefix("torch.")},
        "timing": f"median of {timer.reps} calls (ms), CUDA events, warm-up excluded, L2 flushed",
        "targets": {"count_overhead_max": 0.02, "fraction_of_copy_min": 0.9, "at_tokens": 8192},
    }

    def save(section, value):
        result[section] = value
        common.write(args.name, result)
        print(f"== {section}\n{json.dumps(value, indent=2)}", flush=True)

    copy_gbs = copy_bandwidth(timer)
    save("copy_gb_per_s", round(copy_gbs, 1))
    save("correctness", attempt(check_correctness, fused, gemm, silu_mul_native))
    if not args.quick:
        save("config_sweep_8192", attempt(sweep_configs, fused, timer))

    per_tokens = {}
    for n_tokens in TOKENS:
        per_tokens[str(n_tokens)] = time_kernels(n_tokens, fused, silu_mul_native, silu_mul_torch, timer, copy_gbs)
        save("kernels", per_tokens)
    big = per_tokens[str(TOKENS[-1])]
    save("verdict", {
        "count_overhead_at_8192": big["ratios"]["count_overhead"],
        "fraction_of_copy_at_8192": big["fraction_of_copy"]["fused+count (packed)"],
        "meets_count_target": big["ratios"]["count_overhead"] <= 0.02,
        "meets_bandwidth_target": big["fraction_of_copy"]["fused+count (packed)"] >= 0.9,
    })

    gemm_results = {}
    for n_tokens in TOKENS:
        gemm_results[str(n_tokens)] = attempt(time_gemm, n_tokens, fused, gemm, timer)
        save("gemm_epilogue", gemm_results)
    result["complete"] = True
    save("gemm_epilogue_keep", all(r.get("gemm_epilogue_wins", False) for r in gemm_results.values()))
    return 0


def attempt(fn, *args):
    """fn(*args), or {"error": ...} so that one failing section does not lose the others."""
    try:
        return fn(*args)
    except Exception as error:
        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {str(error)[:500]}"}


def time_kernels(n_tokens, fused, silu_mul_native, silu_mul_torch, timer, copy_gbs):
    gate_up, lang_ids, masks, mask_ids = make_inputs(n_tokens)
    gate, up = gate_up[:, :N_NEURONS], gate_up[:, N_NEURONS:]
    gate_c, up_c = gate.contiguous(), up.contiguous()
    counts = torch.zeros(N_LANGS, N_NEURONS, dtype=torch.int64, device=DEVICE)
    out = torch.empty(n_tokens, N_NEURONS, dtype=DTYPE, device=DEVICE)
    run = {
        "fused+count (packed)": lambda: fused.silu_mul_triton(gate, up, lang_ids, counts, out=out),
        "fused+count (contiguous)": lambda: fused.silu_mul_triton(gate_c, up_c, lang_ids, counts, out=out),
        "fused (packed)": lambda: fused.silu_mul_triton(gate, up, out=out),
        "fused (contiguous)": lambda: fused.silu_mul_triton(gate_c, up_c, out=out),
        "fused+mask (packed)": lambda: fused.silu_mul_triton(gate, up, masks=masks, mask_ids=mask_ids, out=out),
        "fused+count+mask (packed)": lambda: fused.silu_mul_triton(gate, up, lang_ids, counts, masks, mask_ids,
                                                                   out=out),
        "torch silu*up": lambda: F.silu(gate) * up,
        "unfused torch + per-language count": lambda: silu_mul_native(gate, up, lang_ids, counts),
        "lna torch path + count": lambda: silu_mul_torch(gate, up, lang_ids, counts),
    }
    ms = {}
    for name, fn in run.items():
        ms[name] = timer(fn, reps=timer.reps if name.startswith("fused") else max(10, timer.reps // 5))
    moved = 3 * n_tokens * N_NEURONS * gate.element_size()
    gbs = {name: moved / (t * 1e-3) / 1e9 for name, t in ms.items()}
    return {
        "ms": {k: round(v, 4) for k, v in ms.items()},
        "gb_per_s": {k: round(v, 1) for k, v in gbs.items()},
        "fraction_of_copy": {k: round(v / copy_gbs, 3) for k, v in gbs.items() if k.startswith("fused")},
        "ratios": {
            "count_overhead": round(ms["fused+count (packed)"] / ms["fused (packed)"] - 1, 4),
            "count_overhead_contiguous": round(ms["fused+count (contiguous)"] / ms["fused (contiguous)"] - 1, 4),
            "unfused / fused+count": round(ms["unfused torch + per-language count"] / ms["fused+count (packed)"], 2),
            "torch silu*up / fused": round(ms["torch silu*up"] / ms["fused (packed)"], 2),
        },
        "config": fused.default_config(n_tokens, N_NEURONS, gate.device)._asdict(),
    }


def sweep_configs(fused, timer):
    """Launch configurations at T = 8192, with and without counting (fastest first)."""
    n_tokens = TOKENS[-1]
    gate_up, lang_ids, _, _ = make_inputs(n_tokens)
    gate, up = gate_up[:, :N_NEURONS], gate_up[:, N_NEURONS:]
    counts = torch.zeros(N_LANGS, N_NEURONS, dtype=torch.int64, device=DEVICE)
    out = torch.empty(n_tokens, N_NEURONS, dtype=DTYPE, device=DEVICE)
    rows = []
    for block_t in (16, 32, 64):
        for block_i in (64, 128, 256):
            for num_warps in (4, 8):
                per_thread = block_t * block_i // (32 * num_warps)
                if not 4 <= per_thread <= 64:
                    continue
                for programs_per_sm in ((4, 8, 16) if (block_t, block_i) == (32, 128) else (8,)):
                    cfg = fused.default_config(n_tokens, N_NEURONS, gate.device, block_t=block_t, block_i=block_i,
                                               num_warps=num_warps, programs_per_sm=programs_per_sm)
                    row = {"block_t": block_t, "block_i": block_i, "num_warps": num_warps,
                           "programs_per_sm": programs_per_sm, "tokens_per_program": cfg.tokens_per_program}
                    try:
                        row["ms_count"] = round(timer(lambda: fused.silu_mul_triton(
                            gate, up, lang_ids, counts, config=cfg, out=out)), 4)
                        row["ms_plain"] = round(timer(lambda: fused.silu_mul_triton(gate, up, config=cfg, out=out)), 4)
                    except Exception as error:  # e.g. out of registers or shared memory for this tile
                        row["error"] = f"{type(error).__name__}: {str(error)[:200]}"
                    rows.append(row)
    for precise in (True,):  # the precise exp and division (used for fp32) on bf16: their cost
        ms = timer(lambda: fused.silu_mul_triton(gate, up, lang_ids, counts, out=out, precise=precise))
        rows.append({"default_config_precise": precise, "ms_count": round(ms, 4)})
    return sorted(rows, key=lambda r: r.get("ms_count", float("inf")))


def check_correctness(fused, gemm, silu_mul_native):
    """Exact counts and the output rule on the device, for bf16, fp16 and fp32."""
    report = {}
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        report[str(dtype).removeprefix("torch.")] = attempt(check_dtype, dtype, fused, silu_mul_native)
    report["gemm_epilogue_bf16"] = attempt(check_gemm, gemm)
    return report


def check_dtype(dtype, fused, silu_mul_native):
    """The fused kernel with counts and masks against the reference, on the device."""
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    n_tokens = 2048
    gate_up = (torch.randn(n_tokens, 2 * N_NEURONS, device=DEVICE, generator=gen) * 3).to(dtype)
    gate, up = gate_up[:, :N_NEURONS], gate_up[:, N_NEURONS:]
    lang_ids = torch.randint(-1, N_LANGS, (n_tokens,), device=DEVICE, generator=gen, dtype=torch.int32)
    masks = torch.rand(N_MASKS, N_NEURONS, device=DEVICE, generator=gen) < 0.3
    mask_ids = torch.randint(-1, N_MASKS, (n_tokens,), device=DEVICE, generator=gen, dtype=torch.int32)
    counts = torch.zeros(N_LANGS, N_NEURONS, dtype=torch.int64, device=DEVICE)
    expected_counts = counts.clone()
    out = fused.silu_mul_triton(gate, up, lang_ids, counts, masks, mask_ids)
    expected = silu_mul_native(gate, up, lang_ids, expected_counts, masks, mask_ids)
    dropped = masks[mask_ids.clamp(min=0).long()] & (mask_ids >= 0)[:, None]
    ref = torch.where(dropped, 0.0, F.silu(gate.double())) * up.double()
    err, torch_err = (out.double() - ref).abs().max().item(), (expected.double() - ref).abs().max().item()
    report = {
        "counts_exact": bool(torch.equal(counts, expected_counts)),
        "output_bit_equal_to_torch_fraction": round((out == expected).double().mean().item(), 6),
        "max_error_vs_float64": err,
        "torch_max_error_vs_float64": torch_err,
        "dtype_rule_holds": err <= 2 * torch_err,
    }
    if dtype != torch.float32:  # what the precise exp and division (the fp32 default) would give
        precise = fused.silu_mul_triton(gate, up, masks=masks, mask_ids=mask_ids, precise=True)
        report["precise_output_bit_equal_to_torch_fraction"] = round((precise == expected).double().mean().item(), 6)
    return report


def check_gemm(gemm):
    """The GEMM epilogue: sign flips of near-zero gates against cuBLAS."""
    gen = torch.Generator(device=DEVICE).manual_seed(2)
    x = torch.randn(2048, HIDDEN, device=DEVICE, generator=gen).to(DTYPE)
    w = (torch.randn(2 * N_NEURONS, HIDDEN, device=DEVICE, generator=gen) / HIDDEN**0.5).to(DTYPE)
    lang_ids = torch.randint(-1, N_LANGS, (2048,), device=DEVICE, generator=gen, dtype=torch.int32)
    counts = torch.zeros(N_LANGS, N_NEURONS, dtype=torch.int64, device=DEVICE)
    expected_counts = counts.clone()
    out = gemm.gemm_silu_mul(x, w[:N_NEURONS], w[N_NEURONS:], lang_ids, counts)
    expected = gemm.gemm_silu_mul_native(x, w[:N_NEURONS], w[N_NEURONS:], lang_ids, expected_counts)
    ref = F.silu(x.double() @ w[:N_NEURONS].double().T) * (x.double() @ w[N_NEURONS:].double().T)
    counted = int((lang_ids >= 0).sum()) * N_NEURONS
    return {
        "count_differences": int((counts - expected_counts).abs().sum()),
        "count_difference_fraction": (counts - expected_counts).abs().sum().item() / counted,
        "max_error_vs_float64": (out.double() - ref).abs().max().item(),
        "cublas_path_max_error_vs_float64": (expected.double() - ref).abs().max().item(),
    }


def time_gemm(n_tokens, fused, gemm, timer):
    """x @ W_gate_up^T with counting: cuBLAS + the fused kernel vs the GEMM epilogue."""
    gen = torch.Generator(device=DEVICE).manual_seed(3)
    x = torch.randn(n_tokens, HIDDEN, device=DEVICE, generator=gen).to(DTYPE)
    w = (torch.randn(2 * N_NEURONS, HIDDEN, device=DEVICE, generator=gen) / HIDDEN**0.5).to(DTYPE)
    lang_ids = torch.randint(-1, N_LANGS, (n_tokens,), device=DEVICE, generator=gen, dtype=torch.int32)
    counts = torch.zeros(N_LANGS, N_NEURONS, dtype=torch.int64, device=DEVICE)

    def unfused():
        gate_up = x @ w.T
        return fused.silu_mul_triton(gate_up[:, :N_NEURONS], gate_up[:, N_NEURONS:], lang_ids, counts)

    ms = {
        "cublas gate_up": timer(lambda: x @ w.T),
        "cublas + fused+count": timer(unfused),
        "gemm epilogue + count": timer(lambda: gemm.gemm_silu_mul(x, w[:N_NEURONS], w[N_NEURONS:], lang_ids, counts)),
    }
    flops = 2 * n_tokens * HIDDEN * 2 * N_NEURONS
    return {
        "ms": {k: round(v, 4) for k, v in ms.items()},
        "tflop_per_s": {k: round(flops / (v * 1e-3) / 1e12, 1) for k, v in ms.items()},
        "gemm_epilogue / (cublas + fused)": round(ms["gemm epilogue + count"] / ms["cublas + fused+count"], 3),
        "gemm_epilogue_wins": ms["gemm epilogue + count"] < ms["cublas + fused+count"],
    }


if __name__ == "__main__":
    started = time.time()
    status = main()
    if status == 0:  # a refusal stays one line
        print(f"gpu_silu_mul: {time.time() - started:.0f} s", file=sys.stderr)
    sys.exit(status)
