"""The GPU check of issue 15: every GPU figure of docs/design.md ("Performance targets") in one prepared command.

    benches/gpu_check.sh                 # on the GPU machine: installs lna, runs this, results to $OUT too
    benches/gpu_check.sh --dry-run       # the same code paths on CPU at tiny shapes (a test runs it)
    python benches/bench_gpu_check.py [--dry-run] [--budget S] [--stages kernels,profile] [--results DIR]

Stages, most important first; each runs in its own process (a crash, a broken CUDA context or
a hung kernel costs that stage only), under its share of one time budget, and writes its
results file after every measurement (a run cut short keeps what it measured):
  kernels     Triton kernels on the device: correctness of every case of bench_gpu_cases.CASES, then
              speed against plain fused SiLU*up, the unfused torch path and copy bandwidth, and
              the GEMM-epilogue variant against cuBLAS + kernel (bench_gpu_silu_mul.py)
  profile     end to end: a random-weight 7B Mistral in bf16 on a reduced MGSM-shaped workload:
              lna vs no counting vs plain transformers vs the naive two-pass hooks, fraction of
              the measured bf16 matmul ceiling, counts against naive (bench_profile.py)
  smoke       lna-profile itself on a tiny model on the device, store read back: given responses,
              and sampled ones counted while sampling vs force-decoded again (bench_gpu_smoke.py)
  candidates  the speed work's candidates side by side: fused vs separate gate_up GEMM,
              attention for packed rows, launch configurations (bench_gpu_candidates.py)
  peers       lna against transformers hooks, nnsight and TransformerLens (those installed) on a
              random-weight Llama-2-7B shape in bf16: counts verified, counting tokens/s, load
              time, peak memory (bench_peers.py)
Results: <stage>_cuda.json and gpu_check_cuda.json (stages, times, the summary) in
benches/results and in $OUT when set; a dry run writes *_dryrun.json to a temporary folder
(or --results). The last lines printed are a one-screen summary.
"""
import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

STAGES = (  # name, module, the most seconds it may take on the GPU (the budget caps the sum)
    ("kernels", "bench_gpu_silu_mul", 170),
    ("profile", "bench_profile", 150),
    ("smoke", "bench_gpu_smoke", 60),
    ("candidates", "bench_gpu_candidates", 120),
    ("peers", "bench_peers", 170),
)
BUDGET = {"cuda": 520, "dry": 1100}  # seconds for all stages; the run call's timeout_s leaves ~100 s more
DRY_CAP_FACTOR = 4  # a dry run's stages take ~20 s on a busy 2-core machine: a cap is no constraint there
MIN_START = {"cuda": 25, "dry": 5}  # a stage with less time left is skipped
GRACE = 20  # seconds past its deadline a stage gets to write and exit before it is killed


class StageTimeout(Exception):
    pass


class Stage:
    """What a stage module sees: device, dry run, time left, and a results file saved as it goes."""

    def __init__(self, name, dry, deadline, dirs):
        self.name, self.dry, self.deadline, self.dirs = name, dry, deadline, dirs
        self.device = "cpu" if dry else "cuda"
        self.reserve = 2 if dry else 8  # seconds kept to write results
        self.file = f"{name}_{'dryrun' if dry else 'cuda'}"
        self.result = {"stage": name, "dry_run": dry, "complete": False, "machine": common.machine(self.device),
                       "versions": common.versions(), "install": os.environ.get("LNA_INSTALL", "as found"),
                       "errors": {}, "section_seconds": {}}

    def left(self) -> float:
        return self.deadline - time.time()

    def flush(self):
        common.write(self.file, self.result, self.dirs)

    def save(self, key, value, quiet=False):
        self.result[key] = value
        self.flush()
        if not quiet:
            text = json.dumps(value, default=str)
            print(f"[{self.name}] {key}: {text[:400]}{' ...' if len(text) > 400 else ''}", flush=True)

    def section(self, key, fn, *args, min_left=0.0):
        """fn(*args) saved under `key`; an exception (or the time budget) is recorded, not raised."""
        if self.left() < max(min_left, self.reserve):
            self.save(key, {"skipped": f"time budget ({self.left():.0f} s left, {min_left:.0f} s needed)"})
            return None
        started = time.time()
        try:
            value = fn(*args)
        except Exception as error:
            traceback.print_exc()
            value = {"error": f"{type(error).__name__}: {str(error)[:500]}"}
            self.result["errors"][key] = value["error"]
        self.result["section_seconds"][key] = round(time.time() - started, 2)
        self.save(key, value)
        return value


