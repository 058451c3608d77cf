"""Waiting out a database outage (a MongoDB failover, a restart): idempotent calls are retried with backoff
instead of ending a worker or a shard on the first connection error."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from pymongo.errors import ConnectionFailure

from ntt.fo.references import NTTFiftyOneError

T = TypeVar("T")
PATIENCE = 600.0  # seconds a shard waits for the database before it gives up (its shard is then re-run)
UNREACHABLE = "database unreachable"  # in an error: transient, the reaper runs the shard again


def patiently(call: Callable[[], T], patience: float = PATIENCE, log: Callable[[str], None] | None = None) -> T:
    """``call()`` (which must be safe to repeat), retried with backoff while the database cannot be reached,
    for up to ``patience`` seconds of this process's monotonic clock.

    Raises:
        NTTFiftyOneError: still unreachable after ``patience`` seconds ("database unreachable ...").
    """
    start, wait = time.monotonic(), 0.5
    while True:
        try:
            return call()
        except ConnectionFailure as err:
            waited = time.monotonic() - start
            if waited >= patience:
                raise NTTFiftyOneError(f"{UNREACHABLE} for {waited:.0f} s: {err}") from err
            if log is not None:
                log(f"{UNREACHABLE} ({type(err).__name__}); trying again in {wait:.1f} s")
            time.sleep(wait)
            wait = min(wait * 2, 10.0)
