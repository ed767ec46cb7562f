"""lna against the tools a user already has: the same force-decoding count, side by side.

The count: per layer, language and neuron, how many response tokens have SiLU(gate) > 0.
The tools (benches/bench_peers_tools.py): lna's engine and the lna-profile command; transformers
forward hooks (batch 1 and batched), nnsight (batch 1 and batched), TransformerLens 4's
TransformerBridge. Model: a random-weight Llama with a real model's shape (SmolLM-135M by
default), built offline with a tokenizer trained on MGSM (benches/bench_peers_setup.py); workload:
MGSM questions x languages x given responses per question (the study's shape).

The tools are timed in alternation, round by round (each round in a rotated order, each tool
in a fresh process), in one run; the first round's counts of every tool are checked against
an independent batch-1 hook count on gate_proj (cells that differ, and the largest |gate|
among the tokens nearest to zero of those cells: rounding flips sit at |gate| ~ 1e-6), and
later rounds must reproduce them. Reported per tool:
whole process, imports, model load, counting (response tokens/s), peak RSS (CUDA: max
allocated). Medians over the rounds. Peers install from `pip install -e .[peers]`.

  python benches/bench_peers.py                          # CPU, SmolLM-135M shape, 3 rounds
  python benches/bench_peers.py --tools lna,hooks --rounds 2 --questions 2
  python benches/bench_peers.py --device cuda --shape llama-7b --questions 10
Appends one run to benches/results/peers_<cpu|cuda>.json (--results DIR for another folder).
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402
import bench_peers_setup  # noqa: E402

MGSM = HERE.parents[1] / "shared" / "data" / "mgsm"
DEFAULT_TOOLS = "lna,lna_sums,lna_nocount,lna_profile,hooks_b1,hooks,nnsight_b1,nnsight,tlens"
COUNTING = ("lna", "lna_sums", "lna_profile")  # lna's tools that count (lna_nocount does not)


def worker(opts):
    """One tool in this process: phases timed, counts to --counts, report to --report."""
    import numpy as np

    start = float(os.environ.get("LNA_BENCH_T0", time.time()))
    entered = time.time()
    import torch

    if opts.threads:
        torch.set_num_threads(opts.threads)
    import bench_peers_tools

    clock = bench_peers_tools.Clock()
    work = json.loads(Path(opts.work).read_text())
    name = opts.worker.split("@")[0]
    out = bench_peers_tools.TOOLS[name](opts.model, work, clock, opts.device, opts.dtype)
    if name == "reference":
        counts, nearest = out
        np.save(opts.counts, counts)
        np.save(opts.counts.replace(".npy", ".nearest.npy"), nearest)
    elif out is not None:
        np.save(opts.counts, out)
    report = {"startup_s": entered - start, **{f"{k}_s": v for k, v in clock.phases.items()},
              "torch_threads": torch.get_num_threads(),
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if opts.device.startswith("cuda"):
        report["cuda_max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    Path(opts.report).write_text(json.dumps(report))


def launch(tool, opts, paths, tmp):
    """Run `tool` in a fresh process; returns (its report, counts path or None)."""
    name, _, threads = tool.partition("@")
    counts = Path(tmp) / f"{tool}.npy"
    report = Path(tmp) / f"{tool}.report.json"
    for p in (counts, report):
        p.unlink(missing_ok=True)
    env = dict(os.environ, LNA_BENCH_T0=repr(time.time()), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=os.pathsep.join(
                   [str(HERE.parent)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    if name == "lna_profile":
        store = Path(tmp) / "profile.zarr"
        shutil.rmtree(store, ignore_errors=True)
        Path(tmp, "profile.responses.jsonl").unlink(missing_ok=True)
        cmd = [sys.executable, "-c", "import sys; from lna.cli import profile_main; profile_main(sys.argv[1:])",
               "--model", str(paths["model"]), "--dataset", str(paths["jsonl"]), "--out", str(store), "-q",
               "--device", opts.device, "--dtype", opts.dtype, "--langs", ",".join(opts.langs)]
        if threads:
            env["OMP_NUM_THREADS"] = threads
    else:
        cmd = [sys.executable, str(Path(__file__)), "--worker", tool, "--model", str(paths["model"]),
               "--work", str(paths["work"]), "--counts", str(counts), "--report", str(report),
               "--device", opts.device, "--dtype", opts.dtype] + (["--threads", threads] if threads else [])
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{tool} failed ({proc.returncode}): {err.strip()[-2000:]}")
    out = {"whole_s": wall, "peak_rss_mib_children": usage.ru_maxrss / 1024}
    if name == "lna_profile":
        from lna.storage.store import open_store

        import numpy as np

        np.save(counts, open_store(store).counts)
    else:
        out.update(json.loads(report.read_text()))
    return out, counts if counts.exists() else None


def compare(counts, reference, nearest):
    """Cells that differ from the reference, the largest count difference, and the largest
    |gate| nearest to zero among the differing cells (a flip needs a gate at ~0)."""
    import numpy as np

    diff = counts != reference
    return {"cells": int(reference.size), "differing_cells": int(diff.sum()),
            "max_abs_count_difference": int(np.abs(counts - reference).max()) if diff.any() else 0,
            "max_nearest_abs_gate_at_differing": float(nearest[diff].max()) if diff.any() else None}


def measure(opts, record, flush=lambda: None):
    import numpy as np

    paths = {"model": bench_peers_setup.build_model(Path(opts.cache) / f"{opts.shape}-{opts.dtype}", opts.shape,
                                              Path(opts.mgsm), device=opts.device, dtype=opts.dtype)}
    base = Path(opts.cache) / f"work-{opts.shape}-{'-'.join(opts.langs)}-{opts.questions}x{opts.responses}"
    paths["jsonl"], paths["work"] = Path(f"{base}.jsonl"), Path(f"{base}.json")
    work = bench_peers_setup.build_workload(paths["model"], Path(opts.mgsm), base, opts.langs, opts.questions,
                                      opts.responses)
    samples = work["samples"]
    response = sum(len(s["response_ids"]) for s in samples)
    peer_tokens = sum(len(s["prompt_ids"]) + len(s["response_ids"]) for s in samples)
    prompts = {}
    for s in samples:
        prompts[s["group"]] = len(s["prompt_ids"])
    lna_tokens = sum(prompts.values()) + response  # each prompt once (rows never split here)
    record["workload"] = {"data": bench_peers_setup.data_source(Path(opts.mgsm)), "languages": opts.langs, "questions_per_language": opts.questions,
                          "responses_per_question": opts.responses, "samples": len(samples),
                          "response_tokens": response, "prompt_tokens_mean": peer_tokens / len(samples) - response / len(samples),
                          "tokens_computed_by_peers": peer_tokens, "tokens_computed_by_lna": lna_tokens,
                          "shared_prompt_bound": peer_tokens / lna_tokens}
    import bench_peers_tools

    record["skipped_tools"] = {t: bench_peers_tools.missing(t) for t in opts.tools if bench_peers_tools.missing(t)}
    opts.tools = [t for t in opts.tools if t not in record["skipped_tools"]]
    for tool, why in record["skipped_tools"].items():
        print(f"bench_peers: {tool} skipped: {why}", file=sys.stderr, flush=True)
    record["tools"] = opts.tools
    shape = bench_peers_setup.SHAPES[opts.shape]
    record["model"] = {"shape": opts.shape, **shape, "dtype": opts.dtype, "weights": "random",
                       "non_embedding_params": matmul_params(shape)}
    import torch

    # the ceiling at each thread count a tool may run with (lna fits its threads to the load)
    threads, ceilings = torch.get_num_threads(), {}
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        ceilings[n] = common.gemm_ceiling(opts.device, getattr(torch, opts.dtype))
    torch.set_num_threads(threads)
    record["gemm_ceiling_flops_by_threads"] = ceilings
    record["gemm_ceiling_flops"] = ceilings[threads]
    flush()
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
        # The independent reference: batch-1 hooks on gate_proj, with the |gate| nearest 0 per cell.
        print("reference: batch-1 hooks on gate_proj", file=sys.stderr, flush=True)
        launch("reference", opts, paths, tmp)
        reference = np.load(Path(tmp) / "reference.npy")
        nearest = np.load(Path(tmp) / "reference.nearest.npy")
        # Rounds, tools alternated (a rotated order each round), each in a fresh process. The
        # first round's counts are verified against the reference (and lna's); later rounds
        # must reproduce them exactly.
        first, record["verification"], record["rounds"] = {}, {}, []
        for r in range(opts.rounds):
            order = opts.tools[r % len(opts.tools):] + opts.tools[: r % len(opts.tools)]
            entry = {"load_average_before": common.load_average(), "tools": {}}
            for tool in order:
                rep, path = launch(tool, opts, paths, tmp)
                if path is not None:
                    counts = np.load(path)
                    if tool not in first:
                        first[tool] = counts
                        record["verification"][tool] = compare(counts, reference, nearest)
                    rep["counts_equal_first_round"] = bool(np.array_equal(counts, first[tool]))
                entry["tools"][tool] = rep
                print(f"round {r + 1}/{opts.rounds} {tool}: whole {rep['whole_s']:.1f} s"
                      + (f", count {rep['count_s']:.1f} s" if "count_s" in rep else ""), file=sys.stderr, flush=True)
            entry["load_average_after"] = common.load_average()
            record["rounds"].append(entry)
            if "lna" in first:
                for tool, counts in first.items():
                    if tool != "lna":
                        record["verification"][tool]["differing_cells_vs_lna"] = int((counts != first["lna"]).sum())
            summarize(record, response)
            flush()
    return record


def summarize(record, response):
    """Medians per tool over the rounds so far, rates, and ratios to the fastest peer."""
    med = {}
    for tool in record["tools"]:
        runs = [e["tools"][tool] for e in record["rounds"] if tool in e["tools"]]
        keys = sorted({k for run in runs for k in run if isinstance(run[k], (int, float)) and not isinstance(run[k], bool)})
        med[tool] = {k: statistics.median(run[k] for run in runs if k in run) for k in keys}
        if "count_s" in med[tool] and tool != "lna_nocount":
            med[tool]["counted_tokens_per_s"] = response / med[tool]["count_s"]
    record["medians"] = med
    import bench_peers_tools

    peers = [t for t in record["tools"] if t.split("@")[0] in bench_peers_tools.PEERS]
    ratios = {}
    if peers:
        fastest_count = min(peers, key=lambda t: med[t].get("count_s", float("inf")))
        fastest_whole = min(peers, key=lambda t: med[t]["whole_s"])
        ratios["fastest_peer_counting"], ratios["fastest_peer_whole"] = fastest_count, fastest_whole
        for tool in record["tools"]:
            if tool.split("@")[0] in COUNTING:
                if "count_s" in med[tool]:
                    ratios[f"{tool}_vs_fastest_peer_counted_tokens_per_s"] = med[fastest_count]["count_s"] / med[tool]["count_s"]
                ratios[f"{tool}_vs_fastest_peer_whole_process"] = med[fastest_whole]["whole_s"] / med[tool]["whole_s"]
    if "lna" in med and "lna_nocount" in med:
        ratios["counting_overhead_vs_nocount"] = med["lna"]["count_s"] / med["lna_nocount"]["count_s"] - 1
    if "lna_sums" in med and "lna_nocount" in med:
        ratios["counting_with_sums_overhead_vs_nocount"] = med["lna_sums"]["count_s"] / med["lna_nocount"]["count_s"] - 1
    if "lna" in med and "count_s" in med["lna"] and record.get("gemm_ceiling_flops"):
        # matmul work of the tokens lna computes, against the measured GEMM ceiling (attention's
        # score matmuls not counted: the fraction is a lower bound)
        flops = 2 * record["model"]["non_embedding_params"] * record["workload"]["tokens_computed_by_lna"]
        by_threads = {int(k): v for k, v in record.get("gemm_ceiling_flops_by_threads", {}).items()}
        ceiling = by_threads.get(round(med["lna"].get("torch_threads", 0)), record["gemm_ceiling_flops"])
        ratios["lna_fraction_of_gemm_ceiling"] = flops / med["lna"]["count_s"] / ceiling
    bound = record["workload"]["shared_prompt_bound"]
    if "lna_vs_fastest_peer_counted_tokens_per_s" in ratios:
        ratios["shared_prompt_bound"] = bound
        ratios["lna_past_bound"] = ratios["lna_vs_fastest_peer_counted_tokens_per_s"] / bound
    record["ratios"] = ratios


def matmul_params(shape: dict) -> int:
    """Weights of the per-token matmuls (attention projections and the MLP), embeddings not."""
    h, i, heads, kv = (shape[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                          "num_key_value_heads"))
    head = h // heads
    return shape["num_hidden_layers"] * (2 * h * h + 2 * h * kv * head + 3 * h * i)


def run(stage):
    """The peers stage of benches/gpu_check.py: the tools on a random-weight 7B (dry run: the
    tiny shape on CPU, two tools, one round)."""
    if stage.dry:
        argv = ["--shape", "tiny", "--questions", "1", "--responses", "2", "--langs", "en,ja", "--rounds", "1",
                "--tools", "lna,hooks_b1", "--device", "cpu", "--cache", str(Path(tempfile.gettempdir()) / "lna_peers_dry")]
    else:
        argv = ["--shape", "llama-7b", "--questions", "4", "--responses", "2", "--rounds", "2", "--device", "cuda",
                "--dtype", "bfloat16", "--tools", "lna,lna_nocount,hooks,nnsight,tlens"]
    opts = parse(argv)
    stage.result.update(versions=peer_versions())  # commit, date, argv: common.write's run record
    stage.result["settings"] = {k: v for k, v in vars(opts).items()}
    stage.section("peers", lambda: measure(opts, stage.result, stage.flush) and "done")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: float32 on cpu, bfloat16 on cuda")
    ap.add_argument("--shape", default="smollm-135m", choices=list(bench_peers_setup.SHAPES))
    ap.add_argument("--langs", default=",".join(bench_peers_setup.RESPONSE_MEAN), help="MGSM languages")
    ap.add_argument("--questions", type=int, default=2, help="per language")
    ap.add_argument("--responses", type=int, default=2, help="given responses per question")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tools", default=DEFAULT_TOOLS, help="comma-separated NAME or NAME@THREADS (benches/bench_peers_tools.py)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of every tool without @N")
    ap.add_argument("--mgsm", default=str(MGSM))
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "lna_peers"), help="built model and workload")
    ap.add_argument("--results", default=None, help="folder of the results file (default benches/results)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--counts", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--report", default=None, help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    opts.dtype = opts.dtype or ("bfloat16" if opts.device.startswith("cuda") else "float32")
    opts.langs = [x for x in opts.langs.split(",") if x]
    opts.tools = [t for t in opts.tools.split(",") if t]
    if opts.threads:
        opts.tools = [t if "@" in t else f"{t}@{opts.threads}" for t in opts.tools]
    return opts


def main(argv=None):
    opts = parse(argv)
    if opts.worker:
        return worker(opts)
    if not bench_peers_setup.has_mgsm(Path(opts.mgsm)):
        print(f"bench_peers: skipped: no MGSM data at {opts.mgsm} (give --mgsm FOLDER with mgsm_<lang>.tsv)")
        return 0
    kind = "cuda" if opts.device.startswith("cuda") else "cpu"
    record = {"bench": "peers", **common.provenance(argv), "machine": common.machine(opts.device),
              "versions": peer_versions(), "load_average_before": common.load_average(),
              "rounds_requested": opts.rounds}
    directory = Path(opts.results) if opts.results else common.RESULTS
    name = common.results_name("peers", opts.device)
    path = directory / f"{name}.json"
    old = json.loads(path.read_text())["runs"] if path.is_file() else []  # each run keeps its own record

    def flush():
        common.write(name, {"machine": record["machine"], "versions": record["versions"], "runs": old + [record]},
                     [directory])

    measure(opts, record, flush)
    record["load_average_after"] = common.load_average()
    flush()
    print(json.dumps({"medians": record["medians"], "ratios": record["ratios"],
                      "verification": record["verification"]}, indent=1))
    print(f"wrote {path}")
    return 0


def peer_versions():
    from importlib import metadata

    out = common.versions()
    for dist in ("nnsight", "transformer-lens"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
