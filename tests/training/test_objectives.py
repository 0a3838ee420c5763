"""The objectives beyond causal LM, checked against references that are not lmforge's own code:

- the packed heads (masked LM, token and sequence classification; BERT and Llama) give the loss
  transformers' own ``...For...`` forward gives on each example alone;
- masked-LM targets follow BERT's 80/10/10 rule, never touch special tokens and depend only on
  ``(seed, step)``;
- XLNet's permutation masks: no target sees itself or a later target, context sees no target;
- contrastive pooling over a packed row equals pooling over padded rows;
- classification metrics equal scikit-learn's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge.config.groups import ModelConfig
from lmforge.eval.classification import classification_metrics, confusion_matrix
from lmforge.models.load import build_model, label_config
from lmforge.training.attention import varlen_attention
from lmforge.training.collate import IGNORE, Piece, padded_batch, varlen_batch
from lmforge.training.objectives.contrastive import pool_pieces
from lmforge.training.objectives.heads import PackedHeadLoss, PaddedHFLoss
from lmforge.training.objectives.masked import Masker
from lmforge.training.objectives.permutation import PlmTargets, permutation_masks

LABELS = ["neg", "pos", "neutral"]


def _examples(tokenizer, head: str, pool: str, n: int = 4, seed: int = 0) -> list[list[Piece]]:
    gen = torch.Generator().manual_seed(seed)
    units = []
    for k in range(n):
        length = 6 + 3 * k
        ids = torch.randint(5, len(tokenizer), (length,), generator=gen).tolist()
        targets = [IGNORE] * length
        if head == "sequence-classification":
            targets[0 if pool == "first" else -1] = k % len(LABELS)
        elif head == "token-classification":
            targets[1::2] = [(k + i) % len(LABELS) for i in range(len(targets[1::2]))]
        else:  # masked-lm: a few positions learn their own token
            for i in range(1, length, 3):
                targets[i] = ids[i]
        units.append([Piece(ids, targets)])
    return units


def _reference_loss(hf, units, head: str) -> torch.Tensor:
    """Summed CE from transformers' forward, one example at a time (no packing, no padding)."""
    total = torch.zeros(())
    for (piece,) in units:
        logits = hf(input_ids=torch.tensor([piece.ids])).logits[0]
        targets = torch.tensor(piece.targets)
        if head == "sequence-classification":
            total = total + F.cross_entropy(
                logits[None], targets[targets != IGNORE], reduction="sum"
            )
        else:
            keep = targets != IGNORE
            total = total + F.cross_entropy(logits[keep], targets[keep], reduction="sum")
    return total


@pytest.mark.parametrize(
    ("preset", "head"),
    [
        ("tiny-bert", "sequence-classification"),
        ("tiny-bert", "token-classification"),
        ("tiny-bert", "masked-lm"),
        ("tiny-llama", "sequence-classification"),
        ("tiny-llama", "token-classification"),
    ],
)
def test_packed_heads_equal_transformers_forward(tokenizer, preset, head) -> None:
    updates = label_config(LABELS) if "classification" in head else {}
    hf = build_model(
        ModelConfig(preset=preset, tokenizer="unused"), tokenizer, head=head, config_updates=updates
    ).eval()
    pool = "first" if preset == "tiny-bert" else "last"
    units = _examples(tokenizer, head, pool)
    with torch.no_grad():
        expected = _reference_loss(hf, units, head)
        objective = PackedHeadLoss(hf, head)
        batch = varlen_batch(units)
        with varlen_attention(hf, torch.device("cpu")):
            packed, count = objective(
                batch["input_ids"], batch["position_ids"], batch["targets"], **batch["attention"]
            )
        padded = padded_batch(units, tokenizer.pad_token_id)
        masked, _ = objective(
            padded["input_ids"], padded["position_ids"], padded["targets"], **padded["attention"]
        )
        # the model's own forward on padded rows (the fallback for unknown architectures)
        fallback, _ = PaddedHFLoss(hf, head)(
            padded["input_ids"], padded["position_ids"], padded["targets"], **padded["attention"]
        )
    assert count == sum(sum(t != IGNORE for t in u[0].targets) for u in units)
    torch.testing.assert_close(packed, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masked, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fallback, expected, rtol=1e-5, atol=1e-5)


def test_class_weights_and_label_smoothing_are_torch_cross_entropy(tokenizer) -> None:
    hf = build_model(
        ModelConfig(preset="tiny-bert", tokenizer="unused"),
        tokenizer,
        head="sequence-classification",
        config_updates=label_config(LABELS),
    ).eval()
    units = _examples(tokenizer, "sequence-classification", "first", n=6)
    weights = [0.5, 2.0, 1.0]
    batch = padded_batch(units, tokenizer.pad_token_id)
    with torch.no_grad():
        loss, _, pred, gold = PackedHeadLoss(
            hf, "sequence-classification", class_weights=weights, label_smoothing=0.1
        )(
            batch["input_ids"],
            batch["position_ids"],
            batch["targets"],
            return_predictions=True,
            **batch["attention"],
        )
        logits = hf(batch["input_ids"], attention_mask=batch["attention"]["attention_mask"]).logits
    expected = F.cross_entropy(
        logits, gold, weight=torch.tensor(weights), label_smoothing=0.1, reduction="sum"
    )
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(pred, logits.argmax(-1))


