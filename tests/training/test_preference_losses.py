"""The pieces under stages rm and dpo: fused per-token log-probabilities (values and gradients),
per-piece sums in both packed layouts, each DPO-family loss against its formula, and the
reference being exactly the starting policy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.config.groups import DataConfig, ModelConfig
from lmforge.config.training import AdapterConfig
from lmforge.data.readers import Record, Rejects
from lmforge.data.synthetic_pairs import make_pairs
from lmforge.models.adapters import Task, apply_adapter
from lmforge.models.load import build_model
from lmforge.training.collate import IGNORE, padded_batch, varlen_batch
from lmforge.training.data import Encoder
from lmforge.training.encoders import PairSettings, preference_pieces
from lmforge.training.objectives.logprobs import sequence_logprobs, token_logprobs
from lmforge.training.objectives.preference import DPOLoss, RewardLoss


def test_token_logprobs_match_log_softmax_in_value_and_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=gen, requires_grad=True)
    weight = torch.randn(50, 16, generator=gen, requires_grad=True)
    bias = torch.randn(50, generator=gen, requires_grad=True)
    targets = torch.randint(0, 50, (37,), generator=gen)
    upstream = torch.randn(37, generator=gen)
    fused = token_logprobs(hidden, weight, bias, targets, chunk=8)  # 5 chunks, the last short
    (fused * upstream).sum().backward()
    grads = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    plain = F.log_softmax(F.linear(hidden, weight, bias), -1).gather(1, targets[:, None])[:, 0]
    (plain * upstream).sum().backward()
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    for got, t in zip(grads, (hidden, weight, bias), strict=True):
        torch.testing.assert_close(got, t.grad, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_model(ModelConfig(preset="tiny-llama", tokenizer="unused"), tokenizer, seed=0)


@pytest.fixture(scope="module")
def pairs(tokenizer) -> list:
    rows = make_pairs(3, seed=0)[:6]
    records = [Record("pairs", i + 1, r) for i, r in enumerate(rows)]
    counts = {"read": 0, "used": 0, "rejected": 0, "truncated": 0}
    encoder = Encoder("pref", preference_pieces)
    pieces = encoder.pieces(
        records, DataConfig(max_length=96), tokenizer, Rejects(), counts, pair=PairSettings()
    )
    units, unit = [], []
    for piece, ends in pieces:
        unit.append(piece)
        if ends:
            units.append(unit)
            unit = []
    assert counts["used"] == 6 and len(units) == 6
    return units


def _by_hand(model, unit_pieces) -> torch.Tensor:
    """log p(answer) of each piece, one unpadded forward per piece."""
    out = []
    for piece in unit_pieces:
        ids = torch.tensor([piece.ids])
        logits = model(input_ids=ids).logits[0].float()
        lp = F.log_softmax(logits, -1)
        total = sum(lp[i, t] for i, t in enumerate(piece.targets) if t != IGNORE)
        out.append(total)
    return torch.stack(out)


@pytest.mark.parametrize("fused", [True, False])
def test_answer_logprobs_are_the_same_in_both_layouts(model, pairs, fused, monkeypatch) -> None:
    """Padded rows and one varlen row give each piece's log p(answer); so do the fused head
    and transformers' own logits (``logits_to_keep``)."""
    from lmforge.training.attention import varlen_attention
    from lmforge.training.objectives import logprobs

    if not fused:
        monkeypatch.setattr(logprobs, "plain_head", lambda hf: False)

    pieces = [p for u in pairs for p in u]
    expected = _by_hand(model.eval(), pieces)
    padded = padded_batch(pairs, 0)
    with torch.no_grad():
        got, counts = sequence_logprobs(
            model,
            model,
            padded["input_ids"],
            padded["position_ids"],
            padded["targets"],
            len(pieces),
            **padded["attention"],
        )
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        assert counts.tolist() == [sum(t != IGNORE for t in p.targets) for p in pieces]
        packed = varlen_batch(pairs)
        with varlen_attention(model, torch.device("cpu")):
            got, _ = sequence_logprobs(
                model,
                model,
                packed["input_ids"],
                packed["position_ids"],
                packed["targets"],
                len(pieces),
                **packed["attention"],
            )
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def _formula_loss(kind, pi, ref, length, beta=0.5, eps=0.1, gamma=0.3, lam=0.2, sft=0.0):
    objective = DPOLoss.__new__(DPOLoss)
    torch.nn.Module.__init__(objective)
    objective.loss_type, objective.beta, objective.label_smoothing = kind, beta, eps
    objective.simpo_gamma, objective.orpo_lambda, objective.sft_weight = gamma, lam, sft
    objective.reference_free = kind in ("simpo", "orpo")
    loss, _, _ = objective._loss(pi, length, ref, [2])
    return float(loss)


PI = torch.tensor([-3.0, -6.0])  # chosen, rejected: summed answer log-probs under the policy
REF = torch.tensor([-4.0, -5.0])
LENGTH = torch.tensor([2.0, 4.0])


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        # h = (-3 + 4) - (-6 + 5) = 2, beta 0.5: beta * h = 1
        ("sigmoid", -0.9 * _logsig(1.0) - 0.1 * _logsig(-1.0)),
        ("robust", (-0.9 * _logsig(1.0) + 0.1 * _logsig(-1.0)) / 0.8),
        ("hinge", 0.0),  # max(0, 1 - 1)
        # per token: (-1.5 + 2) - (-1.5 + 1.25) = 0.75; (0.75 - 1/(2 * 0.5))^2
        ("ipo", (0.75 - 1.0) ** 2),
        # beta * (-1.5 - -1.5) - 0.3
        ("simpo", -0.9 * _logsig(-0.3) - 0.1 * _logsig(0.3)),
        # odds of p = exp(-1.5) against exp(-1.5): equal, so log sigma(0) after the NLL 1.5
        ("orpo", 1.5 - 0.2 * _logsig(0.0)),
    ],
)
def test_each_loss_is_its_formula(kind, expected) -> None:
    assert _formula_loss(kind, PI, REF, LENGTH) == pytest.approx(expected, rel=1e-6)


