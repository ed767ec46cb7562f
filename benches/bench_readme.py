"""Time the README's two commands as a new user runs them: each in a fresh clone, exactly as written.

    python benches/bench_readme.py [--commands quick_start,tests] [--repo PATH]

Clones the repository's committed HEAD (commit first: uncommitted changes are not in a clone)
into a temporary folder, once per command, and runs the README's quick-start or tests command
there with bash, outside any virtual environment (PYTHONPATH, VIRTUAL_ENV and LNA_* variables
removed; a fresh LNA_CACHE, so the tiny model is built afresh; pip's own cache is left as it is,
which the results say). Records the wall time, the 1/5/15-minute load average before and after,
the exit status and pytest's summary line. Runs accumulate in
benches/results/readme_timings_cpu.json (each with its commit and date), so the README states a
range over runs and loads, not one best figure.
"""
import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SECTIONS = {"quick_start": "## Quick start", "tests": "## Tests"}


def readme_command(readme: str, key: str) -> str:
    """The first ```bash block under the README's section for `key` (tests/test_readme.py reads the same)."""
    start = readme.index(SECTIONS[key])
    end = readme.find("\n## ", start + 1)
    blocks = re.findall(r"```bash\n(.*?)```", readme[start:end if end > 0 else None], re.S)
    return blocks[0].strip()


def clean_env(cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("LNA_")}
    venv_bin = os.environ.get("VIRTUAL_ENV")
    if venv_bin:
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                      if not p.startswith(venv_bin))
    env["LNA_CACHE"] = str(cache)
    return env


def time_one(repo: Path, key: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="lna-readme-") as tmp:
        clone = Path(tmp) / "fresh"
        subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
        commit = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        command = readme_command((clone / "README.md").read_text(encoding="utf-8"), key)
        load_before = [round(v, 2) for v in os.getloadavg()]
        started = time.perf_counter()
        done = subprocess.run(["bash", "-c", command], cwd=clone, env=clean_env(Path(tmp) / "lna-cache"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seconds = time.perf_counter() - started
        load_after = [round(v, 2) for v in os.getloadavg()]
    log = Path(tempfile.gettempdir()) / f"lna-bench-readme-{key}.log"  # the whole output, for a failure
    log.write_text(done.stdout)
    lines = done.stdout.strip().splitlines()
    summary = next((line.strip("= ") for line in reversed(lines) if re.search(r"\d+ (passed|failed)", line)), None)
    failed = [line.split(" - ")[0] for line in lines if line.startswith("FAILED ")]
    result = summary if key == "tests" else None
    if done.returncode:
        result = f"exit {done.returncode}" + (f": {summary}" if summary else "")
    print(f"{key}: {seconds:.0f} s, exit {done.returncode}, load {load_before[0]} -> {load_after[0]}"
          f"{', ' + summary if summary else ''} (output: {log})")
    if done.returncode:
        print("\n".join(failed or lines[-30:]), file=sys.stderr)
    return {"command": key, "text": command, "seconds": round(seconds, 1), "exit": done.returncode,
            "result": result, "failed": failed, "load_before": load_before, "load_after": load_after, "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "pip_cache": "as found (not cleared)", "lna_cache": "fresh (the tiny model built afresh)"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", default="quick_start,tests", help="which: quick_start, tests (comma-separated)")
    parser.add_argument("--repo", type=Path, default=common.ROOT, help="the repository to clone (default: this one)")
    args = parser.parse_args(argv)
    keys = args.commands.split(",")
    unknown = set(keys) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown command(s) {sorted(unknown)}; choose from {sorted(SECTIONS)}")
    path = common.RESULTS / f"{common.results_name('readme_timings', 'cpu')}.json"
    runs = __import__("json").loads(path.read_text())["runs"] if path.exists() else []
    for key in keys:
        runs.append(time_one(args.repo, key))
        out = common.write(common.results_name("readme_timings", "cpu"), {
            "bench": "the README's quick start and tests commands, each from a fresh clone",
            "machine": common.machine("cpu"), "versions": common.versions(), "runs": runs})
    print("wrote", out)
    return 0 if all(run["exit"] == 0 for run in runs[-len(keys):]) else 1


if __name__ == "__main__":
    sys.exit(main())
