"""Continual learning through ``lmforge train``: replay counts, the Fisher's data and cache, and
EWC holding the weights nearer the starting model than plain fine-tuning at the same lr."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lmforge.config import load_config
from lmforge.config.recipes import TrainRecipe
from lmforge.errors import ConfigError
from lmforge.recipes.train import run
from lmforge.training.continual import FISHER_FILE, MixedUnits, read_fisher, replay_indices

QUIET = ["track.progress=false", "track.tensorboard=off"]


@pytest.fixture(scope="module")
def tasks(demo_data, tmp_path_factory) -> dict[str, Path]:
    """The demo's en_sentiment rows (task A, with one unreadable line) and zh_numerals (B)."""
    rows = [json.loads(x) for x in Path(demo_data["tasks"]).read_text().splitlines()]
    out = tmp_path_factory.mktemp("tasks")
    paths = {}
    for name in ("en_sentiment", "zh_numerals"):
        lines = [json.dumps(r, ensure_ascii=False) for r in rows if r["task"] == name]
        if name == "en_sentiment":
            lines.insert(3, "{not json")
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


def _cfg(model_dir, tasks, out, *extra) -> TrainRecipe:
    return load_config(TrainRecipe, None, _args(model_dir, tasks, out, *extra))


def _args(model_dir, tasks, out, *extra) -> list[str]:
    return [
        "stage=sft",
        f"model.path={model_dir}",
        f"data.train=[{tasks['zh_numerals']}]",
        "data.max_length=64",
        "train.batch_size=8",
        "train.max_steps=6",
        "train.lr=3e-3",
        "train.warmup_steps=0",
        "train.log_every=1",
        f"output_dir={out}",
        *QUIET,
        *extra,
    ]


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_replay_indices_repeat_evenly_and_mixing_keeps_orders() -> None:
    picks = replay_indices(4, 10, seed=0)
    assert sorted(Counter(picks.tolist()).values()) == [2, 2, 3, 3]
    assert sorted(replay_indices(5, 3, seed=1).tolist()) == sorted(set(replay_indices(5, 3, 1)))
    assert np.array_equal(replay_indices(6, 4, 7), replay_indices(6, 4, 7))  # seeded
    new, old = [[f"n{i}"] for i in range(5)], [[f"o{i}"] for i in range(4)]
    mixed = MixedUnits(new, old, np.array([2, 0, 3]), seed=0)
    got = [u[0] for u in mixed]
    assert len(mixed) == 8 and mixed[2:4] == [[got[2]], [got[3]]]
    assert [u for u in got if u.startswith("n")] == [f"n{i}" for i in range(5)]
    assert [u for u in got if u.startswith("o")] == ["o2", "o0", "o3"]


def test_replay_adds_the_expected_rows_and_counts_reconcile(tiny_model_dir, tasks, tmp_path):
    out = tmp_path / "replay"
    cfg = _cfg(
        tiny_model_dir,
        tasks,
        out,
        f"continual.previous_data=[{tasks['en_sentiment']}]",
        "continual.replay_ratio=0.25",
        "train.max_steps=1",
    )
    run(cfg)
    m = _manifest(out)
    counts, replay = m["counts"], m["counts"]["replay"]
    new = counts["train"]["used"]
    assert replay["new_units"] == new == 60
    assert replay["replayed"] == round(0.25 * new) == 15
    assert counts["train_units"] == replay["train_units"] == new + 15
    assert replay["read"] == replay["used"] + replay["rejected"] == 61
    assert replay["rejected"] == 1 and replay["available"] == 60
    assert replay["distinct"] == 15  # no repeats while the old rows last
    rejects = (out / "rejects.jsonl").read_text().splitlines()
    assert any("en_sentiment.jsonl" in line for line in rejects)
    roles = {i["role"] for i in m["inputs"]}
    assert {"train_data", "previous_data", "base_model"} <= roles


def _distance(model_dir: Path, start: dict, fisher: dict) -> tuple[float, float]:
    """(Σ F (θ − θ*)², Σ (θ − θ*)²) between a trained model and the start, over the Fisher's
    parameters (named as in the training model, which is the plain causal LM here)."""
    trained = load_file(str(model_dir / "model.safetensors"))
    weighted = plain = 0.0
    for name, f in fisher.items():
        d = trained[name].float() - start[name].float()
        weighted += float((f * d.square()).sum())
        plain += float(d.square().sum())
    return weighted, plain


