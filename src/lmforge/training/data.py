"""Turn training files into units (see ``collate``) for stage ``pt`` or ``sft``, with counts.

Counts add up: ``read = used + rejected``; ``truncated`` counts used SFT examples cut to
``max_length``. Rejected rows go to the ``Rejects`` collector with file, line and reason.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from lmforge.config.groups import DataConfig
from lmforge.data.readers import Record, Rejects, iter_records
from lmforge.data.schema import RowError, to_messages, to_text
from lmforge.errors import DataError
from lmforge.training.collate import IGNORE, Piece, Unit
from lmforge.training.sft import encode_messages_full


@dataclass
class Encoded:
    units: list[Unit] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def split_records(records: list[Record], ratio: float, seed: int) -> tuple[list, list]:
    """Hold out ``ratio`` of the rows (seeded), before encoding, so no document straddles."""
    if ratio <= 0:
        return records, []
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(records) * ratio))
    val = set(order[:n_val])
    return (
        [r for i, r in enumerate(records) if i not in val],
        [r for i, r in enumerate(records) if i in val],
    )


def encode_sft(records: list[Record], cfg: DataConfig, tokenizer, rejects: Rejects) -> Encoded:
    out = Encoded(counts={"read": 0, "used": 0, "rejected": 0, "truncated": 0})
    for record in records:
        out.counts["read"] += 1
        try:
            messages = to_messages(record.row, cfg.format)
            ids, labels, truncated = encode_messages_full(tokenizer, messages, cfg.max_length)
        except RowError as exc:
            rejects.add_record(record, str(exc))
            out.counts["rejected"] += 1
            continue
        out.counts["used"] += 1
        out.counts["truncated"] += int(truncated)
        out.units.append([Piece.from_labels(ids, labels)])
    return out


def encode_pt(records: list[Record], cfg: DataConfig, tokenizer, rejects: Rejects) -> Encoded:
    """Documents + EOS, concatenated in order and cut into blocks of ``max_length`` tokens.

    A document cut by a block boundary continues in the next block as a new piece (positions
    restart); the last token before the cut still predicts the first token after it.
    """
    out = Encoded(counts={"read": 0, "used": 0, "rejected": 0, "truncated": 0})
    eos = tokenizer.eos_token_id
    block: Unit = []
    room = cfg.max_length
    for record in records:
        out.counts["read"] += 1
        try:
            text = to_text(record.row, cfg.text_field)
        except RowError as exc:
            rejects.add_record(record, str(exc))
            out.counts["rejected"] += 1
            continue
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
        targets = ids[1:] + [IGNORE]
        out.counts["used"] += 1
        start = 0
        while start < len(ids):
            take = min(room, len(ids) - start)
            block.append(Piece(ids[start : start + take], targets[start : start + take]))
            start += take
            room -= take
            if room == 0:
                out.units.append(block)
                block, room = [], cfg.max_length
    if block:
        out.units.append(block)
    return out


def load_stage_data(
    stage: str, cfg: DataConfig, tokenizer, rejects: Rejects, seed: int
) -> tuple[Encoded, Encoded]:
    """(train, validation) units; validation from ``cfg.validation`` or ``cfg.val_ratio``."""
    encode = encode_pt if stage == "pt" else encode_sft
    train_records = list(iter_records(cfg.train, rejects))
    reader_rejects = len(rejects)
    val_records = list(iter_records(cfg.validation, rejects)) if cfg.validation else []
    val_reader_rejects = len(rejects) - reader_rejects
    if not cfg.validation:
        train_records, val_records = split_records(train_records, cfg.val_ratio, seed)
    train = encode(train_records, cfg, tokenizer, rejects)
    # rows the reader could not parse (bad JSON, bad UTF-8) are read-and-rejected too
    train.counts["read"] += reader_rejects
    train.counts["rejected"] += reader_rejects
    if cfg.max_examples is not None and len(train.units) > cfg.max_examples:
        train.counts["unused_over_max_examples"] = len(train.units) - cfg.max_examples
        train.units = train.units[: cfg.max_examples]
    val = encode(val_records, cfg, tokenizer, rejects)
    val.counts["read"] += val_reader_rejects
    val.counts["rejected"] += val_reader_rejects
    if not train.units:
        raise DataError(
            f"no usable training rows in {cfg.train}: {train.counts['rejected']} rejected "
            "(see rejects.jsonl in the run directory for the reasons)"
        )
    if sum(1 for u in train.units for p in u for t in p.targets if t != IGNORE) == 0:
        raise DataError("the training data has no target tokens to learn from")
    return train, val
