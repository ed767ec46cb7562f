"""lna.core.checkpoint.Checkpointer against a fake clock and a list of writes: time and count
triggers, the on-stop save (error, Ctrl-C, a real SIGTERM), and a failing save's report."""
import os
import signal

import pytest

from lna.core.checkpoint import Checkpointer
from lna.core.interrupts import Terminated


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def recorder(clock):
    writes = []
    return writes, (lambda **kw: writes.append((clock.t, kw)))


def test_time_trigger_saves_once_every_seconds_have_passed_and_only_what_changed():
    clock = Clock()
    writes, write = recorder(clock)
    ck = Checkpointer(write, every=60, clock=clock)
    clock.t += 59.9
    ck.changed()
    assert not ck.tick() and writes == []  # changed, but not yet due
    clock.t += 0.1
    assert ck.tick() and writes == [(1060.0, {})]
    clock.t += 100
    assert not ck.tick() and len(writes) == 1  # due by time, but nothing changed since
    ck.changed()
    assert ck.tick() and writes[-1] == (1160.0, {})  # the clock restarts at each save
    clock.t += 30
    ck.changed()
    assert not ck.tick()
    clock.t += 30
    assert ck.tick() and [t for t, _ in writes] == [1060.0, 1160.0, 1220.0]


def test_every_zero_saves_after_every_change():
    clock = Clock()
    writes, write = recorder(clock)
    ck = Checkpointer(write, every=0, clock=clock)
    for _ in range(3):
        ck.changed()
        assert ck.tick()
    assert len(writes) == 3


def test_count_trigger_saves_every_n_changes_whatever_the_time():
    clock = Clock()
    writes, write = recorder(clock)
    ck = Checkpointer(write, count=3, clock=clock)
    saved_at = []
    for i in range(1, 8):
        ck.changed()
        clock.t += 1000  # no time trigger: only the count decides
        if ck.tick():
            saved_at.append(i)
    assert saved_at == [3, 6] and len(writes) == 2
    ck.changed(5)  # several changes at once
    assert ck.tick() and len(writes) == 3


def test_time_or_count_whichever_comes_first():
    clock = Clock()
    writes, write = recorder(clock)
    ck = Checkpointer(write, every=10, count=4, clock=clock)
    ck.changed(4)
    assert ck.tick()  # by count, at once
    ck.changed()
    clock.t += 10
    assert ck.tick()  # by time, one change
    assert len(writes) == 2


def test_save_and_flush():
    clock = Clock()
    writes, write = recorder(clock)
    ck = Checkpointer(write, every=60, clock=clock)
    ck.flush()
    assert writes == []  # nothing unsaved
    ck.save(complete=True)  # a final save: unconditional, with the writer's keywords
    assert writes == [(1000.0, {"complete": True})]
    ck.changed()
    ck.flush()
    assert len(writes) == 2 and ck.unsaved == 0


@pytest.mark.parametrize("stop", [RuntimeError("boom"), KeyboardInterrupt(), Terminated()])
def test_on_stop_saves_what_is_unsaved_then_reraises(stop):
    clock = Clock()
    writes, write = recorder(clock)
    ck = Checkpointer(write, every=3600, clock=clock)
    with pytest.raises(type(stop)):
        with ck.on_stop():
            ck.changed()
            raise stop
    assert len(writes) == 1
    with pytest.raises(type(stop)):  # nothing unsaved: no write
        with ck.on_stop():
            raise stop
    assert len(writes) == 1


def test_on_stop_turns_a_real_sigterm_into_a_save_and_terminated():
    clock = Clock()
    writes, write = recorder(clock)
    ck = Checkpointer(write, every=3600, clock=clock)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        with ck.on_stop():
            ck.changed()
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10 ** 6):  # the handler runs between bytecodes
                pass
    assert len(writes) == 1
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_a_signal_during_a_save_waits_for_it():
    """The write runs shielded: SIGTERM in the middle of it lands after it, whole."""
    done = []

    def write():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10 ** 5):
            pass
        done.append(True)

    ck = Checkpointer(write, every=0)
    with pytest.raises(Terminated):
        with ck.on_stop():
            ck.changed()
            ck.tick()
    assert done == [True]


def test_failed_save_on_stop():
    """An interrupt whose save fails reports the failed save (the news); an error whose save
    fails too reports the first error (a full disk fails both)."""
    def failing(**kw):
        raise OSError(28, "No space left on device")

    ck = Checkpointer(failing, every=3600)
    with pytest.raises(OSError, match="No space"):
        with ck.on_stop():
            ck.changed()
            raise KeyboardInterrupt
    ck.changed()
    with pytest.raises(ValueError, match="first"):
        with ck.on_stop():
            raise ValueError("first")
    assert ck.unsaved == 0  # a failed save is not retried
