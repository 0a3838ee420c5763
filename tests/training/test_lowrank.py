"""LoRA's rank-r layers with the CPU-friendly weight-gradient layout compute the same gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from lmforge.config.groups import ModelConfig
from lmforge.config.training import AdapterConfig
from lmforge.models.adapters import add_lora
from lmforge.models.load import build_model
from lmforge.training.lowrank import LowRankLinear, use_fast_lowrank


@pytest.mark.parametrize(("fan_in", "fan_out", "bias"), [(96, 8, False), (8, 96, True)])
def test_low_rank_linear_matches_autograd(fan_in, fan_out, bias) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 37, fan_in, generator=gen, requires_grad=True)
    layer = torch.nn.Linear(fan_in, fan_out, bias=bias)
    upstream = torch.randn(2, 37, fan_out, generator=gen)

    ref = torch.autograd.grad(
        (layer(x) * upstream).sum(), [x, *layer.parameters()], retain_graph=False
    )
    out = LowRankLinear.apply(x, layer.weight, layer.bias)
    torch.testing.assert_close(out, layer(x))
    got = torch.autograd.grad((out * upstream).sum(), [x, *layer.parameters()])
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_lora_model_gradients_unchanged(tokenizer) -> None:
    base = build_model(ModelConfig(preset="tiny-llama", tokenizer="unused"), tokenizer, seed=0)
    torch.manual_seed(0)
    plain = add_lora(base, AdapterConfig(type="lora", rank=4, alpha=8))
    for name, p in plain.named_parameters():  # B starts at zero: give it values to test with
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    fast = copy.deepcopy(plain)
    assert use_fast_lowrank(fast, torch.device("cpu")) == 2 * 2 * 7  # 2 layers, 7 targets, A+B
    assert use_fast_lowrank(copy.deepcopy(plain), torch.device("meta")) == 0  # CPU only

    ids = torch.randint(0, len(tokenizer), (1, 40), generator=torch.Generator().manual_seed(1))
    for model in (plain, fast):
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    changed = 0
    for (name, p), q in zip(plain.named_parameters(), fast.parameters(), strict=True):
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)
            changed += 1
    assert changed == 28
