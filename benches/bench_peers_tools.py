"""The force-decoding count through each tool, as a competent user of that tool writes it.

Every tool gets the same token ids (prompt, response) per sample and returns int64 counts
[layer, language, neuron] of SiLU(gate) > 0 (equivalently gate > 0) over response tokens.
Each runs in a process of its own (benches/bench_peers.py --worker), timed in phases:
`imports` (the tool's own imports), `load` (model and tokenizer), `count`.

Tools (NAME or NAME@THREADS):
  lna           lna's engine (lna.runners.hf.HFRunner.count): shared-prompt packed rows, no
                padding through the MLPs, counting in the fused kernel
  lna_sums      the same, also summing activations per language (lna-profile's default)
  lna_nocount   the same batches with counting off (the cost of counting, not a count)
  lna_profile   the lna-profile command itself on the workload's JSONL (whole process only;
                its counts are read back from the store it writes)
  hooks_b1      transformers + a forward hook on each MLP's act_fn, one sequence per forward
  hooks         the same, length-sorted right-padded batches under a token budget
  nnsight_b1    nnsight (TransformersModel.trace), counting inside the trace, one sequence a trace
  nnsight       the same, padded batches per trace
  tlens         TransformerLens 4 TransformerBridge.run_with_hooks on mlp.hook_pre (the gate),
                padded batches, the model's own tokens (no extra BOS), stopped after the last block
  reference     (verification only) batch-1 hooks on gate_proj's output in float64 bookkeeping:
                counts and, per cell, the smallest |gate| over its tokens (how near a flip is)
Every peer runs the base model (no lm_head over every position) and decides nothing a user
would not: the budget is lna's default (8192 tokens per batch, padding included).
"""
import time

import numpy as np

TOKEN_BUDGET = 8192  # lna's default --token-budget; the peers' batches get the same


def padded_batches(samples, budget=TOKEN_BUDGET):
    """Length-sorted index lists, rows x longest row <= budget (at least one row each)."""
    order = sorted(range(len(samples)), key=lambda i: -(len(samples[i]["prompt_ids"]) + len(samples[i]["response_ids"])))
    out, cur = [], []
    for i in order:
        width = len(samples[(cur or [i])[0]]["prompt_ids"]) + len(samples[(cur or [i])[0]]["response_ids"])
        if cur and (len(cur) + 1) * width > budget:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def right_padded(samples, idx, pad):
    """input_ids, attention_mask and the response-token mask [B, S] of samples idx."""
    import torch

    seqs = [samples[i]["prompt_ids"] + samples[i]["response_ids"] for i in idx]
    width = max(map(len, seqs))
    ids = torch.full((len(idx), width), pad, dtype=torch.long)
    attn = torch.zeros(len(idx), width, dtype=torch.long)
    resp = torch.zeros(len(idx), width, dtype=torch.bool)
    for r, (i, seq) in enumerate(zip(idx, seqs)):
        ids[r, :len(seq)] = torch.tensor(seq)
        attn[r, :len(seq)] = 1
        resp[r, len(samples[i]["prompt_ids"]):len(seq)] = True
    return ids, attn, resp


class Clock:
    def __init__(self):
        self.phases, self.t = {}, time.perf_counter()

    def lap(self, name):
        now = time.perf_counter()
        self.phases[name] = now - self.t
        self.t = now


# -- lna -------------------------------------------------------------------------------------------
def run_lna(model, work, clock, device, dtype, variant="lna"):
    from lna.inputs.samples import Sample
    from lna.runners.hf import HFRunner
    clock.lap("imports")
    runner = HFRunner(model, device=device, dtype=dtype)
    clock.lap("load")
    samples = [Sample(s["key"], s["lang"], tuple(s["prompt_ids"]), tuple(s["response_ids"]), s["group"])
               for s in work["samples"]]
    if variant == "lna_nocount":
        from lna.runners import packing

        lang_index = {k: i for i, k in enumerate(work["languages"])}
        with __import__("torch").inference_mode():
            for rows in runner._batches(samples):
                runner._forward(packing.build_batch(rows, samples, lang_index))
        runner.state.clear()
        clock.lap("count")
        return None
    counts = runner.count(samples, work["languages"], sums=variant == "lna_sums")[0]
    clock.lap("count")
    return counts


