"""What every bench records beside its numbers (the machine, the versions) and where it writes them.

Benches import this as `import common` after putting benches/ on sys.path:

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common  # noqa: E402
"""
import json
import os
import platform
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


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
    info["platform"] = platform.platform()
    if hasattr(os, "getloadavg"):
        # A busy shared machine slows every column alike: ratios stay comparable, seconds do not.
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    return info


def versions() -> dict:
    import numpy
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "numpy": numpy.__version__}
    for name in ("transformers", "triton", "vllm"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # not installed (or broken): record the absence, not a crash
            out[name] = None
    return out


def write(name: str, payload: dict) -> Path:
    """benches/results/<name>.json, replaced whole (never left half-written if interrupted)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(payload, indent=2) + "\n")
    partial.replace(path)
    return path


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
