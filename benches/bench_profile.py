"""End-to-end profiling throughput: lna's runner against the research scripts' approach.

Side by side, in one run, on an MGSM-shaped workload (questions x responses per language,
the study's response lengths), through a random-weight model (weights do not change speed):
- lna:       shared-prompt packed force-decoding, counting in the fused kernel, one pass;
- lna_sums:  the same, also summing act(gate) per language into float64 tables (lna-profile's
             default: activation sums for lna-steer);
- no-count:  the same batches and kernel path with counting off (the cost of counting);
- plain:     the same batches through transformers' own MLPs (an uninstrumented forward);
- naive:     transformers + Python hooks that materialise activations, two passes
             (prompt+response, then prompt alone once per response), as the study's scripts.
Reports counted and processed tokens/s, the fraction of the matmul roofline (2 x non-embedding
parameters FLOPs per processed token against a measured GEMM ceiling) and ratios.

  python benches/bench_profile.py                       # CPU, small model, scaled workload
  python benches/bench_profile.py --device cuda --questions 250 --naive-questions 25
                                                        # docs/design.md's full workload on a GPU
Writes benches/results/profile_<device>.json. On the GPU, benches/gpu_check.sh runs this as its
profile stage (run() below) on a reduced workload: per-token rates are what compare.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from lna.runners import packing  # noqa: E402
from lna.models.loading import ModelInfo  # noqa: E402
from lna.inputs.samples import Sample  # noqa: E402
from lna.runners.hf import HFRunner  # noqa: E402

# MGSM response lengths of the study's model (tokens, mean per language), prompts ~105-320.
RESPONSE_MEAN = {"en": 128, "ru": 149, "es": 137, "fr": 132, "de": 134, "zh": 153, "ja": 172,
                 "bn": 281, "th": 253, "sw": 163}
PROMPT_RANGE = (105, 320)
CONFIGS = {  # random-weight models; "small" keeps a CPU run to about a minute
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, vocab_size=512),  # the dry run of benches/bench_gpu_check.py
    "mistral-7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=32000),
}


def workload(questions, responses, scale, seed=0, vocab=32000):
    rng = np.random.default_rng(seed)
    out = []
    for lang, mean in RESPONSE_MEAN.items():
        for q in range(questions):
            plen = int(rng.integers(*PROMPT_RANGE) * scale)
            prompt = np.concatenate([[1], rng.integers(3, vocab, plen - 1)]).astype(np.int32)
            for j in range(responses):
                n = max(4, int(rng.normal(mean, 0.35 * mean) * scale))
                out.append(Sample(f"{lang}/{q}/{j}", lang, prompt, rng.integers(3, vocab, n).astype(np.int32), f"{lang}/{q}"))
    return out


def build(name, device, dtype):
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(**CONFIGS[name], max_position_embeddings=4096, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)  # the same random weights every run (near-zero gates, hence flips, alike)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            net = MistralForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    info = ModelInfo(name, Path("."), "MistralForCausalLM", config.num_hidden_layers, config.intermediate_size, "random")
    return net, info


def timed(device, fn):
    common.sync(device)
    t = time.perf_counter()
    out = fn()
    common.sync(device)
    return time.perf_counter() - t, out


@torch.inference_mode()
def naive_two_pass(net, samples, languages, budget, device):
    """The research scripts' way, in transformers: hooks materialise SiLU(gate) > 0 per token."""
    L, I = net.config.num_hidden_layers, net.config.intermediate_size
    counts = {name: torch.zeros(L, len(languages), I, dtype=torch.int64, device=device) for name in ("full", "prefix")}
    ctx = {}

    def hook(li):
        def fn(module, inp, out):
            active = (out.float() > 0) & ctx["valid"][..., None]  # materialised [B, S, I]
            counts[ctx["pass"]][li].index_add_(0, ctx["lang"], active.sum(1).to(torch.int64))
        return fn

    hooks = [layer.mlp.act_fn.register_forward_hook(hook(li)) for li, layer in enumerate(net.model.layers)]
    processed = 0
    try:
        for name, seqs in (("full", [list(s.prompt) + list(s.response) for s in samples]),
                           ("prefix", [list(s.prompt) for s in samples])):
            order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
            start = 0
            while start < len(order):
                width = len(seqs[order[start]])
                end = start
                while end < len(order) and (end - start + 1) * len(seqs[order[end]]) <= budget:
                    end += 1
                end = max(end, start + 1)
                idx = order[start:end]
                width = max(len(seqs[i]) for i in idx)
                ids = torch.zeros(len(idx), width, dtype=torch.long, device=device)
                valid = torch.zeros(len(idx), width, dtype=torch.bool, device=device)
                for r, i in enumerate(idx):
                    ids[r, :len(seqs[i])] = torch.tensor(seqs[i], device=device)
                    valid[r, :len(seqs[i])] = True
                ctx.update(valid=valid, **{"pass": name},
                           lang=torch.tensor([languages.index(samples[i].lang) for i in idx], device=device))
                net(input_ids=ids, attention_mask=valid.long(), logits_to_keep=1)
                processed += int(valid.sum())
                start = end
    finally:
        for h in hooks:
            h.remove()
    return (counts["full"] - counts["prefix"]).clamp(min=0).cpu().numpy(), processed


