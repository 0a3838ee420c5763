"""Merging a LoRA adapter gives a plain transformers model with the same logits."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from lmforge.artifacts import Run, lineage
from lmforge.cli import main
from lmforge.config.groups import ModelConfig
from lmforge.config.training import AdapterConfig
from lmforge.models.adapters import add_lora
from lmforge.models.load import build_model


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tokenizer, tmp_path_factory):
    """(PEFT model, adapter folder): LoRA on the tiny model with non-zero random lora_B."""
    base = build_model(ModelConfig(path=str(tiny_model_dir)), tokenizer)
    model = add_lora(base, AdapterConfig(type="lora", rank=4, alpha=8))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    folder = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(str(folder))  # PEFT: adapter_config.json + adapter weights only
    return model.eval(), folder


def test_merge_recipe_gives_plain_model_with_same_logits(adapter, tiny_model_dir, tmp_path):
    peft_model, folder = adapter
    out = tmp_path / "merged"
    assert main(["export", "merge", f"adapter={folder}", f"output_dir={out}"]) == 0
    merged_dir = out / "model"
    files = sorted(p.name for p in merged_dir.iterdir())
    weights = [f for f in files if f.endswith((".safetensors", ".bin", ".pt", ".pth"))]
    assert weights and all(f.endswith(".safetensors") for f in weights)
    assert "adapter_config.json" not in files and "tokenizer.json" in files

    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    ids = torch.tensor([[5, 17, 42, 99, 250, 7, 3, 600]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            base_logits = peft_model(input_ids=ids).logits
        got = merged(input_ids=ids).logits
    assert not torch.allclose(expected, base_logits, atol=1e-4)  # the adapter changes outputs
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

    manifest = json.loads((out / "manifest.json").read_text())
    roles = {i["role"]: i["path"] for i in manifest["inputs"]}
    assert roles == {"adapter": str(folder.resolve()), "base_model": str(tiny_model_dir.resolve())}
    assert manifest["status"] == "completed"
    assert [o["role"] for o in manifest["outputs"]] == ["model"]


def test_merge_rejects_a_folder_that_is_not_an_adapter(tiny_model_dir, tmp_path, capsys):
    code = main(["export", "merge", f"adapter={tiny_model_dir}", f"output_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "not a PEFT adapter" in err and "Traceback" not in err


def test_merge_from_a_run_directory_links_lineage(adapter, tmp_path):
    """adapter= a training run directory: its model/ folder is used and lineage reaches the run."""
    _, folder = adapter
    train_run = Run.start("sft", {"fake": True}, tmp_path / "sft")
    shutil.copytree(folder, train_run.dir / "model")
    train_run.finish()
    out = tmp_path / "merged"
    assert main(["export", "merge", f"adapter={train_run.dir}", f"output_dir={out}"]) == 0
    stages = [(n["depth"], n.get("stage")) for n in lineage(out / "model") if n["kind"] == "run"]
    assert stages == [(0, "export_merge"), (1, "sft")]
    assert (out / "model" / "model.safetensors").is_file()
