"""Start-up: time from launching a command to its model's first forward, lna against the floor.

The floor is a plain transformers script that loads the same model and tokenizer
(AutoTokenizer, AutoModelForCausalLM in float32), tokenizes one prompt and runs it: imports,
tokenizer and weights, what every tool pays. lna's commands are timed from launch to the
first forward of their model (the first call of its input embeddings, where a probe stops
the process), on one question of bench_peers' workload (a prompt with given responses):
- lna_profile       lna-profile, the model's weights already hashed (the identity cache warm);
- lna_profile_cold  the same with an empty lna cache: the first run on a local model, whose
                    weight files are hashed (lna.models.fingerprint);
- lna_eval          lna-eval answering it (--max-new-tokens 1);
- lna_ablate        lna-ablate with a neuron set identified on the model (built first).
Each lna variant runs each of the given source trees (--trees NAME=PATH,...: PYTHONPATH
points at the tree; e.g. a `git worktree add /tmp/base cda7698` checkout as `before`), all
of them in one run, alternated round by round in rotated order, each a fresh process pinned
to one core (--cores; the last ones, as benches/common.py one_core takes the first), after
one untimed warm-up round (page cache, identity cache). Medians over the rounds of the wall
time and of the process's CPU time (user + system: on a shared, loaded machine the steadier
figure), the load average at each launch.

Models: bench_peers' random-weight Llamas (benches/bench_peers_setup.py, built once, offline):
`smollm-135m` (SmolLM-135M's shape, 538 MB of float32 weights: loading and hashing costs
show) and `tiny`.

  python benches/bench_startup.py --trees before=/tmp/base,after=.      # 5 rounds
  python benches/bench_startup.py --shapes tiny --rounds 1 --variants floor,lna_profile   # smoke
Writes benches/results/startup_cpu.json (--results DIR for another folder).
"""
import argparse
import json
import os
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
VARIANTS = ("floor", "lna_profile", "lna_profile_cold", "lna_eval", "lna_ablate")

# Run a script or `-m module`; at the model's first embedding lookup, report the seconds
# since the launcher's clock (LNA_T0) and stop the process there.
PROBE = '''import os, runpy, sys, time
import torch
def first_forward(self, *args, **kwargs):
    with open(os.environ["LNA_PROBE_OUT"], "w") as fh:
        fh.write(repr(time.time() - float(os.environ["LNA_T0"])))
    os._exit(0)
torch.nn.Embedding.forward = first_forward
sys.argv = sys.argv[1:]
if sys.argv[0] == "-c":
    code, sys.argv = sys.argv[1], ["-c", *sys.argv[2:]]
    exec(compile(code, "<probe>", "exec"), {"__name__": "__main__"})
else:
    runpy.run_path(sys.argv[0], run_name="__main__")
'''
# The floor: what any user's script loading this model pays before its first forward.
FLOOR = '''import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
with torch.inference_mode():
    model(**tokenizer(sys.argv[2], return_tensors="pt"))
'''
CLI = "import sys; from lna.cli import {0}_main; {0}_main(sys.argv[1:])"


def command(variant: str, model: Path, data: Path, neurons: Path | None, out: Path) -> list:
    """argv (after the probe) of one launch."""
    if variant == "floor":
        prompt = json.loads(data.read_text(encoding="utf-8").splitlines()[0])["prompt"]
        return [str(out.parent / "floor.py"), str(model), prompt]
    common_args = ["--model", str(model), "-q", "--device", "cpu"]
    if variant.startswith("lna_profile"):
        return ["-c", CLI.format("profile"), *common_args, "--dataset", str(data), "--out", str(out / "p.zarr")]
    if variant == "lna_eval":
        return ["-c", CLI.format("eval"), *common_args, "--dataset", str(data), "-o", str(out / "ev"),
                "--max-new-tokens", "1"]
    if variant == "lna_ablate":
        return ["-c", CLI.format("ablate"), *common_args, "--neurons", str(neurons), "--responses", str(data),
                "-o", str(out / "ab")]
    raise ValueError(variant)


def launch(argv: list, tree: Path | None, cache: Path, out: Path, probe: Path, cores: set) -> tuple:
    """(wall seconds from launch to the first forward, where the process is stopped; the CPU
    seconds it used: on a shared machine the steadier figure)."""
    report = out / "probe.out"
    report.unlink(missing_ok=True)
    env = dict(os.environ, LNA_PROBE_OUT=str(report), LNA_CACHE=str(cache),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("PYTHONPATH", None)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    env["LNA_T0"] = repr(time.time())
    with open(out / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, str(probe), *argv], env=env, stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=lambda: os.sched_setaffinity(0, cores))
        _, status, usage = os.wait4(proc.pid, 0)
    if not report.is_file():
        raise RuntimeError(f"no first forward ({os.waitstatus_to_exitcode(status)}): "
                           f"{(out / 'stderr.txt').read_text().strip()[-1500:]}")
    return float(report.read_text()), usage.ru_utime + usage.ru_stime


