"""Stages rm, dpo and kto end to end on tiny models: the reward model learns the preference and
saves a plain transformers scorer; DPO raises the chosen-minus-rejected margin on held-out pairs,
starts from an SFT adapter merged into its base (its reference: the new adapter switched off),
runs every loss, and bad rows and settings give the expected errors. The parity pairs, the SFT
models and the reward model are session fixtures (``conftest``) that the RL stages share."""

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
def dpo_lora(sft_lora, tokenizer_dir, pairs, pair_args, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dpo")
    _train(
        [
            "stage=dpo",
            f"model.path={sft_lora / 'model'}",
            *pair_args(tokenizer_dir, pairs, out)[1:],
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
def test_every_dpo_loss_trains(loss, tokenizer_dir, pairs, pair_args, tmp_path) -> None:
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
            *pair_args(tokenizer_dir, pairs, tmp_path),
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


def test_dpo_raises_a_style_preference_in_sampled_answers(tokenizer_dir, pairs, tmp_path) -> None:
    """A preference SFT left undecided: the SFT data answers half the prompts "even" and half
    "The answer is even.", and the pairs prefer the long form with the same content. DPO (with
    the chosen answers' NLL, sft_weight 1) raises the held-out log-probability margin and the
    share of *sampled* answers in the preferred style (recorded run: 0.34 -> 0.88, margin
    -0.59 -> 7.76)."""
    from types import SimpleNamespace

    from lmforge.config.groups import GenerationConfig
    from lmforge.rl.rollouts import sample_answers
    from lmforge.serve.generate import encode_prompts

    def long(answer: str) -> str:
        return f"The answer is {answer}."

    def rows(split: str) -> list[dict]:
        return [json.loads(x) for x in pairs[split].read_text("utf-8").splitlines()]

    def write(path: Path, items: list[dict]) -> Path:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), "utf-8")
        return path

    train, val = rows("train"), rows("val")
    sft_rows = [
        {"instruction": r["instruction"], "output": long(r["chosen"]) if i % 2 else r["chosen"]}
        for i, r in enumerate(train)
    ]

    def styled(items):
        return [
            {"instruction": r["instruction"], "chosen": long(r["chosen"]), "rejected": r["chosen"]}
            for r in items
        ]

    sft, dpo = tmp_path / "sft", tmp_path / "dpo"
    common = ["data.max_length=64", "train.batch_size=8", "train.log_every=10"]
    _train(
        [
            "stage=sft",
            "model.preset=tiny-llama",
            f"model.tokenizer={tokenizer_dir}",
            f"data.train=[{write(tmp_path / 'sft.jsonl', sft_rows)}]",
            "train.max_steps=80",
            "train.lr=3e-3",
            f"output_dir={sft}",
            *common,
        ]
    )
    _train(
        [
            "stage=dpo",
            f"model.path={sft}",
            f"data.train=[{write(tmp_path / 'train.jsonl', styled(train))}]",
            f"data.validation=[{write(tmp_path / 'val.jsonl', styled(val))}]",
            "adapter.type=lora",
            "adapter.rank=8",
            "preference.beta=0.1",
            "preference.sft_weight=1.0",
            "train.max_steps=60",
            "train.lr=1e-3",
            "train.eval_on_start=true",
            f"output_dir={dpo}",
            *common,
        ]
    )
    start, end = [r for r in _metrics(dpo) if "eval_loss" in r]
    assert end["eval_logp_margin"] > start["eval_logp_margin"] + 3, (start, end)

    def style_rate(run_dir: Path) -> float:
        model, tok = load_for_inference(ModelConfig(path=str(run_dir)), "cpu")
        messages = [[{"role": "user", "content": r["instruction"]}] for r in val]
        prompts = encode_prompts(tok, messages, GenerationConfig())
        sampling = SimpleNamespace(max_new_tokens=12, temperature=1.0, top_p=1.0)
        answers = [
            a.text for row in sample_answers(model, tok, prompts, 4, sampling, 0) for a in row
        ]
        return sum(a.startswith("The answer is") for a in answers) / len(answers)

    before, after = style_rate(sft), style_rate(dpo)
    assert 0.1 < before < 0.7, before  # the SFT model is undecided
    assert after > before + 0.3, (before, after)