def child(name, module, dry, deadline, dirs) -> int:
    import torch

    stage = Stage(name, dry, deadline, dirs)
    if not dry and not torch.cuda.is_available():
        stage.result["errors"]["cuda"] = "torch sees no CUDA device"
        stage.flush()
        print("gpu_check: torch sees no CUDA device here; use --dry-run on a machine without one", file=sys.stderr)
        return 2

    def on_alarm(signum, frame):
        raise StageTimeout(f"stage {name} reached its time limit")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(deadline - time.time())))
    try:
        common.lna_kernels()  # before any stage module imports lna.runners
        importlib.import_module(module).run(stage)
        stage.result["complete"] = not any(isinstance(v, dict) and "skipped" in v for v in stage.result.values())
    except BaseException as error:  # the time limit outside a section, an import error, ...
        traceback.print_exc()
        stage.result["errors"]["stage"] = f"{type(error).__name__}: {str(error)[:500]}"
    finally:
        signal.alarm(0)
        stage.flush()
    return 1 if stage.result["errors"] else 0


def parent(args) -> int:
    started = time.time()
    dry = args.dry_run
    suffix = "dryrun" if dry else "cuda"
    dirs = args.results or ([tempfile.mkdtemp(prefix="lna-gpu-check-")] if dry else [str(common.RESULTS)])
    if os.environ.get("OUT") and not dry:  # the device machine sends $OUT back
        dirs.append(os.environ["OUT"])
    budget = args.budget or BUDGET["dry" if dry else "cuda"]
    deadline = started + budget
    wanted = args.stages.split(",") if args.stages else [s for s, _, _ in STAGES]
    unknown = set(wanted) - {s for s, _, _ in STAGES}
    if unknown:
        print(f"gpu_check: unknown stage(s) {sorted(unknown)}; stages: {[s for s, _, _ in STAGES]}", file=sys.stderr)
        return 2
    check = {"check": "benches/bench_gpu_check.py", "dry_run": dry, "budget_s": budget, "stages": {},
             # the host only: querying the GPU here would hold a CUDA context beside the stages'
             "machine": {**common.machine("cpu"), "device": "cpu" if dry else "cuda (the stage files name the GPU)"},
             "versions": common.versions(),
             "install": os.environ.get("LNA_INSTALL", "as found"), "results": dirs}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if dry:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    results = {}
    for name, module, cap in STAGES:
        if name not in wanted:
            continue
        left = deadline - time.time()
        if left < MIN_START["dry" if dry else "cuda"]:
            check["stages"][name] = {"status": "skipped: time budget spent"}
            continue
        limit = min(cap * (DRY_CAP_FACTOR if dry else 1), left)
        print(f"== gpu_check: stage {name} ({limit:.0f} s at most)", flush=True)
        for d in dirs:  # a stage that dies before writing must not leave an older run's figures standing
            (Path(d) / f"{name}_{suffix}.json").unlink(missing_ok=True)
        t0 = time.time()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--module", module,
               "--deadline", str(t0 + limit)]
        cmd += ["--dry-run"] if dry else []
        for d in dirs:
            cmd += ["--results", d]
        try:
            status = subprocess.run(cmd, env=env, timeout=limit + GRACE).returncode
        except subprocess.TimeoutExpired:
            status = "killed at its time limit"
        try:
            results[name] = json.loads((Path(dirs[0]) / f"{name}_{suffix}.json").read_text())
        except (OSError, ValueError):  # the stage died before its first write
            results[name] = {}
        errors = results[name].get("errors") or {}
        check["stages"][name] = {"status": "ok" if status == 0 and not errors else "failed", "exit": status,
                                 "seconds": round(time.time() - t0, 1), "errors": errors,
                                 "complete": results[name].get("complete", False)}
        common.write(f"gpu_check_{suffix}", check, dirs)
    check["seconds"] = round(time.time() - started, 1)
    try:
        check["summary"] = summary(check, results)
    except Exception as error:  # the figures are in the files whatever happens here
        traceback.print_exc()
        check["summary"] = [f"summary failed ({type(error).__name__}: {error}); the results files hold the figures"]
    common.write(f"gpu_check_{suffix}", check, dirs)
    print("\n".join(["", "=" * 100, *check["summary"], f"results: {', '.join(dirs)}", "=" * 100]))
    return 0 if check["stages"] and all(s["status"] == "ok" for s in check["stages"].values()) else 1