def neuron_set(model: Path, tree: Path, tmp: Path) -> Path:
    """A neuron set identified on the model (lna-profile of bench_peers' 10-language workload,
    then lna-identify): what lna-ablate reads. Random weights: its sets may be empty."""
    tmp.mkdir(parents=True, exist_ok=True)
    work = tmp / "ten_langs"
    bench_peers_setup.build_workload(model, MGSM, work, list(bench_peers_setup.RESPONSE_MEAN), 1, 2)
    env = dict(os.environ, PYTHONPATH=str(tree), LNA_CACHE=str(tmp / "cache_setup"))
    store, out = tmp / "set.zarr", tmp / "neurons.json"
    for cmd in ([CLI.format("profile"), "--model", str(model), "--dataset", f"{work}.jsonl", "--out", str(store),
                 "-q", "--device", "cpu"],
                [CLI.format("identify"), str(store), "-o", str(out)]):
        subprocess.run([sys.executable, "-c", *cmd], env=env, check=True, capture_output=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="smollm-135m,tiny", help="bench_peers_setup shapes")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "lna_peers"), help="built models")
    ap.add_argument("--trees", default=f"after={HERE.parent}",
                    help="NAME=PATH,...: lna source trees to time (PYTHONPATH), e.g. before=/tmp/base,after=.")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cores", type=int, default=1, help="cores each launch may use (pinned)")
    ap.add_argument("--results", default=None, help="results folder (default benches/results)")
    opts = ap.parse_args(argv)
    trees = {name: Path(path).resolve() for name, path in (t.split("=", 1) for t in opts.trees.split(","))}
    variants = opts.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    cores = set(sorted(os.sched_getaffinity(0))[-opts.cores:])  # the last: one_core benches take the first
    runs = [(shape, variant, tree) for shape in opts.shapes.split(",") for variant in variants
            for tree in ([None] if variant == "floor" else list(trees))]
    times = {run: [] for run in runs}
    cpu = {run: [] for run in runs}
    loads = []
    with tempfile.TemporaryDirectory(prefix="lna_startup_") as tmp_:
        tmp = Path(tmp_)
        (tmp / "probe.py").write_text(PROBE)
        (tmp / "floor.py").write_text(FLOOR)
        models, data, neurons = {}, {}, {}
        for shape in opts.shapes.split(","):
            models[shape] = bench_peers_setup.build_model(Path(opts.cache) / f"{shape}-float32", shape, MGSM)
            base = tmp / f"work-{shape}"
            bench_peers_setup.build_workload(models[shape], MGSM, base, ["en"], 1, 2)
            data[shape] = Path(f"{base}.jsonl")
            if "lna_ablate" in variants:
                neurons[shape] = neuron_set(models[shape], next(iter(trees.values())), tmp / f"set-{shape}")

        def once(run, k):
            shape, variant, tree = run
            out = tmp / f"out-{k}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            cache = out / "cache" if variant == "lna_profile_cold" else tmp / "cache"
            argv_ = command(variant, models[shape], data[shape], neurons.get(shape), out)
            return launch(argv_, trees[tree] if tree else None, cache, out, tmp / "probe.py", cores)

        for k, run in enumerate(runs):  # warm-up: page cache, identity cache, compiled bytecode
            once(run, k)
        for r in range(opts.rounds):
            order = runs[r % len(runs):] + runs[:r % len(runs)]
            for k, run in enumerate(order):
                loads.append(common.load_average()[0])
                wall, used = once(run, k)
                times[run].append(wall)
                cpu[run].append(used)
            print(f"round {r + 1}: " + ", ".join(f"{s}/{v}{'@' + t if t else ''} {times[(s, v, t)][-1]:.2f} "
                                                 f"({cpu[(s, v, t)][-1]:.2f} CPU)" for s, v, t in runs), flush=True)
    import torch

    pin, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))  # as each launch ran: torch's default on its pinned cores
    mach = common.machine("cpu")
    os.sched_setaffinity(0, pin)
    torch.set_num_threads(threads)
    result = {}
    for (shape, variant, tree), ts in times.items():
        med, med_cpu = statistics.median(ts), statistics.median(cpu[(shape, variant, tree)])
        entry = {"seconds": ts, "cpu_seconds": cpu[(shape, variant, tree)], "median_s": med, "median_cpu_s": med_cpu}
        if "floor" in variants and variant != "floor":
            floor, floor_cpu = (statistics.median(t[(shape, "floor", None)]) for t in (times, cpu))
            entry.update(over_floor_s=med - floor, ratio_to_floor=med / floor, over_floor_cpu_s=med_cpu - floor_cpu,
                         ratio_to_floor_cpu=med_cpu / floor_cpu)
        result.setdefault(shape, {}).setdefault(variant, {})[tree or "plain"] = entry
    payload = {
        "machine": mach, "versions": common.versions(),
        "trees": {name: {"path": str(path), "commit": _commit(path)} for name, path in trees.items()},
        "models": {shape: {"path": str(models_path), "weights_mib": round(sum(
            f.stat().st_size for f in Path(models_path).glob("*.safetensors")) / 2**20, 1)}
            for shape, models_path in models.items()},
        "measure": "seconds from launch to the model's first forward (first input-embedding call), wall and the "
                   f"process's CPU time (rusage), one process each, pinned to {len(cores)} core(s)",
        "rounds": opts.rounds, "load_average_per_launch": loads, "results": result,
    }
    path = common.write(common.results_name("startup", "cpu"), payload, [opts.results] if opts.results else None)
    for shape, by_variant in result.items():
        for variant, by_tree in by_variant.items():
            for tree, e in by_tree.items():
                extra = (f"  {e['over_floor_s']:+.2f} s, CPU {e['over_floor_cpu_s']:+.2f} s over the floor"
                         if "over_floor_s" in e else "")
                print(f"{shape:12s} {variant:17s} {tree:7s} {e['median_s']:6.2f} s (CPU {e['median_cpu_s']:.2f} s)"
                      f"{extra}")
    print(f"wrote {path}")


def _commit(path: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    main()
