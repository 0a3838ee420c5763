"""``eval.gates`` of a training run (``lmforge.eval.gates``): parsed before any work, the
evaluation run on the model before training (the ``base`` of every gate) and after it, the
results in the manifest, and an unmet gate failing the run once the model is saved."""

from __future__ import annotations

from pathlib import Path

import torch

from lmforge.data.readers import Rejects, check_files
from lmforge.errors import ConfigError, RunFailed
from lmforge.eval.gates import EVALUATION, check_gates, describe_failures, gate_metrics, parse_gates
from lmforge.recipes.evaluate import evaluate_model, file_kinds

EVAL_REJECTS = "eval_rejects.jsonl"


class Gating:
    def __init__(self, cfg, strategy):
        self.cfg = cfg.eval
        self.gates = parse_gates(cfg.eval.gates, cfg.eval)
        self.evaluates = file_kinds(self.cfg)
        check_files([f for k in self.evaluates for f in getattr(self.cfg, k).files], "eval file")
        if self.evaluates and strategy.world_size > 1:
            raise ConfigError(
                "eval.perplexity/exact_match/multiple_choice evaluate the model in one process; "
                "under torchrun gate on the loop's own metrics (eval_loss, eval_accuracy, ...)"
            )
        self.before_metrics: dict = {}
        self.rejects = Rejects()

    @property
    def needs_start_eval(self) -> bool:
        """A gate compares a loop metric (``eval_*``) with its value before training."""
        return any(g.uses_base and g.metric not in EVALUATION for g in self.gates)

    def _evaluate(self, model, tokenizer) -> dict:
        if not self.evaluates:
            return {}
        with torch.no_grad():
            return evaluate_model(self.cfg, model, tokenizer, self.rejects)

    def before(self, model, tokenizer, device: torch.device) -> dict:
        """The evaluation of the starting model (``run.metrics['eval_before']``)."""
        if not self.evaluates:
            return {}
        model.to(device)
        evaluation = self._evaluate(model, tokenizer)
        self.before_metrics = gate_metrics(evaluation)
        return evaluation

    def after(self, model, tokenizer, loop_metrics: dict, run_dir: Path) -> tuple[dict, list]:
        """``(evaluation of the trained model, gate results)``; rejected evaluation rows are
        written to ``run_dir/eval_rejects.jsonl``."""
        evaluation = self._evaluate(model, tokenizer)
        if self.evaluates:
            self.rejects.write(Path(run_dir) / EVAL_REJECTS)
        after = {**_loop(loop_metrics), **gate_metrics(evaluation)}
        before = {**_loop_start(loop_metrics), **self.before_metrics}
        return evaluation, check_gates(self.gates, after, before)

    @staticmethod
    def enforce(results: list[dict]) -> None:
        if any(not r["passed"] for r in results):
            raise RunFailed(f"eval.gates not met: {describe_failures(results)}")


def _loop(metrics: dict) -> dict:
    return {
        k: float(v)
        for k, v in metrics.items()
        if (k.startswith("eval_") or k == "train_loss") and isinstance(v, int | float)
    }


def _loop_start(metrics: dict) -> dict:
    """The step-0 evaluation (``start_eval_*``) under the names of the final one."""
    return {
        k.removeprefix("start_"): float(v)
        for k, v in metrics.items()
        if k.startswith("start_eval_") and isinstance(v, int | float)
    }
