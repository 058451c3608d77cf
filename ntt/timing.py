"""Per-stage wall-clock timing for benchmarks (a no-op unless a StageTimer is given)."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict


class StageTimer:
    """Accumulates seconds per named stage.

    Args:
        sync: called before reading the clock (e.g. ``torch.cuda.synchronize``) so asynchronous GPU
            work is charged to the stage that launched it.
    """

    def __init__(self, sync=None):
        self.sync = sync or (lambda: None)
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, stage: str):
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[stage] += time.perf_counter() - start


class NullTimer:
    """The default timer: measures nothing, costs nothing."""

    @contextlib.contextmanager
    def __call__(self, stage: str):
        yield
