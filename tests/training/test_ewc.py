"""EWC's penalty and Fisher, and how the loop takes them.

- the penalty is 0 at θ* and equals λ/2 Σ F (θ − θ*)², with gradient λ F (θ − θ*), on a toy model;
- the Fisher is the mean over examples of the squared gradient of each example's mean loss;
- in the loop a step minimises mean task loss + penalty exactly: the logged loss minus the logged
  penalty is the task loss, the weight change is the task gradient plus λ F (θ − θ*), and
  grad_accum=2 equals a batch twice as large.
Steps use plain SGD (as in ``test_grad_accum``) so a weight change is the gradient itself.
"""

from __future__ import annotations

import copy

import pytest
import torch

from lmforge.config.groups import DataConfig, ModelConfig
from lmforge.data.readers import Record, Rejects
from lmforge.errors import ConfigError
from lmforge.models.load import build_model
from lmforge.training import forward
from lmforge.training.continual import estimate_fisher
from lmforge.training.data import encode_sft
from lmforge.training.objectives.base import Objective
from lmforge.training.objectives.causal import CausalLMLoss
from lmforge.training.objectives.ewc import EWCLoss, trainable_parameters

LR = 0.5


class _Toy(Objective):
    """loss sum = Σ (model(x) − y)² over rows, count = rows."""

    def forward(self, x, y):
        return (self.model(x) - y).square().sum(), len(x)


def test_penalty_is_zero_at_the_anchor_and_matches_the_closed_form() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    ewc = EWCLoss(_Toy(model), fisher, lam=4.0)
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    assert float(ewc.penalty().detach()) == 0.0
    inner_loss, _ = _Toy(model)(x, y)
    loss, count = ewc(x, y)
    assert count == 5 and torch.equal(loss, inner_loss)  # at θ*: the task loss alone

    deltas = {n: torch.randn_like(p) * 0.1 for n, p in model.named_parameters()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p += deltas[n]
    expected = 0.5 * 4.0 * sum(float((fisher[n] * d.square()).sum()) for n, d in deltas.items())
    assert float(ewc.penalty().detach()) == pytest.approx(expected, rel=1e-6)
    loss, count = ewc(x, y)
    inner_loss, _ = _Toy(model)(x, y)
    total = float(inner_loss.detach()) + expected * 5
    assert float(loss.detach()) == pytest.approx(total, rel=1e-6)
    model.zero_grad()
    ewc.penalty().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, 4.0 * fisher[n] * deltas[n], rtol=1e-5, atol=1e-7)
    # the logged penalty: count-weighted over the forwards since the last row (0 then expected)
    assert ewc.log_metrics() == {"ewc_penalty": pytest.approx(expected / 2, rel=1e-6)}
    assert ewc.log_metrics() == {}  # reset once logged

    ewc.eval()  # evaluation: the task loss alone
    assert torch.equal(ewc(x, y)[0], _Toy(model)(x, y)[0])


def test_only_trainable_parameters_are_held_and_the_fisher_must_match() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    model[0].requires_grad_(False)  # a frozen layer
    names = [n for n, _ in trainable_parameters(model)]
    assert names == ["1.weight", "1.bias"]
    fisher = {n: torch.ones_like(p) for n, p in model.named_parameters() if p.requires_grad}
    ewc = EWCLoss(_Toy(model), fisher, lam=1.0)
    with torch.no_grad():
        model[0].weight += 1.0  # frozen weights are not penalised (they cannot move anyway)
    assert float(ewc.penalty().detach()) == 0.0
    with pytest.raises(ConfigError, match="does not match the trainable parameters"):
        EWCLoss(_Toy(model), {"0.weight": torch.ones(3, 3)}, lam=1.0)
    with pytest.raises(ConfigError, match="shape"):
        EWCLoss(_Toy(model), {**fisher, "1.bias": torch.ones(3)}, lam=1.0)


@pytest.fixture(scope="module")
def units(tokenizer) -> list:
    answers = ["odd", "forty-two", "positive", "四十二", "even", "负面", "seven", "negative"]
    records = [
        Record("mem", i + 1, {"instruction": f"Question {i}: " + "tell me " * (i % 3), "output": a})
        for i, a in enumerate(answers)
    ]
    return list(encode_sft(records, DataConfig(max_length=64), tokenizer, Rejects()).units)


@pytest.fixture(scope="module")
def base_model(tokenizer):
    return build_model(ModelConfig(preset="tiny-llama", tokenizer="unused"), tokenizer, seed=0)


