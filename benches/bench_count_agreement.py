"""How far lna's fp32 counts are from an independent count, and why.

lna counts gate > 0 in packed, batched forwards through its fused kernel. The reference
here is the research scripts' way: an unmodified transformers model, one prompt + response
at a time (batch 1), a forward hook on every gate_proj. The two compute the same gates in a
different order of floating-point sums, so a gate within rounding of zero can change sign:
the counts may differ by a few units, only at neurons with such near-zero gates. This
script measures how many cells differ, by how much, and how close to zero the gates
behind every difference were.

    python benches/bench_count_agreement.py [--model lna:tiny-llama] [--dataset demo] [--device cpu]

Writes benches/results/count_agreement_<device>.json.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def reference(model, samples, languages, device, thresholds):
    """Batch-1 hook counts [layer, language, neuron] and, per threshold, how many response
    gates of each cell lay within it of zero."""
    L, I = model.config.num_hidden_layers, model.config.intermediate_size
    counts = np.zeros((L, len(languages), I), np.int64)
    near = {t: np.zeros_like(counts) for t in thresholds}
    gates = {}
    hooks = [layer.mlp.gate_proj.register_forward_hook(lambda m, i, o, k=k: gates.__setitem__(k, o[0]))
             for k, layer in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            for s in samples:
                model(torch.tensor([list(s.prompt) + list(s.response)], device=device))
                lang = languages.index(s.lang)
                for k, g in gates.items():
                    g = g[len(s.prompt):].float()
                    counts[k, lang] += (g > 0).sum(0).cpu().numpy()
                    for t in thresholds:
                        near[t][k, lang] += (g.abs() < t).sum(0).cpu().numpy()
    finally:
        for h in hooks:
            h.remove()
    return counts, near


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="lna:tiny-llama")
    ap.add_argument("--dataset", default="demo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--token-budget", type=int, default=2048)
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    from lna.core import config

    from lna.inputs import data, responses
    from lna.runners.hf import HFRunner

    runner = HFRunner(args.model, device=args.device, dtype="float32", token_budget=args.token_budget)
    _, questions = data.load(args.dataset)
    _, template = config.template_for(args.model)
    samples = responses.samples(responses.tokenized(questions, runner.tokenizer, template))
    languages = list(dict.fromkeys(s.lang for s in samples))
    counts, tokens = runner.count(samples, languages)

    plain = AutoModelForCausalLM.from_pretrained(runner.info.path, dtype=torch.float32,
                                                 attn_implementation="eager").to(args.device).eval()
    thresholds = (1e-7, 1e-6, 5e-6, 1e-5)
    ref, near = reference(plain, samples, languages, args.device, thresholds)
    diff = np.abs(counts - ref)
    differ = diff > 0
    explained = {f"{t:g}": bool((diff <= near[t]).all()) for t in thresholds}
    result = {
        "what": "lna fp32 counts vs an independent batch-1 hook count on an unmodified transformers model",
        "model": args.model, "dataset": args.dataset, "dtype": "float32", "token_budget": args.token_budget,
        "samples": len(samples), "response_tokens": int(tokens.sum()),
        "cells": int(differ.size), "cells_differing": int(differ.sum()),
        "cells_per_difference": round(differ.size / differ.sum(), 1) if differ.any() else None,
        "max_abs_difference": int(diff.max()),
        "differences_explained_by_gates_within": explained,
        "gates_looked_at": int(tokens.sum()) * counts.shape[0] * counts.shape[2],
        "near_zero_gates": {f"{t:g}": int(near[t].sum()) for t in thresholds},
        "machine": common.machine(args.device), "versions": common.versions(),
    }
    out = common.write(f"count_agreement_{args.device.split(':')[0]}", result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine", "versions")}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
