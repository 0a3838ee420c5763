"""SFT data with plain-text rows mixed in (``prepare``'s ``pretrain_mix``): every token learned."""

from __future__ import annotations

from lmforge.config.groups import DataConfig
from lmforge.data.readers import Record, Rejects
from lmforge.training.collate import IGNORE
from lmforge.training.data import encode_sft


def test_text_rows_among_conversations_are_learned_on_every_token(tokenizer):
    rows = [
        {"instruction": "Is 4 even?", "output": "even"},
        {"text": "Rivers carry sediment to the sea.", "metadata": {"source": "pretrain_mix"}},
        {"text": ""},  # still a reject, with its reason
    ]
    records = [Record("mix.jsonl", i + 1, row) for i, row in enumerate(rows)]
    rejects = Rejects()
    encoded = encode_sft(records, DataConfig(max_length=64), tokenizer, rejects)
    assert encoded.counts["used"] == 2 and encoded.counts["rejected"] == 1
    assert rejects.items[0]["line"] == 3 and "empty text" in rejects.items[0]["reason"]
    conversation, text = (unit[0] for unit in encoded.units)
    ids = tokenizer("Rivers carry sediment to the sea.", add_special_tokens=False)["input_ids"]
    assert text.ids == ids + [tokenizer.eos_token_id]
    assert text.targets == text.ids[1:] + [IGNORE]  # all of it, like pretraining
    # the conversation still learns only its answer
    learned = sum(t != IGNORE for t in conversation.targets)
    assert 0 < learned < len(conversation.ids) - 1
    # an explicit conversation format still refuses text rows
    strict = encode_sft(
        records[1:2], DataConfig(max_length=64, format="messages"), tokenizer, Rejects()
    )
    assert strict.counts["used"] == 0
