"""Synthetic timestamps for order-only datasets (Amazon S3-Rec / LETTER files carry no times).

The daily pipeline partitions impressions by UTC day of `ts`, so order-only data needs times. The
scheme is chosen so that replaying the data day by day reproduces the standard leave-one-out split
that published numbers on these files use:

    a user with n interactions; their i-th (0-based) interaction falls on
        day(i) = max(0, n_days - n + i)                      (days after start_date)
        ts(i)  = start_ms + day(i) * DAY_MS + (i + 1) * 1000  (ms, UTC)

* the last interaction (the leave-one-out TEST item) lands on the last day, n_days - 1;
* the second-to-last (the VALIDATION item) lands on the day before, n_days - 2;
* each user's order is preserved: days never decrease with i, and within a day the `(i + 1)` second
  offset still increases with i (users longer than n_days pile their oldest items onto day 0);
* the offset stays far below one day (a user would need 86,399 interactions to overflow).

Different users interleave within a day; nothing about cross-user order is claimed, because the
source files do not record it.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from onerec.schemas import DAY_MS, day_start_ms

SCHEME = "leave-one-out days: day=max(0, n_days-n+i), ts=start+day*DAY_MS+(i+1)*1000"


def order_to_ts(lengths_or_sequences: Iterable[int] | Iterable[Sequence], start_date: str = "2024-01-01",
                n_days: int = 30) -> np.ndarray:
    """Synthetic ms timestamps for users' chronological interactions, flattened user by user.

    Accepts either per-user lengths or the per-user sequences themselves (only their lengths
    matter). Returns one int64 array with sum(lengths) entries in the same order as the input.
    """
    if n_days < 2:
        raise ValueError("n_days must be >= 2 (the last two days hold validation and test)")
    lengths = np.fromiter((x if isinstance(x, (int, np.integer)) else len(x) for x in lengths_or_sequences),
                          dtype=np.int64)
    if (lengths < 0).any():
        raise ValueError("sequence lengths must be >= 0")
    n = np.repeat(lengths, lengths)                                        # each row's user length
    i = np.arange(len(n), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # position
    day = np.maximum(0, n_days - n + i)
    return day_start_ms(start_date) + day * DAY_MS + (i + 1) * 1000
