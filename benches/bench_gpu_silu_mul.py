"""The kernels stage of benches/bench_gpu_check.py: correctness, speed and the GEMM epilogue on the GPU.

1. copy bandwidth: a device-to-device copy, the memory ceiling (bytes read + written);
2. correctness of every supported case of bench_gpu_cases.CASES at odd and realistic shapes;
3. speed at T in {2048, 8192}, I = 14336, bf16 (dry run: tiny shapes on CPU): every
   speed=True case of bench_gpu_cases.CASES through the public API (what the runners call), the plain
   torch F.silu(gate) * up, the unfused torch path with a per-language count (hook style) and
   lna's own torch path. Times are CUDA events around each call, median of many, warm-up
   excluded, L2 flushed before every call. GB/s counts the bytes the function must move
   (read gate and up, write the output). Targets (docs/design.md, "Performance targets"):
   counting adds <= 2% to the plain fused kernel; fused+count reaches >= 90% of copy
   bandwidth at T = 8192;
4. the GEMM-epilogue variant (lna.kernels.gemm_silu_mul) against cuBLAS gate_up + the fused
   kernel: count differences from near-zero gates, errors, and time (it stays only if it wins).
The launch-configuration sweep runs in the candidates stage (sweep_configs below).
"""
from dataclasses import replace

import torch
import torch.nn.functional as F

import common
import bench_gpu_cases
from bench_gpu_cases import Case

N_NEURONS, HIDDEN, N_LANGS = 14336, 4096, bench_gpu_cases.N_LANGS
SPEED_TOKENS = {"cuda": (2048, 8192), "dry": (64,)}
# (case, its baseline): the cost of what the case adds
OVERHEADS = {
    "count_overhead": ("packed count", "packed plain"),
    "count_overhead_contiguous": ("count", "plain"),
    "mask_overhead": ("packed mask", "packed plain"),
    "gelu_tanh_count_overhead": ("gelu_tanh packed count", "gelu_tanh packed plain"),
    "sums_overhead_over_count": ("packed count+sums", "packed count"),
    "values_overhead_over_mask": ("packed values", "packed mask"),
}


def run(stage):
    kernels = common.lna_kernels()
    dry = stage.dry
    timer = common.Timer(stage.device, reps=2 if dry else 100, warmup=1 if dry else 5)
    copy = stage.section("copy_gb_per_s", lambda: round(common.copy_bandwidth(timer, 2**20 if dry else 2**30), 1))
    # correctness first, but the speed sections keep ~70 s of the stage (compiles dominate both)
    stage.section("correctness", bench_gpu_cases.check_all, stage, kernels,
                  stage.left() if dry else max(30.0, min(120.0, stage.left() - 70)))
    n_neurons = 256 if dry else N_NEURONS
    speed = {}
    for n_tokens in SPEED_TOKENS["dry" if dry else "cuda"]:
        speed[str(n_tokens)] = stage.section(f"speed_{n_tokens}", time_kernels, stage, kernels, timer, n_tokens,
                                             n_neurons, copy if isinstance(copy, float) else None)
    stage.section("verdict", verdict, speed)
    tokens = (32,) if dry else (2048, 8192)
    shape = (64, 96) if dry else (HIDDEN, N_NEURONS)
    stage.section("gemm_epilogue_check", check_gemm, stage.device, 32 if dry else 2048, *shape)
    gemm = {str(t): stage.section(f"gemm_epilogue_{t}", time_gemm, kernels, timer, stage.device, t, *shape)
            for t in tokens}
    stage.section("gemm_epilogue_keep", lambda: all(isinstance(r, dict) and r.get("gemm_epilogue_wins", False)
                                                     for r in gemm.values()))


