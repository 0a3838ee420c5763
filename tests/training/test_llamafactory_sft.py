"""LLaMA-Factory's own demo folder (../shared/data/llamafactory-demo), unedited, through
``lmforge train configs/sft_llamafactory.yaml``: alpaca, identity and glaive tool calls mixed,
counts that reconcile, tool rows trained instead of rejected, identity placeholders filled, eval
loss per dataset. Skips without ../shared, except under CI=true."""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.config.recipes import TrainRecipe
from lmforge.data.readers import Rejects
from lmforge.models.load import load_tokenizer
from lmforge.tokenizer.templates import TEMPLATES
from lmforge.training.collate import IGNORE
from lmforge.training.data import load_stage_data

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "sft_llamafactory.yaml"
DATASETS = ("alpaca_en_demo", "identity", "glaive_toolcall_en_demo")


def test_llamafactory_demo_folder_trains_as_it_is(shared, tiny_model_dir, tmp_path, capsys) -> None:
    folder = shared("llamafactory-demo")
    out = tmp_path / "run"
    args = [
        f"data.dataset_dir={folder}",
        f"model.path={tiny_model_dir}",  # the tiny model with the session tokenizer
        f"output_dir={out}",
        "train.max_steps=2",
        "train.eval_every=2",
        "train.eval_batches=1",
        "train.batch_size=4",
        "track.progress=false",
        "track.tensorboard=off",
    ]
    assert main(["train", str(CONFIG), *args]) == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    counts = manifest["counts"]
    for split in ("train", "validation"):
        c = counts[split]
        assert c["read"] == c["used"] + c["rejected"]
        assert set(c["tasks"]) == set(DATASETS) and sum(c["tasks"].values()) == c["used"]
    mix = counts["mixing"]["datasets"]
    assert list(mix) == list(DATASETS)
    assert sum(d["drawn"] for d in mix.values()) == counts["train"]["read"]  # no unreadable rows
    raw = {n: len(json.loads((folder / f"{n}.json").read_text())) for n in DATASETS}
    assert {n: d["rows"] + d["held_out"] for n, d in mix.items()} == raw
    assert counts["validation"]["read"] == sum(d["held_out"] for d in mix.values())

    # the only rows left out are too long; no glaive row is rejected for its roles any more
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == counts["train"]["rejected"] + counts["validation"]["rejected"]
    assert all(r["reason"].startswith("prompt longer than max_length") for r in rejects)
    glaive_rejected = sum("glaive" in r["file"] for r in rejects)
    glaive = counts["train"]["tasks"]["glaive_toolcall_en_demo"]
    assert glaive + glaive_rejected >= mix["glaive_toolcall_en_demo"]["drawn"] > glaive > 0

    # per-dataset validation loss, and the template saved with the model
    assert all(f"eval_loss/{n}" in manifest["metrics"] for n in DATASETS)
    tokenizer = load_tokenizer(out / "model")
    assert tokenizer.chat_template == TEMPLATES["qwen"].source

    # the units trained on: identity answers name the model, tool calls are in the text
    cfg = load_config(TrainRecipe, CONFIG, args)
    train, val = load_stage_data("sft", cfg.data, tokenizer, Rejects(), cfg.train.seed)
    assert train.cache["hit"]  # the same units the run used
    texts = [tokenizer.decode(u[0].ids) for units in (train.units, val.units) for u in units]
    assert not any("{{name}}" in t or "{{author}}" in t for t in texts)
    named = [t for t in texts if "Forge" in t]
    assert len(named) >= counts["train"]["tasks"]["identity"] * 0.7  # 77 of 91 rows use {{name}}
    assert any("developed by the lmforge team" in t for t in named)
    calls = [t for t in texts if '<tool_call>\n{"name": "' in t]  # a call, not the instruction
    assert len(calls) > 50 and sum("<tool_response>" in t for t in calls) > 0.9 * len(calls)
    # what is learned: the calls (and answers), never the tool results
    learned = [tokenizer.decode([t for t in u[0].targets if t != IGNORE]) for u in train.units]
    assert sum('<tool_call>\n{"name": "' in t for t in learned) > 50
    assert not any("<tool_response>" in t or "You are Qwen" in t for t in learned)
