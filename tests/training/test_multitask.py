"""LLaMA-Factory dataset folders mixed for training, task names, placeholders, task prefixes and
validation loss per task (on a folder built here; the real demo folder is in
test_llamafactory_sft.py)."""

from __future__ import annotations

import json

import pytest

from lmforge.config.groups import DataConfig, ModelConfig
from lmforge.config.training import TrainConfig
from lmforge.data.readers import Rejects
from lmforge.models.load import build_model
from lmforge.training.data import load_stage_data
from lmforge.training.datasets import mixing_summary
from lmforge.training.forward import Layout, evaluate_loss
from lmforge.training.loop import LoopOptions
from lmforge.training.multitask import prepare_conversation, task_evaluator, task_ranges
from lmforge.training.objectives.causal import CausalLMLoss

TOOLS = json.dumps([{"name": "add", "description": "sum", "parameters": {"type": "object"}}])


def _folder(tmp_path, identity_rows=6):
    folder = tmp_path / "lf"
    folder.mkdir()
    qa = [
        {"instruction": f"qa question {i}", "input": "", "output": f"answer {i}"} for i in range(20)
    ]
    qa += [
        {"instruction": f"math question {i}", "output": str(i), "task": "math"} for i in range(4)
    ]
    qa.append({"instruction": "no answer"})  # missing output -> reject
    who = [{"instruction": f"who {i}?", "output": "I am {{name}}, made by {{author}}."}
           for i in range(identity_rows)]  # fmt: skip
    calls = [
        {"conversations": [
            {"from": "human", "value": f"add {i} and 1"},
            {"from": "function_call", "value": json.dumps({"name": "add", "arguments": {"a": i}})},
            {"from": "observation", "value": str(i + 1)},
            {"from": "gpt", "value": f"It is {i + 1}."},
        ], "tools": TOOLS}
        for i in range(8)
    ]  # fmt: skip
    for name, rows in (("qa", qa), ("who", who), ("calls", calls)):
        (folder / f"{name}.json").write_text(json.dumps(rows), encoding="utf-8")
    info = {
        "qa": {"file_name": "qa.json"},
        "who": {"file_name": "who.json"},
        "calls": {"file_name": "calls.json", "formatting": "sharegpt",
                  "columns": {"messages": "conversations", "tools": "tools"}},
    }  # fmt: skip
    (folder / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


def _cfg(folder, **kw) -> DataConfig:
    settings = {
        "dataset_dir": str(folder),
        "dataset": "qa, who, calls",  # LLaMA-Factory writes comma-separated names
        "mix_strategy": "interleave_over",
        "interleave_probs": [0.5, 0.2, 0.3],
        "val_ratio": 0.2,
        "placeholders": {"name": "Forge", "author": "ACME"},
        "max_length": 512,  # the tools' system prompt alone is ~370 tokens here
        "cache": False,
        **kw,
    }
    return DataConfig(**settings)


def _texts(tokenizer, units) -> list[str]:
    return [tokenizer.decode(unit[0].ids) for unit in units]


@pytest.mark.parametrize("cache", [False, True], ids=["memory", "cache"])
def test_mixed_datasets_counts_and_splits(tokenizer, tmp_path, cache) -> None:
    cfg = _cfg(_folder(tmp_path), cache=cache)
    assert cfg.train == [f"{cfg.dataset_dir}#{n}" for n in ("qa", "who", "calls")]
    rejects = Rejects()
    train, val = load_stage_data("sft", cfg, tokenizer, rejects, seed=0)
    for split in (train, val):
        c = split.counts
        assert c["read"] == c["used"] + c["rejected"] and sum(c["tasks"].values()) == c["used"]
    assert len(rejects) == train.counts["rejected"] + val.counts["rejected"]
    assert all(
        r["reason"] == "llamafactory qa: missing column 'output' (response)" for r in rejects.items
    )
    mix = mixing_summary(cfg, seed=0)["datasets"]
    assert rejects.items and train.counts["rejected"] == 1  # the bad qa row, reported once
    assert sum(d["drawn"] for d in mix.values()) == train.counts["read"] - 1
    assert all(d["drawn"] >= d["rows"] for d in mix.values())  # over-sampling repeats
    assert {n: d["rows"] + d["held_out"] for n, d in mix.items()} == {
        "qa": 24,
        "who": 6,
        "calls": 8,
    }
    assert val.counts["read"] == sum(d["held_out"] for d in mix.values())
    # rows without a task take their dataset's name; the math rows keep their own
    assert set(train.counts["tasks"]) == {"qa", "math", "who", "calls"}

    train_texts, val_texts = _texts(tokenizer, train.units), _texts(tokenizer, val.units)
    assert not set(val_texts) & set(train_texts)  # held out before mixing: no leak
    identity = [t for t in train_texts + val_texts if "I am" in t]
    assert identity and all("I am Forge, made by ACME." in t and "{{" not in t for t in identity)
    tool_units = [t for t in train_texts if "add 1 and 1" in t or "<tool_call>" in t]
    assert tool_units and all('"name": "add"' in t and "# Tools" in t for t in tool_units)
    # validation is in task order, one slice per task
    for task, (start, end) in task_ranges(val.counts).items():
        marker = {
            "qa": "qa question",
            "math": "math question",
            "who": "I am",
            "calls": "<tool_call>",
        }
        assert all(marker[task] in t for t in val_texts[start:end])


def test_unfilled_identity_placeholders_are_rejected(tokenizer, tmp_path) -> None:
    cfg = _cfg(_folder(tmp_path), placeholders={}, mix_strategy="concat", interleave_probs=None)
    rejects = Rejects()
    train, val = load_stage_data("sft", cfg, tokenizer, rejects, seed=0)
    reasons = [r["reason"] for r in rejects.items if "who" in str(r["row"])]
    assert len(reasons) == 6 and all(r.startswith("unfilled placeholder {{name}}") for r in reasons)
    assert "who" not in train.counts["tasks"]
    assert train.counts["read"] + val.counts["read"] == 25 + 6 + 8  # concat: every row once


def test_task_prefix_and_default_system() -> None:
    cfg = DataConfig(task_prefix={"math": "Solve: "}, default_system="Answer briefly.")
    messages, tools = prepare_conversation(
        {"instruction": "2+2", "output": "4", "task": "math"}, cfg
    )
    assert messages == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Solve: 2+2"},
        {"role": "assistant", "content": "4"},
    ]
    assert tools is None
    own = prepare_conversation({"instruction": "x", "output": "y", "system": "Mine."}, cfg)[0]
    assert own[0] == {"role": "system", "content": "Mine."}  # a conversation's own system stays


