"""How long a run has left, estimated from its elapsed time on this process's monotonic clock."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TimeLeft:
    """Labels that say about how long a run has left, for runs whose work is spread evenly over their fraction
    done. Short runs need no estimate: nothing is said before ``after`` seconds.

    Args:
        clock: seconds on a monotonic clock (``time.monotonic``; tests give their own).
    """

    def __init__(self, after: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.clock, self.after = clock, after
        self.start = clock()

    def label(self, text: str, fraction: float) -> str:
        """``text``, with "(about 2 min left)" once ``after`` seconds have passed and before the end."""
        elapsed = self.clock() - self.start
        if elapsed < self.after or not 0 < fraction < 1:
            return text
        return f"{text} (about {duration(elapsed * (1 - fraction) / fraction)} left)"


def duration(seconds: float) -> str:
    """A rough duration: "10 s" steps under a minute, then minutes, then hours and minutes."""
    if seconds < 60:
        return f"{max(10, 10 * math.ceil(seconds / 10))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"
