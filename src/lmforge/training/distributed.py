"""Data-parallel training: the one loop run by several processes that torchrun started.

    torchrun --standalone --nproc_per_node 2 -m lmforge.cli train configs/sft_lora.yaml
    lmforge train configs/sft_lora.yaml launcher.nproc=2    # the same: lmforge starts torchrun
    # CPU: gloo, one torch thread per process unless OMP_NUM_THREADS says otherwise; GPUs: NCCL,
    # process r on cuda:LOCAL_RANK. Several machines: torchrun --nnodes/--rdzv-endpoint as usual,
    # with output_dir on a filesystem every machine sees (rank 0 writes, every rank reads back).

How a step is split. ``train.batch_size`` is per process, so one optimizer step takes
``batch_size × grad_accum × world_size`` units. Every rank computes the same epoch order (a pure
function of seed and epoch), the same units for the step and the same target count over all of
them, then runs micro-batches ``rank, rank + world, ...`` of the step (:meth:`Strategy.share`).
Each micro-batch's summed loss is divided by the step's target count and multiplied by
``world_size``: DDP and FSDP2 *average* gradients over ranks, so the result is the gradient of
the same global batch in one process, up to float summation order. A rank with fewer
micro-batches than the others (the last, short step of an epoch) runs a copy of the step's first
micro-batch with weight 0, so every rank makes the same number of forward and backward passes:
FSDP2 gathers parameters in every forward and DDP reduces in the last backward, and a rank that
skipped one would leave the others waiting forever.

Strategies (``distributed.strategy``):

- ``ddp``: ``DistributedDataParallel`` over :class:`~lmforge.training.objective.CausalLMLoss`,
  gradients all-reduced once per optimizer step (``no_sync`` on all but the last micro-batch).
- ``fsdp``: FSDP2 (``fully_shard``) on every decoder layer (the classes the model lists in
  ``_no_split_modules``), then on the whole objective. Parameters, gradients and optimizer
  state are sharded; gradients are reduce-scattered after every micro-batch, so they stay
  sharded (more communication with ``grad_accum > 1``, never a full gradient in memory).
- ``deepspeed``: see :mod:`lmforge.training.deepspeed_zero` (needs the deepspeed package).

Only rank 0 writes metrics, TensorBoard, checkpoints, the manifest and the model; the others
wait at a barrier. Checkpoints and the saved model have the single-process format: under FSDP2
the shards are gathered into full tensors first (``torch.distributed.checkpoint.state_dict``),
so a run resumes a checkpoint written by another strategy or number of processes as long as the
global batch is the same (see ``recipes.train.trajectory``).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from lmforge.config.groups import DistributedConfig
from lmforge.config.training import TrainConfig
from lmforge.errors import ConfigError
from lmforge.models.load import resolve_device

Optimizer = torch.optim.Optimizer


def torchrun_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from the variables torchrun sets; None outside it."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return (
        int(os.environ["RANK"]),
        int(os.environ["WORLD_SIZE"]),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


class Strategy:
    """One process: the default, and the base of the data-parallel strategies.

    Collectives (:meth:`sum_over_ranks`, :meth:`barrier`, ...) are no-ops in one process; the
    state methods return and take the single-process format (``named_parameters`` names,
    optimizer state keyed by parameter index) whatever the strategy.
    """

    name = "single"

    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
        owns_group: bool = False,
    ):
        self.rank, self.world_size = rank, world_size
        self._device = device
        self._owns_group = owns_group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device_for(self, name: str) -> torch.device:
        """The device this process trains on (``train.device``, or this rank's GPU)."""
        return self._device if self._device is not None else resolve_device(name, "train.device")

    # ----------------------------------------------------------------- the training step
    def prepare(
        self, objective: torch.nn.Module, make_optimizer: Callable[[], Optimizer]
    ) -> tuple[torch.nn.Module, Optimizer]:
        """The module to call for the loss, and the optimizer (built after wrapping)."""
        return objective, make_optimizer()

    def share(self, items: Sequence) -> list[tuple[object, float]]:
        """This rank's ``(item, weight)`` pairs: items ``rank, rank + world, ...`` with weight 1,
        padded with ``(items[0], 0.0)`` to ``ceil(len(items) / world)`` so that every rank runs
        the same number of passes (see the module docstring)."""
        if not items:
            return []
        mine = [(item, 1.0) for item in items[self.rank :: self.world_size]]
        rounds = -(-len(items) // self.world_size)
        return mine + [(items[0], 0.0)] * (rounds - len(mine))

    def sync(self, module: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-batch's forward and backward; ``last`` of the optimizer step."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(
        self,
        optimizer: Optimizer,
        params: list[torch.nn.Parameter],
        max_norm: float | None,
        scaler: torch.amp.GradScaler | None,
    ) -> float:
        """Unscale, clip to ``max_norm`` (None: measure only), step; return the gradient norm."""
        if scaler:
            scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        # FSDP2's norm is a replicated DTensor
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    # ----------------------------------------------------------------- collectives
    def sum_over_ranks(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over ranks (float64, so token counts stay exact)."""
        if self.world_size == 1:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def gather_object(self, obj) -> list:
        """``obj`` of every rank, in rank order, on every rank."""
        if self.world_size == 1:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def main_decides(self, decide: Callable[[], object]):
        """Run ``decide`` on rank 0 only and return its result on every rank."""
        if self.world_size == 1:
            return decide()
        box = [decide() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. to fill a cache), then the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def _comm_device(self) -> torch.device:
        return self._device if self._device is not None else torch.device("cpu")

    # ----------------------------------------------------------------- state (collective)
    def trainable_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Full trainable tensors on CPU by ``named_parameters`` name (complete on rank 0)."""
        return {
            n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad
        }

    def optimizer_state(self, model: torch.nn.Module, optimizer: Optimizer) -> dict:
        """``optimizer.state_dict()`` as one process would have it (complete on rank 0)."""
        return optimizer.state_dict()

    def model_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """A full state dict for ``save_pretrained``; None: the model's own tensors will do."""
        return None

    def load_trainable(self, model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor)

    def load_optimizer(self, model: torch.nn.Module, optimizer: Optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)

    def close(self) -> None:
        """Tear down the process group if this strategy started it."""
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()


class DDPStrategy(Strategy):
    """Replicated weights; gradients all-reduced in the last micro-batch of each step."""

    name = "ddp"

    def prepare(self, objective, make_optimizer):
        from torch.nn.parallel import DistributedDataParallel

        gpu = [self._device.index] if self._device.type == "cuda" else None
        # no buffer broadcast in every forward: the buffers (rotary frequencies) are constants,
        # and evaluation runs forward without backward (torch 2.13 renamed the switch)
        known = inspect.signature(DistributedDataParallel).parameters
        no_sync = "forward_sync_buffers" if "forward_sync_buffers" in known else "broadcast_buffers"
        wrapped = DistributedDataParallel(objective, device_ids=gpu, **{no_sync: False})
        return wrapped, make_optimizer()

    def sync(self, module, last):
        return contextlib.nullcontext() if last else module.no_sync()


class FSDPStrategy(Strategy):
    """FSDP2: each decoder layer sharded on its own, the rest (embeddings, head) at the root."""

    name = "fsdp"

    def prepare(self, objective, make_optimizer):
        from torch.distributed.fsdp import fully_shard

        model = objective.model
        hf = model.get_base_model() if hasattr(model, "get_base_model") else model
        layer_types = set(getattr(hf, "_no_split_modules", None) or ())
        layers = [m for m in hf.modules() if type(m).__name__ in layer_types]
        if not layers:
            raise ConfigError(
                f"distributed.strategy=fsdp: {type(hf).__name__} names no decoder layer class "
                "(_no_split_modules) to shard; use distributed.strategy=ddp"
            )
        for layer in layers:
            fully_shard(layer)
        fully_shard(objective)
        return objective, make_optimizer()  # after sharding: the optimizer holds the shards

    def trainable_state(self, model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        full = get_model_state_dict(model, options=_full_state(ignore_frozen_params=True))
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        return {n: t.contiguous() for n, t in full.items() if n in names}

    def optimizer_state(self, model, optimizer):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        full = get_optimizer_state_dict(model, optimizer, options=_full_state())
        if not full:  # ranks other than 0 get nothing with cpu_offload
            return {}
        index: dict[str, int] = {}
        groups = [
            {**g, "params": [index.setdefault(fqn, len(index)) for fqn in g["params"]]}
            for g in full["param_groups"]
        ]
        return {"state": {index[k]: v for k, v in full["state"].items()}, "param_groups": groups}

    def model_state(self, model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        full = get_model_state_dict(model, options=_full_state())
        # a tied weight (lm_head = embed_tokens) under its second name: save_pretrained keeps
        # what it is given, and a single process saves the first name only
        aliases = (
            dict(model.named_parameters(remove_duplicate=False)).keys()
            - dict(model.named_parameters()).keys()
        )
        return {k: v for k, v in full.items() if k not in aliases}

    def load_trainable(self, model, weights):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
        )

        # every rank holds the full tensors; each keeps its own shard of them
        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, weights, options=options)

    def load_optimizer(self, model, optimizer, state):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        names = {id(p): n for n, p in model.named_parameters()}
        fqn = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
        by_name = {
            "state": {fqn[i]: v for i, v in state["state"].items()},
            "param_groups": [
                {**g, "params": [fqn[i] for i in g["params"]]} for g in state["param_groups"]
            ],
        }
        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(model, optimizer, by_name, options=options)


def _full_state(**extra):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # full tensors, gathered one at a time to rank 0's CPU memory (the others get nothing)
    return StateDictOptions(full_state_dict=True, cpu_offload=True, **extra)


_DATA_PARALLEL: dict[str, type[Strategy]] = {
    "auto": DDPStrategy,
    "ddp": DDPStrategy,
    "fsdp": FSDPStrategy,
}


def check_available(cfg: DistributedConfig) -> None:
    """Raise now, before any process is started, when the strategy cannot run here."""
    if cfg.strategy == "deepspeed":
        from lmforge.training.deepspeed_zero import check

        check(cfg)


def setup(cfg: DistributedConfig, train: TrainConfig) -> Strategy:
    """The strategy for this process; under torchrun (WORLD_SIZE > 1) the process group is
    started here (gloo on CPU, NCCL on CUDA) and torn down by :meth:`Strategy.close`."""
    env = torchrun_env()
    if cfg.strategy == "deepspeed":
        from lmforge.training.deepspeed_zero import DeepSpeedStrategy

        return DeepSpeedStrategy.create(cfg, train, env)
    if env is None or env[1] == 1:
        return Strategy()
    rank, world, local_rank = env
    device = resolve_device(train.device, "train.device")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if cfg.strategy == "fsdp" and train.precision == "fp16":
        raise ConfigError(
            "distributed.strategy=fsdp does not support train.precision=fp16 (its loss scaler "
            "would need sharded inf checks); use bf16"
        )
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    if dist.get_world_size() != world:
        raise ConfigError(f"the process group has {dist.get_world_size()} ranks, not {world}")
    return _DATA_PARALLEL[cfg.strategy](rank, world, device, owns)


def launch(config: dict, nproc: int) -> int:
    """Run ``lmforge train`` with ``config`` in ``nproc`` processes under torchrun; its exit code.

    The resolved config goes through a temporary file (JSON is YAML), so the children train on
    exactly the config this process validated, whether it came from a file, overrides or Python.
    torchrun exits 1 when any process failed, whatever that process's own exit code was.
    """
    import json

    with tempfile.TemporaryDirectory(prefix="lmforge-launch-") as tmp:
        path = Path(tmp) / "train.yaml"
        path.write_text(json.dumps(config), encoding="utf-8")
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "lmforge.cli",
            "train",
            str(path),
        ]
        print(f"lmforge: launching {nproc} processes: {' '.join(command)}", flush=True)
        return subprocess.run(command, check=False).returncode
