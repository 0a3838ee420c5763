"""Every shipped config in configs/ loads and validates with its recipe's config class; the two
training configs also run one step with their placeholder paths pointed at test data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from lmforge.cli import main
from lmforge.config import RECIPE_CONFIGS, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPE_LINE = re.compile(r"^# recipe: (.+)$")
SHIPPED = sorted(CONFIGS.glob("*.yaml")) + sorted(CONFIGS.glob("*.yml"))


def recipe_of(path: Path) -> str:
    """The recipe named by the file's first line, ``# recipe: train``."""
    match = RECIPE_LINE.match(path.read_text(encoding="utf-8").splitlines()[0])
    assert match, f"{path.name}: the first line must be '# recipe: <command>'"
    name = match.group(1).strip()
    assert name in RECIPE_CONFIGS, f"{path.name}: unknown recipe '{name}'"
    return name


def test_the_expected_configs_ship() -> None:
    names = {p.name for p in SHIPPED}
    assert {
        "tokenizer.yaml",
        "pretrain.yaml",
        "sft_lora.yaml",
        "generate.yaml",
        "evaluate.yaml",
        "export_merge.yaml",
        "sft_llamafactory.yaml",
        "sweep.yaml",
        "sft_qlora.yaml",
        "sft_prompt.yaml",
        "sft_freeze.yaml",
        "dpo_lora.yaml",
        "reward_model.yaml",
        "grpo.yaml",
        "ppo.yaml",
    } <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_validates(path: Path) -> None:
    cfg = load_config(RECIPE_CONFIGS[recipe_of(path)], path)  # paths need not exist
    if hasattr(cfg, "output_dir"):
        assert cfg.output_dir.startswith("runs/"), "placeholder outputs live under runs/"
    assert "#" in path.read_text(encoding="utf-8").split("\n", 1)[1], "explain the values"


def test_training_configs_say_what_they_are() -> None:
    pretrain = load_config(RECIPE_CONFIGS["train"], CONFIGS / "pretrain.yaml")
    assert pretrain.stage == "pt" and pretrain.model.preset == "tiny-llama"
    assert pretrain.adapter.type == "full"
    sft = load_config(RECIPE_CONFIGS["train"], CONFIGS / "sft_lora.yaml")
    assert sft.stage == "sft" and sft.adapter.type == "lora" and sft.model.path
    lf = load_config(RECIPE_CONFIGS["train"], CONFIGS / "sft_llamafactory.yaml")
    assert lf.data.dataset == ["alpaca_en_demo", "identity", "glaive_toolcall_en_demo"]
    assert lf.data.train == [f"data#{n}" for n in lf.data.dataset]  # dataset_dir + names
    assert lf.data.template == "qwen" and lf.data.mix_strategy == "interleave_under"
    assert set(lf.data.placeholders) == {"name", "author"}  # identity.json's placeholders


def test_sweep_config_trials_validate(monkeypatch) -> None:
    """The base it names ships too, and every trial it can make is a valid train config."""
    from lmforge.config.base import deep_merge, read_yaml
    from lmforge.recipes.sweep import check_trial_configs

    sweep = load_config(RECIPE_CONFIGS["sweep"], CONFIGS / "sweep.yaml")
    monkeypatch.chdir(CONFIGS.parent)  # its base path is relative to the project root
    check_trial_configs(sweep, deep_merge(read_yaml(sweep.base), sweep.config))
    assert sweep.enqueue and set(sweep.enqueue[0]) == set(sweep.space)


def test_adapter_configs_say_what_they_are() -> None:
    for name, kind in [("sft_qlora", "qlora"), ("sft_prompt", "prompt"), ("sft_freeze", "freeze")]:
        cfg = load_config(RECIPE_CONFIGS["train"], CONFIGS / f"{name}.yaml")
        assert cfg.stage == "sft" and cfg.adapter.type == kind and cfg.model.path
    # the variants the prompt config's comments show are valid too
    for kind in ("p-tuning", "prefix"):
        overrides = [f"adapter.type={kind}", "adapter.prompt_init_text=null"]
        load_config(RECIPE_CONFIGS["train"], CONFIGS / "sft_prompt.yaml", overrides)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_training_configs_run(one_thread, tokenizer_dir, demo_data, tmp_path, capsys) -> None:
    """pretrain.yaml, then every sft config on top of it, one step each, only paths overridden."""
    quick = [
        "train.max_steps=1",
        "train.eval_batches=1",
        "track.progress=false",
        "track.tensorboard=off",
    ]
    pt = tmp_path / "pt"
    code = main(
        [
            "train",
            str(CONFIGS / "pretrain.yaml"),
            f"model.tokenizer={tokenizer_dir}",
            f"data.train=[{demo_data['corpus']}]",
            f"output_dir={pt}",
            *quick,
        ]
    )
    assert code == 0, capsys.readouterr().err
    sft_runs = {}
    for name in ("sft_lora", "sft_qlora", "sft_prompt", "sft_freeze"):
        sft_runs[name] = tmp_path / name
        code = main(
            [
                "train",
                str(CONFIGS / f"{name}.yaml"),
                f"model.path={pt}",
                f"data.train=[{demo_data['tasks']}]",
                f"output_dir={sft_runs[name]}",
                *quick,
            ]
        )
        assert code == 0, capsys.readouterr().err
    for run in (pt, *sft_runs.values()):
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["status"] == "completed"
        assert manifest["counts"]["validation_units"] > 0  # val_ratio held data out
    for name in ("sft_lora", "sft_qlora", "sft_prompt"):
        assert (sft_runs[name] / "model" / "adapter_config.json").is_file()
    assert (sft_runs["sft_freeze"] / "model" / "model.safetensors").is_file()
    # alignment on top of the LoRA SFT run (its adapter is merged first), one step each
    from lmforge.data.synthetic_pairs import make_pairs, write_pairs

    pairs = write_pairs(tmp_path / "pairs.jsonl", make_pairs(4, seed=0))
    scored = f"rl.rewards=[{{type: model, path: '{tmp_path / 'reward_model'}'}}]"  # just trained
    for name, stage, extra in (
        ("dpo_lora", "dpo", []),
        ("reward_model", "rm", []),
        ("grpo", "grpo", []),
        ("ppo", "ppo", [scored]),
    ):
        out = tmp_path / name
        code = main(
            [
                "train",
                str(CONFIGS / f"{name}.yaml"),
                f"model.path={sft_runs['sft_lora']}",
                f"data.train=[{pairs}]",
                f"data.validation=[{pairs}]",
                f"output_dir={out}",
                *quick,
                *extra,
            ]
        )
        assert code == 0, capsys.readouterr().err
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["stage"] == stage and manifest["status"] == "completed"
        assert (out / "start" / "model.safetensors").is_file()  # the SFT adapter, merged
