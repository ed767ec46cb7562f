"""The one checkpoint mechanism of long runs (lna-profile's store, lna-ablate's and lna-steer's
per-sample NLLs): save what changed once `every` seconds have passed since the last save
(`--checkpoint-every`) or once `count` changes are unsaved, and on any stop (error, Ctrl-C,
SIGTERM) where something is unsaved; the saves run shielded (lna.core.interrupts), so a
signal never lands halfway through one.
"""
import contextlib
import time
from collections.abc import Callable

from lna.core.interrupts import shielded, terminate_as_interrupt


class Checkpointer:
    """Calls `write(**kw)` to save. Report work with `changed(n)` (in the shielded step that
    does it, where there is one), then `tick()`; hold the work in `on_stop()`."""

    def __init__(self, write: Callable[..., None], *, every: float | None = None, count: int | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.write, self.every, self.count, self.clock = write, every, count, clock
        self.unsaved = 0  # changes since the last save
        self.last = clock()  # time of the last save (or of the start)

    def changed(self, n: int = 1) -> None:
        self.unsaved += n

    def due(self) -> bool:
        """Something is unsaved, and the time or the count to save it has come."""
        if not self.unsaved:
            return False
        late = self.every is not None and self.clock() - self.last >= self.every
        return late or (self.count is not None and self.unsaved >= self.count)

    def tick(self) -> bool:
        """Save if `due()`; True if it saved."""
        if not self.due():
            return False
        self.save()
        return True

    def save(self, **kw) -> None:
        """Save now, changed or not (e.g. the final save of a run)."""
        self.unsaved = 0  # a save that fails is not retried: the previous one stays in place
        with shielded():
            self.write(**kw)
        self.last = self.clock()

    def flush(self) -> None:
        """Save if anything is unsaved."""
        if self.unsaved:
            self.save()

    @contextlib.contextmanager
    def on_stop(self):
        """Within the block, a stop (an error, Ctrl-C, or SIGTERM, which raises like Ctrl-C)
        saves what is unsaved before it propagates."""
        try:
            with terminate_as_interrupt():
                yield
        except BaseException as stop:
            if self.unsaved:
                try:
                    self.save()
                except Exception:
                    if isinstance(stop, KeyboardInterrupt):
                        raise  # interrupted, and the save failed: that failure is the news
                    # else the first failure says what went wrong (a full disk fails both)
            raise
