"""lna's count with the packed (varlen) forward against the dense 4D-mask forward, on CPU, as a
fraction of the measured fp32 GEMM ceiling.

    python benches/bench_packed_attention.py [--questions 2] [--responses 2] [--rounds 3] [--label after]
    python benches/bench_packed_attention.py --shape tinyllama-1.1b --questions 1 --responses 1 --rounds 2

bench_peers' model and workload (a random-weight model of a real shape, bench_peers_setup.SHAPES:
SmolLM-135M by default, where hidden 576 leaves the elementwise work large beside the GEMMs;
TinyLlama-1.1B's hidden 2048 for a larger one; MGSM questions in ten languages, given
responses). One torch thread pinned to one core (common.one_core: the machine is shared);
three modes alternated round by round in one process on the same runner: dense (the 4D-mask
reference), packed with transformers' RMSNorm and rotary, and packed with
lna.runners.packed_ops' (the default); counts of dense and packed compared. The fraction of
the ceiling is bench_peers': 2 x non-embedding params x tokens computed / count seconds /
ceiling (the median of 1024^3 GEMMs timed beside every run; a lower bound, as it leaves out
the attention scores); here also with the score FLOPs the packed pattern needs (QK^T and PV
over the allowed query-key pairs), and the dense path's padded tokens and score FLOPs. Appends
one entry to benches/results/packed_attention_cpu.json.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402
import bench_peers_setup  # noqa: E402
from bench_peers import matmul_params  # noqa: E402


def score_flops(batches, heads: int, head_dim: int, layers: int):
    """(needed, dense) FLOPs of QK^T and PV: over the query-key pairs the packed pattern
    allows (a prompt causally over itself, a response over its prompt and its own earlier
    tokens; sliding windows ignored: this model has none), and over every padded S x S."""
    import numpy as np

    needed = dense = 0
    for b in batches:
        B, S = b.segment.shape
        dense += B * S * S
        for row in b.segment:
            lens = np.bincount(row[row >= 0], minlength=1)
            P = int(lens[0])
            needed += P * (P + 1) // 2 + sum(int(n) * P + int(n) * (int(n) + 1) // 2 for n in lens[1:])
    per_pair = 2 * 2 * heads * head_dim * layers  # two matmuls, multiply-add
    return needed * per_pair, dense * per_pair


def cpu_time_ceiling(torch, n: int = 1024, reps: int = 20) -> float:
    """common.gemm_ceiling on this process's CPU time rather than the wall clock."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start = time.process_time()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.process_time() - start)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "lna_peers"))
    ap.add_argument("--mgsm", default=str(HERE.parents[1] / "shared" / "data" / "mgsm"))
    ap.add_argument("--shape", default="smollm-135m", choices=[k for k in bench_peers_setup.SHAPES if k != "llama-7b"],
                    help="the random-weight model's shape (bench_peers_setup.SHAPES; a 7B is the GPU check's)")
    ap.add_argument("--langs", default=",".join(bench_peers_setup.RESPONSE_MEAN))
    ap.add_argument("--questions", type=int, default=2, help="per language")
    ap.add_argument("--responses", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--label", default="")
    opts = ap.parse_args()
    origin = common.provenance()  # the code as it was when the run began (a tree may change during it)
    import numpy as np
    import torch

    langs = opts.langs.split(",")
    model = bench_peers_setup.build_model(Path(opts.cache) / f"{opts.shape}-float32", opts.shape, Path(opts.mgsm))
    base = Path(opts.cache) / f"work-{opts.shape}-{'-'.join(langs)}-{opts.questions}x{opts.responses}"
    work = bench_peers_setup.build_workload(model, Path(opts.mgsm), base, langs, opts.questions, opts.responses)
    samples = bench_peers_setup.samples_of(work)
    from lna.runners import packing
    from lna.runners.hf import HFRunner

    shape = bench_peers_setup.SHAPES[opts.shape]
    with common.one_core():
        machine = common.machine("cpu")
        runner = HFRunner(str(model))
        torch.set_num_threads(1)  # the runner fits threads to the load; one here, as the ceiling
        lang_index = {k: i for i, k in enumerate(langs)}
        batches = [packing.build_batch(rows, samples, lang_index) for rows in runner._batches(samples)]
        tokens = sum(len(b.real) for b in batches)
        padded = sum(b.segment.size for b in batches)
        runner.count(samples[:2], langs)  # warm-up and the packed path's probe
        assert runner.run_batch.packed, runner.run_batch.why_dense
        modes = ["dense", "packed_transformers_ops", "packed"]
        times, counts, loads, ceilings, runs = {m: [] for m in modes}, {}, [], [], []
        cpu_times, cpu_ceilings = {m: [] for m in modes}, []
        for r in range(opts.rounds):
            for mode in modes[r % 3:] + modes[:r % 3]:  # each mode first in turn
                runner.run_batch.packed = mode != "dense"
                runner.run_batch.fast_ops = mode == "packed"
                loads.append(common.load_average())
                # beside every run: the share of the core this process gets changes with the load
                ceilings.append(common.gemm_ceiling("cpu", torch.float32, reps=20))
                cpu_ceilings.append(cpu_time_ceiling(torch))
                t, c = time.perf_counter(), time.process_time()
                counts[mode] = runner.count(samples, langs)[0]
                times[mode].append(time.perf_counter() - t)
                cpu_times[mode].append(time.process_time() - c)
                runs.append((mode, times[mode][-1], ceilings[-1]))
                print(f"round {r} {mode}: {times[mode][-1]:.2f} s, load {loads[-1]}", file=sys.stderr, flush=True)
    diff = counts["dense"] != counts["packed"]
    matmul = 2 * matmul_params(shape) * tokens  # the same work for every mode: padding is not work
    needed, dense_scores = score_flops(batches, shape["num_attention_heads"],
                                       shape["hidden_size"] // shape["num_attention_heads"], shape["num_hidden_layers"])
    med = {m: statistics.median(t) for m, t in times.items()}
    ceiling = statistics.median(ceilings)
    entry = {"label": opts.label, **origin, "threads": 1, "pinned": "one core (common.one_core)",
             "model": {"shape": opts.shape, **shape, "dtype": "float32", "weights": "random",
                       "non_embedding_params": matmul_params(shape)},
             "workload": {"languages": langs, "questions_per_language": opts.questions,
                          "responses_per_question": opts.responses, "samples": len(samples),
                          "response_tokens": sum(len(s.response) for s in samples), "batches": len(batches),
                          "tokens_computed": tokens, "padded_tokens_dense": padded},
             "gemm_ceiling_flops": ceiling, "gemm_ceilings_per_run": ceilings, "matmul_flops": matmul, "score_flops_needed": needed,
             "score_flops_dense": dense_scores, "seconds": times, "median_s": med,
             "load_average_per_run": loads,
             "counts_differing_cells": int(diff.sum()), "count_cells": int(diff.size),
             "max_abs_count_difference": int(np.abs(counts["dense"] - counts["packed"]).max()),
             "fraction_of_gemm_ceiling": {m: matmul / s / ceiling for m, s in med.items()},
             # each run against the ceiling timed just before it (the load moves between runs)
             "fraction_per_run": {m: [matmul / t / c for (mm, t, c) in runs if mm == m] for m in times},
             "fraction_with_needed_scores": {m: (matmul + needed) / s / ceiling for m, s in med.items()},
             "speedup_packed_over_dense": med["dense"] / med["packed"],
             "speedup_fast_ops": med["packed_transformers_ops"] / med["packed"],
             # the same on this process's CPU time (one pinned thread: the time it ran, not the
             # time other work held the core), the ceiling likewise: steadier on a loaded machine
             "cpu_seconds": cpu_times, "cpu_gemm_ceilings_per_run": cpu_ceilings,
             "cpu_time_fraction_of_gemm_ceiling": {
                 m: matmul / statistics.median(t) / statistics.median(cpu_ceilings) for m, t in cpu_times.items()},
             "cpu_time_fraction_with_needed_scores": {
                 m: (matmul + needed) / statistics.median(t) / statistics.median(cpu_ceilings)
                 for m, t in cpu_times.items()}}
    print(json.dumps({k: entry[k] for k in ("median_s", "fraction_of_gemm_ceiling", "fraction_with_needed_scores",
                                            "fraction_per_run",
                                            "speedup_packed_over_dense", "speedup_fast_ops",
                                            "cpu_time_fraction_of_gemm_ceiling", "cpu_time_fraction_with_needed_scores",
                                            "counts_differing_cells")}, indent=1))
    name = common.results_name("packed_attention", "cpu")
    path = common.RESULTS / f"{name}.json"
    old = json.loads(path.read_text())["runs"] if path.is_file() else []
    common.write(name, {"machine": machine, "versions": common.versions(), "runs": old + [entry]})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
