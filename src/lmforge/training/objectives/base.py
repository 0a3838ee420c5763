"""What every objective gives the training loop.

An objective is the loss of a stage: one ``nn.Module`` that wraps the model (so DDP and FSDP
wrap a single forward) and maps a packed batch (see ``training.collate``) to
``(summed loss, count)``. The loop divides the summed loss of each micro-batch by the whole
optimizer step's normaliser, so gradient accumulation and the number of processes do not
change the gradient. Per optimizer step the loop calls::

    units = objective.prepare(units, step)            # e.g. masked LM: mask ~15% of tokens
    for group in objective.passes(units, step):       # one optimizer step each (default: 1)
        normaliser = sum(objective.weight(u) for u in group)
        loss, count = wrapped(input_ids, position_ids, targets, unit_sizes=..., **attention)

``prepare`` must be a pure function of the units and the step (seeded, the same on every
rank), so that a resumed run and every process of a distributed one see the same targets.
``passes`` lets one prepared step take several optimizer steps (PPO: epochs of mini-batches
over one rollout); checkpoints fall between loop steps, so nothing of a step needs saving. What
an objective carries from step to step (PPO's adaptive KL coefficient) it gives as
``loop_state()`` for the checkpoint and takes back in ``load_loop_state``. Before the first
step the loop calls ``bind`` with the micro-batch layout and precision, for objectives that run
forwards of their own while preparing (PPO scores its rollouts).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmforge.training.collate import IGNORE, Unit, unit_weight


def hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class Objective(torch.nn.Module):
    """Base class: ``forward(input_ids, position_ids, targets, **kw) -> (loss sum, count)``.

    ``targets`` ``(rows, L)`` hold what each position learns (``-100``: nothing), so most
    objectives read their labels from it: next tokens (causal LM), original tokens (masked
    LM), tags (token classification) or the class at the pooled position (sequence
    classification). With ``return_predictions=True`` the forward also returns the predicted
    and the gold class of every target, for evaluation metrics.
    """

    name = "objective"
    # class names of the predictions (a confusion matrix per evaluation); None: no class metrics
    class_names: Sequence[str] | None = None
    # evaluation asks the forward for predictions (accuracy; per class with class_names)
    eval_predictions = False
    # the loss is a token cross-entropy whose exp() is a perplexity worth logging
    perplexity = True
    # the objective calls the model's own forward on padded rows (no varlen, attention mask)
    padded_rows = False
    # forward takes ``weights`` (per-position loss weights, see ``collate``): data.task_weights
    supports_weights = False

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self._hf = [hf_model(model)]  # a list: not registered as a second copy of the submodule
        # (units, step) -> units: targets drawn per step (masked LM); None: units as they are
        self.preparer = None
        self.layout, self.autocast_dtype, self.batch_size = None, None, 8  # see bind

    @property
    def hf(self) -> torch.nn.Module:
        return self._hf[0]

    def prepare(self, units: list[Unit], step: int) -> list[Unit]:
        """The units of optimizer step ``step`` as the loss sees them (default: unchanged).
        Evaluation passes ``step = -1 - k`` for its k-th micro-batch."""
        return self.preparer(units, step) if self.preparer is not None else units

    def passes(self, units: list[Unit], step: int) -> list[list[Unit]]:
        """The optimizer steps loop step ``step`` takes, each over a list of the prepared
        ``units`` (default: one over all of them)."""
        return [units]

    def bind(self, layout, autocast_dtype, batch_size: int) -> None:
        """Called by the loop before training: how it turns units into micro-batches
        (``forward.Layout``), its autocast dtype (None: fp32) and ``train.batch_size``."""
        self.layout, self.autocast_dtype, self.batch_size = layout, autocast_dtype, batch_size

    def loop_state(self) -> dict:
        """What the objective carries across steps, JSON-serialisable, for checkpoints."""
        return {}

    def load_loop_state(self, state: dict) -> None:
        """Take back :meth:`loop_state` from a checkpoint."""

    def weight(self, unit: Unit) -> int | float:
        """This unit's share of a step's normaliser (default: its target tokens, each counted
        with its piece's weight)."""
        return unit_weight(unit)

    def eval_sums(self) -> dict[str, tuple[float, int]]:
        """``{name: (sum, count)}`` of the objective's own statistics over the evaluation
        forwards since the last call; an evaluation reports ``eval_<name>`` = sum / count over
        every process. Default: none (the preference objectives report their rewards)."""
        return {}

    def log_metrics(self) -> dict:
        """Values for the training log (``metrics.jsonl``) since the last logged row; the loop
        asks at every logged step (EWC: its penalty). Default: none."""
        return {}


class Tallied(Objective):
    """An objective that logs statistics of its own (rewards, margins, KL): each is a running
    ``(sum, count)`` per window, one window for training (read by ``log_metrics``) and one for
    evaluation (read by ``eval_sums``)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__(model)
        self._sums: dict[bool, dict] = {True: {}, False: {}}

    def _add(self, training: bool | None = None, **values: torch.Tensor) -> None:
        """Add each statistic's values to the training or evaluation window (default: the mode
        the objective is in)."""
        sums = self._sums[self.training if training is None else training]
        for key, value in values.items():
            total, count = sums.get(key, (0.0, 0))
            sums[key] = (total + float(value.detach().float().sum()), count + value.numel())

    def log_metrics(self) -> dict:
        sums, self._sums[True] = self._sums[True], {}
        return {k: total / n for k, (total, n) in sums.items() if n}

    def eval_sums(self) -> dict:
        sums, self._sums[False] = self._sums[False], {}
        return sums


def kept(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(boolean mask of positions with a target, those targets in row-major order)."""
    keep = targets != IGNORE
    return keep, targets[keep]


def output(loss: torch.Tensor, logits: torch.Tensor, gold: torch.Tensor, predictions: bool):
    """An objective's result: ``(loss, count)``, or for evaluation ``(loss, count, predicted
    class, gold class)``; ``logits`` ``(count, classes)`` are those of the ``gold`` targets."""
    if predictions:
        return loss, int(gold.numel()), logits.argmax(-1), gold
    return loss, int(gold.numel())
