"""Merge a PEFT LoRA adapter into its base: a plain ``transformers`` model any tool can load."""

from __future__ import annotations

from pathlib import Path

from lmforge.config.groups import ModelConfig
from lmforge.models.load import load_for_inference


def merge_adapter(adapter_dir: str | Path, base_dir: str | Path | None = None):
    """(merged model in eval mode, tokenizer) from an adapter folder and its base model folder.

    ``base_dir`` defaults to the base recorded in the adapter; the tokenizer is the adapter's
    when it ships one (fine-tuning may have added tokens), else the base's.
    """
    model, tokenizer = load_for_inference(
        ModelConfig(adapter=str(adapter_dir), path=str(base_dir) if base_dir else None)
    )
    return model.merge_and_unload().eval(), tokenizer
