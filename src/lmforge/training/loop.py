"""The one training loop: every stage supplies units (see ``collate``) and the causal-LM objective.

Per optimizer step the loop takes ``batch_size * grad_accum`` units in the epoch's seeded order,
packs each micro-batch, and normalises the summed token loss by the number of target tokens in
the *whole* accumulated step, so ``grad_accum=4, batch_size=2`` equals ``batch_size=8``.
Checkpoints (atomic, every ``save_every`` steps) carry everything for an exact resume.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmforge.config.groups import TrainConfig
from lmforge.errors import ConfigError, MissingDependency, RunFailed
from lmforge.models.load import resolve_device
from lmforge.training.attention import supports_varlen, varlen_attention
from lmforge.training.checkpoint import (
    check_data_position,
    checkpoint_dirs,
    restore,
    save_checkpoint,
)
from lmforge.training.collate import IGNORE, Unit, micro_batch, unit_tokens
from lmforge.training.objective import CausalLMLoss
from lmforge.training.optim import build_optimizer, lr_at


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32.

    auto: bf16 on a GPU that supports it; fp32 on CPU, where bf16 matmuls measured ~100x slower
    than fp32 on a CPU without bf16 units (see ENVIRONMENT.md).
    """
    if name == "fp32" or (name == "auto" and device.type != "cuda"):
        return None
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "fp16" and device.type != "cuda":
        raise ConfigError(
            "train.precision=fp16 needs a CUDA GPU; use fp32 (fastest on CPU) or bf16"
        )
    return torch.bfloat16 if name == "bf16" else torch.float16


@dataclass
class LoopOptions:
    run_dir: Path
    pad_id: int
    pack_capacity: int | None = None  # tokens per packed row; None: one padded row per unit
    # one row per micro-batch with per-sequence attention, where the model supports it
    # (see ``attention``); else the ``pack_capacity`` rows
    varlen: bool = True
    progress: bool = True
    tensorboard: str = "auto"
    on_step: Callable[[int], None] | None = None  # called after each optimizer step (tests)
    # what the trajectory depends on (config + input fingerprints); a checkpoint made under a
    # different one is refused instead of silently continuing someone else's run
    trajectory: dict = field(default_factory=dict)


