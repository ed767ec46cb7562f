"""The CPU path of lna.kernels.silu_mul against plain SiLU*up and the naive unfused count.

Side by side, per dtype, at an MLP of Mistral-7B's width (I = 14336) and T tokens:
- plain: F.silu(gate) * up, what transformers' LlamaMLP computes (the baseline);
- lna: silu_mul(gate, up) without counting (same work as plain, through the dispatch);
- lna+count: silu_mul(gate, up, lang_ids=..., counts=...), 10 languages and prompt tokens (-1) mixed;
- lna+count+sums: the same plus both float64 activation-sum tables (sums=, active_sums=), what
  profiling for steering runs;
- lna+mask / lna+set: 4 interventions chosen per token (30% of the neurons each), zeroed
  (masks) or set to float32 values (values=), what ablation and steering run;
- lna gelu+count: counting with activation="gelu_tanh" (Gemma's MLP);
- naive: the hook-style path, SiLU*up then (gate > 0) summed per language, one pass per language;
- copy: gate.copy_ into a preallocated tensor, the memory ceiling of this machine.
GB/s counts the bytes the fused function must move: read gate and up, write the output.
Counting's cost is lna+count / lna (same allocations; plain allocates one more [T, I]
temporary than lna); the sums' cost is lna+count+sums / lna+count; setting's cost is
lna+set / lna+mask. The CPU target is <= 5% of a whole transformers forward, whose matmuls
dwarf this function.

Run: pytest benches/bench_silu_mul.py   (writes benches/results/silu_mul_cpu.json)
"""
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from lna.kernels import silu_mul, silu_mul_native  # noqa: E402

N_TOKENS, N_NEURONS, N_LANGS = 2048, 14336, 10
DTYPES = ("float32", "bfloat16")
VARIANTS = ("plain", "lna", "lna+count", "lna+count+sums", "lna+mask", "lna+set", "lna gelu+count", "naive", "copy")
N_MASKS = 4
ROUNDS = 15

_times = {}  # (dtype, variant) -> {"min": s, "median": s}


@pytest.fixture(scope="module")
def one_core():
    with common.one_core():
        yield


@pytest.fixture(scope="module")
def report(one_core):  # torn down (and the file written) while still on one core
    yield _times
    if len(_times) == len(DTYPES) * len(VARIANTS):  # a full run (not a -k subset)
        _write(_times)


def make_inputs(dtype):
    gen = torch.Generator().manual_seed(0)
    gate = torch.randn(N_TOKENS, N_NEURONS, generator=gen).to(getattr(torch, dtype))
    up = torch.randn(N_TOKENS, N_NEURONS, generator=gen).to(getattr(torch, dtype))
    lang_ids = torch.randint(-1, N_LANGS, (N_TOKENS,), generator=gen, dtype=torch.int32)
    counts = torch.zeros(N_LANGS, N_NEURONS, dtype=torch.int64)
    masks = torch.rand(N_MASKS, N_NEURONS, generator=gen) < 0.3
    mask_ids = torch.randint(-1, N_MASKS, (N_TOKENS,), generator=gen, dtype=torch.int32)
    values = torch.randn(N_MASKS, N_NEURONS, generator=gen)
    return gate, up, lang_ids, counts, masks, mask_ids, values


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_cpu(benchmark, report, one_core, dtype, variant):
    gate, up, lang_ids, counts, masks, mask_ids, values = make_inputs(dtype)
    sums, active_sums = (torch.zeros(N_LANGS, N_NEURONS, dtype=torch.float64) for _ in range(2))
    copy_target = torch.empty_like(gate)
    run = {
        "plain": lambda: F.silu(gate) * up,
        "lna": lambda: silu_mul(gate, up),
        "lna+count": lambda: silu_mul(gate, up, lang_ids=lang_ids, counts=counts, check_ids=False),
        "lna+count+sums": lambda: silu_mul(gate, up, lang_ids=lang_ids, counts=counts, sums=sums,
                                           active_sums=active_sums, check_ids=False),
        "lna+mask": lambda: silu_mul(gate, up, masks=masks, mask_ids=mask_ids, check_ids=False),
        "lna+set": lambda: silu_mul(gate, up, masks=masks, mask_ids=mask_ids, values=values, check_ids=False),
        "lna gelu+count": lambda: silu_mul(gate, up, lang_ids=lang_ids, counts=counts, activation="gelu_tanh",
                                           check_ids=False),
        "naive": lambda: silu_mul_native(gate, up, lang_ids, counts),
        "copy": lambda: copy_target.copy_(gate),
    }[variant]
    benchmark.group = f"silu_mul cpu {dtype} T={N_TOKENS} I={N_NEURONS}"
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    stats = benchmark.stats.stats
    report[(dtype, variant)] = {"min": stats.min, "median": stats.median}

    if variant in ("lna+count", "lna+count+sums"):  # the timed calls counted for real
        expected = torch.zeros_like(counts)
        silu_mul_native(gate, up, lang_ids, expected)
        assert torch.equal(counts, expected * (ROUNDS + 1))


def _write(times):
    element = {"float32": 4, "bfloat16": 2}
    result = {
        "benchmark": "silu_mul CPU path (torch) vs plain SiLU*up and the naive per-language count",
        "shape": {"tokens": N_TOKENS, "neurons": N_NEURONS, "languages": N_LANGS,
                  "counted_tokens": "about 10/11 (ids drawn from -1..9)",
                  "interventions": f"{N_MASKS} per batch, 30% of the neurons each, ids drawn from -1..{N_MASKS - 1}",
                  "sums_tables": "float64 [languages, neurons], sums and active_sums"},
        "timing": f"min and median of {ROUNDS} rounds after one warm-up, seconds",
        "results": {},
        "device": common.machine("cpu", threads=1),
        "versions": common.versions(),
    }
    for dtype in DTYPES:
        t = {v: times[(dtype, v)]["min"] for v in VARIANTS}
        moved = 3 * N_TOKENS * N_NEURONS * element[dtype]  # read gate and up, write the output
        copy_gbs = 2 * N_TOKENS * N_NEURONS * element[dtype] / t["copy"] / 1e9
        result["results"][dtype] = {
            "seconds_min": {v: round(t[v], 5) for v in VARIANTS},
            "seconds_median": {v: round(times[(dtype, v)]["median"], 5) for v in VARIANTS},
            "gb_per_s": {v: round(moved / t[v] / 1e9, 2) for v in VARIANTS if v != "copy"}
            | {"copy": round(copy_gbs, 2)},
            "ratios": {
                "lna+count / lna": round(t["lna+count"] / t["lna"], 3),
                "lna+count / plain": round(t["lna+count"] / t["plain"], 3),
                "lna / plain": round(t["lna"] / t["plain"], 3),
                "lna+count+sums / lna+count": round(t["lna+count+sums"] / t["lna+count"], 3),
                "lna+mask / lna": round(t["lna+mask"] / t["lna"], 3),
                "lna+set / lna+mask": round(t["lna+set"] / t["lna+mask"], 3),
                "lna+set / lna": round(t["lna+set"] / t["lna"], 3),
                "lna gelu+count / lna+count": round(t["lna gelu+count"] / t["lna+count"], 3),
                "naive / lna+count": round(t["naive"] / t["lna+count"], 3),
                "lna+count GB/s / copy GB/s": round(moved / t["lna+count"] / 1e9 / copy_gbs, 3),
            },
        }
    common.write("silu_mul_cpu", result)
    print(json.dumps(result, indent=2))

