"""Progress and cancellation hooks for long restorations (used by `fewstep serve`).

The library's inner loops (tiles in `fewstep.tiling.run_tiled`, sampling steps in the pipelines)
call `tick(kind, done, total)` after each unit of work. Outside `reporting(...)` that is a cheap
no-op. Inside it, the active `Reporter` turns the ticks into one fraction in [0, 1] (tiles are the
outer loop, steps the inner one) for its callback, and raises `Cancelled` at the next tick once
`cancel()` was called, so a cancelled job stops within one network evaluation.

The reporter lives in a `contextvars.ContextVar`, so concurrent jobs in different threads each see
their own (a thread starts with an empty context) and library code needs no extra arguments.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from typing import Callable, Iterator

__all__ = ["Cancelled", "Reporter", "reporting", "tick", "check_cancelled"]


class Cancelled(Exception):
    """The running job was cancelled. Deliberately not a FewstepError or RuntimeError: batch loops
    that report those per file and carry on must let a cancellation through."""


class Reporter:
    """Collects tile/step ticks of one job; thread-safe to `cancel()` from another thread."""

    def __init__(self, callback: Callable[[float, str], None] | None = None):
        self.callback = callback
        self._cancel = threading.Event()
        self.tiles = (0, 1)   # (done, total) of the outer loop
        self.steps = (0, 1)   # (done, total) of the inner loop, within the current tile group
        self.fraction = 0.0

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def tick(self, kind: str, done: int, total: int) -> None:
        if self._cancel.is_set():
            raise Cancelled("cancelled")
        total = max(1, int(total))
        if kind == "tile":
            self.tiles, self.steps = (int(done), total), (0, 1)
        else:
            self.steps = (int(done), total)
        tiles_done, tiles_total = self.tiles
        step_frac = self.steps[0] / self.steps[1]
        if tiles_done >= tiles_total:
            step_frac = 0.0
        # monotone: a step loop restarting on the next tile never moves the bar back
        self.fraction = max(self.fraction, min(1.0, (tiles_done + step_frac) / tiles_total))
        if self.callback is not None:
            if tiles_done >= tiles_total:
                label = "finishing"
            else:
                label = f"tile {tiles_done + 1}/{tiles_total}"
                if self.steps[1] > 1 or self.steps[0]:
                    label += f", step {self.steps[0]}/{self.steps[1]}"
            self.callback(self.fraction, label)


_current: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar("fewstep_progress", default=None)


@contextlib.contextmanager
def reporting(reporter: Reporter) -> Iterator[Reporter]:
    """Make `reporter` receive the ticks of library code run inside this block (this context)."""
    token = _current.set(reporter)
    try:
        yield reporter
    finally:
        _current.reset(token)


def tick(kind: str, done: int, total: int) -> None:
    """Called by library loops: `kind` is "tile" or "step"; raises Cancelled if the job was cancelled."""
    r = _current.get()
    if r is not None:
        r.tick(kind, done, total)


def check_cancelled() -> None:
    r = _current.get()
    if r is not None and r.cancelled:
        raise Cancelled("cancelled")
