"""Training FLOPs against a hand count for tiny-llama (full and LoRA), and the matmul peak.

tiny-llama: hidden 128, 2 layers, 4 query heads and 2 key/value heads of 32, MLP 352, tied
embeddings; vocab 1000 here. Per layer the matmul weights (in × out) are
q 128·128, k 128·64, v 128·64, o 128·128, gate/up 128·352, down 352·128.
"""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.config.training import AdapterConfig
from lmforge.models.adapters import add_lora
from lmforge.models.presets import preset_config
from lmforge.training.flops import (
    FlopsProfile,
    matmul_peak_gflops,
    model_flops_utilization,
    training_flops,
)

VOCAB = 1000
LAYERS = 2
PER_LAYER = 128 * 128 + 128 * 64 + 128 * 64 + 128 * 128 + 3 * 128 * 352  # 184,320
BODY = LAYERS * PER_LAYER
HEAD = VOCAB * 128  # lm_head, tied to the embedding: counted once, as a matmul
ATTENTION_PER_LEN2 = 12 * LAYERS * 4 * 32  # 12 · layers · (heads × head dim)
# LoRA r=8 on q/k/v/o/gate/up/down adds A (in × 8) and B (8 × out) to each
LORA_PER_LAYER = (
    (128 + 128) * 8  # q
    + 2 * (128 + 64) * 8  # k, v
    + (128 + 128) * 8  # o
    + 2 * (128 + 352) * 8  # gate, up
    + (352 + 128) * 8  # down
)
LORA = LAYERS * LORA_PER_LAYER  # 37,376
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _tiny(**overrides) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(preset_config("tiny-llama", VOCAB, overrides))


def test_full_training_is_6n_plus_attention():
    profile = FlopsProfile.of(_tiny())
    assert profile.matmul_params == BODY + HEAD
    assert (profile.frozen_params, profile.head_frozen_params) == (0, 0)
    assert (profile.n_layers, profile.attention_width) == (2, 128)
    lengths = [3, 5]  # two pieces of one packed row: attention is 3² + 5², not 8²
    expected = 6 * (BODY + HEAD) * 8 + ATTENTION_PER_LEN2 * (9 + 25)
    assert profile.training_flops(lengths) == expected == 23_943_168
    assert training_flops(_tiny(), lengths) == expected


def test_untied_head_counts_the_same_and_embedding_never():
    profile = FlopsProfile.of(_tiny(tie_word_embeddings=False))
    assert profile.matmul_params == BODY + HEAD
    assert profile.head_trained_params == HEAD


def test_lora_frozen_weights_cost_4_trained_6():
    model = add_lora(_tiny(), AdapterConfig(type="lora", rank=8, target_modules=TARGETS))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == LORA
    profile = FlopsProfile.of(model)
    assert profile.trained_params == LORA
    assert profile.frozen_params == BODY
    assert profile.head_frozen_params == HEAD and profile.head_trained_params == 0
    lengths = [3, 5]
    attention = ATTENTION_PER_LEN2 * (9 + 25)
    assert profile.training_flops(lengths) == (4 * BODY + 6 * LORA + 4 * HEAD) * 8 + attention
    # the output projection on the 3 target positions only
    assert (
        profile.training_flops(lengths, lm_head_positions=3)
        == (4 * BODY + 6 * LORA) * 8 + 4 * HEAD * 3 + attention
    )


def test_mfu_is_a_fraction_of_the_peak():
    assert model_flops_utilization(50e9, 1.0, 100.0) == pytest.approx(0.5)


def test_matmul_peak_is_positive_and_finite():
    gflops = matmul_peak_gflops("cpu", n=256, reps=3, seconds_budget=0.2)
    assert gflops > 0 and math.isfinite(gflops)


def test_matmul_peak_shrinks_instead_of_overrunning_a_tiny_budget():
    gflops = matmul_peak_gflops("cpu", n=2048, reps=50, seconds_budget=1e-6)
    assert gflops > 0 and math.isfinite(gflops)


def test_bf16_hint_only_where_it_was_measured_faster(monkeypatch, capsys) -> None:
    """precision=auto keeps fp32 on CPUs; on a big enough model the loop says when this CPU's
    bf16 matmuls measured over 2x faster (AMX), and stays silent otherwise."""
    import torch

    from lmforge.config.training import TrainConfig
    from lmforge.training import loop

    big = torch.nn.Linear(3000, 2000)  # 6M parameters
    small = torch.nn.Linear(10, 10)
    cpu = torch.device("cpu")
    monkeypatch.setattr(loop, "matmul_peak_gflops", lambda *a, **k: 2000.0)
    loop._suggest_bf16(TrainConfig(), cpu, big, 300.0)
    assert "6.7x as fast as fp32" in capsys.readouterr().out
    for cfg, model in ((TrainConfig(precision="fp32"), big), (TrainConfig(), small)):
        loop._suggest_bf16(cfg, cpu, model, 300.0)
        assert capsys.readouterr().out == ""
    monkeypatch.setattr(loop, "matmul_peak_gflops", lambda *a, **k: 3.0)  # no bf16 units
    loop._suggest_bf16(TrainConfig(), cpu, big, 300.0)
    assert capsys.readouterr().out == ""
