"""Segmented loss for long SFT examples: windows of max_length that repeat some context, and
every label of the whole example learned exactly once (instead of cutting the example)."""

from __future__ import annotations

import json

import pytest

from lmforge.config.groups import DataConfig
from lmforge.data.readers import Rejects, iter_records
from lmforge.training.collate import IGNORE, Piece
from lmforge.training.data import encode_sft
from lmforge.training.sft import encode_messages_full, segments


def _learned(ids: list[int], labels: list[int], start: int) -> list[tuple[int, int]]:
    """(absolute position, token) of every target a window's piece learns."""
    piece = Piece.from_labels(ids, labels)
    return [(start + i + 1, t) for i, t in enumerate(piece.targets) if t != IGNORE]


@pytest.mark.parametrize(("length", "overlap"), [(10, 1), (10, 4), (7, 6)])
def test_every_label_is_learned_once(length, overlap) -> None:
    ids = list(range(100, 141))
    labels = [IGNORE] * 5 + ids[5:30] + [IGNORE] * 3 + ids[33:]  # a prompt, answer, turn, answer
    windows = segments(ids, labels, length, overlap)
    learned, spans = [], []
    for window_ids, window_labels in windows:
        assert 1 < len(window_ids) <= length
        start = ids.index(window_ids[0])
        spans.append((start, start + len(window_ids)))
        learned += _learned(window_ids, window_labels, start)
    expected = [(i, t) for i, t in enumerate(labels) if t != IGNORE and i > 0]
    assert sorted(learned) == expected  # each once, none lost
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end - overlap  # consecutive windows share at most the overlap


def test_windows_with_nothing_to_learn_are_left_out() -> None:
    ids = list(range(30))
    labels = [IGNORE] * 25 + ids[25:]  # a long prompt
    windows = segments(ids, labels, 8, 2)
    assert all(any(x != IGNORE for x in w[1][1:]) for w in windows)
    assert ids.index(windows[0][0][0]) > 0
    with pytest.raises(ValueError, match="overlap"):
        segments(ids, labels, 8, 8)


def test_sft_segments_a_long_conversation_instead_of_cutting_it(tokenizer, tmp_path) -> None:
    answer = " ".join(f"word{i}" for i in range(120))
    rows = [
        {"instruction": "Repeat the words.", "output": answer},
        {"instruction": "Short?", "output": "yes"},
    ]
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    records = list(iter_records([path], Rejects()))
    cut = encode_sft(records, DataConfig(max_length=64), tokenizer, Rejects())
    seg = encode_sft(
        records,
        DataConfig(max_length=64, long_examples="segment", segment_overlap=16),
        tokenizer,
        Rejects(),
    )
    assert cut.counts["truncated"] == 1 and len(cut.units) == 2
    assert seg.counts["segmented"] == 1 and seg.counts["truncated"] == 0
    assert seg.counts["read"] == seg.counts["used"] == 2
    assert len(seg.units) > 3 and all(len(p) <= 64 for u in seg.units for p in u)
    messages = [{"role": "user", "content": rows[0]["instruction"]}]
    messages.append({"role": "assistant", "content": answer})
    ids, labels, _ = encode_messages_full(tokenizer, messages, 64, keep_whole=True)
    whole = sum(1 for t in Piece.from_labels(ids, labels).targets if t != IGNORE)
    long_units = seg.units[:-1]
    assert sum(1 for u in long_units for p in u for t in p.targets if t != IGNORE) == whole
    with pytest.raises(ValueError, match="segment_overlap"):
        DataConfig(max_length=64, long_examples="segment", segment_overlap=64)