def defaults(device, **given):
    """The run's settings: what was given, else the device's defaults (a CUDA run is the
    workload of docs/design.md, "Performance targets")."""
    cuda = str(device).startswith("cuda")
    opts = {"device": device, "dtype": "bfloat16" if cuda else "float32", "model": "mistral-7b" if cuda else "small",
            "questions": 250 if cuda else 2, "responses": 10, "scale": 1.0 if cuda else 0.5, "naive_questions": None,
            "token_budget": 16384 if cuda else 4096, "repeats": 1 if cuda else 3}
    opts.update({k: v for k, v in given.items() if v is not None})
    opts["naive_questions"] = min(opts["naive_questions"] or opts["questions"], opts["questions"])
    return argparse.Namespace(**opts)


def measure(opts, report: dict, flush=lambda: None):
    """Fill `report` with the end-to-end figures, calling flush() after each one (a run cut
    short keeps what it measured): lna first, then the naive approach, then the baselines."""
    device, dtype = opts.device, getattr(torch, opts.dtype)
    languages = list(RESPONSE_MEAN)
    net, info = build(opts.model, device, dtype)
    params = sum(p.numel() for n, p in net.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    plain = [layer.mlp for layer in net.model.layers]
    runner = HFRunner.wrap(net, None, info, token_budget=opts.token_budget)
    samples = workload(opts.questions, opts.responses, opts.scale, vocab=CONFIGS[opts.model]["vocab_size"])
    counted = sum(len(s.response) for s in samples)
    processed = sum(r.length for r in packing.plan_rows(samples, runner.max_row_tokens))
    subset = [s for s in samples if int(s.key.split("/")[1]) < opts.naive_questions]
    report.update({
        "model": {"name": opts.model, **CONFIGS[opts.model], "dtype": opts.dtype, "non_embedding_params": params},
        "workload": {"languages": languages, "questions_per_language": opts.questions, "responses": opts.responses,
                     "length_scale": opts.scale, "samples": len(samples), "response_tokens": counted,
                     "processed_tokens_lna": processed, "token_budget": opts.token_budget,
                     "naive_questions_per_language": opts.naive_questions,
                     "naive_response_tokens": sum(len(s.response) for s in subset)},
        "repeats_best_of": opts.repeats, "seconds": {},
        "targets": {"roofline_fraction": 0.70, "ratio_vs_naive": 5.0, "cpu_counting_overhead": 0.05,
                    "full_mgsm_seconds": 120},
    })
    print(f"{opts.model} {dtype} on {device}: {len(samples)} samples, {counted:,} response tokens, "
          f"{processed:,} processed", file=sys.stderr, flush=True)
    report["gemm_ceiling_flops"] = common.gemm_ceiling(device, dtype)
    flush()

    runner.count(samples[: opts.responses * 2], languages)  # warm-up (kernels, allocator)
    lang_index = {k: i for i, k in enumerate(languages)}
    t_build, batches = timed("cpu", lambda: [packing.build_batch(rows, samples, lang_index)
                                             for rows in runner._batches(samples)])

    def masks():
        for b in batches:
            seg, pos = (torch.from_numpy(x).to(device) for x in (b.segment, b.position_ids))
            packing.attention_mask(seg, pos, dtype, runner.sliding_window)

    report["host"] = {"batches": len(batches), "build_batches_s": t_build, "attention_masks_s": timed(device, masks)[0]}
    flush()

    def no_count():  # the same packed batches and kernel path, counting off
        for batch in batches:
            runner._forward(batch)
        runner.state.clear()

    @torch.inference_mode()
    def plain_forward():  # the same packed batches through transformers' own MLPs (padding included)
        for b in batches:
            seg, pos = (torch.from_numpy(x).to(device) for x in (b.segment, b.position_ids))
            net.model(input_ids=torch.from_numpy(b.input_ids).to(device), position_ids=pos, use_cache=False,
                      attention_mask=packing.attention_mask(seg, pos, dtype, runner.sliding_window))

    counting_mlps = [layer.mlp for layer in net.model.layers]

    def plain_mlps(fn):
        def run():
            for layer, mlp in zip(net.model.layers, plain):
                layer.mlp = mlp
            try:
                return fn()
            finally:
                for layer, mlp in zip(net.model.layers, counting_mlps):
                    layer.mlp = mlp
        return run

    def naive():
        t, (naive_counts, naive_processed) = timed(
            device, plain_mlps(lambda: naive_two_pass(net, subset, languages, opts.token_budget, device)))
        sub_counts, _ = runner.count(subset, languages)
        report["seconds"]["naive_two_pass_subset"] = t
        report["workload"]["naive_processed_tokens"] = naive_processed
        report["counts_differing_from_naive_fraction"] = float((sub_counts != naive_counts).mean())
        report["count_flips_vs_naive_fraction"] = float(np.abs(sub_counts - naive_counts).sum()
                                                        / max(1, naive_counts.sum()))

    # Interleaved repeats, best of each: a shared machine's noise hits all variants alike.
    for rep in range(opts.repeats):
        for name, fn in (("lna", lambda: runner.count(samples, languages)),
                         ("lna_sums", lambda: runner.count(samples, languages, sums=True)), ("naive", naive),
                         ("no_count", no_count), ("plain_hf_mlp", plain_mlps(plain_forward))):
            if name == "naive":
                if rep == 0:
                    naive()
            else:
                t = timed(device, fn)[0]
                report["seconds"][name] = min(report["seconds"].get(name, float("inf")), t)
            key = "naive_two_pass_subset" if name == "naive" else name
            print(f"profile: {name}: {report['seconds'][key]:.2f} s", file=sys.stderr, flush=True)
            derive(report, params, counted, processed)
            flush()
    if device.startswith("cuda"):
        report["gpu_peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    flush()
    return report


def derive(report, params, counted, processed):
    """The rates and ratios that the seconds measured so far allow."""
    sec, work = report["seconds"], report["workload"]
    if "lna" in sec:
        lna_rate = counted / sec["lna"]
        full = 2500 * sum(RESPONSE_MEAN.values())  # docs/design.md, "Performance targets": 10 x 2,500 responses
        report["counted_tokens_per_s"] = {"lna": lna_rate}
        report["processed_tokens_per_s"] = {"lna": processed / sec["lna"]}
        report["roofline_fraction"] = 2 * params * processed / sec["lna"] / report["gemm_ceiling_flops"]
        report["projected_full_mgsm_seconds"] = full / lna_rate
        report["host"]["build_batches_fraction_of_lna"] = report["host"]["build_batches_s"] / sec["lna"]
    if "lna" in sec and "naive_two_pass_subset" in sec:
        naive_rate = work["naive_response_tokens"] / sec["naive_two_pass_subset"]
        report["counted_tokens_per_s"]["naive"] = naive_rate
        report["processed_tokens_per_s"]["naive"] = work["naive_processed_tokens"] / sec["naive_two_pass_subset"]
        report["ratio_lna_vs_naive_counted_tokens_per_s"] = report["counted_tokens_per_s"]["lna"] / naive_rate
    if "lna" in sec and "no_count" in sec:
        report["counting_overhead_vs_no_count"] = sec["lna"] / sec["no_count"] - 1
    if "lna" in sec and "lna_sums" in sec:
        report["sums_overhead_vs_lna"] = sec["lna_sums"] / sec["lna"] - 1
        if "no_count" in sec:
            report["counting_with_sums_overhead_vs_no_count"] = sec["lna_sums"] / sec["no_count"] - 1
    if "lna" in sec and "plain_hf_mlp" in sec:
        report["overhead_vs_plain_hf_forward"] = sec["lna"] / sec["plain_hf_mlp"] - 1


def run(stage):
    """The profile stage of benches/bench_gpu_check.py: the 7B model on a reduced MGSM-shaped workload
    (per-token rates are what compare; dry run: a tiny model on CPU)."""
    common.lna_kernels()
    if stage.dry:
        opts = defaults(stage.device, model="tiny", dtype="bfloat16", questions=1, responses=2, scale=0.1,
                        naive_questions=1, token_budget=512, repeats=1)
    else:
        opts = defaults(stage.device, questions=12, naive_questions=3)
    stage.result["settings"] = vars(opts)
    stage.section("end_to_end", lambda: measure(opts, stage.result, stage.flush) and "done")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--model", default=None, choices=list(CONFIGS), help="default: mistral-7b on cuda, small on cpu")
    ap.add_argument("--questions", type=int, default=None, help="per language (default: 250 cuda, 2 cpu)")
    ap.add_argument("--responses", type=int, default=None, help="per question (default: 10)")
    ap.add_argument("--scale", type=float, default=None, help="length scale (default: 1 cuda, 0.5 cpu)")
    ap.add_argument("--naive-questions", type=int, default=None, help="naive run on a subset (per-token rates compare)")
    ap.add_argument("--token-budget", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats, best kept (default: 1 cuda, 3 cpu)")
    opts = defaults(**vars(ap.parse_args()))
    report = {"bench": "profile", "device": common.machine(opts.device), "versions": common.versions()}
    measure(opts, report)
    path = common.write(f"profile_{'cuda' if opts.device.startswith('cuda') else 'cpu'}", report)
    for key in ("seconds", "counted_tokens_per_s", "ratio_lna_vs_naive_counted_tokens_per_s",
                "counting_overhead_vs_no_count", "sums_overhead_vs_lna", "counting_with_sums_overhead_vs_no_count", "overhead_vs_plain_hf_forward", "roofline_fraction",
                "counts_differing_from_naive_fraction"):
        print(f"{key}: {report.get(key)}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
