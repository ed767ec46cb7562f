"""expert_silu_mul (lna.kernels.expert_count) against the uncounted product and the
alternatives, at the expert shapes of real MoE models, on the pairs of one layer sorted by
expert (what lna.runners.moe computes between the two grouped projections):
- plain: F.silu(gate) * up over all pairs (transformers' grouped path, nothing counted);
- lna: expert_silu_mul without counting (the same work through the dispatch);
- lna+count: expert_silu_mul counting per expert, language and neuron;
- combined ids: the dense silu_mul over all pairs with ids expert * n_langs + language into
  an [experts * n_langs, I] table (one call, no segments: its one-hot product has
  experts * n_langs rows);
- naive: the hook way, per expert and per language a masked (gate > 0).sum;
- routed: routed_counts alone (the routed-token table).
Counting's cost is lna+count / lna. Routing is random (top-k distinct experts per token),
10 languages with prompt rows (-1) mixed in.
And a whole MoE layer's experts (lna.runners.moe.CountingExperts at OLMoE's sizes: the two
grouped projections around expert_silu_mul, weights and sum), counting vs not: counting's
cost where it is paid.

Run: python benches/bench_expert_count.py [--device cuda] [--rounds N]
     (writes benches/results/expert_count_<device>.json)
"""
import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# name: (tokens, experts, top_k, expert neurons)
SHAPES = {
    "Qwen3-30B-A3B": (1024, 128, 8, 768),
    "OLMoE-1B-7B": (1024, 64, 8, 1024),
    "Mixtral-8x7B": (512, 8, 2, 14336),
}
N_LANGS = 10
VARIANTS = ("plain", "lna", "lna+count", "combined ids", "naive", "routed")


