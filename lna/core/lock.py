"""One run per output: an exclusive lock on each output (a store, a responses file, a run
folder) for the whole run, so that two runs never write one output at once.

The lock is `.NAME.lock` beside the output (after its symlinks: lna.core.atomic.output_path),
held with flock(2) and holding the holder's PID. A second run finds it taken and stops at
once, in one line naming that PID. The kernel drops a flock when its process dies however
it dies, so a lock file left by a killed run (SIGKILL) is free: the next run takes it over,
with a note naming the dead PID. A run removes its lock file when it ends.

Locks belong to a scope (`scope()`: each CLI command, lna.cli.run, and the runs that take
locks) and are released when it ends; a lock this process already holds is not taken
twice (flock locks are per open file, so a second take would deadlock on itself).
"""
import atexit
import contextlib
import fcntl
import os
from pathlib import Path

from lna.core.atomic import missing_parents, remove_empty, output_path, write_error
from lna.core.errors import LnaError, note

_held: dict = {}  # lock path -> (fd, folders made for it)
_scopes: list = []  # lists of lock paths, innermost last


def lock_path(output) -> Path:
    real = output_path(output)
    return real.parent / f".{real.name}.lock"


def acquire(output, what: str = "output") -> None:
    """Take the lock of `output` until the current scope ends (or the process does); one
    LnaError naming the holder's PID where another process holds it."""
    lock = lock_path(output)
    if lock in _held:
        return
    made = missing_parents(lock)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = _take(lock, output, what)
    except OSError as err:
        remove_empty(made)
        raise write_error(output, err, doing="lock") from None
    except BaseException:
        remove_empty(made)
        raise
    _held[lock] = (fd, made)
    if _scopes:
        _scopes[-1].append(lock)


def _take(lock: Path, output, what: str) -> int:
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _pid(fd)
            os.close(fd)
            raise LnaError(f"{output}: in use by another lna run (PID {holder or 'unknown'}), which writes this "
                           f"{what}; wait for it to end (or stop it), or choose another output") from None
        except BaseException:
            os.close(fd)
            raise
        # The holder before us may have removed the file as it released it: then this lock
        # is on a file nobody else sees; take the one now at that path instead.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        stale = _pid(fd)
        if stale and stale != os.getpid():
            note(f"{output}: took over the lock of lna run PID {stale}, which is gone (it was killed)")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd


def _pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def release(output) -> None:
    _release(lock_path(output))


def _release(lock: Path) -> None:
    held = _held.pop(lock, None)
    if held is None:
        return
    fd, made = held
    with contextlib.suppress(OSError):
        lock.unlink()  # while still holding it: the next run's _take sees a new file
    os.close(fd)
    remove_empty(made)


@contextlib.contextmanager
def scope():
    """Locks taken inside are released when the block ends."""
    _scopes.append([])
    try:
        yield
    finally:
        for lock in reversed(_scopes.pop()):
            _release(lock)


@atexit.register
def _release_all() -> None:
    for lock in list(_held):
        _release(lock)
