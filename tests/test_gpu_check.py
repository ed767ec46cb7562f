"""The prepared GPU check (benches/gpu_check.sh) cannot rot between runs on the GPU machine:
its dry run takes every code path of every stage on CPU (Triton interpreter, tiny shapes) and
must pass with the figures checked against their references; and its guards hold: a stage
that fails or hangs costs that stage only, the next one still runs, results are written."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHES = REPO / "benches"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["PYTHON"] = sys.executable
    before = sorted(p.name for p in (BENCHES / "results").iterdir())
    run = subprocess.run(["bash", str(BENCHES / "gpu_check.sh"), "--dry-run", "--results", str(out)], env=env,
                         capture_output=True, text=True, timeout=1200)
    after = sorted(p.name for p in (BENCHES / "results").iterdir())
    files = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    return run, files, before == after


def test_dry_run_passes_every_stage(dry_run):
    run, files, results_untouched = dry_run
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    check = files["gpu_check_dryrun"]
    assert list(check["stages"]) == ["kernels", "profile", "smoke", "candidates", "peers"]
    for name, stage in check["stages"].items():
        assert stage["status"] == "ok" and stage["complete"], (name, stage)
        assert files[f"{name}_dryrun"]["dry_run"] and files[f"{name}_dryrun"]["versions"]["torch"]
    assert results_untouched, "a dry run must not write into benches/results"
    assert "lna GPU check (DRY RUN" in run.stdout and check["summary"][0] in run.stdout


def test_dry_run_checks_the_kernels_against_references(dry_run):
    kernels = dry_run[1]["kernels_dryrun"]
    corr = kernels["correctness"]
    assert corr["all_passed"] and corr["passed"] == corr["planned"] > 0
    rows = corr["rows"]
    assert {r["dtype"] for r in rows} == {"bfloat16", "float16", "float32"}
    supported = {name for name, c in corr["cases"].items() if c["supported"]}
    assert {"count", "packed count+mask", "packed mask"} <= supported == {r["case"] for r in rows}
    assert all(r["counts_exact"] for r in rows if "counts_exact" in r)
    assert all(r["untouched_rows_bit_equal"] for r in rows if "mask" in r["case"] or "values" in r["case"])
    speed = kernels["speed_64"]
    assert {"packed plain", "packed count", "torch silu*up"} <= set(speed["ms"]) and "count_overhead" in speed["ratios"]
    assert kernels["gemm_epilogue_check"]["count_difference_fraction"] < 0.01


def test_dry_run_end_to_end_and_smoke_agree_with_naive_hooks(dry_run):
    files = dry_run[1]
    profile = files["profile_dryrun"]
    assert set(profile["seconds"]) == {"lna", "lna_sums", "naive_two_pass_subset", "no_count", "plain_hf_mlp"}
    # bf16: near-zero gates may flip between the two paths' matmul shapes (a few in 2,560 counts)
    assert profile["counts_differing_from_naive_fraction"] < 0.02
    assert profile["roofline_fraction"] > 0 and profile["ratio_lna_vs_naive_counted_tokens_per_s"] > 0
    smoke = files["smoke_dryrun"]["profile_cli"]
    # fp32: exact, or flips of gates within 1e-5 of zero (the matmuls' shapes differ; a thread
    # count the OS changes can move one); a few at most
    assert smoke["ok"] and smoke["count_flips"] <= 2 and smoke["differences_explained_by_gates_within_1e-05"], smoke
    sampled = files["smoke_dryrun"]["sampling_cli"]
    assert sampled["ok"] and sampled["same_responses_both_runs"], sampled
    for way, counted in (("while_sampling", "sampling"), ("force_decoded", "force-decoding")):
        assert sampled[way]["counted_during"] == counted and sampled[way]["tokens_match"]
        assert sampled[way]["count_flips"] <= 2 and sampled[way]["differences_explained_by_gates_within_1e-05"]
    peers = files["peers_dryrun"]
    # every tool counted in the first round; fp32, so only near-zero gates may flip
    assert set(peers["verification"]) == {"lna", "hooks_b1"}
    for tool, v in peers["verification"].items():
        assert v["differing_cells"] <= 2 and (v["max_nearest_abs_gate_at_differing"] or 0) < 1e-5, (tool, v)
    assert peers["medians"]["lna"]["counted_tokens_per_s"] > 0 and peers["workload"]["shared_prompt_bound"] > 1
    assert all(run["counts_equal_first_round"] for e in peers["rounds"] for run in e["tools"].values())
    candidates = files["candidates_dryrun"]
    assert max(candidates["attention"]["max_abs_difference_vs_dense"].values()) < 1e-2
    assert candidates["flex_attention"]["max_abs_difference_vs_dense"] < 5e-2
    assert candidates["launch_configs"][0]["ms_count"] > 0


FAKE_STAGES = {
    "fake_fails": """
        def run(stage):
            stage.section("broken", lambda: 1 / 0)
            stage.section("after_broken", lambda: "ran")
            stage.section("needs_more_time", lambda: "ran", min_left=10**6)
    """,
    "fake_slow": """
        import time
        def run(stage):
            stage.section("first", lambda: "ran")
            stage.section("too_slow", time.sleep, 60)  # the stage's own deadline interrupts it
            stage.section("after_deadline", lambda: "ran")
    """,
    "fake_hangs": """
        import signal, time
        def run(stage):
            signal.signal(signal.SIGALRM, signal.SIG_IGN)  # deaf to its own deadline: the parent kills it
            stage.section("first", lambda: "ran")
            time.sleep(60)
    """,
    "fake_ok": """
        def run(stage):
            stage.section("value", lambda: 42)
    """,
}


@pytest.fixture
def gpu_check(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHES))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name, code in FAKE_STAGES.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(code))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    import bench_gpu_check as gpu_check

    return gpu_check


def test_a_failing_or_slow_section_costs_that_section_only(gpu_check, tmp_path):
    previous = signal.getsignal(signal.SIGALRM)
    try:
        assert gpu_check.child("fails", "fake_fails", True, time.time() + 60, [str(tmp_path)]) == 1
        assert gpu_check.child("slow", "fake_slow", True, time.time() + 4, [str(tmp_path)]) == 1
    finally:
        signal.signal(signal.SIGALRM, previous)
    fails = json.loads((tmp_path / "fails_dryrun.json").read_text())
    assert "ZeroDivisionError" in fails["errors"]["broken"] and fails["after_broken"] == "ran"
    assert "skipped" in fails["needs_more_time"] and not fails["complete"]
    slow = json.loads((tmp_path / "slow_dryrun.json").read_text())
    assert slow["first"] == "ran" and "time limit" in slow["errors"]["too_slow"] and "skipped" in slow["after_deadline"]
    assert slow["section_seconds"]["too_slow"] < 10


def test_a_hung_stage_is_killed_and_the_next_one_runs(gpu_check, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "STAGES", (("hangs", "fake_hangs", 12), ("fails", "fake_fails", 60),
                                              ("ok", "fake_ok", 60)))
    monkeypatch.setattr(gpu_check, "GRACE", 1)
    monkeypatch.setattr(gpu_check, "DRY_CAP_FACTOR", 1)
    results = tmp_path / "results"
    started = time.time()
    assert gpu_check.main(["--dry-run", "--results", str(results)]) == 1
    assert time.time() - started < 120
    stages = json.loads((results / "gpu_check_dryrun.json").read_text())["stages"]
    assert stages["hangs"]["exit"] == "killed at its time limit" and stages["hangs"]["status"] == "failed"
    assert json.loads((results / "hangs_dryrun.json").read_text())["first"] == "ran"  # written before the kill
    assert stages["fails"]["status"] == "failed" and stages["ok"]["status"] == "ok"
    out = capsys.readouterr().out
    assert "ERROR fails/broken: ZeroDivisionError" in out and "stages: hangs failed" in out
