"""Packed rows: attention never crosses a piece, rows respect capacity, pt blocks are cut right."""

from __future__ import annotations

import random

import pytest
import torch

from lmforge.config.groups import DataConfig, ModelConfig
from lmforge.data.readers import Record, Rejects
from lmforge.models.load import build_model
from lmforge.training.collate import IGNORE, Piece, collate, pack_rows, unit_tokens
from lmforge.training.data import encode_pt


@pytest.fixture(scope="module")
def model(tokenizer):
    model = build_model(ModelConfig(preset="tiny-llama", tokenizer="unused"), tokenizer, seed=0)
    return model.eval()


def _pieces(lengths: list[int], vocab: int, seed: int = 0) -> list[Piece]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(0, vocab, (n,), generator=gen).tolist()
        out.append(Piece(ids, ids[1:] + [IGNORE]))
    return out


@torch.no_grad()
def _alone(model, piece: Piece) -> torch.Tensor:
    ids = torch.tensor([piece.ids])
    positions = torch.arange(len(piece))[None]
    return model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]


@torch.no_grad()
def _logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
    ).logits


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_equals_separate_sequences(model, tokenizer, attn) -> None:
    """Guards transformers' packed-sequence mask (restarting position_ids, no attention mask)."""
    model.set_attn_implementation(attn)
    pieces = _pieces([7, 13, 4], len(tokenizer))
    batch = collate([pieces], pad_id=tokenizer.pad_token_id)
    assert batch["position_ids"][0].tolist() == [*range(7), *range(13), *range(4)]
    packed = _logits(model, batch)[0]
    start = 0
    for piece in pieces:
        alone = _alone(model, piece)
        torch.testing.assert_close(packed[start : start + len(piece)], alone, atol=1e-5, rtol=0)
        start += len(piece)

    # sensitivity: without restarting positions the later pieces see earlier ones and differ
    plain = _logits(
        model, {"input_ids": batch["input_ids"], "position_ids": torch.arange(24)[None]}
    )[0]
    assert (plain[7:20] - _alone(model, pieces[1])).abs().max() > 1e-3


