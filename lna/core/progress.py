"""Progress on stderr: one-line messages and tqdm bars (rate and ETA); silent when quiet,
except for notes."""
import sys


def note(msg: str) -> None:
    """Something the user must hear even with --quiet (e.g. a file lna repaired)."""
    print(f"note: {msg}", file=sys.stderr)


def sayer(enabled: bool):
    """A print-to-stderr function, or one that prints nothing."""
    def say(msg: str) -> None:
        if enabled:
            print(msg, file=sys.stderr)
    return say


class Bar:
    """A tqdm bar (context manager with .update(n)), or nothing when quiet or empty."""

    def __init__(self, enabled: bool, total: int, desc: str, unit: str):
        self.bar = None
        if enabled and total:
            from tqdm.auto import tqdm  # a widget in notebooks (lna.profile), text in terminals

            self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
