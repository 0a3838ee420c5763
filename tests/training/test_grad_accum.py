"""Gradient accumulation: grad_accum=4 x batch_size=2 takes the same step as batch_size=8.

The loop sums token losses and divides by the target tokens of the *whole* optimizer step. The
optimizer is swapped for plain SGD (lr 1) so the weight change of one step is the gradient itself
(AdamW's first step is ~lr * sign(grad) and would hide a wrong normalisation).
"""

from __future__ import annotations

import copy

import pytest
import torch

from lmforge.config.groups import DataConfig, ModelConfig
from lmforge.data.readers import Record, Rejects
from lmforge.models.load import build_model
from lmforge.training import forward
from lmforge.training.collate import micro_batch, unit_targets
from lmforge.training.data import encode_sft
from lmforge.training.objectives.causal import CausalLMLoss

ANSWERS = [
    "odd",
    "forty-two",
    "positive",
    "even",
    "ninety-nine",
    "四十二",
    "seventy-three is written seventy-three",
    "负面",
]
CAPACITY = 96


@pytest.fixture(scope="module")
def units(tokenizer) -> list:
    """Eight SFT examples whose target counts differ (uneven micro-batches)."""
    records = [
        Record("mem", i + 1, {"instruction": f"Question {i}: " + "tell me " * (i % 3), "output": a})
        for i, a in enumerate(ANSWERS)
    ]
    encoded = encode_sft(records, DataConfig(max_length=CAPACITY), tokenizer, Rejects())
    assert encoded.counts["used"] == 8
    targets = [unit_targets(u) for u in encoded.units]
    assert len(set(targets)) >= 4, targets
    return encoded.units


@pytest.fixture(scope="module")
def base_model(tokenizer):
    return build_model(ModelConfig(preset="tiny-llama", tokenizer="unused"), tokenizer, seed=0)


def _one_step(base_model, units, tokenizer, tmp_path, sgd_loop, batch_size, grad_accum):
    """(weight change of one loop step, logged loss)."""
    run = sgd_loop(
        tmp_path,
        tokenizer.pad_token_id,
        max_steps=1,
        lr=1.0,
        batch_size=batch_size,
        grad_accum=grad_accum,
        pack_capacity=CAPACITY,
    )
    model = copy.deepcopy(base_model)
    (row,) = run(model, units)
    before = dict(base_model.named_parameters())
    delta = {n: (before[n] - p).detach() for n, p in model.named_parameters()}
    return delta, row["loss"]


def _per_micro_batch_mean_grads(base_model, units, tokenizer) -> dict[str, torch.Tensor]:
    """The wrong normalisation: mean loss per micro-batch, averaged over the 4 micro-batches."""
    model = copy.deepcopy(base_model)
    for start in range(0, 8, 2):
        batch = micro_batch(units[start : start + 2], tokenizer.pad_token_id, CAPACITY)
        loss, n = forward.token_loss_sum(CausalLMLoss(model), batch, None)
        (loss / n / 4).backward()
    return {n: p.grad for n, p in model.named_parameters()}


def test_accumulation_matches_large_batch(base_model, units, tokenizer, tmp_path, sgd_loop):
    big, big_loss = _one_step(base_model, units, tokenizer, tmp_path / "b8", sgd_loop, 8, 1)
    acc, acc_loss = _one_step(base_model, units, tokenizer, tmp_path / "b2x4", sgd_loop, 2, 4)

    assert acc_loss == pytest.approx(big_loss, rel=1e-5)
    total_norm = torch.sqrt(sum(d.square().sum() for d in big.values()))
    assert total_norm > 0.1  # the step did move the weights
    for name in big:
        torch.testing.assert_close(acc[name], big[name], rtol=1e-4, atol=1e-6, msg=name)

    # sensitivity: normalising per micro-batch gives a clearly different gradient
    wrong = _per_micro_batch_mean_grads(base_model, units, tokenizer)
    diff = torch.sqrt(sum((wrong[n] - big[n]).square().sum() for n in big))
    assert diff > 0.05 * total_norm, float(diff / total_norm)
