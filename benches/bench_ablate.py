"""The full ablation matrix against one plain perplexity pass over the same data.

The matrix needs one forward per distinct mask plus the baseline ("forward settings"), so
its ideal cost is n_forward x one plain pass: that ratio is the ceiling to compare with.
Side by side, interleaved, in the same run:
- plain: runner.nll over the samples, nothing deactivated (one pass);
- matrix: lna.interventions.masked_nll.evaluate, every forward setting of both paper settings in one call
  per chunk (rows of different settings share batches through the masked kernel);
- one by one: the same matrix as one runner.nll call per forward setting.
Model and data: the built-in lna:tiny-llama on the demo dataset (its given responses),
the neuron sets identified from that same data (both settings of the paper).

Run: pytest benches/bench_ablate.py   (writes benches/results/ablate_<device>.json)
or:  python benches/bench_ablate.py [--device cuda] [--limit N]
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def setup(device: str, limit: int, threads: int | None):
    import torch

    from lna.interventions import ablate

    from lna.core import config

    from lna.inputs import data, responses
    from lna.identification.identify import identify
    from lna.runners import make_runner

    if threads:
        torch.set_num_threads(threads)
    runner, backend, dtype = make_runner("lna:tiny-llama", backend="hf", device=device)
    _, questions = data.load("demo", "all", limit=limit)
    samples = responses.samples(responses.tokenized(questions, runner.tokenizer,
                                                    config.template_for("lna:tiny-llama")[1]))
    langs = list(dict.fromkeys(s.lang for s in samples))
    counts, tokens = runner.count(samples, langs)
    ns = identify(counts / np.maximum(tokens, 1)[None, :, None], langs)
    p = ablate.plan({"specific": ns.split("specific"), "specific+related": ns.sets}, runner.layers, runner.neurons)
    return runner, backend, dtype, samples, p


def measure(runner, samples, p, rounds: int) -> dict:
    from lna.interventions import masked_nll

    n = len(samples)

    def plain():
        return runner.nll(samples, None, [-1] * n)

    def matrix():
        return masked_nll.evaluate(runner, samples, p.masks)

    def one_by_one():
        return [plain()] + [runner.nll(samples, p.masks[m:m + 1], [0] * n) for m in range(len(p.masks))]

    cases = {"plain": plain, "matrix": matrix, "one_by_one": one_by_one}
    plain()  # warm-up (allocator, kernels)
    times = {k: [] for k in cases}
    for _ in range(rounds):  # interleaved, so load drift hits every case alike
        for name, fn in cases.items():
            sync(runner)
            t = time.perf_counter()
            fn()
            sync(runner)
            times[name].append(time.perf_counter() - t)
    return times


def sync(runner):
    import torch

    if str(getattr(runner, "device", "cpu")).startswith("cuda"):
        torch.cuda.synchronize()


def report(device: str, limit: int, rounds: int, threads: int | None) -> dict:
    runner, backend, dtype, samples, p = setup(device, limit, threads)
    times = measure(runner, samples, p, rounds)
    best = {k: min(v) for k, v in times.items()}
    response = sum(len(s.response) for s in samples)
    prompt = sum(len(s.prompt) for s in samples)
    ratio = best["matrix"] / best["plain"]
    return {
        "benchmark": "ablation matrix (both settings) vs one plain PPL pass over the same samples",
        "model": "lna:tiny-llama", "backend": backend, "dtype": dtype,
        "shape": {"layers": runner.layers, "neurons": runner.neurons, "languages": len({s.lang for s in samples}),
                  "samples": len(samples), "response_tokens": response, "prompt_tokens": prompt,
                  "token_budget": runner.token_budget, "distinct_masks": len(p.masks),
                  "forward_settings": p.n_forward,
                  "rows": {name: len(ids) for name, ids in p.ids.items()}},
        "seconds": {k: round(v, 4) for k, v in best.items()},
        "seconds_all": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "ratios": {
            "matrix / plain": round(ratio, 2),
            "ceiling: forward_settings": p.n_forward,
            "matrix / (forward_settings x plain)": round(ratio / p.n_forward, 3),
            "one_by_one / matrix": round(best["one_by_one"] / best["matrix"], 3),
        },
        "response_tokens_per_s": {"plain": round(response / best["plain"]),
                                  "matrix": round(p.n_forward * response / best["matrix"])},
        "device": common.machine(device, threads),
        "versions": common.versions(),
    }


def write(result: dict) -> Path:
    return common.write("ablate_cuda" if result["device"]["device"].startswith("cuda") else "ablate_cpu", result)


def test_ablation_matrix_costs_its_forward_settings():
    """CPU, one thread (the machines are shared: threads contend under load)."""
    result = report("cpu", limit=4, rounds=3, threads=1)
    write(result)
    print(json.dumps(result["ratios"], indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, default=4, help="questions per language of the demo set")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    args = parser.parse_args()
    out = report(args.device, args.limit, args.rounds, args.threads)
    print(json.dumps(out, indent=2))
    print(f"wrote {write(out)}")
