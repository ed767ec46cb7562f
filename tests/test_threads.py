"""lna's CPU thread count: never more than the cores other processes leave free (measured now,
not the lagging load average that also counts lna itself), never raised, an explicit choice
kept; counting runs in one thread and gives the caller's count back."""
import os
import subprocess
import sys
import time

import pytest
import torch

from lna.core import threads
from lna.kernels import silu_mul, silu_mul_native


@pytest.fixture
def machine(monkeypatch):
    def set_(cores, load):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
        monkeypatch.setattr(threads, "others_busy", lambda allowed: load)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield set_
    torch.set_num_threads(before)


@pytest.mark.parametrize("cores,load,free", [(2, 0.2, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 7.5, 1), (16, 3.2, 13),
                                             (4, 0.0, 4)])
def test_free_cores_is_what_the_load_leaves(machine, cores, load, free):
    machine(cores, load)
    assert threads.free_cores() == free


def test_without_proc_stat_the_load_average_decides(machine, monkeypatch):
    machine(2, None)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    assert threads.free_cores() == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert threads.free_cores() == 2


class FakeClock:
    """time for threads.others_busy: its process and wall clocks step through given readings."""

    def __init__(self, own, wall):
        self.own, self.wall = iter(own), iter(wall)

    def process_time(self):
        return next(self.own)

    def monotonic(self):
        return next(self.wall)

    def sleep(self, seconds):
        pass


@pytest.mark.parametrize("busy,own,others", [((100.0, 100.3), (5.0, 5.1), 1.0),  # 0.2 CPU-s of others in 0.2 s
                                             ((100.0, 100.2), (5.0, 5.2), 0.0),  # all of it this process's own
                                             ((100.0, 100.1), (5.0, 5.15), 0.0)])  # jiffy rounding: never below 0
def test_others_busy_is_the_cores_busy_less_this_process(monkeypatch, busy, own, others):
    seconds = iter(busy)
    monkeypatch.setattr(threads, "_busy_seconds", lambda cores: next(seconds))
    monkeypatch.setattr(threads, "time", FakeClock(own, (0.0, 0.2)))
    assert threads.others_busy({0, 1}) == pytest.approx(others)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux's /proc/stat")
def test_a_process_spinning_now_is_seen():
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert threads.others_busy(os.sched_getaffinity(0), interval=0.5) >= 0.5  # about one core
    finally:
        spin.kill()
        spin.wait()


def test_a_busy_machine_lowers_torch_threads_and_an_idle_one_never_raises_them(machine):
    machine(2, 6.0)
    torch.set_num_threads(2)
    assert threads.fit_to_load() == 1 and torch.get_num_threads() == 1
    machine(2, 0.0)
    assert threads.fit_to_load() is None and torch.get_num_threads() == 1


def test_an_explicit_thread_setting_is_kept(machine, monkeypatch):
    machine(2, 6.0)
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.fit_to_load() is None and torch.get_num_threads() == 2


def test_counting_runs_in_one_thread_and_restores_the_count(monkeypatch):
    import lna.kernels.silu_mul_torch as module

    seen, real = [], module._accumulate

    def spy(*args):
        seen.append(torch.get_num_threads())
        return real(*args)

    monkeypatch.setattr(module, "_accumulate", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gate, up = torch.randn(2, 64, 8).unbind(0)
        ids = torch.tensor([-1] * 16 + [0] * 24 + [1] * 24, dtype=torch.int32)
        counts, want = torch.zeros(2, 8, dtype=torch.int64), torch.zeros(2, 8, dtype=torch.int64)
        silu_mul(gate, up, lang_ids=ids, counts=counts, backend="torch")
        silu_mul_native(gate, up, ids, want)
        assert seen == [1] and torch.get_num_threads() == 2 and torch.equal(counts, want)
    finally:
        torch.set_num_threads(before)
