"""Per-sequence log-probabilities of the target tokens, without full ``[tokens × vocab]`` logits.

Preference losses (DPO and its relatives, later PPO/GRPO) need ``log p(answer | prompt)`` of
every packed piece, with gradient: a sum over the piece's target tokens of
``log_softmax(h W^T + b)[target]``. :class:`TokenLogProbs` computes the per-token values chunk by
chunk in the forward pass and *recomputes* each chunk's logits in the backward pass (the
gradient of a per-token output depends on its own upstream gradient, so it cannot be formed
ahead of time as ``objectives.causal.LinearCrossEntropy`` does for a single summed loss): at
most ``chunk × vocab`` logits exist at any time, in either pass. Heads that are not a plain
linear layer take transformers' own path with ``logits_to_keep`` at the target positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge.training.collate import IGNORE
from lmforge.training.objectives.base import kept
from lmforge.training.objectives.causal import CHUNK_ELEMENTS, plain_head


class TokenLogProbs(torch.autograd.Function):
    """``log_softmax(F.linear(hidden, weight, bias))[i, targets[i]]`` for every row ``i``."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk):
        out = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk):
            logits = F.linear(hidden[start : start + chunk], weight, bias).float()
            t = targets[start : start + chunk]
            out[start : start + chunk] = logits.gather(1, t[:, None]).squeeze(1) - torch.logsumexp(
                logits, dim=-1
            )
        ctx.save_for_backward(hidden, weight, *(() if bias is None else (bias,)), targets)
        ctx.chunk = chunk
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.has_bias:
            hidden, weight, bias, targets = ctx.saved_tensors
        else:
            (hidden, weight, targets), bias = ctx.saved_tensors, None
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = ctx.has_bias and ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[start : start + ctx.chunk]
            t = targets[start : start + ctx.chunk]
            g = grad_out[start : start + ctx.chunk].float()
            logits = F.linear(h, weight, bias).float()
            # d log p[t] / d logits = one_hot(t) - softmax, times the row's upstream gradient
            grad = torch.softmax(logits, dim=-1).mul_(-g[:, None])
            grad[torch.arange(len(t), device=t.device), t] += g
            if need_h:
                grad_h[start : start + ctx.chunk] = (grad.to(weight.dtype) @ weight).to(h.dtype)
            if need_w:
                grad_w += grad.T @ h.float()
            if need_b:
                grad_b += grad.sum(0)
        return (
            grad_h,
            grad_w.to(weight.dtype) if need_w else None,
            grad_b.to(bias.dtype) if need_b else None,
            None,
            None,
        )


def token_logprobs(hidden, weight, bias, targets, chunk: int | None = None) -> torch.Tensor:
    chunk = chunk or max(16, CHUNK_ELEMENTS // weight.shape[0])
    return TokenLogProbs.apply(hidden, weight, bias, targets, chunk)


@torch.no_grad()
def token_logprobs_entropy(
    hidden, weight, bias, targets, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Without gradient: the target log-probability and the entropy of the predicted
    distribution at every row, chunk by chunk (rollout statistics)."""
    chunk = chunk or max(16, CHUNK_ELEMENTS // weight.shape[0])
    logp = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
    entropy = torch.empty_like(logp)
    for start in range(0, hidden.shape[0], chunk):
        logits = F.linear(hidden[start : start + chunk], weight, bias).float()
        log_probs = torch.log_softmax(logits, dim=-1)
        t = targets[start : start + chunk]
        logp[start : start + chunk] = log_probs.gather(1, t[:, None]).squeeze(1)
        entropy[start : start + chunk] = -(log_probs.exp() * log_probs).sum(-1)
    return logp, entropy


def target_hidden(
    hf: torch.nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    targets: torch.Tensor,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(last hidden state at every target position, the targets)``, in row-major order of
    ``targets != -100``: the decoder's output, before the output layer."""
    keep, wanted = kept(targets)
    hidden = hf.get_decoder()(
        input_ids=input_ids, position_ids=position_ids, use_cache=False, **kwargs
    ).last_hidden_state[keep]
    return hidden, wanted


def piece_ids(
    targets: torch.Tensor,
    cu_seq_lens: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(rows, L)`` index of the piece each position belongs to: one varlen row split at
    ``cu_seq_lens``, or padded rows with one piece each (``attention_mask``, or no varlen)."""
    rows, length = targets.shape
    if cu_seq_lens is not None and rows == 1:
        sizes = (cu_seq_lens[1:] - cu_seq_lens[:-1]).to(targets.device, torch.long)
        ids = torch.repeat_interleave(torch.arange(len(sizes), device=targets.device), sizes)
        return ids[None]
    if rows > 1 and attention_mask is None:
        raise RuntimeError("sequence log-probabilities need varlen or one padded row per piece")
    return torch.arange(rows, device=targets.device)[:, None].expand(rows, length)


def target_logprobs(
    model: torch.nn.Module,
    hf: torch.nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    targets: torch.Tensor,
    **kwargs,
) -> torch.Tensor:
    """The log-probability of every target token, in row-major order of ``targets != -100``.

    ``model`` is what is called (a PEFT wrapper, or the model itself); ``hf`` the transformers
    model inside it, whose decoder and head the fused path uses.
    """
    if plain_head(hf):
        hidden, wanted = target_hidden(hf, input_ids, position_ids, targets, **kwargs)
        head = hf.get_output_embeddings()
        return token_logprobs(hidden, head.weight, head.bias, wanted)
    keep, wanted = kept(targets)
    logits = model(
        input_ids=input_ids,
        position_ids=position_ids,
        use_cache=False,
        logits_to_keep=keep,
        **kwargs,
    ).logits.float()
    return logits.gather(1, wanted[:, None]).squeeze(1) - torch.logsumexp(logits, -1)


def sequence_logprobs(
    model: torch.nn.Module,
    hf: torch.nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    targets: torch.Tensor,
    n_pieces: int,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of target log-probs, target count)`` per piece, each ``(n_pieces,)``."""
    lp = target_logprobs(model, hf, input_ids, position_ids, targets, **kwargs)
    keep = targets != IGNORE
    owner = piece_ids(targets, kwargs.get("cu_seq_lens_q"), kwargs.get("attention_mask"))[keep]
    sums = lp.new_zeros(n_pieces).index_add(0, owner, lp)
    counts = torch.zeros(n_pieces, device=lp.device).index_add(0, owner, torch.ones_like(lp))
    return sums, counts
