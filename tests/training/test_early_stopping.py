"""Early stopping and best-checkpoint selection: the component's rules, the config errors, and a
real run that stops early, keeps its best checkpoint past keep_last, saves the best weights as
model/, and stops at the same step after being killed and resumed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.config import load_config
from lmforge.config.recipes import TrainRecipe
from lmforge.errors import ConfigError
from lmforge.recipes.train import run
from lmforge.training.callbacks import EvalWatch


def _feed(watch: EvalWatch, values: list[float]) -> list[bool]:
    return [watch.update(step, {"eval_loss": v}) for step, v in enumerate(values, start=1)]


# --------------------------------------------------------------------------- the component
def test_best_moves_on_any_improvement_patience_only_on_a_large_one():
    watch = EvalWatch(patience=2, threshold=0.1)
    # 1.95 and 1.9 are better than the best, but by no more than 0.1: the best moves (the
    # best checkpoint is the lowest loss), the patience counter does not reset
    assert _feed(watch, [2.0, 1.95, 1.9]) == [False, False, True]
    assert (watch.best, watch.best_step, watch.bad_evals) == (1.9, 3, 2)
    assert watch.stopped_step == 3 and "did not improve by more than 0.1" in watch.stop_reason


def test_relative_threshold_max_mode_and_nan():
    watch = EvalWatch(metric="acc", mode="max", patience=2, threshold=0.05, threshold_mode="rel")
    stops = [watch.update(s, {"acc": v}) for s, v in enumerate([0.5, 0.6, 0.62, 0.7], 1)]
    assert stops == [False, False, False, False]  # +0.02 < 5% of 0.6: one bad evaluation
    assert (watch.best_step, watch.bad_evals) == (4, 0)  # +0.08 > 5% of 0.62: reset
    assert watch.update(5, {"acc": math.nan}) is False and watch.best == 0.7  # never a best
    assert watch.update(6, {"acc": 0.1}) is True


def test_state_round_trip_and_no_stopping_without_patience():
    watch = EvalWatch(keep_best=True)
    assert _feed(watch, [3.0, 2.0, 2.5, 2.6, 2.7]) == [False] * 5  # patience null: never stops
    assert watch.kept_steps() == {2} and watch.save_now(2) and not watch.save_now(5)
    copy = EvalWatch(keep_best=True)
    copy.load_state_dict(json.loads(json.dumps(watch.state_dict())))  # as state.json holds it
    assert copy == watch


def test_a_metric_the_evaluation_does_not_log_names_those_it_does():
    with pytest.raises(ConfigError, match=r"'eval_acc' is not logged .*eval_loss, eval_ppl"):
        EvalWatch(metric="eval_acc").update(1, {"eval_loss": 1.0, "eval_ppl": 2.7})


def test_config_errors(tokenizer_dir, demo_data):
    base = [
        "stage=pt",
        "model.preset=tiny-llama",
        f"model.tokenizer={tokenizer_dir}",
        f"data.train=[{demo_data['corpus']}]",
        "train.eval_every=5",
    ]
    for extra in (["train.early_stopping.patience=3"], ["train.load_best_at_end=true"]):
        with pytest.raises(ConfigError, match="give data.validation files or a data.val_ratio"):
            load_config(TrainRecipe, None, base + extra)
    no_eval = [b for b in base if "eval_every" not in b]
    with pytest.raises(ConfigError, match="counts evaluations: set train.eval_every"):
        load_config(TrainRecipe, None, no_eval + ["train.early_stopping.patience=3"])
    ok = load_config(
        TrainRecipe, None, base + ["train.early_stopping.patience=3", "data.val_ratio=0.1"]
    )
    assert ok.train.early_stopping.metric == "eval_loss"


# --------------------------------------------------------------------------- a real run
class Killed(Exception):
    pass


def _config(tokenizer_dir: Path, data: Path, out: Path) -> TrainRecipe:
    return load_config(
        TrainRecipe,
        None,
        [
            "stage=pt",
            "model.preset=tiny-llama",
            "model.overrides={hidden_size: 64, intermediate_size: 128, num_hidden_layers: 1}",
            f"model.tokenizer={tokenizer_dir}",
            f"data.train=[{data}]",
            "data.val_ratio=0.25",
            "data.max_length=32",
            "train.batch_size=4",
            "train.max_steps=40",
            "train.lr=2e-2",  # high for this model: validation loss turns up within ~10 steps
            "train.schedule=constant",
            "train.warmup_steps=0",
            "train.eval_every=1",
            "train.save_every=1",
            "train.keep_last=1",
            "train.log_every=1",
            "train.early_stopping.patience=2",
            "train.load_best_at_end=true",
            "track.progress=false",
            "track.tensorboard=off",
            f"output_dir={out}",
        ],
    )


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_run_stops_early_keeps_the_best_and_resumes_to_the_same_stop(
    tokenizer_dir, demo_data, tmp_path, capsys
):
    data = tmp_path / "small.jsonl"
    lines = demo_data["corpus"].read_text(encoding="utf-8").splitlines()[:40]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"

    run(_config(tokenizer_dir, data, straight))
    metrics = json.loads((straight / "manifest.json").read_text())["metrics"]
    stop, best = metrics["steps"], metrics["best_step"]
    assert metrics["stopped_early"] and 3 <= stop < metrics["max_steps"] == 40
    assert metrics["stop_reason"].startswith("early stopping: eval_loss did not improve")
    assert metrics["model_step"] == best < stop
    evals = {r["step"]: r["eval_loss"] for r in _metrics(straight) if "eval_loss" in r}
    assert max(evals) == stop and metrics["best_value"] == min(evals.values()) == evals[best]
    # keep_last=1, yet the best checkpoint is still there beside the last one
    folders = sorted(p.name for p in (straight / "checkpoints").iterdir())
    assert folders == [f"step-{best:06d}", f"step-{stop:06d}"]
    best_weights = load_file(str(straight / "checkpoints" / folders[0] / "trainable.safetensors"))
    saved = load_file(str(straight / "model" / "model.safetensors"))
    assert best_weights.keys() == saved.keys()
    assert all(torch.equal(saved[k], best_weights[k]) for k in saved)
    assert "model/ gets the best checkpoint" in capsys.readouterr().out

    # killed one step before the stop: that checkpoint holds patience - 1 bad evaluations,
    # which the resumed run must carry on counting from
    def kill(done: int) -> None:
        if done == stop - 1:
            raise Killed

    with pytest.raises(Killed):
        run(_config(tokenizer_dir, data, resumed), on_step=kill)
    (last,) = [p for p in (resumed / "checkpoints").iterdir() if p.name.endswith(f"{stop - 1}")]
    assert json.loads((last / "state.json").read_text())["eval_watch"]["bad_evals"] == 1
    seen: list[int] = []
    run(_config(tokenizer_dir, data, resumed), on_step=seen.append)
    assert seen == [stop]  # resumed at stop - 1 and stopped after one step, as the straight run
    again = json.loads((resumed / "manifest.json").read_text())["metrics"]
    for key in ("steps", "best_step", "best_value", "stop_reason"):
        assert again[key] == metrics[key], key
    assert [r.get("eval_loss") for r in _metrics(resumed)] == [
        r.get("eval_loss") for r in _metrics(straight)
    ]
    final = load_file(str(resumed / "model" / "model.safetensors"))
    assert all(torch.equal(final[k], saved[k]) for k in saved)
