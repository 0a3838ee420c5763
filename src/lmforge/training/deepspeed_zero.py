"""DeepSpeed ZeRO passthrough (``distributed.strategy=deepspeed``) for GPU clusters.

    torchrun --nproc_per_node 8 -m lmforge.cli train configs/sft_lora.yaml \\
        distributed.strategy=deepspeed distributed.deepspeed=ds_zero2.json

Untested here: the deepspeed package is not installed in lmforge's development and CI
environment (CPU only; it compiles CUDA ops), so only the error for its absence is tested, and
the two-process test in ``tests/training/test_distributed.py`` runs only where it is importable.
FSDP2 (``distributed.strategy=fsdp``) is the tested way to shard parameters, gradients and
optimizer state.

The JSON is handed to ``deepspeed.initialize`` after lmforge writes the keys it owns:
``train_micro_batch_size_per_gpu`` (``train.batch_size``), ``gradient_accumulation_steps``
(``train.grad_accum``), ``train_batch_size`` (their product × world size),
``gradient_clipping`` (``train.max_grad_norm``), ``zero_allow_untested_optimizer`` (the
optimizer is lmforge's torch AdamW), and ``"auto"`` in ``bf16.enabled``/``fp16.enabled``.
``optimizer`` and ``scheduler`` sections are dropped with a note: ``train.*`` sets both. Any
other ``"auto"`` (Hugging Face Trainer fills those; lmforge does not) is an error.

The loop's loss scaling holds as for DDP: DeepSpeed averages gradients over ranks, backward runs
with ``scale_wrt_gas=False`` (lmforge already divides by the step's target count), and the
accumulation boundary is set for every micro-batch. Checkpoints hold the trainable weights
(gathered under ZeRO-3), RNG states and the data position, not the optimizer state, which
DeepSpeed partitions in a format of its own: they are snapshots, and resuming one is refused
with an error. The saved model is the usual Hugging Face folder (16-bit under ZeRO-3).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from pathlib import Path

import torch
import torch.distributed as dist

from lmforge.config.groups import DistributedConfig
from lmforge.config.training import TrainConfig
from lmforge.errors import ConfigError, MissingDependency
from lmforge.models.load import resolve_device
from lmforge.training.checkpoint import OPTIMIZER_NOT_SAVED
from lmforge.training.distributed import Strategy


def check(cfg: DistributedConfig) -> dict:
    """The ZeRO config JSON; raises when deepspeed is not installed or the file is unusable."""
    if importlib.util.find_spec("deepspeed") is None:
        raise MissingDependency("deepspeed", "deepspeed", "distributed.strategy=deepspeed")
    path = Path(cfg.deepspeed or "")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"distributed.deepspeed: cannot read {path} as JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"distributed.deepspeed: {path} must hold a JSON object")
    return config


def _has_auto(obj) -> bool:
    if isinstance(obj, dict):
        return any(_has_auto(v) for v in obj.values())
    return obj == "auto"


class DeepSpeedStrategy(Strategy):
    name = "deepspeed"

    def __init__(self, rank, world_size, device, owns_group, config: dict):
        super().__init__(rank, world_size, device, owns_group)
        self.config = config
        self.engine = None

    @classmethod
    def create(
        cls, cfg: DistributedConfig, train: TrainConfig, env: tuple[int, int, int] | None
    ) -> DeepSpeedStrategy:
        user = check(cfg)
        import deepspeed

        device = resolve_device(train.device, "train.device")
        if device.type != "cuda":
            raise ConfigError(
                "distributed.strategy=deepspeed needs CUDA GPUs; on CPU use ddp or fsdp"
            )
        if train.precision == "fp16":
            raise ConfigError(
                "with distributed.strategy=deepspeed set fp16 in the DeepSpeed JSON "
                '("fp16": {"enabled": true}) and train.precision=fp32'
            )
        rank, world, local_rank = env or (0, 1, 0)
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        owns = not dist.is_initialized()
        if owns:
            deepspeed.init_distributed(dist_backend="nccl")
        return cls(rank, world, device, owns, _engine_config(user, train, world, rank == 0))

    def prepare(self, objective, make_optimizer):
        import deepspeed

        engine, optimizer, _, _ = deepspeed.initialize(
            model=objective, optimizer=make_optimizer(), config=self.config
        )
        self.engine = engine
        return engine, optimizer

    def sync(self, module, last):
        self.engine.set_gradient_accumulation_boundary(last)
        return contextlib.nullcontext()

    def backward(self, loss):
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self, optimizer, params, max_norm, scaler):
        self.engine.step()  # clips to gradient_clipping, steps, zeroes the gradients
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def _zero3(self) -> bool:
        return self.engine is not None and self.engine.zero_optimization_stage() == 3

    def trainable_state(self, model):
        if not self._zero3():
            return super().trainable_state(model)
        import deepspeed

        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return {n: p.detach().contiguous().cpu() for n, p in named} if self.is_main else {}

    def optimizer_state(self, model, optimizer):
        return {"state": {}, "param_groups": [], OPTIMIZER_NOT_SAVED: "written by deepspeed"}

    def model_state(self, model):
        # the consolidation accelerate uses; complete on rank 0 (16-bit weights)
        return self.engine._zero3_consolidated_16bit_state_dict() if self._zero3() else None

    def load_trainable(self, model, weights):
        raise ConfigError(
            "resuming under distributed.strategy=deepspeed is not supported; "
            "set train.resume=never, or resume with distributed.strategy=fsdp"
        )

    def load_optimizer(self, model, optimizer, state):
        self.load_trainable(model, {})


def _engine_config(user: dict, train: TrainConfig, world: int, main: bool) -> dict:
    config = json.loads(json.dumps(user))  # a deep copy
    dropped = [key for key in ("optimizer", "scheduler") if config.pop(key, None) is not None]
    if dropped and main:
        print(f"lmforge: ignoring {' and '.join(dropped)} in the DeepSpeed JSON: train.* sets it")
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    for key, on in (("bf16", bf16 and train.precision in ("auto", "bf16")), ("fp16", False)):
        if isinstance(config.get(key), dict) and config[key].get("enabled") == "auto":
            config[key]["enabled"] = on
    config.update(
        train_micro_batch_size_per_gpu=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        train_batch_size=train.batch_size * train.grad_accum * world,
        gradient_clipping=train.max_grad_norm or 0.0,
        zero_allow_untested_optimizer=True,
    )
    if _has_auto(config):
        raise ConfigError(
            'distributed.deepspeed: lmforge fills only the batch, clipping and bf16/fp16 "auto" '
            'values; replace the other "auto" values (e.g. in zero_optimization) with numbers'
        )
    return config
