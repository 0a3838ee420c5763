"""Mixing datasets: concat, under- and over-sampling as ``datasets.interleave_datasets`` defines
them, seeded, with a dataset's reader rejects counted once however often it repeats."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from lmforge.data.interleave import interleave, mixing_plan, plan_counts
from lmforge.data.readers import Rejects, iter_records
from lmforge.errors import DataError


def test_concat_is_every_row_in_order() -> None:
    assert list(mixing_plan([2, 0, 3], None, "concat", 0)) == [0, 0, 2, 2, 2]


def test_under_sampling_stops_when_a_drawn_dataset_runs_out() -> None:
    sizes = [5, 200, 400]
    plan = list(mixing_plan(sizes, [0.5, 0.25, 0.25], "interleave_under", seed=3))
    counts = Counter(plan)
    assert counts[0] == 5  # the one that ran out gave all its rows, the others fewer
    assert all(counts[i] < sizes[i] for i in (1, 2))
    assert plan == list(mixing_plan(sizes, [0.5, 0.25, 0.25], "interleave_under", seed=3))
    assert plan != list(mixing_plan(sizes, [0.5, 0.25, 0.25], "interleave_under", seed=4))


def test_over_sampling_repeats_until_every_dataset_was_seen_whole() -> None:
    sizes = [5, 50, 20]
    plan = list(mixing_plan(sizes, None, "interleave_over", seed=0))
    counts = [plan.count(i) for i in range(3)]
    assert all(c >= n for c, n in zip(counts, sizes, strict=True))
    last = plan[-1]  # the stream ends with the last row of the last dataset to be seen whole
    assert counts[last] == sizes[last] and counts[0] > sizes[0]  # the small one repeats


def test_probabilities_are_followed_and_zero_means_never() -> None:
    counts = plan_counts([100_000, 100_000, 10], [0.8, 0.2, 0.0], "interleave_under", seed=0)
    assert counts[2] == 0
    assert 3.7 < counts[0] / counts[1] < 4.3
    with pytest.raises(DataError, match="non-negative probabilities"):
        list(mixing_plan([1, 1], [1.0], "interleave_under", 0))
    with pytest.raises(DataError, match="no rows to sample"):
        list(mixing_plan([0, 3], None, "interleave_over", 0))


def test_repeated_dataset_reports_its_rejects_once(tmp_path) -> None:
    small = tmp_path / "small.jsonl"
    small.write_text('{"text": "a"}\n{broken\n{"text": "b"}\n', encoding="utf-8")
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"text": f"x{i}"}) + "\n" for i in range(20)))
    sources = [lambda rej, p=p: iter_records([p], rej) for p in (small, big)]
    rejects = Rejects()
    sizes = [2, 20]
    plan = mixing_plan(sizes, None, "interleave_over", 1)
    records = list(interleave(sources, sizes, plan, rejects))
    texts = Counter(r.row["text"] for r in records)
    assert texts["a"] > 1 and texts["a"] + texts["b"] > 2  # small repeated
    assert all(texts[f"x{i}"] >= 1 for i in range(20))
    assert [(i["line"], i["reason"].split(":")[0]) for i in rejects.items] == [
        (2, "malformed JSON")
    ]


def test_rejects_after_the_last_row_are_reported(tmp_path) -> None:
    """A dataset whose rows are all used is read to its end, even when the plan stops there."""
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{broken\n', encoding="utf-8")
    rejects = Rejects()
    source = [lambda rej: iter_records([path], rej)]
    records = list(interleave(source, [2], mixing_plan([2], None, "concat", 0), rejects))
    assert len(records) == 2 and [i["line"] for i in rejects.items] == [3]