# -- transformers hooks ----------------------------------------------------------------------------
def load_hf(model, device, dtype):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    net = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).to(device).eval()
    return net, tok


def run_hooks(model, work, clock, device, dtype, batched=True):
    import torch
    import transformers  # noqa: F401  (timed as the tool's imports)
    clock.lap("imports")
    net, tok = load_hf(model, device, dtype)
    clock.lap("load")
    samples, langs = work["samples"], work["languages"]
    layers = net.model.layers
    counts = torch.zeros(len(layers), len(langs), net.config.intermediate_size, dtype=torch.int64, device=device)
    ctx = {}

    def hook(li):
        def fn(module, inputs, out):  # out: SiLU(gate) [B, S, I]
            active = (out > 0) & ctx["resp"][..., None]
            counts[li].index_add_(0, ctx["lang"], active.sum(1))
        return fn

    handles = [layer.mlp.act_fn.register_forward_hook(hook(li)) for li, layer in enumerate(layers)]
    batches = padded_batches(samples) if batched else [[i] for i in range(len(samples))]
    with torch.inference_mode():
        for idx in batches:
            ids, attn, resp = right_padded(samples, idx, tok.pad_token_id)
            ctx["resp"], ctx["lang"] = resp.to(device), torch.tensor([langs.index(samples[i]["lang"]) for i in idx],
                                                                      device=device)
            net.model(input_ids=ids.to(device), attention_mask=attn.to(device) if batched else None, use_cache=False)
    for h in handles:
        h.remove()
    clock.lap("count")
    return counts.cpu().numpy()


def run_reference(model, work, clock, device, dtype):
    """Batch 1 through transformers' own modules, hooks on gate_proj: counts and min |gate|."""
    import torch
    import transformers  # noqa: F401
    clock.lap("imports")
    net, tok = load_hf(model, device, dtype)
    clock.lap("load")
    samples, langs = work["samples"], work["languages"]
    shape = (len(net.model.layers), len(langs), net.config.intermediate_size)
    counts = torch.zeros(shape, dtype=torch.int64)
    nearest = torch.full(shape, float("inf"), dtype=torch.float64)
    ctx = {}

    def hook(li):
        def fn(module, inputs, out):  # out: gate [1, S, I]
            g = out[0, ctx["start"]:].double().cpu()
            counts[li, ctx["lang"]] += (g > 0).sum(0)
            torch.minimum(nearest[li, ctx["lang"]], g.abs().amin(0), out=nearest[li, ctx["lang"]])
        return fn

    handles = [layer.mlp.gate_proj.register_forward_hook(hook(li)) for li, layer in enumerate(net.model.layers)]
    with torch.inference_mode():
        for s in samples:
            ctx.update(start=len(s["prompt_ids"]), lang=langs.index(s["lang"]))
            net.model(input_ids=torch.tensor([s["prompt_ids"] + s["response_ids"]], device=device), use_cache=False)
    for h in handles:
        h.remove()
    clock.lap("count")
    return counts.numpy(), nearest.numpy()


