"""Several datasets read as one stream of records: concatenated, or interleaved by probability.

The strategies are LLaMA-Factory's ``mix_strategy`` values, with the semantics of
``datasets.interleave_datasets``:

- ``concat``: every row of every dataset, one dataset after the other.
- ``interleave_under``: each draw picks a dataset with its probability (seeded) and takes its next
  row; the stream ends when a draw picks a dataset that has run out (under-sampling: the larger
  datasets are cut short).
- ``interleave_over``: the same, but a dataset that runs out starts again from its first row; the
  stream ends once every dataset with a non-zero probability has given all its rows at least
  once (over-sampling: the smaller datasets repeat).

The draws depend only on the datasets' sizes, the probabilities and the seed
(:func:`mixing_plan`), so the same configuration gives the same stream, and the counts of what
was drawn (:func:`plan_counts`) can be reported without reading a row. Written here rather than
with ``datasets.interleave_datasets`` because the rows are heterogeneous JSON (alpaca next to
sharegpt next to text) that one Arrow schema cannot hold, and every record must keep its file and
line for the rejects file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from itertools import repeat

import numpy as np

from lmforge.data.readers import Record, Rejects
from lmforge.errors import DataError

STRATEGIES = ("concat", "interleave_under", "interleave_over")
_CHUNK = 4096  # draws per call to the generator


def normalised(probs: Sequence[float] | None, k: int) -> np.ndarray:
    """Probabilities summing to 1 (``None``: equal); raises DataError on a bad list."""
    p = np.full(k, 1.0 / k) if probs is None else np.asarray(probs, dtype=np.float64)
    if p.shape != (k,) or (p < 0).any() or p.sum() <= 0:
        raise DataError(f"need {k} non-negative probabilities, one per dataset, not {list(p)}")
    return p / p.sum()


def mixing_plan(
    sizes: Sequence[int], probs: Sequence[float] | None, strategy: str, seed: int
) -> Iterator[int]:
    """The dataset index of every row of the mixed stream, in order."""
    k = len(sizes)
    if strategy not in STRATEGIES:
        raise DataError(f"mix strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if strategy == "concat":
        for i, n in enumerate(sizes):
            yield from repeat(i, n)
        return
    p = normalised(probs, k)
    empty = [i for i in range(k) if sizes[i] == 0 and p[i] > 0]
    if empty:
        raise DataError(f"datasets {empty} have no rows to sample")
    rng = np.random.default_rng(seed)
    taken = [0] * k
    unseen = {i for i in range(k) if p[i] > 0}  # datasets not yet given whole (over-sampling)
    while True:
        for i in rng.choice(k, size=_CHUNK, p=p).tolist():
            if taken[i] == sizes[i] and strategy == "interleave_under":
                return
            yield i
            taken[i] += 1
            if taken[i] == sizes[i]:
                unseen.discard(i)
                if strategy == "interleave_over" and not unseen:
                    return


def plan_counts(sizes: Sequence[int], probs, strategy: str, seed: int) -> list[int]:
    """How many rows the mixed stream takes from each dataset (repeats included)."""
    counts = [0] * len(sizes)
    for i in mixing_plan(sizes, probs, strategy, seed):
        counts[i] += 1
    return counts


RecordSource = Callable[[Rejects], Iterator[Record]]


def interleave(
    sources: Sequence[RecordSource], sizes: Sequence[int], plan: Iterator[int], rejects: Rejects
) -> Iterator[Record]:
    """Follow ``plan``, taking each dataset's ``sizes[i]`` records in order and starting it again
    when they are used up. A dataset's first pass reports reader rejects to ``rejects`` (read to
    the end of its files once all its records are given, so rejects after the last usable row
    count too); repeated passes do not (those rows were counted once already)."""
    streams: list[Iterator[Record] | None] = [None] * len(sources)
    given = [0] * len(sources)
    for i in plan:
        if streams[i] is None or given[i] == sizes[i]:
            streams[i] = sources[i](rejects if streams[i] is None else Rejects())
            given[i] = 0
        record = next(streams[i], None)
        if record is None:
            raise DataError(f"dataset {i} gave fewer rows than counted (changed while read?)")
        given[i] += 1
        yield record
        if given[i] == sizes[i] and next(streams[i], None) is not None:
            raise DataError(f"dataset {i} gave more rows than counted (changed while read?)")
