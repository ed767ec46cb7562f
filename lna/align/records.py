"""JSONL stage files that grow by fsync'd appends and survive a kill.

A run killed mid-append leaves at most a torn last line: reading drops it (and truncates
the file there), so the rerun redoes that record only. Any other damage is an error.
"""
import json
import os
from pathlib import Path

from lna.errors import LnaError


def read(path, what: str) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LnaError(f"{path}: cannot read the {what} file ({type(err).__name__}); delete it to redo the stage") from None
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:  # torn tail of a killed append: drop it
                with path.open("r+", encoding="utf-8") as fh:
                    fh.truncate(len("\n".join(lines[:i]).encode()) + (1 if i else 0))
                break
            raise LnaError(f"{path}:{i + 1}: not valid JSON in the {what} file; delete it to redo the stage") from None
        if not isinstance(rec, dict):
            raise LnaError(f"{path}:{i + 1}: expected a JSON object per line in the {what} file")
        out.append(rec)
    return out


def append(path, records: list[dict]) -> None:
    if not records:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def write(path, records: list[dict]) -> None:
    """The whole file at once, atomically."""
    from lna.atomic import atomic_file

    with atomic_file(path, "jsonl") as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
