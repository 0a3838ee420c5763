"""Real data written by others (../shared/data): LLaMA-Factory's demo sets through the readers.

Skips on a user's clone without ../shared; runs under CI=true.
"""

from __future__ import annotations

from lmforge.config.groups import DataConfig
from lmforge.data.readers import Rejects, iter_records
from lmforge.training.collate import IGNORE
from lmforge.training.data import encode_pt, encode_sft


def test_alpaca_demo_rows_encode_with_counts_that_add_up(tokenizer, shared):
    path = shared("llamafactory-demo/alpaca_en_demo.json")
    rejects = Rejects()
    records = list(iter_records([path], rejects))
    assert len(records) == 999
    encoded = encode_sft(records, DataConfig(max_length=256), tokenizer, rejects)
    counts = encoded.counts
    assert counts["read"] == 999
    assert counts["read"] == counts["used"] + counts["rejected"]
    assert counts["rejected"] == len(rejects)
    assert counts["used"] > 900 and counts["truncated"] > 0  # some answers exceed 256 tokens
    for reason in (r["reason"] for r in rejects.items):
        assert "prompt longer than max_length" in reason
    # every used example learns something, and only after its prompt
    for unit in encoded.units:
        (piece,) = unit
        assert any(t != IGNORE for t in piece.targets)
        assert piece.targets[0] == IGNORE


def test_c4_demo_documents_cut_into_full_blocks(tokenizer, shared):
    path = shared("llamafactory-demo/c4_demo.jsonl")
    rejects = Rejects()
    records = list(iter_records([path], rejects))
    encoded = encode_pt(records, DataConfig(max_length=128), tokenizer, rejects)
    assert encoded.counts["read"] == len(records) == encoded.counts["used"] + len(rejects)
    lengths = [sum(len(p) for p in unit) for unit in encoded.units]
    assert all(n == 128 for n in lengths[:-1]) and 0 < lengths[-1] <= 128
