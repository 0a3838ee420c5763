"""4-bit NF4 bases for QLoRA (bitsandbytes ``Linear4bit`` or torchao ``NF4Tensor``), and back.

Every ``nn.Linear`` of the model except the output head is quantised in place; LoRA then wraps
the quantised layers (PEFT dispatches bitsandbytes layers to its own 4-bit LoRA layer; a torchao
NF4 weight works through ``F.linear``, which torchao overrides for ``NF4Tensor``).

- **bitsandbytes**: NF4 in blocks of ``block_size`` weights, with the per-block scales quantised
  again to 8 bits when ``double_quant`` (``compress_statistics``). Every Linear quantises.
- **torchao**: NF4 in blocks of ``block_size``; the scales are always quantised again in groups
  of ``scaler_block_size`` (256 where the number of blocks allows, else its largest divisor
  below 256, so that shapes like 64 x 128 still quantise). A layer whose weight count is not a
  multiple of ``block_size`` stays in full precision and is reported as skipped.

On CPU both backends dequantise a layer's weight to the compute dtype for each matmul: the 4-bit
base saves memory, not time. :func:`dequantize_base` turns every 4-bit layer back into an fp32
``nn.Linear`` holding the values the adapter was trained against (what merging needs).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from lmforge.errors import MissingDependency

BACKENDS = ("bitsandbytes", "torchao")
TORCHAO_SCALER_BLOCK = 256  # torchao's default group of block scales quantised together


@dataclass(frozen=True)
class QuantSpec:
    """How a base was quantised; stored beside a QLoRA adapter so it can be rebuilt exactly."""

    backend: str = "bitsandbytes"
    block_size: int = 64
    double_quant: bool = True
    compute_dtype: str = "auto"  # auto | fp32 | bf16 | fp16

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> QuantSpec:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class QuantReport:
    """What :func:`quantize_base` did: layers quantised, layers skipped (with why), bytes."""

    backend: str
    quantised: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (module name, reason)
    bytes_before: int = 0  # the quantised layers' weights in their original dtype
    bytes_after: int = 0  # the same weights in 4 bits, scales included

    def summary(self) -> str:
        saved = self.bytes_before / max(1, self.bytes_after)
        text = (
            f"qlora: {len(self.quantised)} linear layers quantised to NF4 with {self.backend} "
            f"({self.bytes_before / 2**20:.2f} MiB -> {self.bytes_after / 2**20:.2f} MiB, "
            f"{saved:.1f}x smaller)"
        )
        if self.skipped:
            shown = "; ".join(f"{name}: {why}" for name, why in self.skipped[:4])
            more = f" and {len(self.skipped) - 4} more" if len(self.skipped) > 4 else ""
            text += f"; {len(self.skipped)} kept in full precision ({shown}{more})"
        return text

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "quantised_layers": len(self.quantised),
            "skipped": [f"{n}: {why}" for n, why in self.skipped],
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
        }


def require_backend(backend: str) -> None:
    """Raise MissingDependency (naming the ``qlora`` extra) when ``backend`` cannot be imported."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown 4-bit backend {backend!r} (known: {', '.join(BACKENDS)})")
    try:
        if backend == "bitsandbytes":
            import bitsandbytes  # noqa: F401
        else:
            from torchao.quantization.quantize_.workflows.nf4 import nf4_tensor  # noqa: F401
    except ImportError:
        raise MissingDependency(backend, "qlora", "adapter.type=qlora") from None


def resolve_compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: fp32 on CPU (bf16 matmuls are ~100x slower there), bf16 (else fp16) on CUDA."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


Slot = tuple[torch.nn.Module, str, str, torch.nn.Linear]


