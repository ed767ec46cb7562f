"""Outputs appear whole or not at all: written beside their place, then renamed into it.

A write that fails (full disk, read-only place, no permission) becomes one LnaError that
names the output, the cause and the fix, and leaves no temporary file behind.
"""
import contextlib
import errno
import os
import shutil
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
    path = Path(path)
    if path.is_dir():
        raise LnaError(f"{path}: is a folder; give a {kind} name such as {path / ('out.' + kind)}")
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    made = _missing_parents(path)
    done = False
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            os.replace(tmp, path)
            done = True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if not done:
            _remove_empty(made)


def _missing_parents(path: Path) -> list:
    """The folders above `path` that do not exist yet, deepest first."""
    out, p = [], path.parent
    while not p.exists():
        out.append(p)
        p = p.parent
    return out


def _remove_empty(folders) -> None:
    """Remove the folders a failed write created (deepest first), where still empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def staged_dir(out):
    """Yield a hidden folder beside OUT; its files move into OUT only when everything
    succeeded (no half-written report)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LnaError(f"{out}: exists and is not a folder; give an output folder")
    base = out.parent
    while not base.exists():
        base = base.parent
    tmp, made, done = None, [out, *_missing_parents(out)] if not out.exists() else [], False
    try:
        with writing(out):
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=base))
            yield tmp
            out.mkdir(parents=True, exist_ok=True)
            for f in sorted(tmp.iterdir()):
                os.replace(f, out / f.name)
            done = True
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            _remove_empty(made)
