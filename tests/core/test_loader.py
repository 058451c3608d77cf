"""Loading ahead in threads: order, bounded look-ahead, bad files reported in place, early stop."""

from __future__ import annotations

import threading
import time

import pytest

from ntt.io.images import ImageLoadError
from ntt.predict.loader import prefetch


class _Load:
    """Records which sources were loaded; odd numbers finish first, to shuffle completion order."""

    def __init__(self, bad=()):
        self.started: list[int] = []
        self.bad = set(bad)
        self.lock = threading.Lock()

    def __call__(self, src: int) -> int:
        with self.lock:
            self.started.append(src)
        time.sleep(0.002 if src % 2 == 0 else 0.0)
        if src in self.bad:
            raise ImageLoadError(f"image {src} is broken")
        return src * 10


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_results_come_in_source_order_with_errors_in_place(workers):
    load = _Load(bad={2, 5})
    got = list(prefetch(range(8), load, workers, lambda: 4))
    assert [s for s, _, _ in got] == list(range(8))
    assert [v for _, v, _ in got] == [0, 10, None, 30, 40, None, 60, 70]
    assert got[2][2] == "image 2 is broken" and got[5][2] == "image 5 is broken"
    assert [e is None for _, _, e in got] == [True, True, False, True, True, False, True, True]


def test_look_ahead_is_bounded_and_follows_its_callable():
    load = _Load()
    ahead = {"n": 2}
    stream = prefetch(range(20), load, 2, lambda: ahead["n"])
    consumed = 0
    for _ in range(5):
        next(stream)
        consumed += 1
        assert len(load.started) <= consumed + ahead["n"]
    ahead["n"] = 6  # a batch size that grew
    for _ in range(3):
        next(stream)
        consumed += 1
    time.sleep(0.05)
    assert consumed + 2 < len(load.started) <= consumed + 6
    stream.close()


def test_stopping_early_does_not_load_everything():
    load = _Load()
    stream = prefetch(range(1000), load, 2, lambda: 3)
    assert next(stream)[1] == 0
    stream.close()
    time.sleep(0.05)
    assert len(load.started) <= 4


def test_other_errors_propagate():
    def load(src):
        raise KeyError(src)

    with pytest.raises(KeyError):
        list(prefetch([1], load, 2, lambda: 2))