def time_kernels(stage, kernels, timer, n_tokens, n_neurons, copy_gbs):
    dtype = torch.bfloat16
    everything = Case("all", count=True, mask=True, sums=True, values=True)
    layouts = {packed: bench_gpu_cases.make_inputs(replace(everything, packed=packed), n_tokens, n_neurons,
                                             dtype, stage.device) for packed in (True, False)}
    run, unsupported = {}, []
    for case in bench_gpu_cases.CASES:
        if not case.speed:
            continue
        if bench_gpu_cases.missing(case, kernels):
            unsupported.append(case.name)
            continue
        inp = layouts[case.packed]
        kw = bench_gpu_cases.kwargs(case, inp, fresh=lambda t: t)  # tables accumulate over repetitions
        run[case.name] = (lambda case=case, inp=inp, kw=kw:
                          bench_gpu_cases.call(kernels, case, inp, kw, check_ids=False))
    inp = layouts[True]
    counts = inp.counts.clone()
    baselines = {
        "torch silu*up": lambda: F.silu(inp.gate) * inp.up,
        "unfused torch + per-language count": lambda: kernels.silu_mul_native(inp.gate, inp.up, lang_ids=inp.lang_ids,
                                                                              counts=counts),
        "lna torch path + count": lambda: kernels.silu_mul(inp.gate, inp.up, lang_ids=inp.lang_ids, counts=counts,
                                                           backend="torch", check_ids=False),
    }
    ms = {}
    for name, fn in run.items():
        ms[name] = timer(fn)
    for name, fn in baselines.items():
        ms[name] = timer(fn, reps=max(2, timer.reps // 5))
    moved = 3 * n_tokens * n_neurons * inp.gate.element_size()
    gbs = {name: moved / (t * 1e-3) / 1e9 for name, t in ms.items()}
    report = {
        "shape": {"tokens": n_tokens, "neurons": n_neurons, "languages": N_LANGS, "masks": bench_gpu_cases.N_MASKS,
                  "dtype": "bfloat16"},
        "ms": {k: round(v, 4) for k, v in ms.items()},
        "gb_per_s": {k: round(v, 1) for k, v in gbs.items()},
        "ratios": {key: round(ms[a] / ms[b] - 1, 4) for key, (a, b) in OVERHEADS.items() if a in ms and b in ms},
        "unsupported": unsupported,
    }
    if copy_gbs:
        report["fraction_of_copy"] = {k: round(v / copy_gbs, 3) for k, v in gbs.items() if k in run}
    if "packed count" in ms:
        report["ratios"]["unfused / fused+count"] = round(ms["unfused torch + per-language count"] / ms["packed count"], 2)
    if "packed plain" in ms:
        report["ratios"]["torch silu*up / fused"] = round(ms["torch silu*up"] / ms["packed plain"], 2)
    try:  # the launch configuration the kernel chose (internal API: absent is fine)
        import lna.kernels.silu_mul_triton as fused

        report["config"] = fused.default_config(n_tokens, n_neurons, inp.gate.device)._asdict()
    except Exception as error:
        report["config"] = f"unknown ({type(error).__name__})"
    return report


def verdict(speed):
    big = speed[max(speed, key=int)]
    overhead = big["ratios"]["count_overhead"]
    fraction = big.get("fraction_of_copy", {}).get("packed count")
    return {"tokens": int(max(speed, key=int)), "count_overhead": overhead, "fraction_of_copy": fraction,
            "meets_count_target": overhead <= 0.02,
            "meets_bandwidth_target": None if fraction is None else fraction >= 0.9}


def gemm_inputs(device, n_tokens, hidden, n_neurons, seed):
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n_tokens, hidden, device=device, generator=gen).to(torch.bfloat16)
    w = (torch.randn(2 * n_neurons, hidden, device=device, generator=gen) / hidden**0.5).to(torch.bfloat16)
    lang_ids = torch.randint(-1, N_LANGS, (n_tokens,), device=device, generator=gen, dtype=torch.int32)
    return x, w, lang_ids


def check_gemm(device, n_tokens, hidden, n_neurons):
    """The GEMM epilogue in bf16: sign flips of near-zero gates against cuBLAS, output errors."""
    import lna.kernels.gemm_silu_mul as gemm

    x, w, lang_ids = gemm_inputs(device, n_tokens, hidden, n_neurons, 2)
    counts = torch.zeros(N_LANGS, n_neurons, dtype=torch.int64, device=device)
    expected_counts = counts.clone()
    w_gate, w_up = w[:n_neurons], w[n_neurons:]
    out = gemm.gemm_silu_mul(x, w_gate, w_up, lang_ids, counts)
    expected = gemm.gemm_silu_mul_native(x, w_gate, w_up, lang_ids, expected_counts)
    ref = F.silu(x.double() @ w_gate.double().T) * (x.double() @ w_up.double().T)
    counted = int((lang_ids >= 0).sum()) * n_neurons
    return {
        "shape": {"tokens": n_tokens, "hidden": hidden, "neurons": n_neurons, "dtype": "bfloat16"},
        "count_differences": int((counts - expected_counts).abs().sum()),
        "count_difference_fraction": (counts - expected_counts).abs().sum().item() / max(1, counted),
        "max_error_vs_float64": (out.double() - ref).abs().max().item(),
        "cublas_path_max_error_vs_float64": (expected.double() - ref).abs().max().item(),
    }


def time_gemm(kernels, timer, device, n_tokens, hidden, n_neurons):
    """x @ W_gate_up^T with counting: cuBLAS + the fused kernel vs the GEMM epilogue."""
    import lna.kernels.gemm_silu_mul as gemm

    x, w, lang_ids = gemm_inputs(device, n_tokens, hidden, n_neurons, 3)
    counts = torch.zeros(N_LANGS, n_neurons, dtype=torch.int64, device=device)

    def unfused():
        return kernels.silu_mul_packed(x @ w.T, lang_ids=lang_ids, counts=counts, check_ids=False)

    ms = {
        "cublas gate_up": timer(lambda: x @ w.T),
        "cublas + fused+count": timer(unfused),
        "gemm epilogue + count": timer(lambda: gemm.gemm_silu_mul(x, w[:n_neurons], w[n_neurons:], lang_ids, counts)),
    }
    flops = 2 * n_tokens * hidden * 2 * n_neurons
    return {
        "shape": {"tokens": n_tokens, "hidden": hidden, "neurons": n_neurons, "dtype": "bfloat16"},
        "ms": {k: round(v, 4) for k, v in ms.items()},
        "tflop_per_s": {k: round(flops / (v * 1e-3) / 1e12, 1) for k, v in ms.items()},
        "gemm_epilogue / (cublas + fused)": round(ms["gemm epilogue + count"] / ms["cublas + fused+count"], 3),
        "gemm_epilogue_wins": ms["gemm epilogue + count"] < ms["cublas + fused+count"],
    }


def sweep_configs(device, timer, n_tokens, n_neurons, dry=False):
    """Launch configurations of the fused kernel (internal API), with and without counting,
    fastest first; the default configuration is marked."""
    import lna.kernels.silu_mul_triton as fused

    inp = bench_gpu_cases.make_inputs(Case("sweep", count=True, packed=True), n_tokens, n_neurons, torch.bfloat16,
                                      device)
    counts = inp.counts
    grid = ((64, 256, 4, 8),) if dry else [
        (bt, bi, nw, pps) for bt in (16, 32, 64) for bi in (64, 128, 256) for nw in (4, 8)
        for pps in ((4, 8, 16) if (bt, bi) == (32, 128) else (8,)) if 4 <= bt * bi // (32 * nw) <= 64]
    default = fused.default_config(n_tokens, n_neurons, inp.gate.device)
    rows = []
    for block_t, block_i, num_warps, per_sm in grid:
        cfg = default if dry else fused.default_config(n_tokens, n_neurons, inp.gate.device, block_t=block_t,
                                                       block_i=block_i, num_warps=num_warps, programs_per_sm=per_sm)
        row = {"block_t": cfg.block_t, "block_i": cfg.block_i, "num_warps": cfg.num_warps, "programs_per_sm": per_sm,
               "tokens_per_program": cfg.tokens_per_program, "default": cfg == default}
        try:
            row["ms_count"] = round(timer(lambda: fused.silu_mul_triton(inp.gate, inp.up, inp.lang_ids, counts,
                                                                         config=cfg)), 4)
            row["ms_plain"] = round(timer(lambda: fused.silu_mul_triton(inp.gate, inp.up, config=cfg)), 4)
        except Exception as error:  # e.g. out of registers or shared memory for this tile
            row["error"] = f"{type(error).__name__}: {str(error)[:200]}"
        rows.append(row)
    return sorted(rows, key=lambda r: r.get("ms_count", float("inf")))