def test_ewc_holds_the_weights_nearer_the_start(tiny_model_dir, tasks, tmp_path) -> None:
    start = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    plain_out, ewc_out = tmp_path / "plain", tmp_path / "ewc"
    run(_cfg(tiny_model_dir, tasks, plain_out))
    ewc_args = [
        f"continual.previous_data=[{tasks['en_sentiment']}]",
        "continual.ewc_lambda=10000",
        "continual.fisher_examples=16",
    ]
    run(_cfg(tiny_model_dir, tasks, ewc_out, *ewc_args))

    m = _manifest(ewc_out)
    ewc = m["counts"]["ewc"]
    assert ewc["source"] == "estimated" and ewc["lambda"] == 10000
    assert ewc["stats"]["batches"] == 16 and ewc["stats"]["examples"] == 16
    assert ewc["data"] == {"read": 61, "used": 60, "rejected": 1}  # the previous task's file
    assert any(o["role"] == "fisher" for o in m["outputs"])
    fisher, about = read_fisher(ewc_out / FISHER_FILE)
    assert set(fisher) <= set(start) and len(fisher) > 10  # every weight of the full model
    assert about["key"]["data"] is not None

    rows = [json.loads(x) for x in (ewc_out / "metrics.jsonl").read_text().splitlines()]
    penalties = [r["ewc_penalty"] for r in rows if "ewc_penalty" in r]
    assert penalties[0] == 0.0 and penalties[-1] > 0  # at θ*, then pulled back
    held = _distance(ewc_out / "model", start, fisher)
    free = _distance(plain_out / "model", start, fisher)
    assert held[0] < 0.5 * free[0], (held, free)
    assert held[1] < free[1], (held, free)

    # the Fisher is estimated once: a forced rerun reuses it, another run can be given it
    run(_cfg(tiny_model_dir, tasks, ewc_out, *ewc_args, "force=true"))
    assert _manifest(ewc_out)["counts"]["ewc"]["source"] == "reused from the run directory"
    other = tmp_path / "other"
    run(_cfg(tiny_model_dir, tasks, other, *ewc_args, f"continual.fisher_file={ewc_out}"))
    m = _manifest(other)
    assert m["counts"]["ewc"]["source"].startswith("file ")
    assert any(i["role"] == "fisher" for i in m["inputs"])
    assert not (other / FISHER_FILE).exists()
    # ... but not for another starting model
    with pytest.raises(ConfigError, match="another starting model"):
        run(
            _cfg(
                tiny_model_dir,
                tasks,
                tmp_path / "lora",
                *ewc_args,
                f"continual.fisher_file={ewc_out}",
                "adapter.type=lora",
            )
        )


def test_ewc_with_lora_holds_the_adapter(tiny_model_dir, tasks, tmp_path) -> None:
    out = tmp_path / "lora"
    run(
        _cfg(
            tiny_model_dir,
            tasks,
            out,
            f"continual.previous_data=[{tasks['en_sentiment']}]",
            "continual.ewc_lambda=100",
            "continual.fisher_examples=4",
            "continual.fisher_batch_size=2",
            "adapter.type=lora",
            "adapter.rank=4",
            "train.max_steps=2",
        )
    )
    fisher, about = read_fisher(out / FISHER_FILE)
    assert fisher and all("lora_" in n for n in fisher)
    assert about["stats"]["batches"] == 2
    assert all(float(f.abs().max()) == 0 for n, f in fisher.items() if "lora_A" in n)


def test_continual_config_errors() -> None:
    base = ["model.preset=tiny-llama", "model.tokenizer=t", "data.train=[x.jsonl]"]
    with pytest.raises(ConfigError, match="previous_data"):
        load_config(TrainRecipe, None, [*base, "continual.ewc_lambda=1"])
    with pytest.raises(ConfigError, match="replay_ratio needs"):
        load_config(TrainRecipe, None, [*base, "continual.replay_ratio=0.5"])
    with pytest.raises(ConfigError, match="distributed.strategy=ddp"):
        load_config(
            TrainRecipe,
            None,
            [
                *base,
                "continual.ewc_lambda=1",
                "continual.previous_data=[a.jsonl]",
                "distributed.strategy=fsdp",
            ],
        )


