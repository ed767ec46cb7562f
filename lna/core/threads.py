"""How many CPU threads torch should use here: the cores that other work leaves free.

On a shared machine a multi-threaded op waits at every barrier for its slowest thread, and
a thread that the OS has descheduled for other work stalls them all: measured on this
project's 2-core machine at load ~5, lna's count ran 1.6-2x faster on one thread than on
two, and its small per-block counting ops ~40x faster (benches/results/peers_cpu.json).
So the default never exceeds the cores that other processes leave idle, measured when a CPU
runner starts; OMP_NUM_THREADS or MKL_NUM_THREADS, when set, are kept as they are, and a
count already below the free cores (torch.set_num_threads before lna starts) is never raised.

Other processes' use is sampled from /proc/stat over a tenth of a second, less this process's
own CPU time: the 1-minute load average lags (a command that just ended still counts for a
minute) and counts this process itself, so on an idle 2-core machine it halved lna's threads.
Where /proc/stat cannot be read, the load average is the fallback.
"""
import os
import time

SAMPLE_S = 0.1


def _busy_seconds(cores) -> float | None:
    """CPU seconds the given cores have spent busy since boot (all processes), from /proc/stat."""
    try:
        lines = open("/proc/stat").read().splitlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            values = [int(v) for v in fields[:8]]
            busy += sum(values) - values[3] - values[4]  # all but idle and iowait
    return busy / tick


def others_busy(cores, interval: float = SAMPLE_S) -> float | None:
    """Cores' worth of CPU that other processes use now, or None where it cannot be measured."""
    first, own, wall = _busy_seconds(cores), time.process_time(), time.monotonic()
    if first is None:
        return None
    time.sleep(interval)
    second = _busy_seconds(cores)
    if second is None:
        return None
    spent = time.monotonic() - wall
    return max(0.0, (second - first) - (time.process_time() - own)) / spent


def free_cores() -> int:
    """Cores this process may use minus the others' use now (the 1-minute load average where
    that cannot be measured), at least 1."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    busy = others_busy(allowed)
    if busy is None:
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cores = len(allowed)
    return max(1, min(cores, round(cores - busy)))


def fit_to_load() -> int | None:
    """Lower torch's thread count to the free cores (never raise it), unless OMP_NUM_THREADS
    or MKL_NUM_THREADS chose one. Returns the count set, or None where it was left alone."""
    import torch

    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
        return None
    current = torch.get_num_threads()
    wanted = min(current, free_cores())
    if wanted < current:
        torch.set_num_threads(wanted)
        return wanted
    return None
