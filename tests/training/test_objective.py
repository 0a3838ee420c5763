"""The fused, chunked linear cross-entropy equals the plain one, in value and in gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lmforge.config.groups import ModelConfig
from lmforge.config.training import AdapterConfig
from lmforge.models.adapters import add_lora
from lmforge.models.load import build_model
from lmforge.training.collate import IGNORE, Piece, varlen_batch
from lmforge.training.objectives.causal import CausalLMLoss, linear_cross_entropy


@pytest.mark.parametrize("bias", [False, True])
def test_linear_cross_entropy_matches_reference(bias) -> None:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=gen, requires_grad=True)
    weight = torch.randn(50, 16, generator=gen, requires_grad=True)
    b = torch.randn(50, generator=gen, requires_grad=True) if bias else None
    targets = torch.randint(0, 50, (37,), generator=gen)

    ref = F.cross_entropy(F.linear(hidden, weight, b), targets, reduction="sum")
    ref_grads = torch.autograd.grad(2.5 * ref, [hidden, weight, *([b] if bias else [])])
    got = linear_cross_entropy(hidden, weight, b, targets, chunk=8)  # 5 chunks, last one short
    got_grads = torch.autograd.grad(2.5 * got, [hidden, weight, *([b] if bias else [])])
    torch.testing.assert_close(got, ref)
    for g, r in zip(got_grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)

    frozen = weight.detach()  # a frozen head: no weight gradient is computed
    (g_h,) = torch.autograd.grad(linear_cross_entropy(hidden, frozen, None, targets, 8), [hidden])
    torch.testing.assert_close(
        g_h,
        torch.autograd.grad(F.cross_entropy(hidden @ frozen.T, targets, reduction="sum"), [hidden])[
            0
        ],
    )
    with torch.no_grad():  # evaluation: the loss alone
        torch.testing.assert_close(
            linear_cross_entropy(hidden, weight, b, targets, 8), ref.detach()
        )


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_causal_lm_loss_fused_equals_full_logits(tokenizer, adapter) -> None:
    model = build_model(ModelConfig(preset="tiny-llama", tokenizer="unused"), tokenizer, seed=0)
    if adapter == "lora":
        model = add_lora(model, AdapterConfig(type="lora", rank=4, alpha=8))
    gen = torch.Generator().manual_seed(1)
    pieces = []
    for n in (9, 14, 6):
        ids = torch.randint(0, len(tokenizer), (n,), generator=gen).tolist()
        targets = ids[1:] + [IGNORE]
        targets[: n // 2] = [IGNORE] * (n // 2)  # a masked "prompt"
        pieces.append([Piece(ids, targets)])
    batch = varlen_batch(pieces)
    # reference: full logits over every position, cross-entropy over the targets
    reference = copy.deepcopy(model)
    logits = reference(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
    ).logits
    ref = F.cross_entropy(logits[0], batch["targets"][0], ignore_index=IGNORE, reduction="sum")
    ref.backward()

    fused = CausalLMLoss(model)
    assert fused.fused
    loss, n = fused(batch["input_ids"], batch["position_ids"], batch["targets"])
    loss.backward()
    assert n == int((batch["targets"] != IGNORE).sum())
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)

    other = CausalLMLoss(copy.deepcopy(reference))  # the logits_to_keep path
    other.fused = False
    for p in other.parameters():
        p.grad = None
    kept, _ = other(batch["input_ids"], batch["position_ids"], batch["targets"])
    kept.backward()
    torch.testing.assert_close(kept, ref, rtol=1e-5, atol=1e-5)

    trained = 0
    for (name, p), q, k in zip(
        model.named_parameters(), reference.parameters(), other.parameters(), strict=True
    ):
        if p.requires_grad:
            trained += 1
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
            torch.testing.assert_close(k.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert trained > 0