@dataclass
class MetricsLog:
    """metrics.jsonl (+ TensorBoard); on resume, lines past the checkpoint's step are dropped."""

    path: Path
    writer: object | None = None
    rows: list[dict] = field(default_factory=list)

    @classmethod
    def open(cls, run_dir: Path, resume_step: int, tensorboard: str) -> MetricsLog:
        path = run_dir / "metrics.jsonl"
        if path.exists():
            kept = [
                ln
                for ln in path.read_text().splitlines()
                if (row := _parse_row(ln)) is not None and row.get("step", 0) <= resume_step
            ]
            path.write_text("".join(ln + "\n" for ln in kept))
        writer = None
        if tensorboard != "off":
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1)
            except ImportError:
                if tensorboard == "on":
                    raise MissingDependency(
                        "tensorboard", "tensorboard", "track.tensorboard=on"
                    ) from None
        return cls(path, writer)

    def log(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float):
                    self.writer.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    if not shuffle:
        return list(range(n))
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def token_loss_sum(
    objective: CausalLMLoss, batch: dict, autocast_dtype
) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over target tokens, and how many there were."""
    device = next(objective.parameters()).device
    ctx = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype
        else contextlib.nullcontext()
    )
    attention = {
        k: v.to(device) if isinstance(v, torch.Tensor) else v
        for k, v in batch.get("attention", {}).items()
    }
    with ctx:
        return objective(
            batch["input_ids"].to(device),
            batch["position_ids"].to(device),
            batch["targets"].to(device),
            **attention,
        )


@torch.no_grad()
def evaluate_loss(
    objective: CausalLMLoss,
    units: list[Unit],
    cfg: TrainConfig,
    opts: LoopOptions,
    autocast_dtype,
    varlen: bool,
) -> dict[str, float]:
    was_training = objective.training
    objective.eval()
    total, count = 0.0, 0
    batches = range(0, len(units), cfg.batch_size)
    for i, start in enumerate(batches):
        if cfg.eval_batches and i >= cfg.eval_batches:
            break
        batch = micro_batch(
            units[start : start + cfg.batch_size], opts.pad_id, opts.pack_capacity, varlen
        )
        loss, n = token_loss_sum(objective, batch, autocast_dtype)
        total += float(loss)
        count += n
    objective.train(was_training)
    mean = total / max(1, count)
    return {"eval_loss": mean, "eval_ppl": math.exp(min(mean, 50.0)), "eval_tokens": count}


def train_loop(
    model: torch.nn.Module,
    train_units: list[Unit],
    val_units: list[Unit],
    cfg: TrainConfig,
    opts: LoopOptions,
) -> dict:
    """Train ``model`` in place; return the final metrics."""
    device = resolve_device(cfg.device, "train.device")
    autocast_dtype = resolve_precision(cfg.precision, device)
    model.to(device)
    objective = CausalLMLoss(model)
    varlen = opts.varlen and supports_varlen(model)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype == torch.float16 else None
    per_step = cfg.batch_size * cfg.grad_accum
    steps_per_epoch = math.ceil(len(train_units) / per_step)
    total = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    ckpt_root = opts.run_dir / "checkpoints"
    opts.run_dir.mkdir(parents=True, exist_ok=True)

    # tokens: real input tokens; slots: tensor positions including padding
    state = {"tokens": 0, "target_tokens": 0, "slots": 0, "elapsed": 0.0}
    start_step = 0
    if cfg.resume == "never" and checkpoint_dirs(ckpt_root):
        print(f"lmforge: train.resume=never: removing old checkpoints in {ckpt_root}")
        shutil.rmtree(ckpt_root)
    state["steps_per_epoch"] = steps_per_epoch  # each checkpoint records its data position
    restored = restore(cfg.resume, ckpt_root, model, optimizer)
    if restored is not None:
        state, resume_from = restored
        start_step = state.pop("step")
        _check_same_trajectory(state.pop("trajectory", {}), opts.trajectory, resume_from)
        check_data_position(state, start_step, steps_per_epoch, resume_from)
        print(f"lmforge: resuming from {resume_from} (step {start_step} of {total})")
    else:
        torch.manual_seed(cfg.seed)
    log = MetricsLog.open(opts.run_dir, start_step, opts.tensorboard)
    params = [p for p in model.parameters() if p.requires_grad]
    empty_window = {"loss": 0.0, "targets": 0, "tokens": 0, "seconds": 0.0}
    # the logging window is part of the state, so a resumed run logs the same losses
    window = state.pop("window", None) or dict(empty_window)
    result: dict = {}
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total, initial=start_step, disable=not opts.progress, unit="step", dynamic_ncols=True
    )
    order: list[int] = []
    order_epoch = -1
    objective.train()
    switched = contextlib.ExitStack()
    if varlen:
        switched.enter_context(varlen_attention(model, device))
    try:
        for step in range(start_step, total):
            t0 = time.perf_counter()
            epoch, position = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = (
                    epoch_order(len(train_units), cfg.seed, epoch, cfg.shuffle),
                    epoch,
                )
            chosen = [
                train_units[i] for i in order[position * per_step : (position + 1) * per_step]
            ]
            batches = [
                micro_batch(chosen[i : i + cfg.batch_size], opts.pad_id, opts.pack_capacity, varlen)
                for i in range(0, len(chosen), cfg.batch_size)
            ]
            n_targets = sum(int((b["targets"] != IGNORE).sum()) for b in batches)
            lr = lr_at(step, total, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for batch in batches:
                loss, _ = token_loss_sum(objective, batch, autocast_dtype)
                scaled = loss / max(1, n_targets)
                (scaler.scale(scaled) if scaler else scaled).backward()
                step_loss += float(loss.detach())
                del loss, scaled
            if not math.isfinite(step_loss):
                raise RunFailed(
                    f"loss became {step_loss} at step {step + 1}; lower train.lr or check the data"
                )
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = float(
                torch.nn.utils.clip_grad_norm_(
                    params, cfg.max_grad_norm if cfg.max_grad_norm else float("inf")
                )
            )
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            tokens = sum(unit_tokens(u) for u in chosen)
            seconds = time.perf_counter() - t0
            state["tokens"] += tokens
            state["slots"] += sum(b["input_ids"].numel() for b in batches)
            state["target_tokens"] += n_targets
            state["elapsed"] += seconds
            window = {
                "loss": window["loss"] + step_loss,
                "targets": window["targets"] + n_targets,
                "tokens": window["tokens"] + tokens,
                "seconds": window["seconds"] + seconds,
            }
            done = step + 1
            bar.update(1)
            if done % cfg.log_every == 0 or done == total:
                row = {
                    "step": done,
                    "epoch": round(done / steps_per_epoch, 4),
                    "loss": window["loss"] / max(1, window["targets"]),
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_s": window["tokens"] / max(window["seconds"], 1e-9),
                    "tokens": state["tokens"],
                    "elapsed": round(state["elapsed"], 3),
                }
                log.log(row)
                result["train_loss"] = row["loss"]
                bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
                window = dict(empty_window)
            if val_units and ((cfg.eval_every and done % cfg.eval_every == 0) or done == total):
                evals = evaluate_loss(objective, val_units, cfg, opts, autocast_dtype, varlen)
                log.log({"step": done, **evals})
                result.update(evals)
            if (cfg.save_every and done % cfg.save_every == 0) or done == total:
                save_checkpoint(
                    ckpt_root,
                    done,
                    model,
                    optimizer,
                    {**state, "window": window, "trajectory": opts.trajectory},
                    cfg.keep_last,
                )
            if opts.on_step is not None:
                opts.on_step(done)
    finally:
        switched.close()
        bar.close()
        log.close()
    result.update(
        steps=total,
        tokens=state["tokens"],
        target_tokens=state["target_tokens"],
        train_seconds=round(state["elapsed"], 3),
        tokens_per_s=state["tokens"] / max(state["elapsed"], 1e-9),
        padding_fraction=1.0 - state["tokens"] / max(1, state.get("slots", 0)),
    )
    if "train_loss" not in result and log.rows:
        result["train_loss"] = next((r["loss"] for r in reversed(log.rows) if "loss" in r), None)
    return result


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_same_trajectory(saved: dict, current: dict, folder: Path) -> None:
    old, new = _flatten(saved), _flatten(current)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if changed:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:5])
        raise ConfigError(
            f"the checkpoint {folder} was made with a different config or data ({shown}); "
            "use a new output_dir, or set train.resume=never to start this one over"
        )


def _parse_row(line: str) -> dict | None:
    """A metrics.jsonl row; None for a blank line or one cut short by a killed process."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None
