"""``data.template`` on a run: Llama 3's template on a model whose tokenizer lacks its tokens
grows the vocabulary (mean-initialised rows, trained even under LoRA), makes <|eot_id|> the EOS
the labels end with and generation stops on, and saves all of it with the model."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.cli import main
from lmforge.config.groups import DataConfig, ModelConfig
from lmforge.data.readers import Rejects
from lmforge.errors import ConfigError
from lmforge.models.load import build_model, load_for_inference, load_tokenizer
from lmforge.serve.generate import end_ids
from lmforge.tokenizer.templates import check_generation_eos
from lmforge.training.collate import IGNORE
from lmforge.training.data import load_stage_data


def test_llama3_template_grows_the_vocabulary_under_lora(
    tiny_model_dir, demo_data, tmp_path, capsys
) -> None:
    out = tmp_path / "run"
    args = [
        "train",
        "stage=sft",
        f"model.path={tiny_model_dir}",
        f"data.train=[{demo_data['tasks']}]",
        "data.template=llama3",
        "data.max_length=64",
        "data.max_examples=64",
        "adapter.type=lora",
        "train.max_steps=3",
        "train.lr=1e-2",
        "train.batch_size=8",
        "track.progress=false",
        "track.tensorboard=off",
        f"output_dir={out}",
    ]
    assert main(args) == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    change = manifest["counts"]["chat_template"]
    assert change["added_tokens"] == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    assert (change["eos_before"], change["eos"]) == ("<|im_end|>", "<|eot_id|>")

    # the grown base is saved in the run, and the adapter points at it
    adapter_cfg = json.loads((out / "model" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str((out / "base").resolve())
    model, tokenizer = load_for_inference(ModelConfig(path=str(out)))
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert tokenizer.eos_token == "<|eot_id|>" and eot == len(tokenizer) - 1
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert eot in end_ids(model, tokenizer) and eot in model.generation_config.eos_token_id
    check_generation_eos(model, tokenizer)

    # the new rows started at the mean of the old ones, and the adapter trained them
    base, _ = load_for_inference(ModelConfig(path=str(out / "base")))
    old = load_for_inference(ModelConfig(path=str(tiny_model_dir)))[0].get_input_embeddings()
    base_row = base.get_input_embeddings().weight[eot]
    torch.testing.assert_close(base_row, old.weight.mean(0), atol=1e-4, rtol=0)
    trained_row = model.get_input_embeddings()(torch.tensor([eot]))[0]
    assert not torch.allclose(trained_row, base_row)

    # every example learns to end its answer with <|eot_id|>
    data_cfg = DataConfig(**manifest["config"]["data"])
    train, _ = load_stage_data("sft", data_cfg, load_tokenizer(out / "model"), Rejects(), 0)
    assert train.cache["hit"]  # the units the run trained on
    for unit in list(train.units)[:10]:
        (piece,) = unit
        assert [t for t in piece.targets if t != IGNORE][-1] == eot


def test_generation_config_that_disagrees_with_the_tokenizer_is_refused(tokenizer) -> None:
    model = build_model(ModelConfig(preset="tiny-llama", tokenizer="x"), tokenizer)
    check_generation_eos(model, tokenizer)  # a preset stops on the tokenizer's EOS
    model.generation_config.eos_token_id = [tokenizer.pad_token_id]
    with pytest.raises(ConfigError, match=r"generation config stops on \['<\|pad\|>'\]"):
        check_generation_eos(model, tokenizer)