def test_per_task_eval_adds_up_to_the_overall_loss(tokenizer, tmp_path) -> None:
    cfg = _cfg(_folder(tmp_path), val_ratio=0.5)
    _, val = load_stage_data("sft", cfg, tokenizer, Rejects(), seed=0)
    model = build_model(ModelConfig(preset="tiny-llama", tokenizer="x"), tokenizer, seed=0)
    objective = CausalLMLoss(model)
    opts = LoopOptions(run_dir=tmp_path, pad_id=tokenizer.pad_token_id)
    train_cfg = TrainConfig(batch_size=3)
    evaluate = task_evaluator(val.counts)
    layout = Layout(tokenizer.pad_token_id, capacity=None, varlen=False, attention_mask=False)
    result = evaluate(objective, val.units, train_cfg, opts, None, layout)
    plain = evaluate_loss(objective, val.units, train_cfg, opts, None, layout)
    assert result["eval_tokens"] == plain["eval_tokens"]
    assert result["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-5)
    tasks = task_ranges(val.counts)
    assert len(tasks) > 1
    assert sum(result[f"eval_tokens/{t}"] for t in tasks) == plain["eval_tokens"]
    assert (
        task_evaluator({"used": 5}) is None
        and task_evaluator({"used": 5, "tasks": {"a": 5}}) is None
    )


def test_dataset_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="needs data.dataset_dir"):
        DataConfig(dataset=["a"])
    with pytest.raises(ValueError, match="set data.dataset or data.train, not both"):
        DataConfig(dataset_dir="d", dataset=["a"], train=["other.jsonl"])
    with pytest.raises(ValueError, match="has 1 values for 2 datasets"):
        DataConfig(dataset_dir="d", dataset="a,b", interleave_probs="1.0")
    with pytest.raises(ValueError, match="use one of chatml, qwen, llama3, alpaca, default"):
        DataConfig(template="vicuna")
    with pytest.raises(ValueError, match="mixes data.dataset entries"):
        DataConfig(train=["x.jsonl"], mix_strategy="interleave_under")
    cfg = DataConfig(dataset_dir="d", dataset="a,b", eval_dataset=["c"], interleave_probs="0.3,0.7")
    assert cfg.train == ["d#a", "d#b"] and cfg.validation == ["d#c"]
    assert DataConfig(**cfg.model_dump()) == cfg  # a resolved config validates again unchanged
