"""Hugging Face sides of the benchmarks: one way to configure, run and read a ``Trainer``.

Hugging Face sides train inside ``Trainer`` subclasses made by :func:`recording_trainer`, which
count the tensors actually fed to the model (real tokens, token slots, target tokens,
sequences) and each step's loss, and time the training loop alone (``on_train_begin`` to
``on_train_end``). :func:`hf_result` turns that record into the figures every side reports.
"""

from __future__ import annotations

import time
from pathlib import Path

from common import IGNORE, BenchError


def hf_training_kwargs(settings: dict, output_dir: Path, steps: int, batch_size: int) -> dict:
    """``TrainingArguments`` fields every Hugging Face side shares (TRL's config included)."""
    s = settings
    if s["precision"] != "fp32":
        raise BenchError("the Hugging Face sides are written for precision fp32")
    return {
        "output_dir": str(output_dir),
        "max_steps": steps,
        "per_device_train_batch_size": batch_size,
        "gradient_accumulation_steps": s["grad_accum"],
        "learning_rate": s["lr"],
        "lr_scheduler_type": s["schedule"],
        "warmup_steps": s["warmup_steps"],
        "adam_beta1": s["betas"][0],
        "adam_beta2": s["betas"][1],
        "weight_decay": s["weight_decay"],
        "max_grad_norm": s["max_grad_norm"],
        "bf16": False,  # TRL turns bf16 on by default; fp32 is the fast path on this CPU
        "fp16": False,
        "activation_checkpointing": False,  # TRL turns it on by default
        "use_cpu": True,
        "seed": s["seed"],
        "data_seed": s["seed"],
        "train_sampling_strategy": "sequential",
        "logging_steps": s["log_every"],
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "remove_unused_columns": False,
        "label_names": ["labels"],
        "dataloader_pin_memory": False,
    }


def window_losses(per_step: list[dict], log_every: int) -> list[list]:
    """``[step, loss]`` per logging window (the last may be short): summed token loss / target
    tokens, as lmforge's loop logs it."""
    out = []
    for start in range(0, len(per_step), log_every):
        window = per_step[start : start + log_every]
        targets = sum(s["targets"] for s in window)
        loss = sum(s["loss"] * s["targets"] for s in window) / max(1, targets)
        out.append([start + len(window), loss])
    return out


def add_loop_timer(trainer) -> None:
    """Set ``trainer.loop_seconds`` to the wall time from ``on_train_begin`` to
    ``on_train_end`` (after the data loader and optimizer exist); NaN until then."""
    from transformers import TrainerCallback

    class LoopTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            trainer._t0 = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            trainer.loop_seconds = time.perf_counter() - trainer._t0

    trainer.loop_seconds = float("nan")
    trainer.add_callback(LoopTimer())


def recording_trainer(base):
    """A subclass of ``base`` (``Trainer``, ``SFTTrainer``) that records what it trains on.

    ``trainer.per_step``: one dict per micro-batch (= per optimizer step without accumulation)
    with the real tokens, token slots (real + padding), target tokens and the step's loss
    (``Trainer`` returns the mean over target tokens). ``trainer.loop_seconds``: wall time from
    ``on_train_begin`` to ``on_train_end``, after the data loader and optimizer exist.
    """

    class Recording(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.per_step: list[dict] = []
            add_loop_timer(self)

        def training_step(self, model, inputs, num_items_in_batch=None):
            stats = batch_stats(inputs)
            loss = super().training_step(model, inputs, num_items_in_batch)
            stats["loss"] = float(loss)
            self.per_step.append(stats)
            return loss

    Recording.__name__ = f"Recording{base.__name__}"
    return Recording


def batch_stats(inputs: dict) -> dict:
    """Real tokens, slots and target tokens of one batch as a Hugging Face model receives it."""
    ids = inputs["input_ids"]
    if "attention_mask" in inputs:
        tokens = int(inputs["attention_mask"].sum())
    else:  # padding-free rows: every slot is a token
        tokens = ids.numel()
    if "shift_labels" in inputs:
        targets = int((inputs["shift_labels"] != IGNORE).sum())
    else:
        targets = int((inputs["labels"][..., 1:] != IGNORE).sum())
    positions = inputs.get("position_ids")
    # sequences: restarting positions mark each one in a flattened row; else one per row
    pieces = int((positions == 0).sum()) if positions is not None else ids.shape[0]
    return {"tokens": tokens, "slots": ids.numel(), "targets": targets, "pieces": pieces}


def check_trainer(trainer, label: str) -> None:
    """Fail unless ``trainer`` reads its data in order, in fp32, without checkpointing."""
    import torch
    from torch.utils.data import SequentialSampler

    sampler = trainer._get_train_sampler()
    if not isinstance(sampler, SequentialSampler):
        raise BenchError(f"{label} would not read the examples in order (sampler: {sampler!r})")
    args = trainer.args
    if args.bf16 or args.fp16 or args.activation_checkpointing:
        raise BenchError(f"{label}: bf16/fp16/activation checkpointing must be off")
    dtypes = {p.dtype for p in trainer.model.parameters()}
    if dtypes != {torch.float32}:
        raise BenchError(f"{label}: parameters are {dtypes}, expected fp32 only")


def hf_result(trainer, steps: int, log_every: int) -> dict:
    """The common result of a Hugging Face side from a finished :func:`recording_trainer`."""
    import torch

    per_step = trainer.per_step
    if len(per_step) != steps:
        raise BenchError(f"{type(trainer).__name__} ran {len(per_step)} steps, expected {steps}")
    windows = window_losses(per_step, log_every)
    tokens = sum(s["tokens"] for s in per_step)
    slots = sum(s["slots"] for s in per_step)
    seconds = trainer.loop_seconds
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {
        "steps": steps,
        "tokens": tokens,
        "target_tokens": sum(s["targets"] for s in per_step),
        "slots": slots,
        "padding_fraction": 1 - tokens / max(1, slots),
        "train_seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "final_loss": windows[-1][1],  # the last window, as lmforge reports train_loss
        "window_losses": windows,
        "hf_logged_losses": [
            [h["step"], h["loss"]] for h in trainer.state.log_history if "loss" in h
        ],
        "sequences_per_step": [
            min(s["pieces"] for s in per_step),
            max(s["pieces"] for s in per_step),
        ],
        "threads": torch.get_num_threads(),
        "trainable_params": trainable,
        "optim": str(getattr(trainer.args.optim, "value", trainer.args.optim)),
    }
