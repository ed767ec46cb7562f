"""Where the time of lna's force-decoding count goes on CPU: torch.profiler's operator table for
the same packed batches with counting off, counts only, and counts with activation sums.

    python benches/bench_counting_profile.py [--model DIR] [--questions 2] [--threads 2] [--label before]

Uses bench_peers' model (a random-weight SmolLM-135M shape, built offline if absent). Appends
one entry to benches/results/counting_profile_cpu.json: per variant the wall seconds and the
top operators by self CPU time, and the share of the kernel's counting code (silu_mul's
_accumulate) in the whole.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402
import bench_peers_setup  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(Path(tempfile.gettempdir()) / "lna_peers" / "smollm-135m-float32"),
                    help="the model folder (bench_peers.py builds the same one there)")
    ap.add_argument("--mgsm", default=str(HERE.parents[1] / "shared" / "data" / "mgsm"))
    ap.add_argument("--questions", type=int, default=2)
    ap.add_argument("--responses", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--label", default="")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--attention", choices=["packed", "dense"], default="packed",
                    help="the runner's forward: packed on the real tokens (default where the model allows) "
                         "or the dense 4D-mask reference (lna.runners.packed_attention)")
    opts = ap.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    model = bench_peers_setup.build_model(Path(opts.model), "smollm-135m", Path(opts.mgsm))
    work = bench_peers_setup.build_workload(model, Path(opts.mgsm), Path(opts.model).with_name("profile_work"),
                                      list(bench_peers_setup.RESPONSE_MEAN), opts.questions, opts.responses)
    from lna.runners import packing
    from lna.runners.hf import HFRunner

    samples = bench_peers_setup.samples_of(work)
    languages = work["languages"]
    runner = HFRunner(str(model))
    lang_index = {k: i for i, k in enumerate(languages)}
    batches = [packing.build_batch(rows, samples, lang_index) for rows in runner._batches(samples)]

    @torch.inference_mode()
    def no_count():
        for b in batches:
            runner._forward(b)
        runner.state.clear()

    variants = {"no_count": no_count, "counts": lambda: runner.count(samples, languages),
                "counts_sums": lambda: runner.count(samples, languages, sums=True)}
    runner.count(samples[:4], languages)  # warm-up (and the packed path's probe)
    if opts.attention == "dense":
        runner.run_batch.packed = False
    entry = {"label": opts.label, "machine": common.machine("cpu"), "versions": common.versions(),
             **common.provenance(),  # each entry its own commit, date and argv: the file keeps every run
             "response_tokens": sum(len(s.response) for s in samples), "batches": len(batches),
             "attention": "packed" if runner.run_batch.packed else "dense", "torch_threads": torch.get_num_threads(),
             "variants": {}}
    load_before = common.load_average()
    for name, fn in variants.items():
        t = time.perf_counter()
        fn()
        plain = time.perf_counter() - t
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_stack=False) as prof:
            fn()
        table = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in table)
        entry["variants"][name] = {
            "seconds_unprofiled": plain, "self_cpu_total_s": total / 1e6,
            "top_ops": [{"op": e.key, "self_s": round(e.self_cpu_time_total / 1e6, 4), "calls": e.count,
                         "share": round(e.self_cpu_time_total / total, 4)} for e in table[: opts.top]]}
        print(f"{name}: {plain:.2f} s unprofiled", file=sys.stderr)
        for row in entry["variants"][name]["top_ops"]:
            print(f"  {row['op']:<40} {row['self_s']:8.3f} s {row['share']:6.1%} x{row['calls']}", file=sys.stderr)
    entry["load_average"] = {"before": load_before, "after": common.load_average()}
    name = common.results_name("counting_profile", "cpu")
    path = common.RESULTS / f"{name}.json"
    old = json.loads(path.read_text())["runs"] if path.is_file() else []
    common.write(name, {"machine": entry["machine"], "versions": entry["versions"], "runs": old + [entry]})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
