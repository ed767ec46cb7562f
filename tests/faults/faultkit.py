"""Shared helpers of the fault tests (tests/faults/): running a command through its console
entry point, asserting one line and no leftovers, and the small dataset they profile."""
import json
import time
from pathlib import Path

import pytest

from lna import cli

REPO = Path(__file__).resolve().parents[2]


def _entry(name):
    """The console entry point of `lna-NAME`, or `lna NAME` for subcommands without a script."""
    return getattr(cli, f"{name.replace('-', '_')}_main", None) or (lambda argv: cli.main([name, *argv]))




def one_line(result, *words) -> str:
    """A non-zero exit and exactly one line on stderr, no traceback, holding `words`."""
    rc, out, err = result
    assert rc not in (0, None), (rc, out, err)
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    for w in words:
        assert str(w) in err, (w, err)
    return err.strip()


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



DATA = [  # three languages, verbatim short prompts: the forward passes stay small
    {"lang": "en", "prompt": "Q: 2+3?\nA:", "responses": [" 2+3 = 5. The answer is 5.", " Five, as 2+3=5."]},
    {"lang": "en", "prompt": "Q: 7-4?\nA:", "responses": [" 7-4 = 3. The answer is 3."]},
    {"lang": "zh", "prompt": "问：2加3？\n答：", "responses": [" 2加3等于5。答案是5。", " 五"]},
    {"lang": "zh", "prompt": "问：7减4？\n答：", "responses": [" 7减4等于3。答案是3。"]},
    {"lang": "ja", "prompt": "問：2たす3？\n答：", "responses": [" 2たす3は5です。答えは5です。"]},
    {"lang": "ja", "prompt": "問：7ひく4？\n答：", "responses": [" 3です。"]},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path

