"""JSONL files that grow by appends and survive a kill: responses, scores, pairs, logs.

An append is whole or undone: fsync'd, an interrupt waits for it (lna.core.interrupts), and a
failed write (a full disk) is cut back off. A torn last line that a crash left anyway is
removed on the next read, with a note, and that record is made again; any other damage is
an error naming the line.
"""
import json
import os
from pathlib import Path

from lna.core.atomic import atomic_file, output_path, write_error, writing
from lna.core.errors import LnaError
from lna.core.interrupts import shielded
from lna.core.progress import note as say_note


def read(path, what: str, fix: str, note=None, numbered: bool = False) -> list:
    """The records of `path` ([] where it does not exist). `what` names the file in messages
    ("responses"), `fix` says how to recover from damage ("delete it to sample again");
    `note(msg)` hears of a repaired torn line (default: a note on stderr). `numbered`:
    (line number, record) pairs, for messages that name the line."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LnaError(f"{path}: cannot read the {what} file ({type(err).__name__}); {fix}") from None
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:  # torn tail of an interrupted append
                with writing(path), path.open("r+", encoding="utf-8") as fh:
                    fh.truncate(len("\n".join(lines[:i]).encode()) + (1 if i else 0))
                (note or say_note)(f"{path}: removed its torn last line (line {i + 1}, left by an interrupted "
                                   "write); that record is made again")
                break
            raise LnaError(f"{path}:{i + 1}: not valid JSON in the {what} file; {fix}") from None
        if not isinstance(rec, dict):
            raise LnaError(f"{path}:{i + 1}: expected a JSON object per line in the {what} file; {fix}")
        out.append((i + 1, rec) if numbered else rec)
    return out


def append(path, records: list[dict]) -> None:
    """Append whole lines, fsync'd; a failed write is cut back off (no torn line stays)."""
    if not records:
        return
    given, path = Path(path), output_path(path)  # a device or FIFO is refused; a symlink written through
    text = "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records).encode()
    with shielded(), writing(given):
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with path.open("ab", buffering=0) as fh:
            start, failed = fh.seek(0, os.SEEK_END), None
            try:
                view = memoryview(text)
                while view:
                    view = view[fh.write(view):]
                os.fsync(fh.fileno())
            except OSError as err:
                try:
                    fh.truncate(start)
                except OSError:
                    pass  # the next read removes the torn line (with a note)
                failed = err
        if failed is not None:
            if new:
                path.unlink(missing_ok=True)
            raise write_error(given, failed) from None


def write(path, records: list[dict]) -> None:
    """The whole file at once, atomically."""
    with atomic_file(path, "jsonl") as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
