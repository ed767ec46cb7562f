"""Outputs appear whole or not at all: written beside their place, then renamed into it."""
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from lna.errors import LnaError


@contextlib.contextmanager
def atomic_file(path, kind: str = "file"):
    """Yield a temporary path beside `path`; on success it replaces `path` (one rename)."""
    path = Path(path)
    if path.is_dir():
        raise LnaError(f"{path}: is a folder; give a {kind} name such as {path / ('out.' + kind)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=base))
    try:
        yield tmp
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
