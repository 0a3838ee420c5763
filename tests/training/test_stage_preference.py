"""Stages rm and dpo end to end on tiny models: the reward model learns the preference and saves a
plain transformers scorer; DPO raises the chosen-minus-rejected margin on held-out pairs, starts
from an SFT adapter merged into its base (its reference: the new adapter switched off), runs every
loss, and bad rows and settings give the expected errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.config.groups import ModelConfig
from lmforge.config.recipes import TrainRecipe
from lmforge.data.synthetic_pairs import make_pairs, write_pairs
from lmforge.models.load import load_for_inference
from lmforge.recipes.train import run

QUIET = ["track.progress=false", "track.tensorboard=off"]


def _train(overrides: list[str]):
    return run(load_config(TrainRecipe, None, overrides + QUIET))


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, Path]:
    """Parity pairs (the correct label chosen, the other rejected), English and Chinese."""
    folder = tmp_path_factory.mktemp("pairs")
    rows = make_pairs(120, seed=0, tasks=("en_parity", "zh_parity"))
    return {
        "train": write_pairs(folder / "train.jsonl", rows[:200]),
        "val": write_pairs(folder / "val.jsonl", rows[200:]),
    }


def _common(tokenizer_dir, pairs, out) -> list[str]:
    return [
        f"model.tokenizer={tokenizer_dir}",
        f"data.train=[{pairs['train']}]",
        f"data.validation=[{pairs['val']}]",
        "data.max_length=64",
        "train.batch_size=8",
        "train.log_every=5",
        f"output_dir={out}",
    ]


@pytest.fixture(scope="module")
def sft_lora(tokenizer_dir, pairs, tmp_path_factory) -> Path:
    """A short LoRA SFT on the correct answers: the starting point of DPO."""
    out = tmp_path_factory.mktemp("sft")
    _train(
        [
            "stage=sft",
            "model.preset=tiny-llama",
            *_common(tokenizer_dir, pairs, out),
            "adapter.type=lora",
            "adapter.rank=8",
            "train.max_steps=30",
            "train.lr=3e-3",
        ]
    )
    return out


@pytest.fixture(scope="module")
def dpo_lora(sft_lora, tokenizer_dir, pairs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dpo")
    _train(
        [
            "stage=dpo",
            f"model.path={sft_lora / 'model'}",
            *_common(tokenizer_dir, pairs, out)[1:],
            "model.tokenizer=null",
            "adapter.type=lora",
            "adapter.rank=8",
            "preference.beta=0.5",
            "train.max_steps=40",
            "train.lr=3e-3",
            "train.eval_every=20",
            "train.eval_on_start=true",
        ]
    )
    return out


def test_dpo_raises_the_held_out_margin(dpo_lora) -> None:
    rows = _metrics(dpo_lora)
    evals = [r for r in rows if "eval_loss" in r]
    train = [r for r in rows if "loss" in r]
    assert train[-1]["loss"] < train[0]["loss"], train
    assert "reward_margin" in train[0] and "logp_margin" in train[0]
    # before the first step the policy is the reference: reward margin 0, loss log 2
    start, end = evals[0], evals[-1]
    assert start["step"] == 0 and [e["step"] for e in evals[1:]] == [20, 40]
    assert start["eval_reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert start["eval_loss"] == pytest.approx(0.6931, abs=1e-3)
    assert end["eval_reward_margin"] > 0.3, evals
    assert end["eval_loss"] < 0.65, evals
    assert end["eval_accuracy"] > 0.7, evals
    # held-out log p(chosen) - log p(rejected) grows, and so does the share of pairs where the
    # correct answer is the more likely one
    assert end["eval_logp_margin"] > start["eval_logp_margin"] + 0.5, evals
    assert end["eval_logp_accuracy"] > start["eval_logp_accuracy"], evals
    manifest = json.loads((dpo_lora / "manifest.json").read_text())
    assert manifest["metrics"]["start_eval_loss"] == pytest.approx(start["eval_loss"])


def test_dpo_starts_from_the_sft_adapter_and_disabling_its_own_gives_the_reference(
    dpo_lora, sft_lora, tokenizer
) -> None:
    """The SFT adapter was merged into its base (run/start); the DPO adapter sits on that merge,
    so with the DPO adapter off the model computes exactly what the SFT model did."""
    config = json.loads((dpo_lora / "model" / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == (dpo_lora / "start").resolve()
    sft, _ = load_for_inference(ModelConfig(path=str(sft_lora)))
    dpo, _ = load_for_inference(ModelConfig(path=str(dpo_lora)))
    ids = torch.tensor([tokenizer("Is 7 even or odd?")["input_ids"]])
    with torch.no_grad():
        expected = sft(input_ids=ids).logits
        with dpo.disable_adapter():
            reference = dpo(input_ids=ids).logits
        trained = dpo(input_ids=ids).logits
    torch.testing.assert_close(reference, expected, rtol=1e-4, atol=1e-5)
    assert (trained - expected).abs().max() > 1e-3  # DPO changed the policy
    manifest = json.loads((dpo_lora / "manifest.json").read_text())
    assert manifest["stage"] == "dpo"
    assert manifest["counts"]["train_units"] == 200


@pytest.mark.parametrize("loss", ["robust", "hinge", "ipo", "simpo", "orpo"])
def test_every_dpo_loss_trains(loss, tokenizer_dir, pairs, tmp_path) -> None:
    """Full-batch steps on 16 fixed pairs: each loss goes down and the margin up."""
    extra = {
        "robust": ["preference.label_smoothing=0.1"],
        "simpo": ["preference.beta=2.0"],
        "ipo": ["preference.beta=0.5"],
    }.get(loss, [])
    _train(
        [
            "stage=dpo",
            "model.preset=tiny-llama",
            *_common(tokenizer_dir, pairs, tmp_path),
            f"preference.loss={loss}",
            *extra,
            "data.max_examples=16",
            "train.batch_size=16",
            "train.shuffle=false",
            "train.max_steps=10",
            "train.warmup_steps=0",
            "train.lr=1e-3",
            "train.log_every=1",
        ]
    )
    rows = [r for r in _metrics(tmp_path) if "loss" in r]
    assert rows[-1]["loss"] < rows[0]["loss"], rows
    assert rows[-1]["reward_margin"] > rows[0]["reward_margin"], rows


@pytest.fixture(scope="module")
def reward_model(sft_lora, tokenizer_dir, pairs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rm")
    _train(
        [
            "stage=rm",
            f"model.path={sft_lora / 'model'}",  # a reward model starts from the SFT model
            *_common(tokenizer_dir, pairs, out)[1:],
            "train.max_steps=300",
            "train.lr=3e-3",
            "train.eval_every=150",
            "train.log_every=25",
        ]
    )
    return out


def test_reward_model_learns_the_preference(reward_model) -> None:
    rows = _metrics(reward_model)
    evals = [r for r in rows if "eval_loss" in r]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] - 0.15, losses
    assert evals[-1]["eval_accuracy"] > 0.7, evals  # 40 held-out pairs; chance is 0.5
    assert evals[-1]["eval_reward_margin"] > 0, evals


def test_saved_reward_model_is_a_plain_transformers_scorer(reward_model, tokenizer) -> None:
    """transformers' own padded forward gives the reward the packed training forward used: the
    score of the last token of the rendered conversation."""
    from lmforge.tokenizer.templates import render

    plain = AutoModelForSequenceClassification.from_pretrained(str(reward_model / "model")).eval()
    assert plain.config.num_labels == 1
    loaded, tok = load_for_inference(ModelConfig(path=str(reward_model)))
    conversations = [
        [{"role": "user", "content": "Is 14 even or odd?"}, {"role": "assistant", "content": a}]
        for a in ("even", "odd")
    ]
    texts = [render(tok, c) for c in conversations]
    tok.padding_side = "right"
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        a = plain(**batch).logits[:, 0]
        b = loaded(**batch).logits[:, 0]
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a[0], a[1])


def test_bad_pairs_go_to_the_rejects_file(tokenizer_dir, tmp_path) -> None:
    good = make_pairs(10, seed=1, tasks=("en_parity",))
    bad = [
        {"instruction": "Is 3 even or odd?", "chosen": "odd", "rejected": "odd"},
        {"instruction": "Is 3 even or odd?", "chosen": "odd"},
        {"chosen": "odd", "rejected": "even"},
    ]
    data = write_pairs(tmp_path / "pairs.jsonl", good + bad)
    out = tmp_path / "run"
    _train(
        [
            "stage=dpo",
            "model.preset=tiny-llama",
            f"model.tokenizer={tokenizer_dir}",
            f"data.train=[{data}]",
            "data.max_length=64",
            "train.max_steps=1",
            f"output_dir={out}",
        ]
    )
    counts = json.loads((out / "manifest.json").read_text())["counts"]["train"]
    assert counts["read"] == 13 and counts["used"] == 10 and counts["rejected"] == 3
    reasons = [json.loads(x)["reason"] for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert any("nothing to prefer" in r for r in reasons)
    assert any("missing field 'rejected'" in r for r in reasons)
    assert any("needs a prompt" in r for r in reasons)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["stage=dpo", "adapter.type=prefix"], "use it with stage sft, not dpo"),
        (["stage=dpo", "preference.margin_field=gap"], "read by stage rm, not dpo"),
        (["stage=rm", "data.format=text"], "needs preference rows"),
    ],
)
def test_bad_settings_are_user_errors(extra, message, tokenizer_dir, pairs, tmp_path, capsys):
    code = main(
        [
            "train",
            "model.preset=tiny-llama",
            f"model.tokenizer={tokenizer_dir}",
            f"data.train=[{pairs['train']}]",
            f"output_dir={tmp_path}",
            *extra,
            *QUIET,
        ]
    )
    err = capsys.readouterr().err
    assert code != 0
    assert message in err, err
    assert "Traceback" not in err


def test_dpo_on_llamafactory_dpo_en_demo(shared, tokenizer_dir, tmp_path) -> None:
    """LLaMA-Factory's own ranking dataset through its dataset_info.json, unedited."""
    folder = shared("llamafactory-demo")
    out = tmp_path / "run"
    _train(
        [
            "stage=dpo",
            "model.preset=tiny-llama",
            f"model.tokenizer={tokenizer_dir}",
            f"data.dataset_dir={folder}",
            "data.dataset=[dpo_en_demo]",
            "data.max_length=1024",
            "data.max_examples=48",
            "adapter.type=lora",
            "train.batch_size=4",
            "train.max_steps=3",
            "train.log_every=1",
            f"output_dir={out}",
        ]
    )
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]["train"]
    assert counts["used"] >= 40, counts
    assert counts["read"] == counts["used"] + counts["rejected"]
    rows = _metrics(out)
    assert len([r for r in rows if "loss" in r]) == 3
    assert all(r["loss"] == r["loss"] for r in rows if "loss" in r)  # finite


