"""Contrastive sentence embeddings (SimCSE, Gao et al. 2021) with in-batch negatives.

A unit is ``[anchor, positive]`` or ``[anchor, positive, hard negative]`` (see
``training.encoders.contrastive_pieces``):

- **unsupervised**: the positive is the anchor itself; the two passes differ only by dropout,
  which is the whole signal (so the model must have dropout on);
- **supervised**: the positive is a paraphrase / entailed sentence, optionally with a hard
  negative (a contradiction).

Each piece is encoded (packed: one varlen row, attention kept per piece; or padded rows) and
pooled (mean over its tokens, its first token or its last token). For anchor ``i`` the logits
are the cosine similarities to every positive and negative of the micro-batch divided by the
temperature, and the loss is the cross-entropy of picking its own positive: every other
example's sentences are negatives. The count is the number of anchors. Unlike the token losses,
the result depends on how a step is split into micro-batches (fewer in-batch negatives), so
``train.batch_size`` is part of a contrastive run's trajectory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge.training.collate import Unit
from lmforge.training.objectives.base import Objective, output


def piece_bounds(batch_len: int, cu_seq_lens: torch.Tensor | None) -> list[tuple[int, int]]:
    if cu_seq_lens is None:
        return [(0, batch_len)]
    bounds = cu_seq_lens.tolist()
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def pool_pieces(
    hidden: torch.Tensor,
    how: str,
    cu_seq_lens: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(pieces, H)`` embeddings from ``hidden`` ``(rows, L, H)``: one varlen row split at
    ``cu_seq_lens``, or padded rows (one piece each) with ``attention_mask``."""
    if attention_mask is not None:
        mask = attention_mask.to(hidden.dtype)
        lengths = attention_mask.sum(1)
        if how == "mean":
            return (hidden * mask[..., None]).sum(1) / lengths[:, None].clamp(min=1)
        if how == "first":
            return hidden[:, 0]
        return hidden[torch.arange(len(hidden)), (lengths - 1).clamp(min=0)]
    row = hidden[0]
    spans = piece_bounds(row.shape[0], cu_seq_lens)
    if how == "mean":
        return torch.stack([row[a:b].mean(0) for a, b in spans])
    return torch.stack([row[a] if how == "first" else row[b - 1] for a, b in spans])


class ContrastiveLoss(Objective):
    name = "contrastive"
    eval_predictions = True  # in-batch retrieval accuracy: does the anchor pick its positive?
    perplexity = False

    def __init__(self, model: torch.nn.Module, temperature: float = 0.05, pooling: str = "mean"):
        super().__init__(model)
        self.temperature = temperature
        self.pooling = pooling

    def weight(self, unit: Unit) -> int:
        return 1  # one anchor per unit

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
        hidden = self.hf(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            use_cache=False,
            **kwargs,
        ).last_hidden_state
        emb = pool_pieces(hidden, self.pooling, kwargs.get("cu_seq_lens_q"), attention_mask)
        anchors, positives, negatives = [], [], []
        start = 0
        for size in unit_sizes or []:
            if size >= 2:
                anchors.append(start)
                positives.append(start + 1)
                negatives.extend(range(start + 2, start + size))
            start += size
        emb = F.normalize(emb.float(), dim=-1)
        candidates = emb[positives + negatives]
        logits = emb[anchors] @ candidates.T / self.temperature
        gold = torch.arange(len(anchors), device=logits.device)
        return output(
            F.cross_entropy(logits, gold, reduction="sum"), logits, gold, return_predictions
        )