# -- nnsight ---------------------------------------------------------------------------------------
def run_nnsight(model, work, clock, device, dtype, batched=True):
    import nnsight
    import torch
    from nnsight.modeling.transformers import TransformersModel
    clock.lap("imports")
    lm = TransformersModel(model, task="text-generation", device_map=device, dispatch=True, dtype=getattr(torch, dtype))
    clock.lap("load")
    samples, langs = work["samples"], work["languages"]
    n_layers = len(lm.model.layers)
    counts = torch.zeros(n_layers, len(langs), lm.config.intermediate_size, dtype=torch.int64, device=device)
    pad = lm.tokenizer.pad_token_id
    batches = padded_batches(samples) if batched else [[i] for i in range(len(samples))]
    with torch.inference_mode():
        for idx in batches:
            ids, attn, resp = right_padded(samples, idx, pad)
            resp = resp.to(device)
            inputs = {"input_ids": ids.to(device), "attention_mask": attn.to(device)}
            with lm.trace(inputs) as tracer:
                per_layer = nnsight.save([])
                for li in range(n_layers):
                    act = lm.model.layers[li].mlp.act_fn.output  # SiLU(gate) [B, S, I]
                    per_layer.append(((act > 0) & resp[..., None]).sum(1))
                tracer.stop()  # nothing after the last MLP is needed
            lang = torch.tensor([langs.index(samples[i]["lang"]) for i in idx], device=device)
            for li, rows in enumerate(per_layer):
                counts[li].index_add_(0, lang, rows)
    clock.lap("count")
    return counts.cpu().numpy()


# -- TransformerLens -------------------------------------------------------------------------------
def run_tlens(model, work, clock, device, dtype):
    import torch
    from transformer_lens.model_bridge import TransformerBridge
    clock.lap("imports")
    bridge = TransformerBridge.boot_transformers(model, device=device, dtype=getattr(torch, dtype))
    clock.lap("load")
    samples, langs = work["samples"], work["languages"]
    n_layers = len(bridge.blocks)
    counts = torch.zeros(n_layers, len(langs), bridge.cfg.d_mlp, dtype=torch.int64, device=device)
    ctx = {}

    def hook(gate, hook):  # blocks.L.mlp.hook_pre: the gate projection's output [B, S, I]
        li = int(hook.name.split(".")[1])
        counts[li].index_add_(0, ctx["lang"], ((gate > 0) & ctx["resp"][..., None]).sum(1))

    # The model's own tokens: run_with_hooks on token ids adds no BOS (to_tokens would).
    pad = bridge.tokenizer.pad_token_id
    with torch.inference_mode():
        for idx in padded_batches(samples):
            ids, attn, resp = right_padded(samples, idx, pad)
            ctx["resp"] = resp.to(device)
            ctx["lang"] = torch.tensor([langs.index(samples[i]["lang"]) for i in idx], device=device)
            bridge.run_with_hooks(ids.to(device), fwd_hooks=[(lambda name: name.endswith("mlp.hook_pre"), hook)],
                                  return_type=None, attention_mask=attn.to(device), stop_at_layer=n_layers)
    clock.lap("count")
    return counts.cpu().numpy()


TOOLS = {
    "lna": lambda *a: run_lna(*a, variant="lna"),
    "lna_sums": lambda *a: run_lna(*a, variant="lna_sums"),
    "lna_nocount": lambda *a: run_lna(*a, variant="lna_nocount"),
    "hooks_b1": lambda *a: run_hooks(*a, batched=False),
    "hooks": lambda *a: run_hooks(*a, batched=True),
    "nnsight_b1": lambda *a: run_nnsight(*a, batched=False),
    "nnsight": lambda *a: run_nnsight(*a, batched=True),
    "tlens": run_tlens,
    "reference": run_reference,
}
PEERS = ("hooks_b1", "hooks", "nnsight_b1", "nnsight", "tlens")
NEEDS = {"nnsight_b1": "nnsight", "nnsight": "nnsight", "tlens": "transformer_lens"}  # tool -> module


def missing(tool: str) -> str | None:
    """Why `tool` cannot run here (its package is not installed), or None."""
    import importlib.util

    module = NEEDS.get(tool.split("@")[0])
    if module and importlib.util.find_spec(module) is None:
        return f"{module} not installed (pip install -e .[peers])"
    return None