def test_padded_rows_equal_separate_sequences(model, tokenizer) -> None:
    """Two rows of different total length: the padding is a sequence of its own."""
    model.set_attn_implementation("sdpa")
    first, second = _pieces([5, 9], len(tokenizer), seed=1), _pieces([3], len(tokenizer), seed=2)
    batch = collate([first, second], pad_id=tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, 14)
    assert batch["targets"][1, 3:].eq(IGNORE).all()
    logits = _logits(model, batch)
    torch.testing.assert_close(logits[0, :5], _alone(model, first[0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[0, 5:14], _alone(model, first[1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[1, :3], _alone(model, second[0]), atol=1e-5, rtol=0)


def test_pack_rows_respects_capacity_and_keeps_every_piece_once() -> None:
    rng = random.Random(0)
    units = []
    for _ in range(60):
        n_pieces = rng.randint(1, 3)
        units.append([Piece([0] * rng.randint(1, 21), [IGNORE]) for _ in range(n_pieces)])
    units.append([Piece([0] * 80, [IGNORE])])  # longer than capacity: a row of its own
    capacity = 64
    rows = pack_rows(units, capacity)
    for row in rows:
        size = sum(len(p) for p in row)
        assert size <= capacity or (len(row) == 1 and size == 80)
    packed = sorted(id(p) for row in rows for p in row)
    assert packed == sorted(id(p) for u in units for p in u)
    # a unit's pieces stay together and in order in one row (a pt block stays one block)
    for unit in units:
        (row,) = [r for r in rows if any(p is unit[0] for p in r)]
        at = next(i for i, p in enumerate(row) if p is unit[0])
        assert all(row[at + k] is piece for k, piece in enumerate(unit))
    # first-fit-decreasing leaves little room: fewer rows than units, most rows nearly full
    total = sum(unit_tokens(u) for u in units)
    assert len(rows) <= total // capacity + 2


def test_encode_pt_blocks(tokenizer, demo_data) -> None:
    import json

    docs = [json.loads(line)["text"] for line in demo_data["corpus"].read_text().splitlines()[:12]]
    records = [Record("corpus.jsonl", i + 1, {"text": t}) for i, t in enumerate(docs)]
    encoded = encode_pt(records, DataConfig(max_length=48), tokenizer, Rejects())
    units = encoded.units
    assert encoded.counts == {"read": 12, "used": 12, "rejected": 0, "truncated": 0}
    assert len(units) > 12  # documents are longer than a block: they are cut
    assert all(unit_tokens(u) == 48 for u in units[:-1])
    assert 0 < unit_tokens(units[-1]) <= 48

    eos = tokenizer.eos_token_id
    encoded_docs = [tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] for t in docs]
    expected = [tok for doc in encoded_docs for tok in doc]
    pieces = [p for u in units for p in u]
    assert [tok for p in pieces for tok in p.ids] == expected  # nothing lost, nothing reordered

    for unit in units:  # positions restart at every piece
        positions = collate([unit], pad_id=tokenizer.pad_token_id)["position_ids"][0].tolist()
        assert positions == [i for p in unit for i in range(len(p))]
    for piece, nxt in zip(pieces, [*pieces[1:], None], strict=True):
        assert piece.targets[:-1] == piece.ids[1:]
        if piece.ids[-1] == eos:  # a document's end predicts nothing
            assert piece.targets[-1] == IGNORE
        else:  # cut by a block boundary: still predicts its continuation in the next block
            assert nxt is not None and piece.targets[-1] == nxt.ids[0]
    assert sum(t == IGNORE for p in pieces for t in p.targets) == len(docs)


@pytest.mark.parametrize("stage", ["sft", "pt"])
def test_varlen_row_equals_separate_sequences(model, tokenizer, demo_data, stage) -> None:
    """One varlen row (every piece of a micro-batch, per-piece attention) gives each piece the
    logits it gets alone: for SFT-shaped units and for pretraining blocks."""
    from lmforge.training.attention import supports_varlen, varlen_attention
    from lmforge.training.collate import varlen_batch

    if stage == "sft":
        units = [[p] for p in _pieces([7, 13, 1, 30, 4], len(tokenizer), seed=3)]
    else:
        import json

        lines = demo_data["corpus"].read_text().splitlines()[:6]
        records = [Record("c", i, {"text": json.loads(x)["text"]}) for i, x in enumerate(lines)]
        units = encode_pt(records, DataConfig(max_length=40), tokenizer, Rejects()).units[:4]
    assert supports_varlen(model)
    batch = varlen_batch(units)
    pieces = [p for u in units for p in u]
    assert batch["input_ids"].shape == (1, sum(len(p) for p in pieces))
    assert batch["attention"]["cu_seq_lens_q"].tolist()[-1] == batch["input_ids"].shape[1]
    assert len(pieces) > len(units) or stage == "sft"  # pt blocks hold several documents
    with torch.no_grad(), varlen_attention(model, torch.device("cpu")):
        packed = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            use_cache=False,
            **batch["attention"],
        ).logits[0]
        # sensitivity: one boundary-free sequence lets later pieces see earlier ones
        whole = torch.tensor([0, batch["input_ids"].shape[1]], dtype=torch.int32)
        leaky = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            use_cache=False,
            cu_seq_lens_q=whole,
        ).logits[0]
    assert model.config._attn_implementation == "sdpa"  # switched back afterwards
    start = 0
    for piece in pieces:
        torch.testing.assert_close(
            packed[start : start + len(piece)], _alone(model, piece), atol=1e-5, rtol=0
        )
        start += len(piece)
    assert (leaky - packed).abs().max() > 1e-3
