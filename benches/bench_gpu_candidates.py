"""The candidates stage of benches/bench_gpu_check.py: the speed work of issue 15, measured side by
side so that the first GPU run decides (nothing here changes what the runners do).

- gate_up: the transformers MLP's two GEMMs (gate_proj, up_proj) + silu_mul, against one
  GEMM on the concatenated [2I, H] weight + silu_mul_packed (vLLM's layout), at the token
  budget of a batch (16384 tokens), Mistral-7B's MLP, bf16, counting on.
- attention for shared-prompt packed rows, on the largest batch of the end-to-end workload
  (Mistral-7B's heads): building the dense 4D mask (lna.runners.packing.attention_mask), SDPA as
  transformers runs it with that additive mask (K/V repeated for GQA), the same with a bool
  mask, a bool mask with SDPA's own GQA (no repeat), causal SDPA without any mask (flash;
  a lower bound only: it ignores the packing) and flex_attention with a block mask built from
  the segment ids (compiled on CUDA, when a minute is left; its compile time is reported
  apart). Outputs of the exact variants are compared with the dense-mask one.
- launch configurations of the fused kernel at T = 8192 (bench_gpu_silu_mul.sweep_configs).
"""
import time
import warnings
from types import SimpleNamespace

import torch
import torch.nn.functional as F

import bench_profile
import common
import bench_gpu_silu_mul

MISTRAL = bench_profile.CONFIGS["mistral-7b"]


def run(stage):
    kernels = common.lna_kernels()
    dry = stage.dry
    timer = common.Timer(stage.device, reps=2 if dry else 30, warmup=1 if dry else 3)
    shape = (64, 64, 96) if dry else (16384, MISTRAL["hidden_size"], MISTRAL["intermediate_size"])
    stage.section("gate_up", gate_up, kernels, timer, stage.device, *shape)
    held = {}

    def packed_batch():
        held["batch"] = batch = largest_batch(dry)
        return {k: batch[k] for k in ("rows", "width", "real_tokens")}

    stage.section("packed_batch", packed_batch)
    batch = held.get("batch")
    if batch:
        stage.section("attention", attention, timer, stage.device, batch, dry)
    if batch:  # compiling it takes tens of seconds: it runs only with a minute to spare
        stage.section("flex_attention", flex, timer, stage.device, batch, dry, min_left=5 if dry else 60)
    stage.section("launch_configs", bench_gpu_silu_mul.sweep_configs, stage.device, timer, 64 if dry else 8192,
                  256 if dry else bench_gpu_silu_mul.N_NEURONS, dry)


def gate_up(kernels, timer, device, n_tokens, hidden, n_neurons):
    gen = torch.Generator(device=device).manual_seed(4)
    x = torch.randn(n_tokens, hidden, device=device, generator=gen).to(torch.bfloat16)
    w = (torch.randn(2 * n_neurons, hidden, device=device, generator=gen) / hidden**0.5).to(torch.bfloat16)
    w_gate, w_up = w[:n_neurons].contiguous(), w[n_neurons:].contiguous()
    lang_ids = torch.randint(-1, 10, (n_tokens,), device=device, generator=gen, dtype=torch.int32)
    counts = torch.zeros(10, n_neurons, dtype=torch.int64, device=device)
    ms = {
        "two GEMMs (gate_proj, up_proj)": timer(lambda: (x @ w_gate.T, x @ w_up.T)),
        "one GEMM (gate_up)": timer(lambda: x @ w.T),
        "two GEMMs + silu_mul count": timer(lambda: kernels.silu_mul(
            x @ w_gate.T, x @ w_up.T, lang_ids=lang_ids, counts=counts, check_ids=False)),
        "one GEMM + silu_mul_packed count": timer(lambda: kernels.silu_mul_packed(
            x @ w.T, lang_ids=lang_ids, counts=counts, check_ids=False)),
    }
    flops = 2 * n_tokens * hidden * 2 * n_neurons
    return {"shape": {"tokens": n_tokens, "hidden": hidden, "neurons": n_neurons, "dtype": "bfloat16"},
            "ms": {k: round(v, 4) for k, v in ms.items()},
            "gemm_tflop_per_s": {k: round(flops / (v * 1e-3) / 1e12, 1) for k, v in ms.items() if "silu" not in k},
            "fused_over_separate": round(ms["one GEMM + silu_mul_packed count"] / ms["two GEMMs + silu_mul count"], 3)}


