"""lna's CPU thread count: never more than the cores the load leaves free, never raised, an
explicit choice kept; counting runs in one thread and gives the caller's count back."""
import os

import pytest
import torch

from lna.core import threads
from lna.kernels import silu_mul, silu_mul_native


@pytest.fixture
def machine(monkeypatch):
    def set_(cores, load):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
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
