"""pycocotools' compressed RLE strings, decoded in numpy to check them before pycocotools reads them.

pycocotools has no validation: a string whose runs fall short of height x width decodes to uninitialised
memory, and numbers of more than 6 characters overflow its C ints. ``compressed_rle_totals`` gives, for many
strings at once, the sum of each one's runs and what is wrong with its encoding, at numpy speed (a results file
holds hundreds of thousands of them).
"""

from __future__ import annotations

import numpy as np

# Every run of an image of up to ``coco_check.MAX_PIXELS`` pixels fits in 6 characters (30 bits).
MAX_RLE_DIGITS = 6


def compressed_rle_totals(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths of pycocotools' compressed RLE strings, summed per string, all strings in one numpy pass.

    The encoding (maskApi.c rleToString): each run is a signed number written 5 bits per character, low bits
    first, as ``chr(48 + bits)``, 0x20 meaning "more characters follow" and 0x10 in the last one the sign; from
    the 4th run on, a number is the difference to the run two places before. Decoded runs are cast to uint32,
    as pycocotools does.

    Returns:
        ``totals`` (int64, one per string) and ``problems`` (object, a reason per string, "" when valid).
    """
    n = len(strings)
    problems = np.full(n, "", dtype=object)
    totals = np.zeros(n, dtype=np.int64)
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=n)
    problems[lengths == 0] = "it is empty"
    which = np.flatnonzero(lengths)  # the strings with characters, in order
    if not len(which):
        return totals, problems
    joined = "".join(strings)
    if not joined.isascii():  # same lengths, a character that is flagged below
        joined = "".join(s if s.isascii() else "\x7f" * len(s) for s in strings)
    digits = np.frombuffer(joined.encode("ascii"), dtype=np.uint8) - np.uint8(48)  # below '0' wraps past 63
    ends = np.cumsum(lengths)[which]
    starts, last = ends - lengths[which], ends - 1
    _flag(problems, which, np.maximum.reduceat(digits, starts) > 63, "a character outside '0'..'o'")
    more = (digits & 0x20) != 0
    _flag(problems, which, more[last], "it ends in the middle of a number")
    more[last] = False  # a run never spans two strings, even a truncated one
    run_end = np.flatnonzero(~more)
    run_start = np.concatenate(([0], run_end[:-1] + 1))
    run_len = run_end - run_start + 1
    first_run = np.searchsorted(run_end, starts)
    runs_per_string = np.diff(np.append(first_run, len(run_end)))
    too_long = np.maximum.reduceat(run_len, first_run) > MAX_RLE_DIGITS
    _flag(problems, which, too_long, f"a number of more than {MAX_RLE_DIGITS} characters")
    values = _run_numbers(digits, run_start, np.minimum(run_len, MAX_RLE_DIGITS))
    runs = _undelta(values, first_run, runs_per_string) % 2**32
    totals[which] = np.add.reduceat(runs, first_run)
    return totals, problems


def _run_numbers(digits: np.ndarray, run_start: np.ndarray, run_len: np.ndarray) -> np.ndarray:
    """Each run's signed number: 5 bits per character, low bits first; 0x10 of its last character is the sign."""
    values = (digits[run_start] & 0x1F).astype(np.int64)
    longer = np.flatnonzero(run_len > 1)  # most runs take 1 or 2 characters: only the longer ones are revisited
    for k in range(1, MAX_RLE_DIGITS):
        values[longer] |= (digits[run_start[longer] + k] & 0x1F).astype(np.int64) << (5 * k)
        longer = longer[run_len[longer] > k + 1]
    negative = (digits[run_start + run_len - 1] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * run_len[negative])
    return values


def _undelta(values: np.ndarray, first_run: np.ndarray, runs_per_string: np.ndarray) -> np.ndarray:
    """Runs from their numbers: in each string, run k >= 3 is its number plus run k - 2, so the odd runs and the
    even runs from the 3rd on are two running sums. Runs k and k - 2 also share their parity in the whole array:
    one running sum per parity there, minus its value just before the string's chain starts."""
    sums = np.empty_like(values)
    sums[0::2], sums[1::2] = np.cumsum(values[0::2]), np.cumsum(values[1::2])
    sums_after = np.concatenate(([0], sums))  # sums_after[i + 1] = sums[i]; sums_after[0]: nothing yet
    string_start = np.repeat(first_run, runs_per_string)
    odd = (np.arange(len(values)) - string_start) & 1
    # an odd run's chain starts after run -1 of its string (the previous string's last), an even one's after run 0
    runs = sums - sums_after[string_start - odd + 1]
    runs[first_run] = values[first_run]
    return runs


def _flag(problems: np.ndarray, which: np.ndarray, hit: np.ndarray, reason: str) -> None:
    """Record ``reason`` for the strings ``which[hit]`` that have no problem yet."""
    picked = which[np.asarray(hit, dtype=bool)]
    problems[picked] = np.where(problems[picked] == "", reason, problems[picked])