def make(tokens, experts, top_k, width, dtype, device):
    from lna.kernels.expert_count import expert_offsets

    gen = torch.Generator().manual_seed(0)
    choice = torch.rand(tokens, experts, generator=gen).argsort(1)[:, :top_k]
    order, bounds = expert_offsets(choice.reshape(-1), experts)
    ids = choice.reshape(-1)[order]
    S = order.numel()
    gate_up = torch.randn(S, 2 * width, generator=gen).to(dtype).to(device)
    lang = torch.randint(-1, N_LANGS, (tokens,), generator=gen, dtype=torch.int32)[order // top_k].to(device)
    return gate_up[:, :width], gate_up[:, width:], bounds, ids.to(device), lang


def naive(gate, bounds, lang, counts):
    for e in range(len(bounds) - 1):
        g, ln = gate[bounds[e]:bounds[e + 1]], lang[bounds[e]:bounds[e + 1]]
        for k in range(N_LANGS):
            counts[e, k] += (g[ln == k] > 0).sum(0)


def run(device, rounds, dtypes):
    from lna.kernels import silu_mul
    from lna.kernels.expert_count import expert_silu_mul, routed_counts

    timer = common.Timer(device, reps=rounds, warmup=1)
    results = {}
    for name, (tokens, experts, top_k, width) in SHAPES.items():
        for dtype in dtypes:
            gate, up, bounds, ids, lang = make(tokens, experts, top_k, width, getattr(torch, dtype), device)
            counts = torch.zeros(experts, N_LANGS, width, dtype=torch.int64, device=device)
            flat = torch.zeros(experts * N_LANGS, width, dtype=torch.int64, device=device)
            combined = torch.where(lang >= 0, ids.to(torch.int32) * N_LANGS + lang, -1)
            routed = torch.zeros(experts, N_LANGS, dtype=torch.int64, device=device)
            fns = {
                "plain": lambda: F.silu(gate) * up,
                "lna": lambda: expert_silu_mul(gate, up, bounds),
                "lna+count": lambda: expert_silu_mul(gate, up, bounds, lang_ids=lang, counts=counts),
                "combined ids": lambda: silu_mul(gate, up, lang_ids=combined, counts=flat, check_ids=False),
                "naive": lambda: naive(gate, bounds, lang, counts),
                "routed": lambda: routed_counts(ids, lang, routed),
            }
            ms = {v: timer(fns[v]) for v in VARIANTS}
            # the counts just timed agree: lna+count's table equals the combined-ids table
            counts.zero_(), flat.zero_()
            expert_silu_mul(gate, up, bounds, lang_ids=lang, counts=counts)
            silu_mul(gate, up, lang_ids=combined, counts=flat)
            assert torch.equal(counts.reshape(flat.shape), flat)
            results[f"{name} {dtype}"] = {
                "shape": {"tokens": tokens, "experts": experts, "top_k": top_k, "expert_neurons": width,
                          "pairs": gate.shape[0], "languages": N_LANGS},
                "ms_median": {v: round(t, 3) for v, t in ms.items()},
                "ratios": {"lna+count / lna": round(ms["lna+count"] / ms["lna"], 3),
                           "lna / plain": round(ms["lna"] / ms["plain"], 3),
                           "combined ids / lna+count": round(ms["combined ids"] / ms["lna+count"], 3),
                           "naive / lna+count": round(ms["naive"] / ms["lna+count"], 3)},
            }
            print(name, dtype, results[f"{name} {dtype}"]["ms_median"], flush=True)
    return results


LAYER = (256, 64, 8, 2048, 1024)  # tokens, experts, top_k, hidden, expert neurons (OLMoE-1B-7B)


def layer(device, rounds, dtypes):
    """ms of CountingExperts' forward with and without counting, random weights and routing."""
    from lna.runners.moe import CountingExperts, _MoEState

    tokens, experts, top_k, hidden, width = LAYER
    out = {}
    for dtype in dtypes:
        dt = getattr(torch, dtype)
        gen = torch.Generator().manual_seed(0)
        module = torch.nn.Module()
        module.gate_up_proj = torch.nn.Parameter((torch.randn(experts, 2 * width, hidden, generator=gen)
                                                  * hidden ** -0.5).to(dt).to(device), requires_grad=False)
        module.down_proj = torch.nn.Parameter((torch.randn(experts, hidden, width, generator=gen)
                                               * width ** -0.5).to(dt).to(device), requires_grad=False)
        state = _MoEState()
        ex = CountingExperts(module, 0, state)
        x = torch.randn(tokens, hidden, generator=gen).to(dt).to(device)
        index = torch.rand(tokens, experts, generator=gen).argsort(1)[:, :top_k].to(device)
        weights = torch.rand(tokens, top_k, generator=gen).to(device)
        lang = torch.randint(-1, N_LANGS, (tokens,), generator=gen, dtype=torch.int32).to(device)
        timer = common.Timer(device, reps=rounds, warmup=1)

        def run(counting):
            state.clear()
            if counting:
                state.lang_ids = lang
                state.expert_counts = torch.zeros(1, experts, N_LANGS, width, dtype=torch.int64, device=device)
                state.routed = torch.zeros(1, experts, N_LANGS, dtype=torch.int64, device=device)
            with torch.inference_mode():
                ex(x, index, weights)

        plain, counting = timer(lambda: run(False)), timer(lambda: run(True))
        out[dtype] = {"shape": dict(zip(("tokens", "experts", "top_k", "hidden", "expert_neurons"), LAYER)),
                      "ms_median": {"experts forward": round(plain, 2), "experts forward + count": round(counting, 2)},
                      "ratio": round(counting / plain, 3)}
        print("layer", dtype, out[dtype], flush=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args(argv)
    threads = None
    if args.device == "cpu":
        torch.set_num_threads(1)
        threads = 1
    results = run(args.device, args.rounds, args.dtypes.split(","))
    results["layer (CountingExperts)"] = layer(args.device, max(3, args.rounds // 2), args.dtypes.split(","))
    payload = {"benchmark": "expert_silu_mul: act(gate)*up counting per expert, language and neuron",
               "timing": f"median of {args.rounds} calls after one warm-up, milliseconds",
               "argv": sys.argv, "results": results, "device": common.machine(args.device, threads=threads),
               "versions": common.versions(), "git_commit": _commit()}
    path = common.write(f"expert_count_{args.device.split(':')[0]}", payload)
    print(json.dumps(payload["results"], indent=1))
    print(f"wrote {path}")


def _commit():
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return None


if __name__ == "__main__":
    main()
