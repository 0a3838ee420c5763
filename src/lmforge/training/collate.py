"""The packed batch format every stage uses.

A *piece* is one sequence's tokens and its next-token targets (already shifted, ``-100`` where
nothing is learned). A *unit* is what the sampler shuffles: one SFT example (one piece) or one
pretraining block (pieces of consecutive documents). A micro-batch becomes tensors:

- ``input_ids``    ``(rows, L)`` long
- ``position_ids`` ``(rows, L)`` long, restarting at 0 at every piece
- ``targets``      ``(rows, L)`` long, ``-100`` on padding and on unlearned tokens
- ``unit_sizes``   list of ints: how many (non-empty) pieces each unit contributed, in order
  (objectives that compare pieces of a unit, like contrastive pairs, read it)
- ``weights``      ``(rows, L)`` float32, each position's piece weight (0 on padding); only
  present when some piece has a weight other than 1 (``data.task_weights``, stage sft)
- ``token_values`` ``{name: (rows, L) float32}``, per-position numbers the pieces carry (0 on
  padding); only present when some piece has ``values`` (stage ppo: each answer token's
  old log-probability, value, advantage and return, made by the rollout phase)

Two packed layouts keep attention inside each piece:

- **varlen** (the default where the model supports it, see ``attention``): the whole micro-batch
  is one row with no padding at all, plus ``cu_seq_lens`` (cumulative piece starts) that the
  attention function uses to attend per piece. Row length does not matter: attention costs
  Σ len², not row².
- **rows**: pieces packed into rows of at most ``capacity`` tokens; the model is called with
  ``position_ids``, no attention mask and ``use_cache=False``, and transformers (5.x
  ``masking_utils.find_packed_sequence_indices``) turns restarting positions into a dense
  block-diagonal causal mask (O(row²), hence the capacity). Padding, when a row is shorter than
  the longest, gets its own restarting positions, so real tokens never attend to it.

And one unpacked layout, **padded** (``attention_mask=True``): one row per piece, right-padded,
with ``attention_mask`` ``(rows, L)`` (1 on real tokens). It is what bidirectional encoders need
without varlen attention (restarting positions do not keep an encoder's attention apart), and
what models called through their own forward (prompt tuning, unknown heads) expect.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass
class Piece:
    ids: list[int]
    targets: list[int]
    # each target's loss is multiplied by it and it counts this many times in the normaliser
    # (``data.task_weights``: the weight of the piece's task)
    weight: float = 1.0
    # per-position numbers aligned with ``ids`` (e.g. PPO's advantage of the token each
    # position predicts); every piece of a batch that has them has the same names
    values: dict[str, list[float]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_labels(cls, ids: list[int], labels: list[int], weight: float = 1.0) -> Piece:
        """Shift Hugging Face style labels (``labels[i] == ids[i]`` where learned) into targets."""
        return cls(list(ids), list(labels[1:]) + [IGNORE], weight)


Unit = list[Piece]


def unit_tokens(unit: Unit) -> int:
    return sum(len(p) for p in unit)


def unit_targets(unit: Unit) -> int:
    return sum(sum(1 for t in p.targets if t != IGNORE) for p in unit)


def unit_weight(unit: Unit) -> int | float:
    """The unit's target tokens, each counted with its piece's weight (an int when every
    weight is 1, so unweighted runs normalise and log exactly as before)."""
    if all(p.weight == 1.0 for p in unit):
        return unit_targets(unit)
    return sum(p.weight * sum(1 for t in p.targets if t != IGNORE) for p in unit)


def collate(rows: list[list[Piece]], pad_id: int) -> dict[str, torch.Tensor]:
    """Tensors for rows of pieces; each row is the concatenation of its pieces."""
    length = max(sum(len(p) for p in row) for row in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), length), dtype=torch.long)
    tgt = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    weighted = any(p.weight != 1.0 for row in rows for p in row)
    weights = torch.zeros((len(rows), length)) if weighted else None
    names = sorted({k for row in rows for p in row for k in p.values or {}})
    values = {k: torch.zeros((len(rows), length)) for k in names}
    for r, row in enumerate(rows):
        start = 0
        for piece in row:
            end = start + len(piece)
            ids[r, start:end] = torch.tensor(piece.ids)
            pos[r, start:end] = torch.arange(len(piece))
            tgt[r, start:end] = torch.tensor(piece.targets)
            if weights is not None:
                weights[r, start:end] = piece.weight
            for k in names:
                values[k][r, start:end] = torch.tensor(piece.values[k], dtype=torch.float32)
            start = end
        pos[r, start:] = torch.arange(length - start)  # padding: a sequence of its own
    batch = {"input_ids": ids, "position_ids": pos, "targets": tgt}
    if weights is not None:
        batch["weights"] = weights
    if values:
        batch["token_values"] = values
    return batch


def pack_rows(units: list[Unit], capacity: int) -> list[list[Piece]]:
    """Units into as few rows of at most ``capacity`` tokens as first-fit-decreasing needs, with
    the tokens spread evenly over those rows (longest unit first, into the emptiest row that
    fits), so that padding every row to the longest stays small. A unit longer than
    ``capacity`` gets a row of its own. Row length is bounded by ``capacity``, which bounds the
    attention cost (O(row^2) on CPU)."""
    ordered = sorted(units, key=unit_tokens, reverse=True)
    free: list[int] = []  # first-fit-decreasing, only to learn how many rows are needed
    for unit in ordered:
        size = unit_tokens(unit)
        for r, room in enumerate(free):
            if size <= room:
                free[r] -= size
                break
        else:
            free.append(capacity - size)
    rows: list[list[Piece]] = [[] for _ in free]
    load = [0] * len(free)
    for unit in ordered:
        size = unit_tokens(unit)
        fitting = [r for r in range(len(rows)) if load[r] + size <= capacity or load[r] == 0]
        r = min(fitting, key=load.__getitem__) if fitting else len(rows)
        if r == len(rows):
            rows.append([])
            load.append(0)
        rows[r].extend(unit)
        load[r] += size
    return [row for row in rows if row]


def _unit_sizes(units: list[Unit]) -> list[int]:
    return [sum(1 for p in u if len(p)) for u in units]


def padded_batch(units: list[Unit], pad_id: int) -> dict:
    """One right-padded row per piece, with ``attention["attention_mask"]``."""
    pieces = [p for u in units for p in u if len(p)]
    batch = collate([[p] for p in pieces], pad_id)
    mask = torch.zeros_like(batch["input_ids"])
    for r, piece in enumerate(pieces):
        mask[r, : len(piece)] = 1
    batch["attention"] = {"attention_mask": mask}
    batch["unit_sizes"] = _unit_sizes(units)
    return batch


def varlen_batch(units: list[Unit]) -> dict:
    """One row holding every piece, and the ``attention`` kwargs that keep pieces apart."""
    pieces = [p for u in units for p in u if len(p)]
    batch = collate([pieces], pad_id=0)
    batch["unit_sizes"] = _unit_sizes(units)
    lengths = torch.tensor([len(p) for p in pieces], dtype=torch.int32)
    cu = torch.zeros(len(pieces) + 1, dtype=torch.int32)
    torch.cumsum(lengths, 0, out=cu[1:])
    longest = int(lengths.max())
    batch["attention"] = {
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": longest,
        "max_length_k": longest,
    }
    return batch


def micro_batch(
    units: list[Unit],
    pad_id: int,
    capacity: int | None,
    varlen: bool = False,
    attention_mask: bool = False,
) -> dict:
    """One varlen row; else one padded row per piece with an attention mask
    (``attention_mask``); else packed rows of at most ``capacity`` tokens, or one row per unit
    when ``capacity`` is ``None``."""
    if varlen:
        return varlen_batch(units)
    if attention_mask:
        return padded_batch(units, pad_id)
    rows = pack_rows(units, capacity) if capacity else [list(u) for u in units]
    batch = collate(rows, pad_id)
    batch["unit_sizes"] = _unit_sizes(units)
    return batch