def test_kto_learns_from_answers_labelled_good_or_bad(tokenizer_dir, pairs, tmp_path) -> None:
    """Unpaired rows (each pair's two answers as two rows, one desirable, one not, shuffled
    apart): full-batch steps lower the loss and separate the rewards of the two kinds."""
    rows = [json.loads(x) for x in pairs["train"].read_text("utf-8").splitlines()][:8]
    unpaired = []
    for r in rows:
        prompt = r["instruction"]
        unpaired.append({"prompt": prompt, "completion": r["chosen"], "label": True})
    for r in reversed(rows):
        unpaired.append({"prompt": r["instruction"], "completion": r["rejected"], "label": False})
    data = tmp_path / "kto.jsonl"
    data.write_text("".join(json.dumps(u, ensure_ascii=False) + "\n" for u in unpaired), "utf-8")
    out = tmp_path / "run"
    _train(
        [
            "stage=kto",
            "model.preset=tiny-llama",
            f"model.tokenizer={tokenizer_dir}",
            f"data.train=[{data}]",
            "data.max_length=64",
            "preference.beta=0.5",
            "train.batch_size=16",
            "train.shuffle=false",
            "train.max_steps=10",
            "train.warmup_steps=0",
            "train.lr=1e-3",
            "train.log_every=1",
            f"output_dir={out}",
        ]
    )
    rows = [r for r in _metrics(out) if "loss" in r]
    assert rows[0]["loss"] == pytest.approx(0.5, abs=1e-4)  # 1 - sigmoid(0): policy = reference
    assert rows[-1]["loss"] < rows[0]["loss"], rows
    gap = [r["reward_desirable"] - r["reward_undesirable"] for r in rows]
    assert gap[-1] > gap[0] + 0.05, gap
    assert all(r["kl"] >= 0 for r in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["train_units"] == 16


@pytest.fixture(scope="module")
def sft_full(tokenizer_dir, pairs, tmp_path_factory) -> Path:
    """Full SFT long enough to answer in the task's format (even/odd, 奇数/偶数) and stop, but
    not to be right every time (120 steps reach ~93%: nothing left for RL)."""
    out = tmp_path_factory.mktemp("sft-full")
    _train(
        [
            "stage=sft",
            "model.preset=tiny-llama",
            *_common(tokenizer_dir, pairs, out),
            "train.max_steps=80",
            "train.lr=3e-3",
        ]
    )
    return out


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
