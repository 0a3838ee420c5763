"""Stage pt with the objectives beyond causal LM, through the one loop: masked LM (tiny BERT),
permutation LM (tiny XLNet) and contrastive sentence embeddings (SimCSE). Each learns, saves a
plain transformers model, and a killed masked-LM run resumes to the uninterrupted weights (its
masks are drawn from the step)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForMaskedLM, XLNetLMHeadModel

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.config.recipes import TokenizerRecipe, TrainRecipe
from lmforge.data.synthetic import make_tasks
from lmforge.recipes.tokenizer import run as train_tokenizer
from lmforge.recipes.train import run

QUIET = ["track.progress=false", "track.tensorboard=off"]


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def mask_tokenizer(demo_data, tmp_path_factory) -> Path:
    """Byte-level BPE (vocab 800) with a mask token."""
    out = tmp_path_factory.mktemp("tok-mask")
    overrides = [f"data.files=[{demo_data['corpus']}]", "tokenizer.vocab_size=800"]
    overrides += ["tokenizer.mask_token=<|mask|>", f"output_dir={out}"]
    train_tokenizer(load_config(TokenizerRecipe, None, overrides))
    return out / "tokenizer"


def _pt(objective: str, preset: str, tokenizer: Path, data: Path, out: Path, *extra: str):
    overrides = [
        "stage=pt",
        f"objective.type={objective}",
        f"model.preset={preset}",
        f"model.tokenizer={tokenizer}",
        f"data.train=[{data}]",
        "data.val_ratio=0.1",
        "data.max_length=48",
        "train.batch_size=8",
        "train.lr=2e-3",
        "train.log_every=5",
        f"output_dir={out}",
        *extra,
        *QUIET,
    ]
    return load_config(TrainRecipe, None, overrides)


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in _rows(out) if "loss" in r]


def test_masked_lm_learns_and_saves_a_bert(mask_tokenizer, demo_data, tmp_path) -> None:
    out = tmp_path / "mlm"
    extra = ("train.max_steps=80", "train.batch_size=16")
    run(_pt("mlm", "tiny-bert", mask_tokenizer, demo_data["corpus"], out, *extra))
    losses = _losses(out)
    assert losses[0] > 6.4 and losses[-1] < losses[0] - 0.5, losses  # ln(800) = 6.68 at start
    final = [r for r in _rows(out) if "eval_loss" in r][-1]
    assert final["eval_loss"] < 6.2 and final["eval_tokens"] > 100, final
    assert 0 < final["eval_accuracy"] < 1  # masked-token accuracy
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["objective"]["type"] == "mlm"
    model = AutoModelForMaskedLM.from_pretrained(str(out / "model"))
    assert type(model).__name__ == "BertForMaskedLM"


def test_killed_masked_lm_run_resumes_to_the_same_weights(mask_tokenizer, demo_data, tmp_path):
    lines = demo_data["corpus"].read_text(encoding="utf-8").splitlines()[:60]
    data = tmp_path / "corpus.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    extra = (
        "train.max_steps=6",
        "train.save_every=3",
        "model.overrides={hidden_dropout_prob: 0.1}",
    )
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(_pt("mlm", "tiny-bert", mask_tokenizer, data, straight, *extra))

    def kill(step: int) -> None:
        if step == 4:
            raise Killed

    with pytest.raises(Killed):
        run(_pt("mlm", "tiny-bert", mask_tokenizer, data, resumed, *extra), on_step=kill)
    run(_pt("mlm", "tiny-bert", mask_tokenizer, data, resumed, *extra))
    a = load_file(str(straight / "model" / "model.safetensors"))
    b = load_file(str(resumed / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(straight) == _losses(resumed)


def test_permutation_lm_learns_on_xlnet(mask_tokenizer, demo_data, tmp_path) -> None:
    out = tmp_path / "plm"
    run(_pt("plm", "tiny-xlnet", mask_tokenizer, demo_data["corpus"], out, "train.max_steps=40"))
    losses = _losses(out)
    assert losses[-1] < losses[0] - 0.5, losses
    assert isinstance(XLNetLMHeadModel.from_pretrained(str(out / "model")), XLNetLMHeadModel)


def test_supervised_contrastive_learns_to_retrieve_the_positive(
    mask_tokenizer, demo_data, tmp_path
) -> None:
    """Anchor: a number task's prompt; positive: another task's prompt about the same number;
    hard negative: the same template about another number."""
    rows, by_number = [], {}
    for r in make_tasks(300, seed=5):
        digits = "".join(c for c in r["instruction"] if c.isdigit())
        if r["task"].startswith("en_") and digits:
            by_number.setdefault(digits, []).append(r["instruction"])
    numbers = [n for n, texts in by_number.items() if len(texts) >= 2]
    for k, n in enumerate(numbers):
        other = by_number[numbers[(k + 1) % len(numbers)]][0]
        rows.append({"text": by_number[n][0], "positive": by_number[n][1], "negative": other})
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "simcse"
    extra = ("train.max_steps=60", "train.eval_every=30", "data.val_ratio=0.2")
    run(_pt("contrastive", "tiny-bert", mask_tokenizer, data, out, *extra))
    evals = [r for r in _rows(out) if "eval_loss" in r]
    losses = _losses(out)
    assert len(rows) > 60 and evals[-1]["eval_examples"] == round(0.2 * len(rows))
    assert losses[-1] < losses[0] - 0.3, losses
    assert evals[-1]["eval_accuracy"] > 0.6, evals
    assert type(AutoModel.from_pretrained(str(out / "model"))).__name__ == "BertModel"


def test_objective_mismatches_exit_2(tokenizer_dir, mask_tokenizer, demo_data, tmp_path, capsys):
    base = ["train", "stage=pt", f"data.train=[{demo_data['corpus']}]", *QUIET]
    base.append(f"output_dir={tmp_path}")
    assert main([*base, "objective.type=mlm", "model.preset=tiny-bert",
                 f"model.tokenizer={tokenizer_dir}"]) == 2  # fmt: skip
    assert "needs a tokenizer with a mask token" in capsys.readouterr().err
    assert main([*base, "objective.type=clm", "model.preset=tiny-bert",
                 f"model.tokenizer={mask_tokenizer}"]) == 2  # fmt: skip
    assert "is a bidirectional encoder" in capsys.readouterr().err
    assert main([*base, "objective.type=plm", "model.preset=tiny-llama",
                 f"model.tokenizer={mask_tokenizer}"]) == 2  # fmt: skip
    assert "needs an XLNet model" in capsys.readouterr().err
