"""Merge a PEFT LoRA adapter into its base: a plain ``transformers`` model any tool can load."""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.config.groups import ModelConfig
from lmforge.errors import UserError
from lmforge.models.load import build_model, is_adapter_dir, load_tokenizer, resolve_dir


def adapter_base(adapter_dir: Path) -> Path:
    """The base model folder recorded in the adapter's ``adapter_config.json``."""
    recorded = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8")).get(
        "base_model_name_or_path"
    )
    if not recorded:
        raise UserError(f"{adapter_dir} does not record its base model: set the base folder")
    return resolve_dir(recorded, "base model (from adapter_config.json)")


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()


def merge_adapter(adapter_dir: str | Path, base_dir: str | Path | None = None):
    """(merged model in eval mode, tokenizer) from an adapter folder and its base model folder.

    ``base_dir`` defaults to the base recorded in the adapter; the tokenizer is the adapter's
    when it ships one (fine-tuning may have added tokens), else the base's.
    """
    from peft import PeftModel

    adapter_dir = resolve_dir(adapter_dir, "adapter")
    if not is_adapter_dir(adapter_dir):
        raise UserError(f"{adapter_dir} has no adapter_config.json: not a PEFT adapter")
    base_dir = resolve_dir(base_dir, "base model") if base_dir else adapter_base(adapter_dir)
    tokenizer = load_tokenizer(adapter_dir if _has_tokenizer(adapter_dir) else base_dir)
    base = build_model(ModelConfig(path=str(base_dir)), tokenizer)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    return model.eval(), tokenizer