def _linear_slots(model: torch.nn.Module) -> list[Slot]:
    """``(parent, attribute, full name, layer)`` for every plain ``nn.Linear`` but the head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    slots = []
    for parent_name, parent in model.named_modules():
        for attr, child in parent.named_children():
            if type(child) is torch.nn.Linear and child is not head:
                name = f"{parent_name}.{attr}" if parent_name else attr
                slots.append((parent, attr, name, child))
    return slots


def torchao_scaler_block(n_blocks: int) -> int:
    """The group size for torchao's second quantisation of ``n_blocks`` block scales: 256 when it
    divides, else the largest divisor of ``n_blocks`` below 256."""
    return next(s for s in range(min(TORCHAO_SCALER_BLOCK, n_blocks), 0, -1) if n_blocks % s == 0)


def plan(model: torch.nn.Module, spec: QuantSpec) -> tuple[list[str], list[tuple[str, str]]]:
    """(layers that will be quantised, (layer, reason) for those that cannot), changing nothing."""
    will, skipped = [], []
    for _, _, name, linear in _linear_slots(model):
        numel = linear.weight.numel()
        if spec.backend == "torchao" and numel % spec.block_size:
            skipped.append(
                (name, f"{numel} weights do not split into NF4 blocks of {spec.block_size}")
            )
        else:
            will.append(name)
    return will, skipped


def quantize_base(model: torch.nn.Module, spec: QuantSpec, device: torch.device) -> QuantReport:
    """Quantise every ``nn.Linear`` but the head of ``model`` to NF4, in place (on the CPU; the
    model can be moved afterwards). ``device`` only decides the ``auto`` compute dtype."""
    require_backend(spec.backend)
    compute = resolve_compute_dtype(spec.compute_dtype, device)
    report = QuantReport(spec.backend)
    will, report.skipped = plan(model, spec)
    wanted = set(will)
    for parent, attr, name, linear in _linear_slots(model):
        if name not in wanted:
            continue
        report.bytes_before += linear.weight.numel() * linear.weight.element_size()
        if spec.backend == "bitsandbytes":
            new = _bnb_linear(linear, spec, compute)
            setattr(parent, attr, new)
            report.bytes_after += _bnb_bytes(new.weight)
        else:
            _torchao_weight(linear, spec)
            report.bytes_after += _nf4_bytes(linear.weight)
        report.quantised.append(name)
    return report


def _bnb_linear(linear: torch.nn.Linear, spec: QuantSpec, compute: torch.dtype):
    import bitsandbytes as bnb

    new = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=compute,
        compress_statistics=spec.double_quant,
        quant_type="nf4",
        device="meta",  # the real weight comes next; nothing to allocate
    )
    new.weight = bnb.nn.Params4bit(
        linear.weight.detach().to("cpu", torch.float32),
        requires_grad=False,
        blocksize=spec.block_size,
        compress_statistics=spec.double_quant,
        quant_type="nf4",
        module=new,
    )
    if linear.bias is not None:
        new.bias = torch.nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    # On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks the weight for a bf16 kernel on its
    # first forward in eval mode without grad. That repacking fails when in_features is not a
    # multiple of the block size (tiny-llama's down_proj: 352), and it would make inference
    # compute differently from training (fp32 dequantise + matmul). Keep the training path.
    new.support_avx512bf16_for_cpu = False
    return new.to("cpu")  # Params4bit quantises when it is first placed on a device


def _bnb_bytes(weight) -> int:
    state = weight.quant_state.as_dict(packed=True)
    extra = sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
    return weight.data.numel() * weight.data.element_size() + extra


def _torchao_weight(linear: torch.nn.Linear, spec: QuantSpec) -> None:
    from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import to_nf4

    weight = linear.weight.detach().to(torch.float32).contiguous()
    scaler = torchao_scaler_block(weight.numel() // spec.block_size)
    linear.weight = torch.nn.Parameter(to_nf4(weight, spec.block_size, scaler), requires_grad=False)


def _nf4_bytes(weight) -> int:
    names, _ = weight.__tensor_flatten__()
    return sum(getattr(weight, n).numel() * getattr(weight, n).element_size() for n in names)


def is_4bit(param: torch.Tensor) -> bool:
    """Whether ``param`` is a bitsandbytes 4-bit or a torchao NF4 weight."""
    return type(param).__name__ in ("Params4bit", "NF4Tensor")


def logical_numel(param: torch.Tensor) -> int:
    """Weights a parameter stands for: a bitsandbytes 4-bit tensor stores two per byte."""
    state = getattr(param, "quant_state", None)
    if type(param).__name__ == "Params4bit" and state is not None:
        return math.prod(state.shape)
    return param.numel()


def dequantize_base(model: torch.nn.Module) -> int:
    """Replace every 4-bit layer of ``model`` by an fp32 ``nn.Linear`` with the dequantised
    weights (exactly what the 4-bit layer multiplies by); returns how many were replaced."""
    count = 0
    for parent in list(model.modules()):
        for attr, child in list(parent.named_children()):
            weight = getattr(child, "weight", None)
            if not (isinstance(child, torch.nn.Linear) and weight is not None and is_4bit(weight)):
                continue
            if type(weight).__name__ == "Params4bit":
                import bitsandbytes as bnb

                dense = bnb.functional.dequantize_4bit(weight.data, weight.quant_state)
            else:
                dense = weight.get_original_weight()
            plain = torch.nn.Linear(
                child.in_features, child.out_features, bias=child.bias is not None, device="meta"
            )
            plain.weight = torch.nn.Parameter(dense.to(torch.float32), requires_grad=False)
            if child.bias is not None:
                plain.bias = torch.nn.Parameter(child.bias.detach().float(), requires_grad=False)
            setattr(parent, attr, plain)
            count += 1
    return count
