"""Outputs appear whole or not at all: written beside their place, then renamed into it.

A write that fails (full disk, read-only place, no permission) becomes one LnaError that
names the output, the cause and the fix, and leaves no temporary file behind.

The output rule (`output_path`, which every writer here goes through): an output that
exists must be a regular file or a folder; a device node, FIFO or socket is refused in one
line and never touched (a rename would replace /dev/null itself, and opening a FIFO blocks).
A symlink is written through to its target, as cp and editors do: the user put the link
there on purpose (results on a bigger disk, a shared folder), so replacing it with a file
would break their layout and leave the target stale; and the temporary is made beside the
target, so the final rename stays on the target's file system (atomic) and no hidden
temporary or `.previous` is left beside the link.
"""
import contextlib
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path

from lna.core.errors import LnaError

_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def write_error(path, err: OSError, doing: str | None = "write") -> LnaError:
    """The one-line error for a failed write of `path` (what, why, how to fix); `doing`
    None when it is not known whether reading or writing failed."""
    path = Path(path)
    reason = err.strerror or str(err) or type(err).__name__
    if err.errno in _FULL:
        fix = (f"free space on the disk holding {path.parent.resolve()} (or write elsewhere), "
               "then run the same command again")
    elif err.errno in _DENIED:
        fix = "write it somewhere you may write, or fix the permissions"
    else:
        fix = "check the path and the disk, then run the same command again"
    what = f"could not {doing} ({reason})" if doing else reason
    return LnaError(f"{path}: {what}; {fix}")


def output_path(path) -> Path:
    """The path to write the output `path` at: its symlinks followed (to the target, which need
    not exist yet); one LnaError if it exists and is not a regular file or a folder."""
    path = Path(path)
    real = Path(os.path.realpath(path))
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return real
    except OSError as err:
        raise write_error(path, err, doing="check the output") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = ("a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise LnaError(f"{path}: exists and is {kind}, not a file or folder; lna writes no output there "
                       "(it stays untouched); give a file or folder path")
    return real


@contextlib.contextmanager
def writing(path):
    """OSErrors inside become `write_error(path, ...)`."""
    try:
        yield
    except OSError as err:
        raise write_error(path, err) from None


@contextlib.contextmanager
def atomic_file(path, kind: str = "file"):
    """Yield a temporary path beside `path`; on success it replaces `path` (one rename)."""
    given, path = Path(path), output_path(path)
    if path.is_dir():
        raise LnaError(f"{given}: is a folder; give a {kind} name such as {given / ('out.' + kind)}")
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    made = missing_parents(path)
    done = False
    try:
        with writing(given):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            os.replace(tmp, path)
            done = True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if not done:
            remove_empty(made)


def missing_parents(path: Path) -> list:
    """The folders above `path` that do not exist yet, deepest first."""
    out, p = [], path.parent
    while not p.exists():
        out.append(p)
        p = p.parent
    return out


def remove_empty(folders) -> None:
    """Remove the folders a failed write created (deepest first), where still empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def staged_dir(out):
    """Yield a hidden folder beside OUT; its files move into OUT only when everything
    succeeded (no half-written report)."""
    given, out = Path(out), output_path(out)
    if out.exists() and not out.is_dir():
        raise LnaError(f"{given}: exists and is not a folder; give an output folder")
    base = out.parent
    while not base.exists():
        base = base.parent
    tmp, made, done = None, [out, *missing_parents(out)] if not out.exists() else [], False
    try:
        with writing(given):
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=base))
            yield tmp
            # the same rule for the files replaced inside OUT, all checked before any moves
            moves = [(f, output_path(out / f.name)) for f in sorted(tmp.iterdir())]
            out.mkdir(parents=True, exist_ok=True)
            for f, dest in moves:
                os.replace(f, dest)
            done = True
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            remove_empty(made)
