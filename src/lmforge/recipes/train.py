"""``lmforge train CONFIG``: pretrain (``stage: pt``) or fine-tune (``stage: sft``), full or LoRA.

    lmforge train configs/sft_lora.yaml model.path=runs/pt train.max_steps=200
    # CPU is the default; on a GPU the same command uses it (train.device=auto)

Run directory: ``model/`` (full weights, or the LoRA adapter + ``base/`` when the base was a
preset), ``checkpoints/step-N/``, ``metrics.jsonl``, ``tensorboard/``, ``rejects.jsonl``,
``manifest.json``. ``train.resume=auto`` (default) continues from the latest checkpoint.
Tokenised data is cached (``data.cache``, see ``lmforge.training.data``); the manifest's
``counts.data_cache`` says which cache folder was used and whether it was hit.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmforge.artifacts import Run, recorded
from lmforge.config import to_dict
from lmforge.config.recipes import TrainRecipe
from lmforge.data.readers import Rejects
from lmforge.errors import ConfigError
from lmforge.models.load import (
    MODEL_SUBDIR,
    add_lora,
    build_model,
    load_tokenizer,
    lora_targets,
    resolve_dir,
    save_pretrained,
)
from lmforge.tokenizer.templates import check_eos_template
from lmforge.training.data import load_stage_data
from lmforge.training.loop import LoopOptions, train_loop


def _inputs(cfg: TrainRecipe) -> dict:
    inputs: dict = {"train_data": cfg.data.train, "validation_data": cfg.data.validation}
    if cfg.model.path:
        inputs["base_model"] = str(resolve_dir(cfg.model.path))
    if cfg.model.tokenizer:
        inputs["tokenizer"] = str(resolve_dir(cfg.model.tokenizer, "tokenizer"))
    return inputs


def run(cfg: TrainRecipe, on_step=None) -> Run:
    run = Run.start(cfg.stage, to_dict(cfg), cfg.output_dir, inputs=_inputs(cfg))
    if not cfg.force and run.finished_before():
        print(f"lmforge: reusing finished {cfg.stage} run {run.dir}")
        return run
    with recorded(run):
        tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path)
        if cfg.stage == "sft":
            check_eos_template(tokenizer)
        rejects = Rejects()
        known = {i["path"]: i["fingerprint"] for i in run.inputs}  # no second hash of the data
        try:
            train, val = load_stage_data(
                cfg.stage, cfg.data, tokenizer, rejects, cfg.train.seed, known, cfg.track.progress
            )
        finally:  # also when no row was usable: the error points at this file
            rejects_path = rejects.write(run.dir / "rejects.jsonl")
        if train.cache.get("hit"):
            print(f"lmforge: tokenised data from the cache {train.cache['path']}")
        run.counts.update(
            train=train.counts,
            validation=val.counts,
            train_units=len(train.units),
            validation_units=len(val.units),
            rejects_file=str(rejects_path),
            data_cache=train.cache,
        )
        run.save()

        model = build_model(cfg.model, tokenizer, seed=cfg.train.seed)
        vocab = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > vocab:
            raise ConfigError(
                f"the tokenizer has {len(tokenizer)} tokens but the model's "
                f"embedding has {vocab} rows: use the model's own tokenizer"
            )
        base_dir = None
        if cfg.adapter.type == "lora":
            lora_targets(model, cfg.adapter)  # fail on a bad target before writing anything
            # a preset base exists nowhere else: save it (before LoRA wraps it) for later loading
            base_dir = (
                resolve_dir(cfg.model.path)
                if cfg.model.path
                else save_pretrained(model, tokenizer, run.dir / "base")
            )
            torch.manual_seed(cfg.train.seed)  # LoRA's A matrices are random: same seed, same A
            model = add_lora(model, cfg.adapter)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        print(
            f"lmforge: {cfg.stage} {cfg.adapter.type}: {trainable:,} of {total:,} parameters "
            f"trainable ({100 * trainable / total:.2f}%), {len(train.units)} training units"
        )
        run.metrics.update(params_total=total, params_trainable=trainable)

        if cfg.train.activation_checkpointing:
            hf = model.get_base_model() if hasattr(model, "get_base_model") else model
            hf.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        # packing: each micro-batch is one row with per-sequence attention (``attention``). On a
        # model without transformers' attention interface, sft examples are packed into rows of
        # at most max_length tokens instead; pt blocks are all max_length long: one row each.
        capacity = cfg.data.max_length if (cfg.stage == "sft" and cfg.train.packing) else None
        opts = LoopOptions(
            trajectory=trajectory(run),
            run_dir=run.dir,
            pad_id=tokenizer.pad_token_id,
            pack_capacity=capacity,
            varlen=cfg.train.packing,
            progress=cfg.track.progress,
            tensorboard=cfg.track.tensorboard,
            on_step=on_step,
        )
        # force=true recomputes: start over instead of resuming the finished checkpoint
        train_cfg = cfg.train.model_copy(update={"resume": "never"}) if cfg.force else cfg.train
        run.metrics.update(train_loop(model, train.units, val.units, train_cfg, opts))

        out = save_model(model, tokenizer, run.dir / MODEL_SUBDIR, base_dir)
        run.add_output(out, "model")
        run.add_output(run.dir / "metrics.jsonl", "metrics")
    print(f"lmforge: {cfg.stage} run finished: {out}")
    return run


# Keys that change logging, checkpointing or placement but not the weights a run produces.
_NOT_TRAJECTORY = {"output_dir", "force", "track"}
_NOT_TRAJECTORY_DATA = {"cache", "cache_dir", "cache_shard_tokens"}  # same units either way
_NOT_TRAJECTORY_TRAIN = {
    "log_every",
    "eval_every",
    "eval_batches",
    "save_every",
    "keep_last",
    "resume",
    "device",
}


def trajectory(run: Run) -> dict:
    """What a checkpoint must agree on to be resumed: config (minus I/O keys) + input contents."""
    config = {k: v for k, v in run.config.items() if k not in _NOT_TRAJECTORY}
    config["train"] = {k: v for k, v in config["train"].items() if k not in _NOT_TRAJECTORY_TRAIN}
    config["data"] = {k: v for k, v in config["data"].items() if k not in _NOT_TRAJECTORY_DATA}
    return {"config": config, "inputs": {i["path"]: i["fingerprint"] for i in run.inputs}}


def save_model(model, tokenizer, out: Path, base_dir: Path | None) -> Path:
    """Full weights, or (``base_dir`` given) the adapter with its config pointing at the base."""
    save_pretrained(model, tokenizer, out)
    if base_dir is not None:
        config_path = out / "adapter_config.json"
        adapter_cfg = json.loads(config_path.read_text())
        adapter_cfg["base_model_name_or_path"] = str(Path(base_dir).resolve())
        config_path.write_text(json.dumps(adapter_cfg, indent=2))
    return out