def test_fisher_is_the_mean_squared_gradient_per_example(base_model, units, tokenizer) -> None:
    model = copy.deepcopy(base_model)
    objective = CausalLMLoss(model)
    layout = forward.Layout(tokenizer.pad_token_id, None, varlen=False, attention_mask=False)
    fisher, stats = estimate_fisher(objective, units[:4], layout, batch_size=1)
    assert stats == {"batches": 4, "examples": 4, "skipped": 0}
    assert all(p.grad is None for p in model.parameters())  # gradients cleared afterwards
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for unit in units[:4]:
        model.zero_grad()
        loss, n = forward.token_loss_sum(objective, layout.batch([unit]), None)
        (loss / n).backward()
        for name, p in model.named_parameters():
            expected[name] += p.grad.square() / 4
    assert set(fisher) == set(expected)
    for name in fisher:
        torch.testing.assert_close(fisher[name], expected[name], rtol=1e-4, atol=1e-12)
    assert sum(float(f.sum()) for f in fisher.values()) > 0
    # other data, another Fisher
    other, _ = estimate_fisher(objective, units[4:], layout, batch_size=1)
    assert any(not torch.allclose(other[n], fisher[n]) for n in fisher)


def _run(base_model, units, tokenizer, tmp_path, sgd_loop, objective, batch_size, grad_accum):
    """(model after two SGD steps over the 8 units, metrics rows, weights after step 1)."""
    model = copy.deepcopy(base_model)
    after_first = {}

    def on_step(done: int) -> None:
        if done == 1:
            after_first.update({n: p.detach().clone() for n, p in model.named_parameters()})

    run = sgd_loop(
        tmp_path,
        tokenizer.pad_token_id,
        max_steps=2,
        lr=LR,
        batch_size=batch_size,
        grad_accum=grad_accum,
        objective=objective,
        on_step=on_step,
    )
    rows = run(model, units)
    return model, rows, after_first


def test_a_step_minimises_task_loss_plus_penalty(
    base_model, units, tokenizer, tmp_path, sgd_loop
) -> None:
    gen = torch.Generator().manual_seed(3)
    fisher = {n: torch.rand(p.shape, generator=gen) for n, p in base_model.named_parameters()}
    lam = 0.8

    def ewc(model):
        return EWCLoss(CausalLMLoss(model), fisher, lam)

    args = (base_model, units, tokenizer)
    plain, plain_rows, first = _run(*args, tmp_path / "plain", sgd_loop, CausalLMLoss, 4, 1)
    held, rows, held_first = _run(*args, tmp_path / "ewc", sgd_loop, ewc, 4, 1)
    accum, accum_rows, _ = _run(*args, tmp_path / "accum", sgd_loop, ewc, 2, 2)

    # step 1 starts at θ*: no penalty, the same step as without EWC
    assert rows[0]["ewc_penalty"] == 0.0 and rows[0]["loss"] == plain_rows[0]["loss"]
    for n in first:
        assert torch.equal(first[n], held_first[n]), n
    # step 2: the logged loss is the task loss + the closed-form penalty at θ1
    theta0 = {n: p.detach() for n, p in base_model.named_parameters()}
    penalty = (
        0.5 * lam * sum(float((fisher[n] * (first[n] - theta0[n]).square()).sum()) for n in fisher)
    )
    assert penalty > 1e-3
    assert rows[1]["ewc_penalty"] == pytest.approx(penalty, rel=1e-5)
    assert rows[1]["loss"] - rows[1]["ewc_penalty"] == pytest.approx(
        plain_rows[1]["loss"], rel=1e-5
    )
    # and its weight change is the task gradient plus λ F (θ1 − θ*)
    for n, p in held.named_parameters():
        pull = LR * lam * fisher[n] * (first[n] - theta0[n])
        expected = dict(plain.named_parameters())[n] - pull
        torch.testing.assert_close(p, expected, rtol=1e-4, atol=1e-6, msg=n)
    # grad_accum=2 x batch 2 takes the same steps as batch 4
    assert accum_rows[1]["loss"] == pytest.approx(rows[1]["loss"], rel=1e-5)
    assert accum_rows[1]["ewc_penalty"] == pytest.approx(rows[1]["ewc_penalty"], rel=1e-5)
    for (n, p), q in zip(held.named_parameters(), accum.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=n)


def test_lora_fisher_is_zero_on_a_at_initialisation(tokenizer, units) -> None:
    """With B = 0 the loss does not depend on A: EWC on a fresh adapter holds B (see ewc.py)."""
    from lmforge.config.training import AdapterConfig
    from lmforge.models.adapters import add_lora

    model = build_model(ModelConfig(preset="tiny-llama", tokenizer="unused"), tokenizer, seed=0)
    model = add_lora(model, AdapterConfig(type="lora", rank=4, alpha=8))
    layout = forward.Layout(tokenizer.pad_token_id, None, varlen=False, attention_mask=False)
    fisher, _ = estimate_fisher(CausalLMLoss(model), units[:3], layout, batch_size=1)
    assert fisher and all("lora_" in n for n in fisher)
    assert all(float(f.abs().max()) == 0.0 for n, f in fisher.items() if "lora_A" in n)
    assert any(float(f.abs().max()) > 0.0 for n, f in fisher.items() if "lora_B" in n)
