"""Merge a PEFT adapter (LoRA, DoRA, rsLoRA, IA3, QLoRA) into its base: a plain ``transformers``
model any tool can load.

A QLoRA adapter was trained on a 4-bit base; it is merged into that base dequantised to fp32
(the values its 4-bit layers multiplied by), so the merged model computes what the adapter on
its 4-bit base did, up to float rounding, and not what it would do on the original fp32 weights.
Prefix, prompt and P-tuning adapters cannot be merged (``models.adapters.check_mergeable``).
"""

from __future__ import annotations

from pathlib import Path

from lmforge.config.groups import ModelConfig
from lmforge.models.adapters import check_mergeable, merge_and_unload
from lmforge.models.load import load_for_inference


def merge_adapter(adapter_dir: str | Path, base_dir: str | Path | None = None):
    """(merged model in eval mode, tokenizer) from an adapter folder and its base model folder.

    ``base_dir`` defaults to the base recorded in the adapter; the tokenizer is the adapter's
    when it ships one (fine-tuning may have added tokens), else the base's.
    """
    check_mergeable(Path(adapter_dir))
    model, tokenizer = load_for_inference(
        ModelConfig(adapter=str(adapter_dir), path=str(base_dir) if base_dir else None),
        dequantized=True,
    )
    return merge_and_unload(model).eval(), tokenizer
