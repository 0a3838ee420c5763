"""lmforge sweep on a tiny model (hidden 32, one layer, 8 steps per trial): 8 trials end complete,
pruned or failed (a diverging one does not stop the sweep), results and best.yaml are written,
the best config runs as is, a killed sweep resumes, and bad settings fail before any trial."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

from lmforge.artifacts import lineage
from lmforge.cli import main
from lmforge.config import build_config, load_config
from lmforge.config.recipes import TrainRecipe
from lmforge.config.sweep import SweepRecipe
from lmforge.errors import ConfigError, MissingDependency
from lmforge.recipes.sweep import run

pytest.importorskip("optuna")

TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}
GOOD = {"train.lr": 1e-2, "train.warmup_ratio": 0.0, "train.batch_size": 4}


@pytest.fixture(scope="module")
def small_corpus(demo_data, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sweep-data") / "corpus.jsonl"
    lines = demo_data["corpus"].read_text(encoding="utf-8").splitlines()[:40]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _sweep(tokenizer_dir, data, out: Path, **extra) -> SweepRecipe:
    spec = {
        "output_dir": str(out),
        "config": {
            "stage": "pt",
            "model": {"preset": "tiny-llama", "tokenizer": str(tokenizer_dir), "overrides": TINY},
            "data": {"train": [str(data)], "val_ratio": 0.2, "max_length": 32},
            "train": {"batch_size": 4, "max_steps": 8, "eval_every": 2, "log_every": 4},
            "track": {"progress": False, "tensorboard": "off"},
        },
        "space": {
            "train.lr": {"low": 1e-4, "high": 3e-2, "log": True},
            "train.warmup_ratio": {"low": 0.0, "high": 0.3},
            "train.batch_size": {"type": "categorical", "choices": [2, 4]},
        },
        "sampler": {"seed": 0, "n_startup_trials": 2},
        "pruner": {"n_startup_trials": 2},
        "n_trials": 8,
        **extra,
    }
    return build_config(SweepRecipe, spec)


def _rows(out: Path) -> list[dict]:
    with open(out / "results.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.filterwarnings("ignore:Fixed parameter .* is out of range")  # enqueued on purpose
def test_sweep_of_8_trials_records_every_outcome_and_writes_a_runnable_best(
    tokenizer_dir, small_corpus, tmp_path
):
    out = tmp_path / "sweep"
    enqueue = [
        {**GOOD, "train.lr": 1e20},  # diverges: the loss becomes NaN -> RunFailed
        GOOD,
        GOOD,  # the pruner's two finished trials to compare with
        {**GOOD, "train.lr": 1e-6},  # learns nothing: worse than their median at step 2
    ]
    run(_sweep(tokenizer_dir, small_corpus, out, enqueue=enqueue))

    rows = _rows(out)
    assert [int(r["trial"]) for r in rows] == list(range(8))
    states = [r["state"] for r in rows]
    assert states[:4] == ["failed", "complete", "complete", "pruned"]
    assert set(states) <= {"complete", "pruned", "failed"}
    assert "loss became nan" in rows[0]["reason"]
    assert rows[3]["reason"].startswith("pruned at step 2: eval_loss")
    assert rows[3]["steps"] == "2"  # stopped there, not after 8 steps
    assert {r["param:train.lr"] for r in rows[4:]} != {str(GOOD["train.lr"])}  # TPE searched

    # every trial is an ordinary run directory whose manifest says how it ended
    statuses = [
        json.loads((out / f"trial-{i:03d}" / "manifest.json").read_text())["status"]
        for i in range(8)
    ]
    assert statuses == [
        {"complete": "completed", "pruned": "pruned", "failed": "failed"}[s] for s in states
    ]

    complete = {int(r["trial"]): float(r["eval_loss"]) for r in rows if r["state"] == "complete"}
    best = min(complete, key=complete.get)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["stage"] == "sweep"
    assert manifest["metrics"]["best_trial"] == best
    assert manifest["metrics"]["best_value"] == pytest.approx(complete[best])
    assert sum(manifest["counts"]["trials"].values()) == 8
    trial_manifest = json.loads((out / f"trial-{best:03d}" / "manifest.json").read_text())
    assert trial_manifest["metrics"]["eval_loss"] == pytest.approx(complete[best])
    assert "| " + f"{best} *" in (out / "results.md").read_text()
    # lineage reaches every trial's run (and through it the data)
    runs = {n["run_dir"] for n in lineage(out) if n["kind"] == "run"}
    assert {str(out / f"trial-{i:03d}") for i in range(8)} <= {str(Path(r)) for r in runs}

    # best.yaml is a train config with the best trial's values, ready to run
    text = (out / "best.yaml").read_text()
    assert text.startswith("# recipe: train\n")
    best_cfg = load_config(TrainRecipe, out / "best.yaml")
    params = manifest["metrics"]["best_params"]
    assert best_cfg.train.lr == params["train.lr"]
    assert best_cfg.train.batch_size == params["train.batch_size"]
    assert best_cfg.output_dir == str(out / "best")
    assert yaml.safe_load(text)["model"]["overrides"] == TINY  # the base is kept


def test_a_killed_sweep_resumes_and_retries_the_interrupted_trial(
    tokenizer_dir, small_corpus, tmp_path, capsys
):
    import optuna

    out = tmp_path / "sweep"
    again = {"n_trials": 3, "enqueue": [GOOD], "pruner": {"type": "none"}}
    run(_sweep(tokenizer_dir, small_corpus, out, **{**again, "n_trials": 2}))
    # what kill -9 during a trial leaves in the storage: a trial that never finished
    study = optuna.load_study(study_name="lmforge", storage=f"sqlite:///{out / 'study.db'}")
    killed = study.ask()
    killed.suggest_float("train.lr", 1e-4, 3e-2, log=True)
    killed.suggest_float("train.warmup_ratio", 0.0, 0.3)
    killed.suggest_categorical("train.batch_size", [2, 4])
    capsys.readouterr()

    run(_sweep(tokenizer_dir, small_corpus, out, **again))
    printed = capsys.readouterr().out
    assert "resuming the sweep" in printed and f"trial {killed.number} was interrupted" in printed
    rows = _rows(out)
    assert [r["state"] for r in rows] == ["complete", "complete", "interrupted", "complete"]
    assert rows[3]["param:train.lr"] == rows[2]["param:train.lr"]  # the same point, retried
    assert json.loads((out / "manifest.json").read_text())["counts"]["trials"] == {
        "complete": 3,
        "pruned": 0,
        "failed": 0,
        "interrupted": 1,
    }

    # a different space in the same folder is refused instead of mixed in
    other = _sweep(tokenizer_dir, small_corpus, out, **again)
    other.space["train.lr"].high = 0.1
    with pytest.raises(ConfigError, match="use a new output_dir, or resume=never"):
        run(other)


def test_bad_settings_fail_before_any_trial(tokenizer_dir, small_corpus, tmp_path, capsys):
    out = tmp_path / "sweep"
    # a choice the train recipe refuses: caught by validating every choice up front
    args = ["sweep", f"output_dir={out}", "config.stage=pt", "config.model.preset=tiny-llama"]
    args += [f"config.model.tokenizer={tokenizer_dir}", f"config.data.train=[{small_corpus}]"]
    code = main(args + ["space={train.schedule: {type: categorical, choices: [cosine, cosin]}}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "train.schedule" in err and "'cosin'" in err and "Traceback" not in err
    assert not list(tmp_path.glob("sweep/trial-*"))

    with pytest.raises(ConfigError, match="'lrr' is not a key of train"):
        build_config(SweepRecipe, {"space": {"train.lrr": {"low": 0.1, "high": 1}}})
    with pytest.raises(ConfigError, match="needs low < high"):
        build_config(SweepRecipe, {"space": {"train.lr": {"low": 1, "high": 0.1}}})
    with pytest.raises(ConfigError, match="names a whole group"):
        build_config(SweepRecipe, {"space": {"train": {"type": "categorical", "choices": [1]}}})
    inside_a_mapping = {"model.overrides.hidden_size": {"type": "int", "low": 32, "high": 64}}
    ok = build_config(SweepRecipe, {"space": inside_a_mapping})
    assert ok.space["model.overrides.hidden_size"].type == "int"


def test_missing_optuna_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    cfg = build_config(SweepRecipe, {"space": {"train.lr": {"low": 1e-4, "high": 1e-2}}})
    with pytest.raises(MissingDependency, match=r"pip install 'lmforge\[sweep\]'"):
        run(cfg)
