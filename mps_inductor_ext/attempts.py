"""Compilation attempts: what a pattern pass reports counts only once its compilation finishes.

Dynamo abandons some attempts and traces the frame again: with `dynamic=True`, AOTAutograd's
tensorify pass restarts the analysis when a float input must be specialized, after the pre-grad
passes have run. The abandoned graph's replacements and near misses were never compiled, so the
backend opens an `attempt()` around each compilation, and `defer` holds reports until it ends
well (dropping them if it raised).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

_state = threading.local()


def defer(report: Callable[[], None]) -> None:
    """Runs `report` when the innermost open attempt completes; at once when none is open."""
    pending = getattr(_state, "pending", None)
    if pending is None:
        report()
    else:
        pending.append(report)


@contextlib.contextmanager
def attempt() -> Iterator[None]:
    """One compilation: reports deferred inside it run if it returns, and are dropped if it raises."""
    outer = getattr(_state, "pending", None)
    pending: list[Callable[[], None]] = []
    _state.pending = pending
    try:
        yield
    finally:
        _state.pending = outer
    for report in pending:  # not reached when the body raised
        defer(report)