def test_orpo_odds_ratio() -> None:
    pi = torch.tensor([-1.0, -8.0])  # average log-probs -0.5 and -2 (lengths 2 and 4)
    p_c, p_r = math.exp(-0.5), math.exp(-2.0)
    log_odds = math.log(p_c / (1 - p_c)) - math.log(p_r / (1 - p_r))
    expected = 0.5 - 0.2 * _logsig(log_odds)
    assert _formula_loss("orpo", pi, None, LENGTH) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("adapter_type", ["full", "lora"])
def test_the_reference_is_the_starting_policy(model, pairs, tokenizer, adapter_type) -> None:
    """At the first step the policy is the reference: h = 0 for every pair, so the sigmoid loss
    is log 2 per pair and every reward is 0; after a change to the policy it is not."""
    import copy

    policy = copy.deepcopy(model).train()
    cfg = AdapterConfig(type=adapter_type, **({"rank": 4} if adapter_type == "lora" else {}))
    policy = apply_adapter(policy, cfg, tokenizer, torch.device("cpu"), Task()).model
    objective = DPOLoss(policy, beta=0.1).eval()
    batch = padded_batch(pairs, 0)
    args = (batch["input_ids"], batch["position_ids"], batch["targets"])
    with torch.no_grad():
        loss, count = objective(*args, unit_sizes=[2] * len(pairs), **batch["attention"])
    assert count == len(pairs)
    assert float(loss) == pytest.approx(len(pairs) * math.log(2), rel=1e-5)
    stats = objective.eval_sums()
    assert stats["reward_chosen"][1] == len(pairs)
    assert stats["reward_chosen"][0] == pytest.approx(0.0, abs=1e-5)
    assert stats["logp_margin"][0] != 0.0  # the answers themselves differ in probability
    with torch.no_grad():
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
        moved, _ = objective(*args, unit_sizes=[2] * len(pairs), **batch["attention"])
    assert abs(float(moved) - len(pairs) * math.log(2)) > 1e-3


def test_reward_loss_is_bradley_terry(tokenizer) -> None:
    from lmforge.models.load import label_config

    rm = build_model(
        ModelConfig(preset="tiny-llama", tokenizer="unused"),
        tokenizer,
        head="sequence-classification",
        config_updates=label_config(["reward"]),
    ).eval()
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 9, 0]])
    targets = torch.full_like(ids, IGNORE)
    targets[0, 3], targets[1, 2] = 1, 0  # the last real token of each piece
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    positions = torch.arange(4).expand(2, 4)
    with torch.no_grad():
        loss, count = RewardLoss(rm)(ids, positions, targets, [2], attention_mask=mask)
        r = rm.score(rm.model(input_ids=ids, attention_mask=mask).last_hidden_state)[..., 0]
    expected = -F.logsigmoid(r[0, 3] - r[1, 2])
    assert count == 1
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    # a margin asks for more: the loss grows
    weights = torch.full(ids.shape, 2.0)
    with torch.no_grad():
        margin_loss, _ = RewardLoss(rm, margins=True)(
            ids, positions, targets, [2], attention_mask=mask, weights=weights
        )
    torch.testing.assert_close(margin_loss, -F.logsigmoid(r[0, 3] - r[1, 2] - 2.0))


def test_sft_weight_adds_the_chosen_answers_nll() -> None:
    plain = _formula_loss("sigmoid", PI, REF, LENGTH)
    with_nll = _formula_loss("sigmoid", PI, REF, LENGTH, sft=2.0)
    assert with_nll == pytest.approx(plain + 2.0 * 3.0 / 2.0)  # -(-3) / 2 tokens, times 2


def test_the_reference_ignores_dropout_while_training(tokenizer, pairs) -> None:
    """With dropout in the base, the policy's forward is random in training mode, but the
    reference (the adapter switched off) is computed without dropout: the same every time."""
    cfg = ModelConfig(preset="tiny-llama", tokenizer="unused", overrides={"attention_dropout": 0.5})
    policy = build_model(cfg, tokenizer, seed=0)
    policy = apply_adapter(
        policy, AdapterConfig(type="lora", rank=4), tokenizer, torch.device("cpu"), Task()
    ).model
    objective = DPOLoss(policy).train()
    batch = padded_batch(pairs, 0)
    args = (batch["input_ids"], batch["position_ids"], batch["targets"], 2 * len(pairs))
    first = objective.reference.logprobs(*args, **batch["attention"])
    second = objective.reference.logprobs(*args, **batch["attention"])
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert policy.training  # switched back after the reference forward
    with torch.no_grad():
        a, _ = sequence_logprobs(policy, objective.hf, *args, **batch["attention"])
        b, _ = sequence_logprobs(policy, objective.hf, *args, **batch["attention"])
    assert not torch.equal(a, b)  # the policy itself does use dropout
