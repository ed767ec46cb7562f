"""User-facing errors: one clear line (what, where, how to fix), never a traceback; and notes."""
import sys


class LnaError(Exception):
    """A mistake in the user's input or environment; the CLI prints it as one line."""


_noted: set = set()


def note(msg: str) -> None:
    """One line on stderr, once per process: something to know that is not an error (an
    older file format, a weaker check)."""
    if msg not in _noted:
        _noted.add(msg)
        print(f"note: {msg}", file=sys.stderr)


def first_line(err: BaseException, limit: int | None = 200, *, traceback_last: bool = False) -> str:
    """The line of another library's error worth quoting inside an LnaError: its first
    non-blank line (with traceback_last, the last where the text holds a traceback: the error
    itself), cut to `limit` characters; the error's type where it has no text."""
    text = str(err)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    line = lines[-1] if traceback_last and "Traceback" in text else lines[0]
    return line if limit is None else line[:limit]
