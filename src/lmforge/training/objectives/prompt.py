"""The causal-LM loss of a prompt-learning PEFT model (prefix, prompt or P-tuning).

These adapters live in the PEFT model's forward, not in the decoder's weights: prompt and
P-tuning put ``num_virtual_tokens`` learned embeddings before the input embeddings, prefix
tuning gives every layer learned key/value prefixes. So the loss must call the PEFT model (the
fused path of ``objectives.causal`` calls the decoder directly and would skip the prompt), on padded
rows with one example each (see ``collate``: a row's padding follows its tokens and restarts
its positions at 0).

Logits: for prompt and P-tuning the model's output has ``num_virtual_tokens`` extra positions in
front; ``logits_to_keep`` = the row length keeps the last ``L`` positions, which are the real
tokens' for every type (prefix tuning adds none), so they line up with ``targets``. Positions
are left to PEFT (it drops ``position_ids`` for prompt/P-tuning and offsets them for prefix
tuning), as in its own training and generation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge.training.objectives.base import kept, output


def padding_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """``(rows, L)`` 1 on each row's tokens, 0 on its padding: the tokens are where the position
    still counts up from 0 with the column (collate restarts positions where padding begins)."""
    columns = torch.arange(position_ids.shape[1], device=position_ids.device)
    return (position_ids == columns).long()


def prompt_learning_loss(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    targets: torch.Tensor,
    return_predictions: bool = False,
) -> tuple:
    """(summed token loss, target count) of ``model`` (a PEFT prompt-learning model) on padded
    rows ``input_ids``/``position_ids``/``targets``, each ``(rows, L)``."""
    keep, wanted = kept(targets)
    logits = (
        model(
            input_ids=input_ids,
            attention_mask=padding_mask(position_ids),
            use_cache=False,
            logits_to_keep=input_ids.shape[1],
        )
        .logits[keep]
        .float()
    )
    loss = F.cross_entropy(logits, wanted, reduction="sum")
    return output(loss, logits, wanted, return_predictions)
