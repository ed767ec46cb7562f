"""How many CPU threads torch should use here: the cores that other work leaves free.

On a shared machine a multi-threaded op waits at every barrier for its slowest thread, and
a thread that the OS has descheduled for other work stalls them all: measured on this
project's 2-core machine at load ~5, lna's count ran 1.6-2x faster on one thread than on
two, and its small per-block counting ops ~40x faster (benches/results/peers_cpu.json).
So the default never exceeds the cores that the load average leaves idle (read once, when a
CPU runner starts); OMP_NUM_THREADS or MKL_NUM_THREADS, when set, are kept as they are, and
a count already below the free cores (torch.set_num_threads before lna starts) is never raised.
"""
import os


def free_cores() -> int:
    """Cores this process may use minus the others' load (1-minute average), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, round(cores - load)))


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
