"""The one training loop: every stage supplies units (see ``collate``) and its objective.

Per optimizer step the loop takes ``batch_size * grad_accum`` units in the epoch's seeded order,
lets the objective prepare them (masked LM draws its targets here; see ``objectives.base``),
packs each micro-batch, and normalises the summed loss by the objective's count for the *whole*
accumulated step (target tokens; examples or anchors for some objectives), so
``grad_accum=4, batch_size=2`` equals ``batch_size=8``. Checkpoints (atomic, every
``save_every`` steps) carry everything for an exact resume.
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

from lmforge.config.training import TrainConfig
from lmforge.errors import ConfigError, MissingDependency, RunFailed
from lmforge.training.attention import varlen_attention
from lmforge.training.callbacks import EvalWatch
from lmforge.training.checkpoint import (
    check_data_position,
    checkpoint_dirs,
    restore,
    save_checkpoint,
)
from lmforge.training.collate import Unit, unit_tokens
from lmforge.training.distributed import Strategy
from lmforge.training.flops import FlopsProfile, matmul_peak_gflops, model_flops_utilization
from lmforge.training.forward import Layout, evaluate_loss, resolve_precision, token_loss_sum
from lmforge.training.lowrank import use_fast_lowrank
from lmforge.training.objectives.base import Objective
from lmforge.training.objectives.causal import CausalLMLoss
from lmforge.training.optim import build_optimizer, lr_at


@dataclass
class LoopOptions:
    run_dir: Path
    pad_id: int
    pack_capacity: int | None = None  # tokens per packed row; None: one padded row per unit
    # one row per micro-batch with per-sequence attention, where the model supports it
    # (see ``attention``); else the ``pack_capacity`` rows
    varlen: bool = True
    # where varlen is not used: one padded row per piece with an attention mask (encoders,
    # classification heads) instead of rows whose restarting positions keep causal pieces apart
    attention_mask: bool = False
    # the stage's loss over the model (see ``objectives``); default: causal LM
    objective: Callable[[torch.nn.Module], Objective] = CausalLMLoss
    progress: bool = True
    tensorboard: str = "auto"
    on_step: Callable[[int], None] | None = None  # called after each optimizer step (tests)
    # called with (step, metrics) after each evaluation (sweeps report to their pruner here)
    on_eval: Callable[[int, dict], None] | None = None
    # what the trajectory depends on (config + input fingerprints); a checkpoint made under a
    # different one is refused instead of silently continuing someone else's run
    trajectory: dict = field(default_factory=dict)
    # how the processes torchrun started share each step; one process by default
    strategy: Strategy = field(default_factory=Strategy)
    # replaces evaluate_loss (same arguments and result, plus more metrics), e.g. the per-task
    # losses of training.multitask.task_evaluator
    evaluate: Callable[..., dict] | None = None


@dataclass
class MetricsLog:
    """metrics.jsonl (+ TensorBoard); on resume, lines past the checkpoint's step are dropped.

    ``path`` None (ranks other than 0 under torchrun): rows are kept, nothing is written.
    """

    path: Path | None
    writer: object | None = None
    rows: list[dict] = field(default_factory=list)

    @classmethod
    def open(cls, run_dir: Path, resume_step: int, tensorboard: str) -> MetricsLog:
        path = run_dir / "metrics.jsonl"
        if path.exists() and resume_step == 0:  # a fresh start (even its step-0 evaluation)
            path.write_text("")
        elif path.exists():
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
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    if not shuffle:
        return list(range(n))
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def train_loop(
    model: torch.nn.Module,
    train_units: list[Unit],
    val_units: list[Unit],
    cfg: TrainConfig,
    opts: LoopOptions,
) -> dict:
    """Train ``model`` in place; return the final metrics.

    Under torchrun every rank calls this with the same units, and ``opts.strategy`` shares out
    each step (see ``distributed``): ``batch_size`` is per process, the logged sums are global.
    """
    strategy = opts.strategy
    device = strategy.device_for(cfg.device)
    autocast_dtype = resolve_precision(cfg.precision, device)
    model.to(device)
    use_fast_lowrank(model, device)
    spec = opts.objective(model).to(device)  # the unwrapped objective: prepare, weight, flags
    layout = Layout.of(model, spec, opts)
    varlen = layout.varlen
    spec.bind(layout, autocast_dtype, cfg.batch_size)  # for forwards of its own (PPO rollouts)
    # DDP/FSDP2 wrap the objective; FSDP2 swaps parameters for shards, so the optimizer comes after
    objective, optimizer = strategy.prepare(spec, lambda: build_optimizer(model, cfg))
    # model FLOPs utilisation: useful FLOPs (see ``flops``) against a matmul peak measured now
    flops = FlopsProfile.of(model)
    peak = matmul_peak_gflops(device, dtype=autocast_dtype or torch.float32)
    if strategy.is_main:
        print(f"lmforge: measured matmul peak {peak:.1f} GFLOP/s per process (for MFU)")
        _suggest_bf16(cfg, device, model, peak)
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype == torch.float16 else None
    per_step = cfg.batch_size * cfg.grad_accum * strategy.world_size  # units, all ranks together
    steps_per_epoch = math.ceil(len(train_units) / per_step)
    total = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    ckpt_root = opts.run_dir / "checkpoints"
    opts.run_dir.mkdir(parents=True, exist_ok=True)

    # tokens: real input tokens; slots: tensor positions including padding
    state = {"tokens": 0, "target_tokens": 0, "slots": 0, "elapsed": 0.0}
    start_step = 0
    if cfg.resume == "never" and strategy.is_main and checkpoint_dirs(ckpt_root):
        print(f"lmforge: train.resume=never: removing old checkpoints in {ckpt_root}")
        shutil.rmtree(ckpt_root)
    state["steps_per_epoch"] = steps_per_epoch  # each checkpoint records its data position
    watch = EvalWatch.from_config(cfg)  # best checkpoint and early stopping (``callbacks``)
    if watch.needs_validation and not val_units:
        raise ConfigError("early stopping / load_best_at_end: the validation data has no units")
    restored = restore(cfg.resume, ckpt_root, model, optimizer, strategy)
    if restored is not None:
        state, resume_from = restored
        start_step = state.pop("step")
        watch.load_state_dict(state.pop("eval_watch", None))
        spec.load_loop_state(state.pop("objective", {}))
        _check_same_trajectory(state.pop("trajectory", {}), opts.trajectory, resume_from)
        check_data_position(state, start_step, steps_per_epoch, resume_from)
        if strategy.is_main:
            print(f"lmforge: resuming from {resume_from} (step {start_step} of {total})")
    else:
        torch.manual_seed(cfg.seed)
    log = (
        MetricsLog.open(opts.run_dir, start_step, opts.tensorboard)
        if strategy.is_main
        else MetricsLog(None)
    )
    params = [p for p in model.parameters() if p.requires_grad]
    empty_window = {"loss": 0.0, "targets": 0, "tokens": 0, "seconds": 0.0, "flops": 0}
    # the logging window is part of the state, so a resumed run logs the same losses
    window = state.pop("window", None) or dict(empty_window)
    result: dict = {}
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        initial=start_step,
        disable=not (opts.progress and strategy.is_main),
        unit="step",
        dynamic_ncols=True,
    )
    order: list[int] = []
    order_epoch = -1
    objective.train()
    switched = contextlib.ExitStack()
    if varlen:
        switched.enter_context(varlen_attention(model, device))
    try:
        if val_units and cfg.eval_on_start and start_step == 0:  # a baseline, not a candidate
            evaluate = opts.evaluate or evaluate_loss
            evals = evaluate(objective, val_units, cfg, opts, autocast_dtype, layout, spec)
            log.log({"step": 0, **evals})
            result.update({f"start_{k}": v for k, v in evals.items()})
        for step in range(start_step, total):
            if watch.stopped:  # resumed from the checkpoint where it stopped early
                break
            t0 = time.perf_counter()
            epoch, position = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = (
                    epoch_order(len(train_units), cfg.seed, epoch, cfg.shuffle),
                    epoch,
                )
            chosen = spec.prepare(
                [train_units[i] for i in order[position * per_step : (position + 1) * per_step]],
                step,
            )
            lr = lr_at(step, total, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss, slots, n_targets, tokens, step_flops = 0.0, 0, 0, 0, 0
            for part in spec.passes(chosen, step):  # one optimizer step each (PPO: several)
                part_loss, part_targets, part_slots, grad_norm = _optimizer_step(
                    objective,
                    spec,
                    part,
                    layout,
                    optimizer,
                    params,
                    scaler,
                    autocast_dtype,
                    cfg,
                    strategy,
                )
                if not math.isfinite(part_loss):
                    raise RunFailed(
                        f"loss became {part_loss} at step {step + 1}; lower train.lr or check "
                        "the data"
                    )
                step_loss += part_loss
                slots += part_slots
                n_targets += part_targets
                tokens += sum(unit_tokens(u) for u in part)
                # only target positions reach the output layer (``objective``)
                step_flops += flops.training_flops((len(p) for u in part for p in u), part_targets)
            seconds = time.perf_counter() - t0
            state["tokens"] += tokens
            state["slots"] += int(slots)
            state["target_tokens"] += n_targets
            state["elapsed"] += seconds
            state["flops"] = state.get("flops", 0) + step_flops
            window = {
                "loss": window["loss"] + step_loss,
                "targets": window["targets"] + n_targets,
                "tokens": window["tokens"] + tokens,
                "seconds": window["seconds"] + seconds,
                "flops": window.get("flops", 0) + step_flops,
            }
            done = step + 1
            bar.update(1)
            if done % cfg.log_every == 0 or done == total:
                row = {
                    "step": done,
                    "epoch": round(done / steps_per_epoch, 4),
                    "loss": window["loss"] / (window["targets"] or 1),
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_s": window["tokens"] / max(window["seconds"], 1e-9),
                    "mfu": model_flops_utilization(
                        window["flops"], window["seconds"], peak * strategy.world_size
                    ),
                    "tokens": state["tokens"],
                    "elapsed": round(state["elapsed"], 3),
                    **spec.log_metrics(),  # the objective's own, e.g. EWC's penalty
                }
                log.log(row)
                result["train_loss"] = row["loss"]
                bar.set_postfix(
                    loss=f"{row['loss']:.4f}",
                    tok_s=f"{row['tokens_per_s']:.0f}",
                    mfu=f"{row['mfu']:.1%}",
                )
                window = dict(empty_window)
            if val_units and ((cfg.eval_every and done % cfg.eval_every == 0) or done == total):
                evaluate = opts.evaluate or evaluate_loss
                evals = evaluate(objective, val_units, cfg, opts, autocast_dtype, layout, spec)
                log.log({"step": done, **evals})
                result.update(evals)
                if watch.update(done, evals) and strategy.is_main:
                    print(f"lmforge: {watch.stop_reason}")
                if opts.on_eval is not None:
                    opts.on_eval(done, evals)
            if (
                (cfg.save_every and done % cfg.save_every == 0)
                or done == total
                or watch.stopped
                or watch.save_now(done)
            ):
                save_checkpoint(
                    ckpt_root,
                    done,
                    model,
                    optimizer,
                    {
                        **state,
                        "window": window,
                        "trajectory": opts.trajectory,
                        "eval_watch": watch.state_dict(),
                        "objective": spec.loop_state(),
                    },
                    cfg.keep_last,
                    strategy,
                    keep=watch.kept_steps(),
                )
            if opts.on_step is not None:
                opts.on_step(done)
            if watch.stopped:
                break
    finally:
        switched.close()
        bar.close()
        log.close()
    if (best := watch.load_best(model, ckpt_root, strategy)) is not None and strategy.is_main:
        print(f"lmforge: model/ gets the best checkpoint {best} ({watch.metric} {watch.best:.6g})")
    result.update(
        watch.summary(watch.stopped_step or total, total),
        tokens=state["tokens"],
        target_tokens=state["target_tokens"],
        train_seconds=round(state["elapsed"], 3),
        tokens_per_s=state["tokens"] / max(state["elapsed"], 1e-9),
        mfu=model_flops_utilization(
            state.get("flops", 0), state["elapsed"], peak * strategy.world_size
        ),
        matmul_peak_gflops=round(peak, 1),
        padding_fraction=1.0 - state["tokens"] / max(1, state.get("slots", 0)),
    )
    if "train_loss" not in result and log.rows:
        result["train_loss"] = next((r["loss"] for r in reversed(log.rows) if "loss" in r), None)
    return result


# below this many parameters the step is dominated by overheads, not matmuls: no hint
BF16_HINT_PARAMS = 5_000_000


def _suggest_bf16(cfg: TrainConfig, device: torch.device, model, fp32_peak: float) -> None:
    """On a CPU where bf16 matmuls measure much faster than fp32 (AMX: 2,153 vs 308 GFLOP/s
    measured, a small-llama step 1.8x faster; docs/benchmarks.md), say so: ``precision=auto``
    keeps fp32 on CPUs, as most have no bf16 units and run it ~100x slower."""
    if cfg.precision != "auto" or device.type != "cpu":
        return
    if sum(p.numel() for p in model.parameters()) < BF16_HINT_PARAMS:
        return
    bf16 = matmul_peak_gflops(device, dtype=torch.bfloat16, seconds_budget=0.25)
    if bf16 > 2 * fp32_peak:
        print(
            f"lmforge: this CPU multiplies bf16 matrices {bf16 / fp32_peak:.1f}x as fast as fp32 "
            f"({bf16:.0f} vs {fp32_peak:.0f} GFLOP/s): train.precision=bf16 may train faster"
        )


def _optimizer_step(
    objective, spec, units, layout, optimizer, params, scaler, autocast_dtype, cfg, strategy
) -> tuple[float, int | float, int, float]:
    """One optimizer step over ``units``, shared out as this rank's micro-batches: the summed
    loss and target count of the whole step over all ranks, its tensor slots, the gradient
    norm."""
    # this rank's micro-batches of the step, and weight-0 padding passes (distributed)
    shares = strategy.share(range(0, len(units), cfg.batch_size))
    batches = [layout.batch(units[i : i + cfg.batch_size]) for i, _ in shares]
    n_targets = sum(spec.weight(u) for u in units)  # the whole step's, on every rank
    # (a float under data.task_weights, possibly below 1: only an empty step is 1)
    normaliser = n_targets if n_targets > 0 else 1
    optimizer.zero_grad(set_to_none=True)
    step_loss, slots = 0.0, 0
    for k, (batch, (_, weight)) in enumerate(zip(batches, shares, strict=True)):
        with strategy.sync(objective, last=k == len(batches) - 1):
            loss, _ = token_loss_sum(objective, batch, autocast_dtype)
            # DDP and FSDP2 average gradients over ranks: x world_size makes it the sum
            scaled = loss * (weight * strategy.world_size) / normaliser
            strategy.backward(scaler.scale(scaled) if scaler else scaled)
        if weight:
            step_loss += float(loss.detach())
            slots += batch["input_ids"].numel()
        del loss, scaled
    step_loss, slots = strategy.sum_over_ranks([step_loss, slots])
    if not math.isfinite(step_loss):  # no optimizer step on a broken loss
        return step_loss, n_targets, int(slots), float("nan")
    grad_norm = strategy.step(optimizer, params, cfg.max_grad_norm, scaler)
    return step_loss, n_targets, int(slots), grad_norm


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
