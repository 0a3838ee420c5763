"""Permutation language modelling (XLNet, Yang et al. 2019) on transformers' ``XLNetLMHeadModel``.

XLNet predicts tokens autoregressively in a random *factorisation order* while every token
keeps its position; two-stream attention (built into the model) lets a target see its
position but not its own content. With partial prediction only the last ``1/K`` of the order
is predicted. Per optimizer step :class:`PlmTargets` picks ``plm_prob`` (default 1/6) of each
piece's non-special tokens as targets (seeded by step, like masked LM); per micro-batch the
forward then builds, for every row, the order and the masks the model takes:

- the context (non-targets and special tokens) comes first in the order and is visible to
  every position; targets follow in a random order;
- ``perm_mask[b, i, j] = 1`` when position ``i`` may not see ``j``: ``j`` is a target that does
  not come before ``i`` in the order (a target never sees itself);
- ``target_mapping[b, t, i] = 1`` when the ``t``-th prediction of row ``b`` is position ``i``.

This follows the masks of XLNet's released pretraining code (``_local_perm``: non-masked
tokens get the smallest order index). Rows are padded (XLNet does not take packed sequences:
its relative positions span the whole row), so every piece is a row of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.training.collate import IGNORE, Piece, Unit
from lmforge.training.objectives.base import Objective, kept, output

_PLM_STREAM = 0x504C4D


@dataclass
class PlmTargets:
    """Per step: ``prob`` of each piece's ordinary tokens become targets (at least one)."""

    special_ids: Iterable[int]
    prob: float = 1 / 6
    seed: int = 0
    _special: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._special = np.array(sorted(set(self.special_ids)), dtype=np.int64)

    def __call__(self, units: list[Unit], step: int) -> list[Unit]:
        rng = np.random.default_rng([self.seed, step + (1 << 40), _PLM_STREAM])
        return [[self._pick(piece, rng) for piece in unit] for unit in units]

    def _pick(self, piece: Piece, rng: np.random.Generator) -> Piece:
        ids = np.asarray(piece.ids, dtype=np.int64)
        ordinary = np.flatnonzero(~np.isin(ids, self._special))
        targets = np.full(len(ids), IGNORE, dtype=np.int64)
        if len(ordinary):
            n = max(1, round(len(ordinary) * self.prob))
            chosen = rng.choice(ordinary, size=n, replace=False)
            targets[chosen] = ids[chosen]
        return Piece(piece.ids, targets.tolist())


def permutation_masks(
    targets: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(perm_mask (B, L, L), target_mapping (B, P, L), labels (B, P))`` for ``targets``
    ``(B, L)`` (``-100`` off target); ``P`` is the most targets of any row, labels ``-100``
    where a row has fewer."""
    rows, length = targets.shape
    is_target = targets != IGNORE
    most = max(1, int(is_target.sum(1).max()))
    perm_mask = torch.zeros(rows, length, length)
    mapping = torch.zeros(rows, most, length)
    labels = torch.full((rows, most), IGNORE, dtype=torch.long)
    for b in range(rows):
        where = torch.nonzero(is_target[b]).flatten()
        order = where[torch.randperm(len(where), generator=generator)]
        rank = torch.full((length,), -1, dtype=torch.long)  # context: before every target
        rank[order] = torch.arange(len(order))
        # i may not see j when j is a target and rank[j] >= rank[i] (for a target) or
        # rank[j] >= rank[i] + 1 (for context, which sees all context and no target)
        own = torch.where(is_target[b], rank, rank + 1)
        perm_mask[b] = ((own[:, None] <= rank[None, :]) & is_target[b][None, :]).float()
        mapping[b, torch.arange(len(order)), order] = 1.0
        labels[b, : len(order)] = targets[b, order]
    return perm_mask, mapping, labels


class PermutationLMLoss(Objective):
    name = "permutation-lm"
    eval_predictions = True  # accuracy on the predicted tokens
    padded_rows = True

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        targets: torch.Tensor,
        unit_sizes: list[int] | None = None,
        return_predictions: bool = False,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple:
        device = input_ids.device
        perm_mask, mapping, labels = permutation_masks(targets.cpu())
        logits = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            perm_mask=perm_mask.to(device),
            target_mapping=mapping.to(device),
            use_mems=False,
        ).logits
        keep, wanted = kept(labels.to(device))
        logits = logits[keep].float()
        loss = F.cross_entropy(logits, wanted, reduction="sum")
        return output(loss, logits, wanted, return_predictions)


def plan_permutation_lm(cfg, tokenizer):
    """The stage plan of ``objective.type=plm`` (see ``training.stages``)."""
    from lmforge.models.load import model_type
    from lmforge.training.data import Encoder
    from lmforge.training.encoders import masked_lm_pieces
    from lmforge.training.stages import StagePlan

    if model_type(cfg.model) != "xlnet":
        raise ConfigError(
            "objective.type=plm needs an XLNet model (two-stream attention): "
            "model.preset=tiny-xlnet, or a local XLNet folder"
        )
    picker = PlmTargets(tokenizer.all_special_ids, cfg.objective.plm_prob, cfg.train.seed)

    def make(model: torch.nn.Module) -> Objective:
        objective = PermutationLMLoss(model)
        objective.preparer = picker
        return objective

    encoder = Encoder("plm", masked_lm_pieces, settings={"specials": True}, needs_targets=False)
    return StagePlan("pt/plm", "permutation-lm", None, encoder, make)
