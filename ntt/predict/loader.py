"""Loading images ahead of the models: worker threads decode (and resize) the next images while the
current batch runs. Pillow and torch release the GIL in decoding and resizing, so threads overlap them
with the networks without the copies a process pool would need."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from ntt.io.images import ImageLoadError

S = TypeVar("S")


def prefetch(
    sources: Iterable[S],
    load: Callable[[S], Any],
    workers: int,
    lookahead: Callable[[], int],
) -> Iterator[tuple[S, Any, str | None]]:
    """Yield ``(source, load(source), None)`` in the order of ``sources``, or ``(source, None, reason)`` when
    ``load`` raises ``ImageLoadError``; other errors propagate.

    Args:
        workers: loading threads; 0 loads each source in the caller's thread when it is asked for.
        lookahead: how many sources may be loaded ahead of the one being yielded (asked again before
            each submission, so it can follow a batch size that changes); memory grows with it.
    """
    if workers <= 0:
        for src in sources:
            yield _guarded(load, src)
        return
    queue: deque[tuple[S, Future]] = deque()
    todo = iter(sources)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ntt-load")
    try:
        while True:
            while len(queue) < max(1, lookahead()):
                src = next(todo, _END)
                if src is _END:
                    break
                queue.append((src, pool.submit(_guarded, load, src)))
            if not queue:
                return
            yield queue.popleft()[1].result()
    finally:  # also when the consumer stops early: pending loads are dropped
        pool.shutdown(wait=False, cancel_futures=True)


_END: Any = object()


def _guarded(load: Callable[[S], Any], src: S) -> tuple[S, Any, str | None]:
    try:
        return src, load(src), None
    except ImageLoadError as err:
        return src, None, str(err)
