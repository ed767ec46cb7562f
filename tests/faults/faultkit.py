"""Shared helpers of the fault tests (tests/faults/): running a command through its console
entry point and asserting no leftovers; one_line, write_jsonl and the small dataset they
profile (DATA) are the suite's (tests/conftest.py)."""
import time
from pathlib import Path

from conftest import SMALL_DATA as DATA, one_line, write_jsonl  # noqa: F401 - the fault tests' helpers
from lna import cli

REPO = Path(__file__).resolve().parents[2]


def _entry(name):
    """The console entry point of `lna-NAME`, or `lna NAME` for subcommands without a script."""
    return getattr(cli, f"{name.replace('-', '_')}_main", None) or (lambda argv: cli.main([name, *argv]))


def only(folder, *names):
    """Nothing but `names` in `folder` (no output, no temporary), now and a moment later
    (a writer thread finishing late would recreate its folder)."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)
    time.sleep(0.1)
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


class Unchanged:
    """`with Unchanged(folder):` - nothing appears, disappears or changes under it."""

    def __init__(self, root: Path):
        self.root = root

    def _state(self):
        return {str(p.relative_to(self.root)): p.stat().st_mtime_ns if p.is_file() else None
                for p in self.root.rglob("*")}

    def __enter__(self):
        self.before = self._state()
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            after = self._state()
            assert after == self.before, set(after.items()) ^ set(self.before.items())
