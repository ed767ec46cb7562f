"""Stopping a long run cleanly.

SIGTERM (how schedulers, `kill` and stopped background jobs end a process) is handled like
Ctrl-C: it raises an exception, so the run saves what it finished and says how to resume.
Short bookkeeping steps (adding a batch's counts and marking its samples done) run
shielded: a signal that arrives meanwhile takes effect right after them, never halfway.
"""
import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """Raised on SIGTERM; a KeyboardInterrupt, so every Ctrl-C path handles it the same."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def terminate_as_interrupt():
    """Within the block, SIGTERM raises Terminated (signal handlers live in the main thread)."""
    if not _main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def shielded():
    """Hold SIGINT and SIGTERM until the block ends, then deliver them to the usual handler.

    Handlers are swapped rather than the signals blocked: a process-directed signal may be
    delivered to any thread (torch's, tokenizers'), which would still trip the main thread's
    Python handler inside the block.
    """
    if not _main_thread():
        yield
        return
    caught = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught:
            signal.raise_signal(caught[0])
