"""Masked-LM targets drawn per optimizer step (dynamic masking, as RoBERTa does).

BERT's rule (Devlin et al. 2019, section 3.1): each non-special token is selected with
probability ``mask_prob`` (15%); a selected token is replaced by ``[MASK]`` 80% of the time, by a
random token 10% of the time and kept 10% of the time, and the model learns the original token
at every selected position. The draw is a pure function of ``(seed, step)``, so every process of
a distributed run masks the step identically and a resumed run masks as the uninterrupted one
did; evaluation batches use fixed draws, so evaluations are comparable over a run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from lmforge.training.collate import IGNORE, Piece, Unit

_MLM_STREAM = 0x4D4C4D  # keeps these draws apart from every other seeded stream


@dataclass
class Masker:
    mask_id: int
    vocab_size: int
    special_ids: Iterable[int]
    mask_prob: float = 0.15
    mask_token_frac: float = 0.8
    random_token_frac: float = 0.1
    seed: int = 0
    _special: np.ndarray = field(init=False, repr=False)
    _ordinary: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._special = np.array(sorted(set(self.special_ids)), dtype=np.int64)
        self._ordinary = np.setdiff1d(np.arange(self.vocab_size), self._special)

    def __call__(self, units: list[Unit], step: int) -> list[Unit]:
        """``units`` with masked ids and the original tokens as targets (``step < 0``: the
        fixed draw of evaluation batch ``-step - 1``)."""
        rng = np.random.default_rng([self.seed, step + (1 << 40), _MLM_STREAM])
        return [[self._mask(piece, rng) for piece in unit] for unit in units]

    def _mask(self, piece: Piece, rng: np.random.Generator) -> Piece:
        ids = np.asarray(piece.ids, dtype=np.int64)
        n = len(ids)
        chosen = (rng.random(n) < self.mask_prob) & ~np.isin(ids, self._special)
        how = rng.random(n)
        new = ids.copy()
        new[chosen & (how < self.mask_token_frac)] = self.mask_id
        randomised = chosen & (how >= self.mask_token_frac)
        randomised &= how < self.mask_token_frac + self.random_token_frac
        new[randomised] = rng.choice(self._ordinary, size=int(randomised.sum()))
        targets = np.full(n, IGNORE, dtype=np.int64)
        targets[chosen] = ids[chosen]
        return Piece(new.tolist(), targets.tolist())
