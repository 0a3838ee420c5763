"""What the loop does with each evaluation: track the best checkpoint, stop early.

:class:`EvalWatch` is fed the metrics of every evaluation (``evaluate_loss``'s ``eval_loss``,
``eval_ppl``, or whatever else an objective logs) and answers two questions: is this step a new
best (then, with ``load_best_at_end``, its checkpoint is written and kept past ``keep_last``),
and should training stop (``patience`` evaluations in a row without an improvement larger than
``threshold`` over the best so far).

Two notions of "better", as in Hugging Face's ``Trainer``: the *best* value moves on any
improvement (so the best checkpoint is the one with the lowest loss even when losses creep down
by less than the threshold), while the patience counter is reset only by an improvement larger
than ``threshold`` (absolute, or relative to ``|best|``).

Its state (best value and step, evaluations without improvement, why it stopped) goes into every
checkpoint, so a resumed run stops at exactly the step an uninterrupted one does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lmforge.config.training import TrainConfig
from lmforge.errors import ConfigError


@dataclass
class EvalWatch:
    metric: str = "eval_loss"
    mode: str = "min"  # min | max
    patience: int | None = None  # None: never stop early
    threshold: float = 0.0
    threshold_mode: str = "abs"  # abs | rel
    keep_best: bool = False  # write the best step's checkpoint and never delete it
    # state, saved in checkpoints
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # evaluations in a row without an improvement > threshold
    stopped_step: int | None = None
    stop_reason: str | None = None

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> EvalWatch:
        es = cfg.early_stopping
        return cls(
            metric=es.metric,
            mode=es.mode,
            patience=es.patience,
            threshold=es.threshold,
            threshold_mode=es.threshold_mode,
            keep_best=cfg.load_best_at_end,
        )

    @property
    def needs_validation(self) -> bool:
        return self.patience is not None or self.keep_best

    @property
    def stopped(self) -> bool:
        return self.stopped_step is not None

    def _gain(self, value: float) -> float:
        """How much ``value`` is better than the best so far (positive: better)."""
        if self.best is None:
            return math.inf
        return self.best - value if self.mode == "min" else value - self.best

    def _margin(self) -> float:
        """The improvement over the best that resets the patience counter."""
        scale = abs(self.best) if self.threshold_mode == "rel" and self.best is not None else 1.0
        return self.threshold * scale

    def update(self, step: int, metrics: dict) -> bool:
        """Take one evaluation's ``metrics`` at optimizer step ``step``; True: stop now."""
        if self.metric not in metrics:
            shown = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, int | float)))
            raise ConfigError(
                f"train.early_stopping.metric '{self.metric}' is not logged by the evaluation "
                f"(it logs: {shown})"
            )
        value = float(metrics[self.metric])
        if not math.isfinite(value):  # a NaN evaluation is never an improvement
            gain = -math.inf
        else:
            gain = self._gain(value)
        significant = self.best is None or gain > self._margin()
        if gain > 0:
            self.best, self.best_step = value, step
        self.bad_evals = 0 if significant else self.bad_evals + 1
        if self.patience is not None and self.bad_evals >= self.patience:
            self.stopped_step = step
            self.stop_reason = (
                f"early stopping: {self.metric} did not improve by more than {self.threshold}"
                f"{' (relative)' if self.threshold_mode == 'rel' else ''} for {self.bad_evals} "
                f"evaluations; best {self.best:.6g} at step {self.best_step}"
            )
        return self.stopped

    def save_now(self, step: int) -> bool:
        """True when ``step`` is a new best whose checkpoint must be written."""
        return self.keep_best and self.best_step == step

    def kept_steps(self) -> set[int]:
        """Checkpoint steps ``keep_last`` must not delete."""
        return {self.best_step} if self.keep_best and self.best_step is not None else set()

    def state_dict(self) -> dict:
        fields = ("best", "best_step", "bad_evals", "stopped_step", "stop_reason")
        return {k: v for k, v in asdict(self).items() if k in fields}

    def load_state_dict(self, state: dict | None) -> None:
        for key, value in (state or {}).items():
            setattr(self, key, value)

    def load_best(self, model: torch.nn.Module, ckpt_root: Path, strategy) -> Path | None:
        """With ``keep_best``: copy the best checkpoint's trainable weights into ``model``.

        Returns the checkpoint folder, or None when nothing was loaded (off, or no evaluation
        ran). Under torchrun every rank calls this and keeps its own part.
        """
        from lmforge.training.checkpoint import read_checkpoint

        if not self.keep_best or self.best_step is None:
            return None
        folder = ckpt_root / f"step-{self.best_step:06d}"
        strategy.load_trainable(model, read_checkpoint(folder).weights)
        return folder

    def summary(self, steps_run: int, total: int) -> dict:
        """Manifest metrics: what was best, and whether and why the run stopped early."""
        out: dict = {"steps": steps_run, "max_steps": total, "stopped_early": self.stopped}
        if self.stop_reason:
            out["stop_reason"] = self.stop_reason
        if self.best_step is not None:
            out.update(best_metric=self.metric, best_value=self.best, best_step=self.best_step)
            # the step whose weights model/ holds
            out["model_step"] = self.best_step if self.keep_best else steps_run
        return out
