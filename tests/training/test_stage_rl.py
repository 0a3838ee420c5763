"""Stages grpo and ppo end to end on tiny models, from an early SFT model of the parity task
(the right format, right ~60% of the time): with an exact-match reward the reward rises and so
does held-out exact match, with a trained reward model its score rises, and the KL to the
reference (the SFT model) stays bounded. PPO's value head is saved beside a plain model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.config.recipes import TrainRecipe
from lmforge.recipes.train import run

QUIET = ["track.progress=false", "track.tensorboard=off"]


def _train(overrides: list[str]):
    return run(load_config(TrainRecipe, None, overrides + QUIET))


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def test_grpo_raises_the_exact_match_reward(sft_full, pairs, tmp_path) -> None:
    """From an early SFT model (the right format, right ~60% of the time), GRPO with an
    exact-match reward on sampled answers: the reward of the last steps beats the first steps',
    the held-out exact match (sampled answers, eval_on_start as the baseline) rises, and the KL
    to the reference (the SFT model) stays small."""
    out = tmp_path / "grpo"
    _train(
        [
            "stage=grpo",
            f"model.path={sft_full}",
            f"data.train=[{pairs['train']}]",
            f"data.validation=[{pairs['val']}]",
            "data.max_length=64",
            "adapter.type=full",
            "rl.group_size=4",
            "rl.max_new_tokens=6",
            "rl.beta=0.04",
            "train.batch_size=8",
            "train.max_steps=40",
            "train.lr=1e-3",
            "train.warmup_steps=0",
            "train.log_every=5",
            "train.eval_on_start=true",
            f"output_dir={out}",
        ]
    )
    rows = _metrics(out)
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    early = sum(r["reward"] for r in train[:2]) / 2
    late = sum(r["reward"] for r in train[-2:]) / 2
    assert late > early + 0.1, [r["reward"] for r in train]
    assert evals[-1]["eval_exact_match"] > evals[0]["eval_exact_match"], evals
    assert max(r["kl"] for r in train) < 0.5, [r["kl"] for r in train]


def test_grpo_with_a_trained_reward_model(sft_full, reward_model, pairs, tmp_path) -> None:
    """The reward is the rm run's score of each sampled answer in its conversation, and it
    rises over the run: the policy learns what the reward model prefers. (Exact match rides
    along at weight 0: in the recorded run it fell from 0.34 to 0.00 while the score rose,
    the reward model being hacked at this small beta; docs/alignment.md.)"""
    out = tmp_path / "grpo-rm"
    _train(
        [
            "stage=grpo",
            f"model.path={sft_full}",
            f"data.train=[{pairs['train']}]",
            "data.max_length=64",
            "adapter.type=full",
            "rl.group_size=4",
            f"rl.rewards=[{{type: model, path: '{reward_model}'}}, "
            "{type: exact_match, weight: 0}]",
            "rl.max_new_tokens=6",
            "train.batch_size=8",
            "train.max_steps=80",
            "train.lr=1e-3",
            "train.warmup_steps=0",
            "train.log_every=10",
            f"output_dir={out}",
        ]
    )
    rows = [r for r in _metrics(out) if "loss" in r]
    rewards = [r["reward"] for r in rows]
    assert sum(rewards[-3:]) / 3 > rewards[0] + 0.3, rewards
    assert all("exact_match" in r for r in rows)


def _ppo(sft_full, pairs, out: Path, *extra: str) -> list[dict]:
    _train(
        [
            "stage=ppo",
            f"model.path={sft_full}",
            f"data.train=[{pairs['train']}]",
            f"data.validation=[{pairs['val']}]",
            "data.max_length=64",
            "adapter.type=full",
            "rl.max_new_tokens=6",
            "train.batch_size=16",
            "train.max_steps=60",
            "train.lr=3e-4",
            "train.warmup_steps=0",
            "train.log_every=10",
            "train.eval_on_start=true",
            f"output_dir={out}",
            *extra,
        ]
    )
    return _metrics(out)


@pytest.fixture(scope="module")
def ppo_exact(sft_full, pairs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ppo-exact")
    _ppo(sft_full, pairs, out)
    return out


def test_ppo_raises_the_exact_match_reward(ppo_exact) -> None:
    """Exact match cannot be earned by length: the reward of the last logged windows beats the
    first's, held-out exact match (sampled answers) rises over the SFT start, the summed KL per
    answer stays bounded, and every quantity PPO is judged by is logged."""
    rows = _metrics(ppo_exact)
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    assert _mean(train[-2:], "reward") > _mean(train[:1], "reward") + 0.1, train
    assert evals[-1]["eval_exact_match"] > evals[0]["eval_exact_match"] + 0.1, evals
    assert evals[0]["eval_kl"] == pytest.approx(0.0, abs=1e-4)  # the policy is the reference
    assert max(r["kl"] for r in train) < 5.0, [r["kl"] for r in train]
    for key in ("kl_coef", "entropy", "value_loss", "policy_loss", "clip_fraction", "approx_kl"):
        assert all(key in r for r in train), key
    assert any(r["clip_fraction"] > 0 for r in train)  # several passes: clipping engaged
    # the value head learned: its loss fell from the zero start's
    assert train[-1]["value_loss"] < evals[0]["eval_value_loss"], train


def test_ppo_saves_a_plain_model_and_the_value_head_beside_it(ppo_exact, tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ppo_exact / "model"))
    assert not any("value_head" in n for n, _ in model.named_parameters())
    head = load_file(str(ppo_exact / "value_head.safetensors"))
    assert head["weight"].shape == (1, model.config.hidden_size) and head["weight"].abs().max() > 0
    manifest = json.loads((ppo_exact / "manifest.json").read_text())
    roles = {o["role"] for o in manifest["outputs"]}
    assert {"model", "value_head"} <= roles


def test_ppo_with_a_trained_reward_model(sft_full, reward_model, pairs, tmp_path) -> None:
    """The reward is the rm run's score of each sampled answer (exact match rides along at
    weight 0). The held-out score (the same prompts and sampling seeds at both ends) rises, so
    does the training windows', and the KL to the reference stays bounded; with this reward
    model (0.825 held-out pair accuracy) and beta 0.3 the policy did not hack it: exact match
    held up (0.575 -> 0.725 in the recorded run)."""
    rows = _ppo(
        sft_full,
        pairs,
        tmp_path / "ppo-rm",
        f"rl.rewards=[{{type: model, path: '{reward_model}'}}, {{type: exact_match, weight: 0}}]",
        "rl.beta=0.3",
    )
    train = [r for r in rows if "loss" in r]
    start, end = [r for r in rows if "eval_loss" in r]
    assert end["eval_reward"] > start["eval_reward"] + 0.2, (start, end)
    assert _mean(train[-3:], "reward") > train[0]["reward"] + 0.1, [r["reward"] for r in train]
    assert max(r["kl"] for r in train) < 2.0, [r["kl"] for r in train]
    assert end["eval_exact_match"] >= start["eval_exact_match"] - 0.1, (start, end)


def test_ppo_adaptive_kl_controller_steers_the_coefficient(sft_full, pairs, tmp_path) -> None:
    """With a KL target far below what the policy reaches, the controller keeps raising beta."""
    rows = _ppo(
        sft_full,
        pairs,
        tmp_path / "ppo-kl",
        "rl.kl_target=0.01",
        "rl.kl_horizon=50",
        "train.max_steps=10",
        "train.log_every=2",
        "train.eval_on_start=false",
        "data.validation=[]",
    )
    coefs = [r["kl_coef"] for r in rows if "loss" in r]
    assert coefs[0] == pytest.approx(0.04, rel=0.05) and coefs[-1] > coefs[0] * 1.1, coefs


# --------------------------------------------------------------------------- ppo's parts by hand
def test_gae_by_hand() -> None:
    from lmforge.rl.ppo import gae

    rewards, values = torch.tensor([0.0, -0.1, 1.0]), torch.tensor([0.5, 0.4, 0.8])
    adv, ret = gae(rewards, values, gamma=0.9, lam=0.5)
    d2 = 1.0 - 0.8  # the last token: terminal, V(end) = 0
    d1 = -0.1 + 0.9 * 0.8 - 0.4
    d0 = 0.0 + 0.9 * 0.4 - 0.5
    a2, a1 = d2, d1 + 0.45 * d2
    a0 = d0 + 0.45 * a1
    torch.testing.assert_close(adv, torch.tensor([a0, a1, a2]))
    torch.testing.assert_close(ret, adv + values)
    # lambda 1, gamma 1: the advantage is the reward-to-go minus the value
    adv, _ = gae(rewards, values, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([0.9, 0.9, 1.0]) - values)


def test_whiten_and_the_kl_controller() -> None:
    from lmforge.rl.ppo import KLController, whiten

    x = whiten(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    assert float(x.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(x.std()) == pytest.approx(1.0, abs=1e-5)
    fixed = KLController(0.1)
    fixed.update(50.0, 8)
    assert fixed.value == 0.1
    ctl = KLController(0.1, target=1.0, horizon=100)
    ctl.update(3.0, 10)  # far above target: the error clips at +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    ctl.update(0.9, 10)  # a little below: -0.1
    assert ctl.value == pytest.approx(0.1 * 1.02 * (1 - 0.1 * 0.1))


def test_ppo_passes_cover_the_rollout_each_epoch() -> None:
    from lmforge.rl.ppo import epoch_passes

    units = list(range(5))
    parts = epoch_passes(units, epochs=3, mini_batches=2, seed=7)
    assert [len(p) for p in parts] == [3, 2] * 3
    for epoch in range(3):
        assert sorted(u for p in parts[2 * epoch : 2 * epoch + 2] for u in p) == units
    assert epoch_passes(units, epochs=3, mini_batches=2, seed=7) == parts  # seeded
    assert parts[:2] != parts[2:4]  # a new order every epoch


def test_bad_ppo_settings_are_user_errors(tokenizer_dir, pairs, tmp_path, capsys) -> None:
    code = main(
        [
            "train",
            "stage=ppo",
            "model.preset=tiny-llama",
            f"model.tokenizer={tokenizer_dir}",
            f"data.train=[{pairs['train']}]",
            "train.batch_size=2",
            "rl.mini_batches=4",
            f"output_dir={tmp_path}",
            *QUIET,
        ]
    )
    assert code != 0
    assert "rl.mini_batches=4" in capsys.readouterr().err
