"""Elastic Weight Consolidation (Kirkpatrick et al. 2017) around any stage's objective.

Training a model that learned task A on task B moves weights that A needed. EWC adds a
quadratic penalty that holds each trainable weight near its value at the start, ``θ*`` (the
model that learned A), in proportion to how much A's loss depends on it, the diagonal of the
Fisher information ``F`` estimated on A's data (``training.continual.estimate_fisher``)::

    penalty(θ) = λ/2 · Σ_i F_i (θ_i − θ*_i)²        over the trainable parameters

:class:`EWCLoss` wraps the stage's objective. In training its forward returns
``(inner loss sum + penalty × count, count)``. The loop divides every micro-batch's sum by the
whole step's count ``N``, and the counts of a step's micro-batches, over every process, add up to
``N``, so the step minimises ``mean task loss + penalty`` exactly, whatever ``grad_accum`` and
the number of processes. In evaluation it returns the inner objective's values alone, so
validation losses stay task losses, comparable with runs without EWC.

What the trainable parameters are decides what EWC holds: every weight (full fine-tuning), the
unfrozen ones (freeze), or an adapter's own weights (LoRA), whose ``θ*`` is the adapter at its
initialisation: ``B = 0``, so the penalty is a Fisher-weighted pull of ``B`` (and with it the
update ``BA``) back to zero; ``A`` gets ``F = 0`` (with ``B = 0`` the loss does not depend on it)
and moves freely. ``θ*`` is taken when the objective is built, before a checkpoint is restored,
so a resumed run holds the same anchor.
"""

from __future__ import annotations

import torch

from lmforge.errors import ConfigError
from lmforge.training.collate import Unit
from lmforge.training.objectives.base import Objective


def trainable_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """``(name, parameter)`` of every parameter that trains, in ``named_parameters`` order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


class EWCLoss(Objective):
    """``inner``'s loss plus ``lam/2 · Σ F (θ − θ*)²`` (see the module docstring).

    ``fisher`` maps every trainable parameter name of ``inner.model`` to a float tensor of the
    parameter's shape; ``θ*`` is a copy of the parameters as they are now.
    """

    name = "ewc"

    def __init__(self, inner: Objective, fisher: dict[str, torch.Tensor], lam: float):
        super().__init__(inner.model)
        self.inner = inner
        for flag in ("class_names", "eval_predictions", "perplexity", "padded_rows"):
            setattr(self, flag, getattr(inner, flag))
        self.supports_weights = inner.supports_weights
        self.name = f"ewc({inner.name})"
        self.lam = float(lam)
        params = trainable_parameters(inner.model)
        names = [n for n, _ in params]
        if set(names) != set(fisher):
            missing = sorted(set(names) - set(fisher))[:3]
            extra = sorted(set(fisher) - set(names))[:3]
            raise ConfigError(
                f"the Fisher does not match the trainable parameters (missing {missing}, "
                f"unknown {extra}): it was made for another model or adapter"
            )
        # plain tensors on each parameter's device (build the objective after moving the model),
        # not buffers: nothing of EWC goes into checkpoints or DDP's broadcasts
        self._terms = []
        for n, p in params:
            f = fisher[n]
            if f.shape != p.shape:
                raise ConfigError(f"the Fisher of {n} has shape {tuple(f.shape)}, not {p.shape}")
            anchor = p.detach().clone()
            self._terms.append((p, anchor, f.to(device=p.device, dtype=torch.float32)))
        self._window = [0.0, 0.0]  # penalty x count, count: since the last logged row

    def penalty(self) -> torch.Tensor:
        """``lam/2 · Σ F (θ − θ*)²`` of the parameters as they are now (a float32 scalar with
        gradient)."""
        total = None
        for p, anchor, f in self._terms:
            term = (p.float() - anchor.float()).square().mul(f).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return 0.5 * self.lam * total

    def prepare(self, units: list[Unit], step: int) -> list[Unit]:
        return self.inner.prepare(units, step)

    def weight(self, unit: Unit) -> int | float:
        return self.inner.weight(unit)

    def passes(self, units: list[Unit], step: int) -> list[list[Unit]]:
        return self.inner.passes(units, step)

    def bind(self, layout, autocast_dtype, batch_size: int) -> None:
        self.inner.bind(layout, autocast_dtype, batch_size)

    def loop_state(self) -> dict:
        return self.inner.loop_state()

    def load_loop_state(self, state: dict) -> None:
        self.inner.load_loop_state(state)

    def forward(self, *args, **kwargs) -> tuple:
        out = self.inner(*args, **kwargs)
        if not self.training or self.lam == 0:
            return out
        loss, count = out[0], out[1]
        penalty = self.penalty()
        self._window[0] += float(penalty.detach()) * float(count)
        self._window[1] += float(count)
        return (loss + penalty * count, count, *out[2:])

    def log_metrics(self) -> dict:
        """``ewc_penalty``: the penalty over the logged steps, weighted like the logged loss
        (by each micro-batch's count), so ``loss - ewc_penalty`` is the task loss."""
        total, count = self._window
        self._window = [0.0, 0.0]
        return {"ewc_penalty": total / count} if count else {}
