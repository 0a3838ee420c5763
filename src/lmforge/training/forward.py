"""One micro-batch through an objective, and evaluation over a split: what the training loop,
the Fisher estimate of EWC (``continual``) and per-task evaluation (``multitask``) share.

- :class:`Layout`: how units become a micro-batch (varlen row, padded rows, packed rows);
- :func:`resolve_precision`: the autocast dtype for a device;
- :func:`token_loss_sum`: the objective's summed loss and count for one micro-batch;
- :func:`evaluate_loss`: mean loss (and accuracy, per-class metrics) over validation units.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lmforge.config.training import TrainConfig
from lmforge.errors import ConfigError
from lmforge.eval.classification import classification_metrics
from lmforge.training.attention import supports_varlen
from lmforge.training.collate import Unit, micro_batch
from lmforge.training.objectives.base import Objective

if TYPE_CHECKING:
    from lmforge.training.loop import LoopOptions


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


def precision(device: torch.device, autocast_dtype):
    """Autocast to ``autocast_dtype`` on ``device``, or nothing for fp32 (None)."""
    if autocast_dtype:
        return torch.autocast(device.type, dtype=autocast_dtype)
    return contextlib.nullcontext()


def batch_tensors(batch: dict, device: torch.device) -> tuple[list[torch.Tensor], dict]:
    """``([input_ids, position_ids, targets], attention kwargs)`` of a micro-batch on ``device``."""
    tensors = [batch[k].to(device) for k in ("input_ids", "position_ids", "targets")]
    attention = {
        k: v.to(device) if isinstance(v, torch.Tensor) else v
        for k, v in batch.get("attention", {}).items()
    }
    return tensors, attention


def token_loss_sum(
    objective: torch.nn.Module, batch: dict, autocast_dtype, return_predictions: bool = False
) -> tuple:
    """The objective's summed loss over the batch and its count (target tokens for the token
    losses); with ``return_predictions`` also the predicted and gold class of every target."""
    device = next(objective.parameters()).device
    ctx = precision(device, autocast_dtype)
    tensors, attention = batch_tensors(batch, device)
    extra = {"return_predictions": True} if return_predictions else {}
    if "weights" in batch:  # data.task_weights (see collate)
        extra["weights"] = batch["weights"].to(device)
    if "token_values" in batch:  # per-position numbers of the pieces (stage ppo)
        extra["token_values"] = {k: v.to(device) for k, v in batch["token_values"].items()}
    with ctx:
        return objective(
            *tensors,
            unit_sizes=batch.get("unit_sizes"),
            **attention,
            **extra,
        )


@dataclass
class Layout:
    """How the loop turns units into micro-batches (see ``collate.micro_batch``)."""

    pad_id: int
    capacity: int | None
    varlen: bool
    attention_mask: bool

    def batch(self, units: list[Unit]) -> dict:
        return micro_batch(units, self.pad_id, self.capacity, self.varlen, self.attention_mask)

    @classmethod
    def of(cls, model: torch.nn.Module, spec: Objective, opts: LoopOptions) -> Layout:
        """The layout the loop uses for ``model`` and its objective ``spec`` under ``opts``."""
        varlen = opts.varlen and supports_varlen(model) and not spec.padded_rows
        return cls(
            opts.pad_id,
            opts.pack_capacity,
            varlen,
            not varlen and (opts.attention_mask or spec.padded_rows),
        )


@torch.no_grad()
def evaluate_loss(
    objective: torch.nn.Module,
    units: list[Unit],
    cfg: TrainConfig,
    opts: LoopOptions,
    autocast_dtype,
    layout: Layout,
    spec: Objective | None = None,
) -> dict:
    """Mean loss over ``units`` (at most ``eval_batches`` micro-batches per process); under
    torchrun the micro-batches are shared like a training step's, and the sums reduced.

    ``spec`` is the unwrapped objective (``objective`` may be DDP's wrapper): it prepares the
    units (fixed draws per micro-batch) and says whether to collect predictions, which add
    ``eval_accuracy`` and, for classes, per-class precision/recall/F1 and the confusion matrix.
    """
    spec = spec or objective
    was_training = objective.training
    objective.eval()
    strategy = opts.strategy
    total, count = 0.0, 0
    classes = list(spec.class_names) if spec.class_names else None
    confusion = torch.zeros((len(classes),) * 2 if classes else (0, 0), dtype=torch.long)
    correct = 0
    spec.eval_sums()  # start from nothing (an earlier evaluation may have stopped early)
    extra: dict = {}  # the objective's own (sum, count) statistics (see Objective.eval_sums)
    starts = range(0, len(units), cfg.batch_size)
    if cfg.eval_batches:
        starts = starts[: cfg.eval_batches * strategy.world_size]
    for start, weight in strategy.share(starts):
        chosen = spec.prepare(list(units[start : start + cfg.batch_size]), -1 - start)
        out = token_loss_sum(objective, layout.batch(chosen), autocast_dtype, spec.eval_predictions)
        for key, (value, n) in spec.eval_sums().items():  # all ranks run as many passes
            total_n = extra.get(key, (0.0, 0))
            extra[key] = (total_n[0] + value, total_n[1] + n) if weight else total_n
        if weight:  # 0: a padding pass, so that every rank runs as many (see distributed)
            total += float(out[0])
            count += out[1]
            if spec.eval_predictions:
                pred, gold = out[2].cpu(), out[3].cpu()
                correct += int((pred == gold).sum())
                if classes:
                    confusion += torch.bincount(
                        gold * len(classes) + pred, minlength=len(classes) ** 2
                    ).view(len(classes), len(classes))
    names = sorted(extra)  # the same on every rank (see above)
    total, count, correct, *rest = strategy.sum_over_ranks(
        [total, count, correct, *(x for k in names for x in extra[k])]
        + confusion.flatten().tolist()
    )
    sums, cells = rest[: 2 * len(names)], rest[2 * len(names) :]
    objective.train(was_training)
    mean = total / max(1, count)
    # what the loss averages over: tokens for the language-model losses, else examples
    result: dict = {
        "eval_loss": mean,
        f"eval_{'tokens' if spec.perplexity else 'examples'}": int(count),
    }
    if spec.perplexity:
        result["eval_ppl"] = math.exp(min(mean, 50.0))
    if spec.eval_predictions:
        result["eval_accuracy"] = correct / max(1, count)
    for i, key in enumerate(names):
        if sums[2 * i + 1]:
            result[f"eval_{key}"] = sums[2 * i] / sums[2 * i + 1]
    if classes:
        matrix = torch.tensor(cells, dtype=torch.long).view(len(classes), len(classes))
        result.update(classification_metrics(matrix.tolist(), classes, prefix="eval_"))
    return result