def largest_batch(dry):
    """The widest packed batch the end-to-end workload gives the runner (its real shape)."""
    from lna.runners import packing

    questions, scale, budget, max_row = (1, 0.2, 256, 128) if dry else (12, 1.0, 16384, 2048)
    samples = bench_profile.workload(questions, 10, scale, vocab=512 if dry else 32000)
    batches = packing.plan_batches(packing.plan_rows(samples, max_row), budget)
    rows = max(batches, key=lambda b: max(r.length for r in b))
    batch = packing.build_batch(rows, samples, {k: i for i, k in enumerate(bench_profile.RESPONSE_MEAN)})
    real = int((batch.segment >= 0).sum())
    return {"rows": batch.segment.shape[0], "width": batch.segment.shape[1], "real_tokens": real,
            "segment": batch.segment.tolist(), "position_ids": batch.position_ids.tolist()}


def attention_inputs(device, batch, dry):
    heads, kv_heads, head_dim = (2, 1, 32) if dry else (MISTRAL["num_attention_heads"], MISTRAL["num_key_value_heads"],
                                                        MISTRAL["hidden_size"] // MISTRAL["num_attention_heads"])
    b, s = batch["rows"], batch["width"]
    gen = torch.Generator(device=device).manual_seed(5)
    q = torch.randn(b, heads, s, head_dim, device=device, generator=gen).to(torch.bfloat16)
    k, v = (torch.randn(b, kv_heads, s, head_dim, device=device, generator=gen).to(torch.bfloat16) for _ in range(2))
    seg = torch.tensor(batch["segment"], device=device)
    pos = torch.tensor(batch["position_ids"], device=device)
    return q, k, v, seg, pos, heads // kv_heads


def attention(timer, device, batch, dry):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from lna.runners import packing

    q, k, v, seg, pos, groups = attention_inputs(device, batch, dry)
    module = SimpleNamespace(num_key_value_groups=groups, is_causal=True, training=False)
    additive = packing.attention_mask(seg, pos, torch.bfloat16)
    allowed = additive == 0  # the same pattern as a bool mask (True = attend)

    def hf(mask):
        return sdpa_attention_forward(module, q, k, v, mask)[0]

    variants = {
        "dense additive mask (today)": lambda: hf(additive),
        "bool mask": lambda: hf(allowed),
        "bool mask, SDPA's own GQA": lambda: F.scaled_dot_product_attention(  # [B, S, H, D] as transformers'
            q, k, v, attn_mask=allowed, enable_gqa=True).transpose(1, 2),
        "causal, no mask (flash; lower bound, ignores packing)": lambda: hf(None),
    }
    ms = {"build dense mask": timer(lambda: packing.attention_mask(seg, pos, torch.bfloat16))}
    ms |= {name: timer(fn) for name, fn in variants.items()}
    reference = hf(additive).float()
    differs = {}
    for name in ("bool mask", "bool mask, SDPA's own GQA"):
        differs[name] = (variants[name]().float() - reference).abs().max().item()
    return {"shape": {"rows": batch["rows"], "width": batch["width"], "real_tokens": batch["real_tokens"],
                      "heads": q.shape[1], "kv_heads": k.shape[1], "head_dim": q.shape[-1], "dtype": "bfloat16"},
            "ms_per_layer": {k_: round(v_, 4) for k_, v_ in ms.items()},
            "max_abs_difference_vs_dense": differs,
            "layers": 2 if dry else MISTRAL["num_hidden_layers"]}


def flex(timer, device, batch, dry):
    """flex_attention with the packing as a mask_mod over segment ids (compiled on CUDA)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from lna.runners import packing

    q, k, v, seg, pos, groups = attention_inputs(device, batch, dry)

    def mask_mod(b, h, q_idx, kv_idx):
        sq, sk = seg[b, q_idx], seg[b, kv_idx]
        same = (sk >= 0) & ((sk == 0) | (sk == sq)) & (kv_idx <= q_idx)
        return same | ((sq < 0) & (q_idx == kv_idx))

    if dry:  # eager flex attention is a slow reference; on CUDA it is compiled
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
    started = time.time()
    block_mask = create_block_mask(mask_mod, batch["rows"], None, batch["width"], batch["width"], device=device)
    fn = flex_attention if dry else torch.compile(flex_attention)
    out = fn(q, k, v, block_mask=block_mask, enable_gqa=True)
    common.sync(device)
    first_call_s = time.time() - started
    module = SimpleNamespace(num_key_value_groups=groups, is_causal=True, training=False)
    reference = sdpa_attention_forward(module, q, k, v, packing.attention_mask(seg, pos, torch.bfloat16))[0]
    ms = {"block mask": timer(lambda: create_block_mask(mask_mod, batch["rows"], None, batch["width"],
                                                        batch["width"], device=device)),
          "flex_attention": timer(lambda: fn(q, k, v, block_mask=block_mask, enable_gqa=True))}
    return {"compiled": not dry, "first_call_seconds (compile)": round(first_call_s, 2),
            "ms_per_layer": {k_: round(v_, 4) for k_, v_ in ms.items()},
            "max_abs_difference_vs_dense": (out.transpose(1, 2).float() - reference.float()).abs().max().item()}