def test_masking_follows_the_80_10_10_rule(tokenizer) -> None:
    specials = set(tokenizer.all_special_ids)
    masker = Masker(mask_id=3, vocab_size=len(tokenizer), special_ids=specials, seed=7)
    rng = np.random.default_rng(0)
    ordinary = [i for i in range(len(tokenizer)) if i not in specials and i != 3]
    ids = rng.choice(ordinary, size=20000).tolist()
    ids[::50] = [tokenizer.eos_token_id] * len(ids[::50])  # specials are never selected
    (unit,) = masker([[Piece(ids, [IGNORE] * len(ids))]], step=5)
    (piece,) = unit
    targets = np.array(piece.targets)
    chosen = targets != IGNORE
    assert 0.14 < chosen.mean() < 0.16
    original, new = np.array(ids), np.array(piece.ids)
    assert (targets[chosen] == original[chosen]).all()  # the model learns the original token
    assert not chosen[::50].any() and (new[::50] == tokenizer.eos_token_id).all()
    assert (new[~chosen] == original[~chosen]).all()
    as_mask = (new[chosen] == 3).mean()
    kept = (new[chosen] == original[chosen]).mean()
    assert 0.77 < as_mask < 0.83 and 0.08 < kept < 0.12  # the rest (~10%) are random tokens
    assert not set(new[chosen & (new != 3) & (new != original)].tolist()) & specials
    # a pure function of (seed, step): every rank and a resumed run draw the same
    again = masker([[Piece(ids, [IGNORE] * len(ids))]], step=5)
    assert again[0][0].targets == piece.targets and again[0][0].ids == piece.ids
    other = masker([[Piece(ids, [IGNORE] * len(ids))]], step=6)
    assert other[0][0].targets != piece.targets


def test_permutation_masks_follow_xlnet() -> None:
    targets = torch.full((2, 7), IGNORE)
    targets[0, [1, 4, 5]] = torch.tensor([11, 14, 15])
    targets[1, [2]] = torch.tensor([22])
    perm, mapping, labels = permutation_masks(targets, torch.Generator().manual_seed(0))
    assert perm.shape == (2, 7, 7) and mapping.shape == (2, 3, 7)
    assert labels.tolist()[1] == [22, IGNORE, IGNORE]
    assert sorted(labels[0].tolist()) == [11, 14, 15]
    order = [int(mapping[0, t].argmax()) for t in range(3)]  # positions in prediction order
    assert sorted(order) == [1, 4, 5] and [int(targets[0, p]) for p in order] == labels[0].tolist()
    context = [0, 2, 3, 6]
    for i in context:  # context sees all context and no target
        assert perm[0, i, context].sum() == 0 and perm[0, i, order].sum() == 3
    for k, i in enumerate(order):  # a target sees the context and the targets before it only
        assert perm[0, i, context].sum() == 0
        assert perm[0, i, order].tolist() == [0.0] * k + [1.0] * (3 - k)

    picker = PlmTargets(special_ids={0, 1}, prob=1 / 6, seed=0)
    ids = [0] + list(range(5, 65)) + [1]
    (unit,) = picker([[Piece(ids, [IGNORE] * len(ids))]], step=3)
    chosen = [i for i, t in enumerate(unit[0].targets) if t != IGNORE]
    assert len(chosen) == 10 and 0 not in chosen and len(ids) - 1 not in chosen


def test_pooling_a_packed_row_equals_padded_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    lengths = [3, 5, 2]
    pieces = [torch.randn(n, 4, generator=gen) for n in lengths]
    row = torch.cat(pieces)[None]
    cu = torch.tensor([0, 3, 8, 10])
    padded = torch.zeros(3, 5, 4)
    mask = torch.zeros(3, 5, dtype=torch.long)
    for r, p in enumerate(pieces):
        padded[r, : len(p)] = p
        mask[r, : len(p)] = 1
    for how in ("mean", "first", "last"):
        torch.testing.assert_close(
            pool_pieces(row, how, cu_seq_lens=cu), pool_pieces(padded, how, attention_mask=mask)
        )
    torch.testing.assert_close(pool_pieces(row, "mean", cu_seq_lens=cu)[1], pieces[1].mean(0))


def test_classification_metrics_equal_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 4, 300)
    pred = np.where(rng.random(300) < 0.6, gold, rng.integers(0, 4, 300))
    pred[pred == 3] = 2  # class 3 is never predicted: precision 0 by convention
    names = ["a", "b", "c", "d"]
    got = classification_metrics(confusion_matrix(gold.tolist(), pred.tolist(), 4), names)
    assert got["accuracy"] == pytest.approx(metrics.accuracy_score(gold, pred))
    for average in ("macro", "micro"):
        assert got[f"{average}_f1"] == pytest.approx(
            metrics.f1_score(gold, pred, average=average, zero_division=0)
        )
    assert got["macro_precision"] == pytest.approx(
        metrics.precision_score(gold, pred, average="macro", zero_division=0)
    )
    assert got["macro_recall"] == pytest.approx(metrics.recall_score(gold, pred, average="macro"))
    per = metrics.precision_recall_fscore_support(gold, pred, zero_division=0)
    for i, name in enumerate(names):
        c = got["per_class"][name]
        assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx(
            tuple(float(x[i]) for x in per)
        )
    assert got["confusion"] == metrics.confusion_matrix(gold, pred).tolist()
