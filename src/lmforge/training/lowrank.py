"""LoRA's rank-r linear layers with a weight gradient laid out for fast CPU matmuls.

PEFT's ``lora_A`` (in → r) and ``lora_B`` (r → out) are plain ``nn.Linear`` layers, and
autograd computes their weight gradient as ``(input.T @ grad)`` or ``(grad.T @ input)`` depending
on strides. For a rank-8 layer on this CPU one of the two layouts is a GEMM with an 8-wide
output and a reduction over every token, which the CPU BLAS runs about ten times slower than the
same product with the 8 rows on the other side. Measured on the 2-core CPU (1806 tokens × 1024
features × rank 8, best of 20): ``x.T @ g`` 7.2 ms (4 GFLOP/s), ``g.T @ x`` 0.7 ms (42 GFLOP/s).
In LoRA SFT of ``small-llama`` the rank-r matmuls took 17% of the step at 15 GFLOP/s.

:func:`use_fast_lowrank` gives each LoRA ``A``/``B`` layer a forward through
:class:`LowRankLinear`, whose backward always puts the rank on the short side of the product.
Same values (the same products, summed in the same precision); only the layout differs. Only on
CPU: GPU BLAS does not have this problem, and the autograd default is left alone there.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F


class LowRankLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ weight).reshape(x.shape)
        if ctx.needs_input_grad[1]:
            inputs = x.reshape(-1, x.shape[-1])
            out_features, in_features = weight.shape
            # the small dimension (the rank) as the rows of the product
            if out_features <= in_features:
                grad_w = g.t() @ inputs
            else:
                grad_w = (inputs.t() @ g).t().contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


def _forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return LowRankLinear.apply(x, self.weight, self.bias)


def use_fast_lowrank(model: torch.nn.Module, device: torch.device) -> int:
    """Route the LoRA ``A``/``B`` layers of ``model`` through :class:`LowRankLinear` on CPU;
    returns how many layers were changed (0 on other devices or without LoRA)."""
    if device.type != "cpu":
        return 0
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return 0
    changed = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for linear in [*module.lora_A.values(), *module.lora_B.values()]:
            if type(linear) is torch.nn.Linear:
                linear.forward = types.MethodType(_forward, linear)
                changed += 1
    return changed