def get(d, *keys):
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def pct(x, signed=False):
    return "?" if x is None else (f"{x:+.1%}" if signed else f"{x:.0%}")


def num(x, fmt=",.0f"):
    return "?" if x is None else format(x, fmt)


def summary(check, results) -> list:
    """One screen: the figures that answer docs/design.md's targets, each next to its target."""
    first = next((r for r in results.values() if r), {})
    dev, ver = first.get("machine", {}), first.get("versions", {})
    lines = [f"lna GPU check{' (DRY RUN on CPU: no GPU figures)' if check['dry_run'] else ''}: "
             f"{dev.get('gpu', dev.get('cpu', '?'))} (sm {dev.get('gpu_capability', '-')}, {dev.get('gpu_sms', '-')} SMs) "
             f"| torch {ver.get('torch')}, triton {ver.get('triton')}, transformers {ver.get('transformers')} "
             f"| lna: {check['install']}",
             "stages: " + " | ".join(f"{n} {s['status']}{' ' + str(s.get('seconds')) + ' s' if 'seconds' in s else ''}"
                                     for n, s in check["stages"].items())]
    k = results.get("kernels", {})
    corr = k.get("correctness")
    if isinstance(corr, dict) and "rows" in corr:
        unsupported = [n for n, c in corr["cases"].items() if not c["supported"]]
        lines.append(f"correctness: {corr['passed']} passed, {corr['failed']} failed, {corr['not_run']} not run "
                     f"(budget) of {corr['planned']}; kernels lack: {', '.join(unsupported) or 'nothing'}")
        lines += [f"  FAILED {f}" for f in corr["failures"][:5]]
    for key in sorted(x for x in k if x.startswith("speed_")):
        s = k[key]
        if not isinstance(s, dict) or "ms" not in s:
            continue
        ms, r = s["ms"], s["ratios"]
        lines.append(f"kernel T={s['shape']['tokens']} bf16: packed fused {num(ms.get('packed plain'), '.3f')} ms, "
                     f"+count {num(ms.get('packed count'), '.3f')} ms ({pct(r.get('count_overhead'), True)}; "
                     f"target <= +2%), {pct(get(s, 'fraction_of_copy', 'packed count'))} of copy "
                     f"{num(k.get('copy_gb_per_s'))} GB/s (target >= 90%); unfused torch "
                     f"{num(r.get('unfused / fused+count'), '.1f')}x slower")
    for key in sorted(x for x in k if x.startswith("gemm_epilogue_") and x[-1].isdigit()):
        g = k[key]
        if isinstance(g, dict) and "ms" in g:
            lines.append(f"gemm epilogue T={g['shape']['tokens']}: {g['gemm_epilogue / (cublas + fused)']}x the time "
                         f"of cuBLAS + kernel (keep: {k.get('gemm_epilogue_keep')}); count flips "
                         f"{num(get(k, 'gemm_epilogue_check', 'count_difference_fraction'), '.1e')}")
    p = results.get("profile", {})
    if "seconds" in p and "lna" in p.get("seconds", {}):
        lines.append(f"end to end ({get(p, 'model', 'name')} {get(p, 'model', 'dtype')}, "
                     f"{num(get(p, 'workload', 'response_tokens'))} counted tokens): lna "
                     f"{num(get(p, 'counted_tokens_per_s', 'lna'))} tok/s = {pct(p.get('roofline_fraction'))} of "
                     f"{num((p.get('gemm_ceiling_flops') or 0) / 1e12)} TFLOP/s (target >= 70%); "
                     f"{num(p.get('ratio_lna_vs_naive_counted_tokens_per_s'), '.1f')}x naive (target >= 5x)")
        lines.append(f"  counting {pct(p.get('counting_overhead_vs_no_count'), True)} vs no count, "
                     f"{pct(p.get('overhead_vs_plain_hf_forward'), True)} vs plain transformers; counts differing "
                     f"from naive {num(p.get('counts_differing_from_naive_fraction'), '.1e')}; full MGSM projected "
                     f"{num(p.get('projected_full_mgsm_seconds'))} s (target <= 120); host batch building "
                     f"{pct(get(p, 'host', 'build_batches_fraction_of_lna'))} of lna's time; peak "
                     f"{p.get('gpu_peak_memory_gib', '-')} GiB")
    sm = get(results, "smoke", "profile_cli")
    if isinstance(sm, dict) and "ok" in sm:
        lines.append(f"smoke: lna-profile on the device {'ok' if sm['ok'] else 'FAILED'}; counts differing from "
                     f"naive {num(sm.get('counts_differing_from_naive_fraction'), '.1e')}")
    ss = get(results, "smoke", "sampling_cli")
    if isinstance(ss, dict) and "ok" in ss:
        lines.append(f"  sampling: counted while sampling {'ok' if ss['ok'] else 'FAILED'}; same responses when "
                     f"force-decoding {ss.get('same_responses_both_runs')}; counts differing from naive "
                     f"{num(get(ss, 'while_sampling', 'counts_differing_from_naive_fraction'), '.1e')} (while "
                     f"sampling), {num(get(ss, 'force_decoded', 'counts_differing_from_naive_fraction'), '.1e')} "
                     f"(force-decoded)")
    c = results.get("candidates", {})
    if isinstance(c.get("gate_up"), dict) and "ms" in c["gate_up"]:
        lines.append(f"candidates: one gate_up GEMM + packed kernel = {c['gate_up']['fused_over_separate']}x the "
                     f"time of two GEMMs + kernel")
    att = get(c, "attention", "ms_per_layer")
    if att:
        flex_ms = get(c, "flex_attention", "ms_per_layer", "flex_attention")
        lines.append("  attention ms/layer " + f"({c['attention']['shape']['rows']}x{c['attention']['shape']['width']}): "
                     + ", ".join(f"{n.split(' (')[0]} {v:.3f}" for n, v in att.items())
                     + (f", flex {flex_ms:.3f}" if flex_ms else ""))
    cfgs = c.get("launch_configs")
    if isinstance(cfgs, list) and cfgs and "ms_count" in cfgs[0]:
        default = next((r for r in cfgs if r.get("default")), {})
        lines.append(f"  launch configs: best {cfgs[0].get('block_t')}x{cfgs[0].get('block_i')} w{cfgs[0].get('num_warps')}"
                     f" {cfgs[0]['ms_count']} ms vs default {default.get('ms_count', '?')} ms")
    pr = results.get("peers", {})
    if isinstance(pr.get("medians"), dict) and pr["medians"]:
        med, ratios = pr["medians"], pr.get("ratios", {})
        lines.append("peers (counted tok/s, load s): " + ", ".join(
            f"{t} {num(m.get('counted_tokens_per_s'))}, {num(m.get('load_s'), '.1f')}" for t, m in med.items()
            if "counted_tokens_per_s" in m) + f"; lna {num(ratios.get('lna_vs_fastest_peer_counted_tokens_per_s'), '.2f')}x "
            f"the fastest peer (target >= 5x; shared prompts alone: {num(ratios.get('shared_prompt_bound'), '.2f')}x)")
        lines.append("  counts vs batch-1 reference: " + ", ".join(
            f"{t} {v['differing_cells']} cells" for t, v in pr.get("verification", {}).items())
            + (f"; not run: {', '.join(pr['skipped_tools'])}" if pr.get("skipped_tools") else ""))
    failed = {n: s["errors"] for n, s in check["stages"].items() if s.get("errors")}
    for name, errors in failed.items():
        lines += [f"ERROR {name}/{key}: {text[:160]}" for key, text in list(errors.items())[:3]]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, Triton interpreter (seconds)")
    ap.add_argument("--budget", type=float, help=f"seconds for all stages (default {BUDGET['cuda']}; dry run "
                                                 f"{BUDGET['dry']})")
    ap.add_argument("--stages", help=f"comma-separated subset of {','.join(s for s, _, _ in STAGES)}")
    ap.add_argument("--results", action="append", help="results folder (repeatable; default benches/results, "
                                                       "or a temporary folder for a dry run; $OUT is added)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--module", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child, args.module, args.dry_run, args.deadline, args.results)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
