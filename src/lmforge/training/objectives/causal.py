"""The causal-LM objective without full ``[tokens × vocab]`` logits.

Only positions with a target (assistant tokens in SFT, every token but the last of a piece in
pretraining) reach the output projection, and on models whose head is a plain linear layer the
projection and the cross-entropy run fused, in chunks of rows (:class:`LinearCrossEntropy`): at
most ``chunk × vocab`` logits exist at any time, and their gradient is taken right away, so the
backward pass needs neither the logits nor the softmax. This is what liger-kernel's fused linear
cross-entropy does with Triton on GPUs; it is written here with plain matmuls because it must run
on CPU, where no such kernel exists. Other heads (logit soft-capping, scaling, LoRA on
``lm_head``) take transformers' own path with ``logits_to_keep`` set to the target positions.

:class:`CausalLMLoss` wraps the model as one module so DDP and FSDP see a single forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.models.adapters import is_prompt_learning
from lmforge.training.objectives.base import Objective, kept
from lmforge.training.objectives.prompt import prompt_learning_loss

# model types whose CausalLM head is exactly ``lm_head(final_hidden_states)``
_PLAIN_HEAD = {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "gemma", "smollm3"}
CHUNK_ELEMENTS = 1 << 23  # logits held at once: 8M floats = 32 MiB


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T (+ bias)`` against ``targets``, chunked.

    The gradients for ``hidden`` (and ``weight``/``bias`` when they are trained) are computed in
    the forward pass, chunk by chunk, and only scaled in the backward pass.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, row_weights=None):
        need_h = hidden.requires_grad
        need_w = weight.requires_grad
        need_b = bias is not None and bias.requires_grad
        grads = need_h or need_w or need_b
        total = hidden.new_zeros((), dtype=torch.float32)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk]
            t = targets[start : start + chunk]
            logits = F.linear(h, weight, bias).float()
            lse = torch.logsumexp(logits, dim=-1)
            losses = lse - logits.gather(1, t[:, None]).squeeze(1)
            w = None if row_weights is None else row_weights[start : start + chunk].float()
            total += (losses if w is None else losses * w).sum()
            if not grads:
                continue
            # d(sum of losses)/d logits = softmax - one_hot, computed in place on the logits
            probs = logits.sub_(lse[:, None]).exp_()
            probs[torch.arange(len(t), device=t.device), t] -= 1.0
            if w is not None:  # a row's loss times w: its gradient times w
                probs.mul_(w[:, None])
            if need_h:
                grad_h[start : start + chunk] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_w:
                grad_w += probs.T @ h.float()
            if need_b:
                grad_b += probs.sum(0)
        ctx.save_for_backward(
            *(g if g is not None else torch.empty(0) for g in (grad_h, grad_w, grad_b))
        )
        ctx.has = (need_h, need_w, need_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        need_h, need_w, need_b = ctx.has
        w_dtype, b_dtype = ctx.dtypes
        return (
            grad_h * grad_out.to(grad_h.dtype) if need_h else None,
            (grad_w * grad_out).to(w_dtype) if need_w else None,
            (grad_b * grad_out).to(b_dtype) if need_b else None,
            None,
            None,
            None,
        )


def linear_cross_entropy(
    hidden, weight, bias, targets, chunk: int | None = None, row_weights=None
) -> torch.Tensor:
    """Summed token loss of ``F.linear(hidden, weight, bias)`` without materialising all logits;
    with ``row_weights`` ``(rows,)`` each row's loss (and gradient) is multiplied by its weight
    (the weights get no gradient)."""
    chunk = chunk or max(16, CHUNK_ELEMENTS // weight.shape[0])
    return LinearCrossEntropy.apply(hidden, weight, bias, targets, chunk, row_weights)


def plain_head(hf: torch.nn.Module) -> bool:
    """Whether ``hf``'s logits are exactly ``lm_head(decoder(...).last_hidden_state)`` with a
    plain linear ``lm_head`` (no soft-capping or scaling, no LoRA on it): the fused paths."""
    head = hf.get_output_embeddings()
    return (
        getattr(hf.config, "model_type", None) in _PLAIN_HEAD
        and type(head) is torch.nn.Linear
        and hf.get_decoder() is not hf
    )


class CausalLMLoss(Objective):
    """``(input_ids, position_ids, targets, **attention kwargs) -> (summed loss, target count)``.

    Pretraining and SFT: each target is the next token (already shifted, see ``collate``).
    With ``weights`` ``(rows, L)`` (``data.task_weights``) each target's loss is multiplied by
    its weight and the count is the summed weights of the targets (a float).
    """

    name = "causal-lm"
    supports_weights = True

    def __init__(self, model: torch.nn.Module, chunk: int | None = None):
        super().__init__(model)
        self.chunk = chunk
        self.fused = plain_head(self.hf)
        # prefix/prompt/p-tuning live in the PEFT forward: their own loss (``objectives.prompt``)
        self.prompt_learning = is_prompt_learning(model)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        targets: torch.Tensor,
        unit_sizes: list[int] | None = None,
        return_predictions: bool = False,
        weights: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple:
        if self.prompt_learning:
            if weights is not None:
                raise ConfigError(
                    "data.task_weights is not applied by prefix/prompt/p-tuning adapters: "
                    "remove it or use adapter.type lora"
                )
            return prompt_learning_loss(
                self.model, input_ids, position_ids, targets, return_predictions
            )
        keep, wanted = kept(targets)
        w = None if weights is None else weights[keep].float()
        count = int(wanted.numel()) if w is None else float(w.sum())
        if self.fused and not return_predictions:
            hf = self.hf
            hidden = hf.get_decoder()(
                input_ids=input_ids, position_ids=position_ids, use_cache=False, **kwargs
            ).last_hidden_state[keep]
            head = hf.get_output_embeddings()
            loss = linear_cross_entropy(hidden, head.weight, head.bias, wanted, self.chunk, w)
            return loss, count
        logits = self.model(
            input_ids=input_ids,
            position_ids=position_ids,
            use_cache=False,
            logits_to_keep=keep,
            **kwargs,
        ).logits.float()
        if w is None:
            loss = F.cross_entropy(logits, wanted, reduction="sum")
        else:
            loss = (F.cross_entropy(logits, wanted, reduction="none") * w).sum()
        if return_predictions:
            return loss, count, logits.argmax(-1), wanted
        return loss, count