def test_shipped_continual_config_runs(tiny_model_dir, tasks, tmp_path) -> None:
    from lmforge.config.recipes import TrainRecipe as Recipe

    path = Path(__file__).resolve().parents[2] / "configs" / "continual_ewc.yaml"
    cfg = load_config(
        Recipe,
        path,
        [
            f"model.path={tiny_model_dir}",
            f"data.train=[{tasks['zh_numerals']}]",
            f"continual.previous_data=[{tasks['en_sentiment']}]",
            "continual.fisher_examples=4",
            "train.max_steps=1",
            f"output_dir={tmp_path / 'shipped'}",
            *QUIET,
        ],
    )
    assert cfg.continual.ewc_lambda > 0 and cfg.continual.replay_ratio > 0
    run(cfg)
    m = _manifest(tmp_path / "shipped")
    assert m["status"] == "completed" and m["counts"]["replay"]["replayed"] > 0
    assert torch.isfinite(torch.tensor(m["metrics"]["train_loss"]))


def test_ewc_and_replay_under_ddp_follow_one_process(
    tiny_model_dir, tasks, tmp_path, monkeypatch, capsys
) -> None:
    """Two processes (gloo) with batch 2 each take the steps of one process with batch 4: the
    same losses, penalties and gradient norms per step (the penalty's share per micro-batch
    adds up to the whole penalty over ranks), the same weights. Rank 0 estimates the Fisher,
    rank 1 reads its file."""
    from lmforge.cli import main

    extra = [
        f"continual.previous_data=[{tasks['en_sentiment']}]",
        "continual.ewc_lambda=1000",
        "continual.fisher_examples=8",
        "continual.replay_ratio=0.1",
        "train.max_steps=4",
        "data.max_examples=12",
    ]
    run(_cfg(tiny_model_dir, tasks, tmp_path / "one", *extra, "train.batch_size=4"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    two = _args(tiny_model_dir, tasks, tmp_path / "ddp", *extra, "train.batch_size=2")
    assert main(["train", *two, "launcher.nproc=2"]) == 0
    assert "launching 2 processes" in capsys.readouterr().out
    one_rows = [
        json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
    ]
    two_rows = [
        json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(one_rows) == len(two_rows) == 4
    for a, b in zip(one_rows, two_rows, strict=True):
        for key in ("loss", "ewc_penalty", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-9), (key, a, b)
    assert one_rows[-1]["ewc_penalty"] > 0
    w1 = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], atol=1e-4, rtol=0, msg=name)
    m = _manifest(tmp_path / "ddp")
    assert m["counts"]["ewc"]["source"] == "estimated" and m["counts"]["replay"]["replayed"] == 1


class _Killed(Exception):
    pass


def test_a_killed_ewc_run_resumes_to_the_same_weights(tiny_model_dir, tasks, tmp_path) -> None:
    """θ* is the starting model, not the checkpoint: the resumed run ends where a straight one
    does, and reuses the Fisher its first attempt saved."""
    extra = [
        f"continual.previous_data=[{tasks['en_sentiment']}]",
        "continual.ewc_lambda=10000",
        "continual.fisher_examples=8",
        "continual.replay_ratio=0.2",
        "train.max_steps=6",
        "train.save_every=2",
    ]
    run(_cfg(tiny_model_dir, tasks, tmp_path / "straight", *extra))

    def kill(done: int) -> None:
        if done == 3:
            raise _Killed

    with pytest.raises(_Killed):
        run(_cfg(tiny_model_dir, tasks, tmp_path / "resumed", *extra), on_step=kill)
    run(_cfg(tiny_model_dir, tasks, tmp_path / "resumed", *extra))
    assert _manifest(tmp_path / "resumed")["counts"]["ewc"]["source"] == (
        "reused from the run directory"
    )
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name
    rows = [
        json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().split("\n") if x
    ]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["ewc_penalty"] > 0
