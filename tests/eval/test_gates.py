"""Evaluation gates: parsing and checking by hand, and in a training run: the evaluation runs on
the model before and after training, a met gate leaves the run completed, an unmet one fails it
(non-zero exit, the manifest says which gate and by how much) after the model is saved, and a
malformed gate fails before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.errors import ConfigError
from lmforge.eval.gates import check_gates, describe_failures, parse_gate


@pytest.mark.parametrize(
    ("text", "base", "bound"),
    [
        ("accuracy >= 0.8", None, 0.8),
        ("perplexity <= 1.05 * base", 10.0, 10.5),
        ("perplexity<=base*0.5", 10.0, 5.0),
        ("eval_loss < base", 2.0, 2.0),
        ("bleu > base + 1.5", 20.0, 21.5),
        ("rougeL >= base - 0.01", 0.5, 0.49),
        ("acc == 1", None, 1.0),
        ("eval_ppl < 1e3", None, 1000.0),
    ],
)
def test_gate_bounds(text, base, bound) -> None:
    assert parse_gate(text).bound(base) == pytest.approx(bound)


@pytest.mark.parametrize("text", ["accuracy", "accuracy >= high", "accuracy => 0.8", ">= 0.5"])
def test_malformed_gates_are_config_errors(text) -> None:
    with pytest.raises(ConfigError, match="eval.gates"):
        parse_gate(text)


def test_check_gates_by_hand() -> None:
    gates = [
        parse_gate(t) for t in ("accuracy >= 0.8", "perplexity <= 1.05 * base", "eval_loss < base")
    ]
    results = check_gates(gates, {"accuracy": 0.9, "perplexity": 11.0}, {"perplexity": 10.0})
    assert [r["passed"] for r in results] == [True, False, False]
    assert results[1]["bound"] == pytest.approx(10.5)
    text = describe_failures(results)
    assert "'perplexity <= 1.05 * base' (perplexity = 11, bound 10.5, base 10)" in text
    assert "'eval_loss < base' (no value after training)" in text


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def heldout(demo_data, tmp_path_factory) -> dict:
    """Held-out corpus text (perplexity) and the corpus rows to pretrain on."""
    rows = demo_data["corpus"].read_text(encoding="utf-8").splitlines()
    folder = tmp_path_factory.mktemp("gates")
    text = "\n".join(json.loads(r)["text"] for r in rows[-40:])
    (folder / "heldout.txt").write_text(text, encoding="utf-8")
    (folder / "train.jsonl").write_text("\n".join(rows[:-40]) + "\n", encoding="utf-8")
    return {"heldout": folder / "heldout.txt", "train": folder / "train.jsonl"}


def _pretrain(tokenizer_dir, heldout, out, gates: list[str]) -> int:
    quoted = ",".join(json.dumps(g) for g in gates)
    return main(
        [
            "train",
            "stage=pt",
            "model.preset=tiny-llama",
            f"model.tokenizer={tokenizer_dir}",
            f"data.train=[{heldout['train']}]",
            "data.val_ratio=0.1",
            "data.max_length=64",
            "train.max_steps=30",
            "train.batch_size=8",
            "train.lr=3e-3",
            f"eval.perplexity.files=[{heldout['heldout']}]",
            "eval.perplexity.window=64",
            f"eval.gates=[{quoted}]",
            f"output_dir={out}",
            "track.progress=false",
            "track.tensorboard=off",
        ]
    )


def test_met_gates_leave_the_run_completed(tokenizer_dir, heldout, tmp_path) -> None:
    out = tmp_path / "pass"
    assert (
        _pretrain(tokenizer_dir, heldout, out, ["perplexity <= 0.5 * base", "eval_loss < base"])
        == 0
    )
    manifest = _manifest(out)
    assert manifest["status"] == "completed"
    before = manifest["metrics"]["eval_before"]["perplexity"]["token_perplexity"]
    after = manifest["metrics"]["eval_after"]["perplexity"]["token_perplexity"]
    assert after < 0.5 * before  # 30 steps from random weights
    gates = {g["gate"]: g for g in manifest["metrics"]["gates"]}
    assert all(g["passed"] for g in gates.values())
    assert gates["perplexity <= 0.5 * base"]["base"] == pytest.approx(before)
    assert gates["eval_loss < base"]["base"] == manifest["metrics"]["start_eval_loss"]
    assert any(i["role"] == "eval_data" for i in manifest["inputs"])


def test_an_unmet_gate_fails_the_run_and_says_which(tokenizer_dir, heldout, tmp_path, capsys):
    out = tmp_path / "fail"
    code = _pretrain(
        tokenizer_dir, heldout, out, ["perplexity <= 0.0001 * base", "eval_loss < base"]
    )
    assert code != 0
    err = capsys.readouterr().err
    assert "eval.gates not met: 'perplexity <= 0.0001 * base'" in err and "Traceback" not in err
    manifest = _manifest(out)
    assert (
        manifest["status"] == "failed"
        and "perplexity <= 0.0001 * base" in manifest["metrics"]["error"]
    )
    failed = [g["gate"] for g in manifest["metrics"]["gates"] if not g["passed"]]
    assert failed == ["perplexity <= 0.0001 * base"]
    assert (out / "model" / "model.safetensors").is_file()  # saved, for inspection


def test_a_malformed_gate_fails_before_any_work(tokenizer_dir, heldout, tmp_path, capsys):
    out = tmp_path / "bad"
    assert _pretrain(tokenizer_dir, heldout, out, ["perplexity is low"]) != 0
    assert "cannot read 'perplexity is low'" in capsys.readouterr().err
    assert not (out / "model").exists()
    assert _pretrain(tokenizer_dir, heldout, tmp_path / "bad2", ["accuracy >= 0.5"]) != 0
    assert "needs eval.exact_match.files" in capsys.readouterr().err
