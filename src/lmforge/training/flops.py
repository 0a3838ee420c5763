"""Model FLOPs of a training step and the measured matmul peak: what MFU is made of.

    profile = FlopsProfile.of(model)                    # once; reads the model's layers
    flops = profile.training_flops([312, 95, 1024])     # one step: the pieces' lengths in tokens
    peak = matmul_peak_gflops("cpu")                     # ~0.5 s; fp32 on the current threads
    mfu = model_flops_utilization(flops, step_seconds, peak)

Conventions (PaLM, Chowdhery et al. 2022, appendix B; Kaplan et al. 2020 for 6·N):

- **Weights.** Only weights that take part in a matmul count: every ``nn.Linear`` (and
  transformers' ``Conv1D``), *including the output projection* ``lm_head`` (vocab × hidden,
  counted once when tied to the input embedding). The input embedding is a table lookup and does
  not count. LoRA's ``A`` and ``B`` are linear layers and count like any other. Biases, norms,
  activations, softmax, rotary embeddings and the loss are left out (elementwise, small).
- **Per token and weight**: forward 2 FLOPs (multiply + add); backward 2 for the gradient of the
  layer's input and 2 for the gradient of its weight. A trained weight costs 6, a frozen one 4
  (the input gradient is still needed to reach trainable weights upstream). Full training is
  therefore the usual 6·N per token. Frozen layers before the first trainable one (LoRA: layer
  0's ``q/k/v``) need no input gradient either; they are still counted at 4, which overstates
  LoRA steps by about 1-2%.
- **Attention scores**: per layer and sequence of length T, ``Q·Kᵀ`` and ``softmax·V`` are
  2·T²·d FLOPs each in the forward (d = heads × head dim, the full T×T square although causal
  attention needs half), and the backward is twice the forward: 12·T²·d per layer, i.e.
  PaLM's 12·L·d·T per token. For packed rows each piece counts with its own length
  (Σ lenᵢ², not row²): attention never crosses a piece.
- **Virtual tokens** (PEFT prompt and P-tuning) run through every layer like tokens: a
  sequence of T tokens costs as T + v tokens, attention (T + v)². Prefix tuning's v virtual
  keys/values only widen attention: T·(T + v) pairs. The output head never runs on them, and
  the small encoder that makes them (P-tuning's MLP) is left out (it runs once per row, not per
  token).
- **Useful work only**: padding is not counted, whatever a layout spends on it. Pass
  ``lm_head_positions`` when the output projection runs on the target positions only (the
  others are never needed for the loss).

With these conventions two implementations of the same step get the same FLOPs, so their MFU
ratio is their throughput ratio.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

# FLOPs per weight per token: forward 2, input gradient 2, weight gradient 2
FROZEN_FLOPS_PER_PARAM = 4
TRAINED_FLOPS_PER_PARAM = 6
# per layer, per (query, key) pair, per attention channel: Q·Kᵀ and softmax·V, 2 each, ×3 for
# forward + backward
ATTENTION_FLOPS = 12


def _matmul_weights(
    module: torch.nn.Module, skip: set[int] = frozenset()
) -> Iterator[tuple[torch.nn.Module, int, bool]]:
    """``(submodule, in × out, trained)`` for every matmul layer in ``module`` (itself included),
    except the modules whose ``id`` is in ``skip``."""
    from transformers.pytorch_utils import Conv1D  # GPT-2 style linear layers

    for sub in module.modules():
        if id(sub) in skip:
            continue
        if isinstance(sub, torch.nn.Linear):
            # in/out features, not weight.numel(): quantised layers store packed weights
            size = sub.in_features * sub.out_features
        elif isinstance(sub, Conv1D):
            size = sub.nx * sub.nf
        else:
            continue
        yield sub, size, bool(sub.weight.requires_grad)


def _text_config(model: torch.nn.Module):
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(
            f"{type(model).__name__} has no .config: pass n_layers and attention_width"
        )
    return config.get_text_config() if hasattr(config, "get_text_config") else config


@dataclass(frozen=True)
class FlopsProfile:
    """What a training step's FLOPs depend on, read once from a model.

    Parameter counts are weights of matmul layers (in × out), split by whether they are trained
    and whether they belong to the output head (which may run on fewer positions).
    """

    frozen_params: int
    trained_params: int
    head_frozen_params: int
    head_trained_params: int
    n_layers: int
    attention_width: int  # query heads × head dim (= hidden_size in most models)
    virtual_tokens: int = 0  # PEFT prompt-learning positions added per sequence
    virtual_through_layers: bool = True  # prompt/P-tuning: yes; prefix tuning: keys/values only

    @classmethod
    def of(
        cls,
        model: torch.nn.Module,
        n_layers: int | None = None,
        attention_width: int | None = None,
    ) -> FlopsProfile:
        """Inspect ``model``: a transformers model, optionally wrapped by PEFT.

        ``n_layers`` and ``attention_width`` default to ``config.num_hidden_layers`` and
        ``config.num_attention_heads × head_dim`` (``head_dim`` or ``hidden_size / heads``).
        """
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        head_ids = {id(m) for m, _, _ in _matmul_weights(head)} if head is not None else set()
        counts = {"frozen": 0, "trained": 0, "head_frozen": 0, "head_trained": 0}
        prompt = getattr(model, "active_peft_config", None)
        virtual = prompt.num_virtual_tokens if getattr(prompt, "is_prompt_learning", 0) else 0
        encoder = getattr(model, "prompt_encoder", None) if virtual else None
        skip = {id(m) for m in encoder.modules()} if encoder is not None else set()
        for sub, size, trained in _matmul_weights(model, skip):  # each module once
            key = ("head_" if id(sub) in head_ids else "") + ("trained" if trained else "frozen")
            counts[key] += size
        if n_layers is None or attention_width is None:
            config = _text_config(model)
            heads = getattr(config, "num_attention_heads", None)
            hidden = getattr(config, "hidden_size", None)
            head_dim = getattr(config, "head_dim", None) or (
                hidden // heads if hidden and heads else None
            )
            if n_layers is None:
                n_layers = getattr(config, "num_hidden_layers", None)
            if attention_width is None:
                attention_width = heads * head_dim if heads and head_dim else hidden
            if n_layers is None or attention_width is None:
                raise ValueError(
                    f"{type(config).__name__} has no num_hidden_layers/hidden_size: "
                    "pass n_layers and attention_width"
                )
        return cls(
            frozen_params=counts["frozen"],
            trained_params=counts["trained"],
            head_frozen_params=counts["head_frozen"],
            head_trained_params=counts["head_trained"],
            n_layers=int(n_layers),
            attention_width=int(attention_width),
            virtual_tokens=int(virtual),
            virtual_through_layers=getattr(prompt, "peft_type", None) != "PREFIX_TUNING",
        )

    @property
    def matmul_params(self) -> int:
        """N of the 6·N rule: every matmul weight, output head included."""
        return (
            self.frozen_params
            + self.trained_params
            + self.head_frozen_params
            + self.head_trained_params
        )

    def weight_flops_per_token(self) -> int:
        """Forward + backward FLOPs of the body's matmul weights for one token (head excluded)."""
        return FROZEN_FLOPS_PER_PARAM * self.frozen_params + (
            TRAINED_FLOPS_PER_PARAM * self.trained_params
        )

    def head_flops_per_position(self) -> int:
        """Forward + backward FLOPs of the output projection for one position."""
        return FROZEN_FLOPS_PER_PARAM * self.head_frozen_params + (
            TRAINED_FLOPS_PER_PARAM * self.head_trained_params
        )

    def attention_flops(self, piece_lengths: Iterable[int]) -> int:
        """Forward + backward attention-score FLOPs: 12 · layers · width · Σ lenᵢ² (with v
        virtual tokens: Σ (lenᵢ + v)², or Σ lenᵢ·(lenᵢ + v) for prefix tuning)."""
        v = self.virtual_tokens
        if self.virtual_through_layers:
            pairs = sum((int(n) + v) ** 2 for n in piece_lengths)
        else:
            pairs = sum(int(n) * (int(n) + v) for n in piece_lengths)
        return ATTENTION_FLOPS * self.n_layers * self.attention_width * pairs

    def training_flops(
        self, piece_lengths: Iterable[int], lm_head_positions: int | None = None
    ) -> int:
        """FLOPs of one forward + backward over sequences of these lengths (tokens, no padding).

        ``piece_lengths``: one entry per sequence that attends only to itself (an unpacked
        example, or each piece of a packed row). ``lm_head_positions``: positions the output
        projection runs on; ``None`` means every token.
        """
        lengths = [int(n) for n in piece_lengths]
        tokens = sum(lengths)
        head_positions = tokens if lm_head_positions is None else int(lm_head_positions)
        if self.virtual_through_layers:
            tokens += self.virtual_tokens * len(lengths)  # virtual tokens cross every layer
        return (
            self.weight_flops_per_token() * tokens
            + self.head_flops_per_position() * head_positions
            + self.attention_flops(lengths)
        )


