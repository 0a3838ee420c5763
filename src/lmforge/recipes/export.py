"""``lmforge export merge CONFIG``: fold a LoRA, DoRA, IA3 or QLoRA adapter into its base model
(a QLoRA base is dequantised to fp32 first; prefix/prompt/p-tuning adapters cannot be merged).

    lmforge export merge adapter=runs/lora output_dir=runs/merged
    lmforge export merge adapter=runs/lora/model base=runs/pt/model output_dir=runs/merged

Writes ``OUTPUT_DIR/model/`` (safetensors weights + tokenizer in the Hugging Face layout: plain
``AutoModelForCausalLM.from_pretrained`` loads it, no PEFT needed) and ``manifest.json``, whose
inputs link to the training run that made the adapter and to the base model.
"""

from __future__ import annotations

from pathlib import Path

from lmforge.artifacts import Run, find_manifest, recorded
from lmforge.config import to_dict
from lmforge.config.recipes import ExportMergeRecipe
from lmforge.errors import ConfigError, UserError
from lmforge.export.merge import merge_adapter
from lmforge.models.adapters import check_mergeable
from lmforge.models.load import (
    MODEL_SUBDIR,
    adapter_base,
    is_adapter_dir,
    resolve_dir,
    save_pretrained,
)


def merge(cfg: ExportMergeRecipe) -> Run:
    if not cfg.adapter:
        raise ConfigError("set adapter: an adapter training run directory or an adapter folder")
    adapter_dir = resolve_dir(cfg.adapter, "adapter")
    if not is_adapter_dir(adapter_dir):
        raise UserError(
            f"{adapter_dir} has no adapter_config.json: not a PEFT adapter "
            "(a full or freeze fine-tune needs no merge)"
        )
    check_mergeable(adapter_dir)  # prefix/prompt/p-tuning: nothing to merge, before any work
    base_dir = resolve_dir(cfg.base, "base") if cfg.base else adapter_base(adapter_dir)
    source = find_manifest(adapter_dir)
    if source is not None and source.parent.resolve() == Path(cfg.output_dir).resolve():
        raise ConfigError(
            f"output_dir {cfg.output_dir} is the adapter's own run directory; "
            "choose a new output_dir"
        )
    run = Run.start(
        "export_merge",
        to_dict(cfg),
        cfg.output_dir,
        inputs={"adapter": adapter_dir, "base_model": base_dir},
    )
    if not cfg.force and run.finished_before():
        print(f"lmforge: reusing finished merge run {run.dir}")
        return run
    with recorded(run):
        model, tokenizer = merge_adapter(adapter_dir, base_dir)
        folder = save_pretrained(model, tokenizer, run.dir / MODEL_SUBDIR)
        run.add_output(folder, "model")
        run.metrics["parameters"] = sum(p.numel() for p in model.parameters())
    print(f"lmforge: merged model saved to {folder}")
    return run
