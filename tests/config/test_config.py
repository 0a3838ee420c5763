"""Typed configs: unknown keys and bad values are errors that say what to change; dotted
overrides parse types; help lists every key; the CLI's exit codes."""

from __future__ import annotations

import pytest

from lmforge.cli import main
from lmforge.config import RECIPE_CONFIGS, describe, load_config
from lmforge.config.base import parse_overrides
from lmforge.config.recipes import TrainRecipe
from lmforge.errors import ConfigError

MINIMAL = ["model.preset=tiny-llama", "model.tokenizer=runs/tok", "data.train=[train.jsonl]"]


def _error(overrides: list[str], path=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(TrainRecipe, path, MINIMAL + overrides)
    return str(info.value)


@pytest.mark.parametrize(
    ("override", "unknown", "suggestion"),
    [
        ("adpter.type=lora", "adpter", "adapter"),
        ("train.batchsize=4", "train.batchsize", "train.batch_size"),
        ("data.max_len=64", "data.max_len", "data.max_length"),
        ("train.lr_rate=1e-3", "train.lr_rate", "train.min_lr_ratio"),  # difflib's nearest
    ],
)
def test_unknown_key_names_the_nearest_valid_key(override, unknown, suggestion) -> None:
    message = _error([override])
    assert f"unknown key '{unknown}'" in message
    assert f"did you mean '{suggestion}'?" in message


def test_unknown_key_lists_the_valid_keys_of_its_group() -> None:
    message = _error(["train.lr_rate=1e-3"])
    valid = message.split("valid keys here: ")[1]
    assert "lr," in valid and "batch_size" in valid and "adapter" not in valid


def test_bad_value_names_file_key_and_allowed_values(tmp_path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("stage: sft\nadapter:\n  type: adalora\n")
    message = _error([], path)
    assert str(path) in message
    assert "adapter.type" in message
    assert "'full' | 'freeze' | 'lora'" in message and "'qlora'" in message


def test_bad_number_names_key_and_type(tmp_path) -> None:
    message = _error(["train.lr=fast"])
    assert "<command line>" in message and "train.lr" in message and "float" in message


def test_whole_config_check_reads_cleanly() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(TrainRecipe, None, ["data.train=[a.jsonl]"])
    message = str(info.value)
    assert "set model.preset or model.path" in message
    assert ": :" not in message  # no empty key path


def test_overrides_parse_types() -> None:
    parsed = parse_overrides(
        [
            "train.lr=3e-4",
            "train.max_steps=10",
            "train.shuffle=false",
            "data.train=[a.jsonl,b.jsonl]",
            "model.overrides={hidden_size: 64}",
            "output_dir=runs/x",
            "train.max_grad_norm=null",
        ]
    )
    assert parsed == {
        "train": {"lr": 3e-4, "max_steps": 10, "shuffle": False, "max_grad_norm": None},
        "data": {"train": ["a.jsonl", "b.jsonl"]},
        "model": {"overrides": {"hidden_size": 64}},
        "output_dir": "runs/x",
    }
    assert isinstance(parsed["train"]["lr"], float)  # PyYAML alone reads 3e-4 as a string
    # where the type does not force a float (preset overrides), 1e-6 must still be a number
    cfg = load_config(TrainRecipe, None, MINIMAL + ["model.overrides={rms_norm_eps: 1e-6}"])
    assert cfg.model.overrides == {"rms_norm_eps": 1e-6}
    cfg = load_config(TrainRecipe, None, MINIMAL + ["train.lr=3e-4", "data.train=[a,b]"])
    assert cfg.train.lr == 3e-4 and cfg.data.train == ["a", "b"]


def test_overrides_win_over_the_file(tmp_path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("train:\n  lr: 0.1\n  batch_size: 2\n")
    cfg = load_config(TrainRecipe, path, MINIMAL + ["train.lr=0.5"])
    assert cfg.train.lr == 0.5 and cfg.train.batch_size == 2


@pytest.mark.parametrize("value", ["off", "on", "auto"])
def test_yaml_on_off_keeps_its_meaning(tmp_path, value) -> None:
    """PyYAML reads bare on/off as booleans; the setting must still mean on/off."""
    cfg = load_config(TrainRecipe, None, MINIMAL + [f"track.tensorboard={value}"])
    assert cfg.track.tensorboard == value
    path = tmp_path / "t.yaml"
    path.write_text(f"track:\n  tensorboard: {value}\n")
    assert load_config(TrainRecipe, path, MINIMAL).track.tensorboard == value


def test_every_field_has_help() -> None:
    for name, cls in RECIPE_CONFIGS.items():
        missing = [row[0] for row in describe(cls) if not row[3]]
        assert not missing, (name, missing)


def test_train_help_lists_keys_with_help(capsys) -> None:
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for key, _, _, help_text in describe(TrainRecipe):
        assert key in out
        assert help_text in out
    assert "'full' | 'freeze' | 'lora'" in out  # types and defaults too


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--help"], 0),
        ([], 0),
        (["export", "merge", "--help"], 0),
        (["lineage", "--help"], 0),
        (["trian"], 2),  # unknown command
        (["export"], 2),  # missing verb
        (["train"], 2),  # no model, no data
        (["train", "train.lr_rate=1"], 2),
        (["train", "no-such-config.yaml"], 2),
        (["train", "configs/x.yaml", "not-an-override"], 2),
    ],
)
def test_cli_exit_codes(capsys, argv, code) -> None:
    assert main(argv) == code
    captured = capsys.readouterr()
    if code == 2:
        assert captured.err.startswith("lmforge: error: ") and "Traceback" not in captured.err
    else:
        assert captured.out.startswith("usage: lmforge")


def test_unknown_command_suggests(capsys) -> None:
    main(["trian"])
    assert "did you mean 'train'?" in capsys.readouterr().err


def test_stage_and_data_format_must_agree() -> None:
    from lmforge.config import load_config
    from lmforge.config.recipes import TrainRecipe
    from lmforge.errors import ConfigError

    base = ["model.preset=tiny-llama", "model.tokenizer=tok", "data.train=[a.jsonl]"]
    with pytest.raises(ConfigError, match="stage pt reads plain text"):
        load_config(TrainRecipe, None, [*base, "stage=pt", "data.format=alpaca"])
    with pytest.raises(ConfigError, match="stage sft needs conversations"):
        load_config(TrainRecipe, None, [*base, "stage=sft", "data.format=text"])
    assert load_config(TrainRecipe, None, [*base, "stage=pt", "data.format=text"]).stage == "pt"