def training_flops(
    model: torch.nn.Module, piece_lengths: Iterable[int], lm_head_positions: int | None = None
) -> int:
    """``FlopsProfile.of(model).training_flops(...)``: one call for a one-off count."""
    return FlopsProfile.of(model).training_flops(piece_lengths, lm_head_positions)


def model_flops_utilization(flops: float, seconds: float, peak_gflops: float) -> float:
    """Achieved FLOP/s as a fraction of the peak (0.4 = 40%)."""
    return flops / max(seconds, 1e-12) / (peak_gflops * 1e9)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    n: int | None = None,
    reps: int = 10,
    seconds_budget: float = 0.5,
) -> float:
    """Best observed GFLOP/s of an ``n × n`` by ``n × n`` matmul (2·n³ FLOPs) on ``device``.

    Runs on the current torch thread count, as training would. The size grows from 256 by
    doubling up to ``n`` while one product is projected to take less than half the budget (so a
    slow dtype or a busy machine measures small matrices instead of overrunning); the last of
    these products is the warm-up. Then up to ``reps`` timed products run until
    ``seconds_budget`` is spent (at least one), and the fastest counts.

    ``n`` defaults to 2048 on CPU (fp32 reaches its plateau there) and 8192 on GPUs. A busy
    machine lowers the result: measure at a quiet moment, or take the higher of two.
    """
    device = torch.device(device)
    n_max = n or (2048 if device.type == "cpu" else 8192)
    start = time.perf_counter()

    def timed(a: torch.Tensor, b: torch.Tensor) -> float:
        t0 = time.perf_counter()
        torch.matmul(a, b)
        _synchronize(device)
        return time.perf_counter() - t0

    size = min(256, n_max)
    while True:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        seconds = timed(a, b)  # also the warm-up of this size
        if size >= n_max or 8 * seconds > seconds_budget / 2:
            break
        size = min(2 * size, n_max)
    best = math.inf
    for _ in range(max(1, reps)):
        best = min(best, timed(a, b))
        if time.perf_counter() - start > seconds_budget:
            break
    return 2 * size**3 / best / 1e9
