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
