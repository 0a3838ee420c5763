"""Checkpoints that resume exactly: trainable weights, optimizer, RNG states and data position.

Layout of ``RUN/checkpoints/step-000120/``, written atomically (a killed process leaves the
previous checkpoints and at most a hidden ``.step-…tmp-`` folder, never half of one):

- ``trainable.safetensors``  the parameters that require grad (all of them for full training,
  the adapter for LoRA), by their ``named_parameters`` names
- ``optimizer.pt``           ``optimizer.state_dict()`` (tensors, ints and floats only)
- ``rng.pt``                 torch CPU (and CUDA) generator states; under torchrun rank 0's,
  plus every rank's own under ``ranks`` (restored when the number of processes is the same)
- ``state.json``             step, the data position (``epoch``, ``position``: optimizer steps
  already taken in that epoch, of ``steps_per_epoch``), tokens seen, elapsed seconds, the
  logging window, the trajectory fingerprint, python/numpy RNG states
- ``checksums.json``         ``{file name: sha256 hex}`` for the four files above

Nothing else needs saving: the learning-rate schedule is a pure function of the step (see
``optim.lr_at``) and the sampler's order a pure function of the seed and the epoch, so ``epoch``
and ``position`` say exactly which units come next.

Under torchrun a ``strategy`` (see ``distributed``) gathers sharded tensors into this same
format (every rank takes part; rank 0 writes while the others wait at a barrier), and every rank
reads a checkpoint back and keeps its part, so a checkpoint does not depend on how many
processes wrote it.

``restore`` with ``train.resume=auto`` verifies the newest checkpoint's checksums and reads every
file before touching the model; a corrupt one (a file missing, unreadable or not matching its
checksum) is reported on stderr and the one before it is tried, down to the oldest kept
(``train.keep_last``). An explicit ``train.resume=PATH`` that is corrupt is an error instead.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lmforge.artifacts import atomic_dir, fingerprint_file
from lmforge.errors import ConfigError, UserError
from lmforge.training.distributed import Strategy

_STEP_DIR = re.compile(r"^step-(\d+)$")
_LEFTOVER = re.compile(r"^\.step-\d+\.(tmp|old)-")  # atomic_dir's folders from a killed process
CHECKSUMS = "checksums.json"
# key in optimizer.pt of a checkpoint written without the optimizer state (DeepSpeed snapshots)
OPTIMIZER_NOT_SAVED = "optimizer_not_saved"
FILES = ("trainable.safetensors", "optimizer.pt", "rng.pt", "state.json")


class CorruptCheckpoint(UserError):
    """A checkpoint folder with a file missing, unreadable or not matching its checksum."""

    def __init__(self, folder: Path, reason: str):
        super().__init__(
            f"checkpoint {folder} is corrupt ({reason}); resume from another checkpoint, "
            "or set train.resume=never to start over"
        )
        self.folder, self.reason = folder, reason


@dataclass
class Checkpoint:
    """Everything read from one checkpoint folder, verified, before any of it is applied."""

    folder: Path
    weights: dict[str, torch.Tensor]
    optimizer: dict
    rng: dict
    state: dict  # state.json with the python/numpy RNG states already in their native types


def checkpoint_dirs(root: Path) -> list[Path]:
    """``step-N`` folders under ``root``, oldest first (whole or not: see ``read_checkpoint``)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found) if p.is_dir()]


def save_checkpoint(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict,
    keep_last: int,
    strategy: Strategy | None = None,
    keep: set[int] | frozenset[int] = frozenset(),
) -> Path:
    """Write ``root/step-{step:06d}`` atomically, then delete all but the newest ``keep_last``
    (and the steps in ``keep``: the best checkpoint, see ``callbacks``).

    ``state`` is stored in state.json; when it holds ``steps_per_epoch`` the data position
    (``epoch``, ``position``) of ``step`` is stored beside it. Under torchrun every rank calls
    this (the tensors are gathered from all of them); rank 0 writes, the others wait.
    """
    strategy = strategy or Strategy()
    folder = root / f"step-{step:06d}"
    trainable = strategy.trainable_state(model)
    optimizer_state = strategy.optimizer_state(model, optimizer)
    rng = _rng_states()
    if strategy.world_size > 1:  # dropout draws differ per rank: keep every rank's generators
        rng["ranks"] = strategy.gather_object(_rng_states())
    if strategy.is_main:
        _write(root, folder, step, trainable, optimizer_state, rng, state, keep_last, keep)
    strategy.barrier()
    return folder


def _rng_states() -> dict:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _write(
    root: Path,
    folder: Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer_state: dict,
    rng: dict,
    state: dict,
    keep_last: int,
    keep: set[int] | frozenset[int] = frozenset(),
) -> None:
    np_state = np.random.get_state()
    full_state = {**state, "step": step}
    if state.get("steps_per_epoch"):
        full_state["epoch"], full_state["position"] = divmod(step, state["steps_per_epoch"])
    full_state.update(
        python_rng=_jsonable(random.getstate()),
        numpy_rng=[np_state[0], np_state[1].tolist(), *np_state[2:]],
    )
    with atomic_dir(folder) as tmp:
        save_file(trainable, str(tmp / "trainable.safetensors"))
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(full_state))
        sums = {name: _sha256(tmp / name) for name in FILES}
        (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=1))
    for old in checkpoint_dirs(root)[:-keep_last]:
        if int(_STEP_DIR.match(old.name).group(1)) not in keep:
            shutil.rmtree(old, ignore_errors=True)
    for leftover in root.iterdir():  # this process's own temporary folder is gone by now
        if _LEFTOVER.match(leftover.name):
            shutil.rmtree(leftover, ignore_errors=True)


def read_checkpoint(folder: Path) -> Checkpoint:
    """Verify ``folder`` against its checksums and read every file; change nothing.

    Raises ``CorruptCheckpoint`` when a file is missing, unreadable or fails its checksum.
    """
    try:
        sums = json.loads((folder / CHECKSUMS).read_text())
    except (OSError, ValueError) as exc:
        raise CorruptCheckpoint(folder, f"{CHECKSUMS} unreadable: {exc}") from None
    for name in FILES:
        if not isinstance(sums, dict) or name not in sums:
            raise CorruptCheckpoint(folder, f"{CHECKSUMS} lists no checksum for {name}")
        if not (folder / name).is_file():
            raise CorruptCheckpoint(folder, f"{name} is missing")
        if _sha256(folder / name) != sums[name]:
            raise CorruptCheckpoint(folder, f"{name} does not match its checksum")
    try:
        state = json.loads((folder / "state.json").read_text())
        np_state = state.pop("numpy_rng")
        state["numpy_rng"] = (np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:])
        state["python_rng"] = _tupled(state["python_rng"])
        return Checkpoint(
            folder=folder,
            weights=load_file(str(folder / "trainable.safetensors")),
            optimizer=torch.load(folder / "optimizer.pt", weights_only=True),
            rng=torch.load(folder / "rng.pt", weights_only=True),
            state=state,
        )
    except Exception as exc:  # a verified file that does not parse is corrupt all the same
        raise CorruptCheckpoint(folder, f"unreadable: {type(exc).__name__}: {exc}") from None


def load_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    strategy: Strategy | None = None,
) -> dict:
    """Restore weights, optimizer and RNG states in place; return the saved state dict.

    All or nothing: ``folder`` is verified and read in full, and checked against the model and
    optimizer, before anything is copied in.
    """
    checkpoint = read_checkpoint(folder)
    _check_fits(checkpoint, model, optimizer)
    return _apply(checkpoint, model, optimizer, strategy or Strategy())


def restore(
    resume: str,
    root: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    strategy: Strategy | None = None,
) -> tuple[dict, Path] | None:
    """Load the checkpoint ``resume`` names into ``model``/``optimizer``; None to start fresh.

    ``resume``: ``never``; ``auto`` (the newest checkpoint under ``root`` that is not corrupt,
    warning on stderr for each corrupt one skipped; None when there is none at all); or a
    checkpoint folder (corrupt: ``CorruptCheckpoint``). Returns the saved state (``step``,
    ``epoch``, ``position``, counters, ``trajectory``, ...) and the folder it came from. Under
    torchrun every rank calls this and reads the files itself.
    """
    if resume == "never":
        return None
    if resume != "auto":
        folder = Path(resume)
        if not (folder / "state.json").is_file():
            raise ConfigError(f"train.resume: {folder} is not a checkpoint folder (no state.json)")
        return load_checkpoint(folder, model, optimizer, strategy), folder
    newest_first = checkpoint_dirs(root)[::-1]
    if not newest_first:
        return None
    corrupt: list[CorruptCheckpoint] = []
    for folder, previous in zip(newest_first, [*newest_first[1:], None], strict=True):
        try:
            return load_checkpoint(folder, model, optimizer, strategy), folder
        except CorruptCheckpoint as exc:
            corrupt.append(exc)
            if previous is not None:
                print(
                    f"lmforge: warning: checkpoint {folder} is corrupt ({exc.reason}); "
                    f"falling back to {previous}",
                    file=sys.stderr,
                )
    listed = "; ".join(f"{exc.folder.name}: {exc.reason}" for exc in corrupt)
    raise UserError(
        f"every checkpoint in {root} is corrupt ({listed}); delete "
        f"{', '.join(str(exc.folder) for exc in corrupt)}, or set train.resume=never to start over"
    )


def check_data_position(state: dict, step: int, steps_per_epoch: int, folder: Path) -> None:
    """Pop the saved ``epoch``/``position`` from ``state``; raise unless this run agrees.

    This run's order puts ``step`` at ``divmod(step, steps_per_epoch)``; a checkpoint saved
    without ``steps_per_epoch`` carries no position and passes.
    """
    saved = (state.pop("epoch", None), state.pop("position", None))
    saved_per_epoch = state.get("steps_per_epoch")
    here = divmod(step, steps_per_epoch)
    if saved_per_epoch is not None and (saved, saved_per_epoch) != (here, steps_per_epoch):
        raise ConfigError(
            f"checkpoint {folder} stopped in epoch {saved[0]} after {saved[1]} of its "
            f"{saved_per_epoch} steps, but this run puts step {step} in epoch {here[0]} after "
            f"{here[1]} of {steps_per_epoch} steps: the data or batch size changed; use a new "
            "output_dir, or set train.resume=never to start this one over"
        )


def _check_fits(
    checkpoint: Checkpoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Raise unless every tensor and optimizer group has a place of the same shape."""
    if OPTIMIZER_NOT_SAVED in checkpoint.optimizer:
        raise ConfigError(
            f"checkpoint {checkpoint.folder} holds no optimizer state "
            f"({checkpoint.optimizer[OPTIMIZER_NOT_SAVED]}) and cannot be resumed; "
            "set train.resume=never to start over"
        )
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    problems = [
        f"{n} {tuple(t.shape)} vs {tuple(params[n].shape)}" if n in params else f"{n} is unknown"
        for n, t in checkpoint.weights.items()
        if n not in params or t.shape != params[n].shape
    ] + [f"{n} is missing" for n in params if n not in checkpoint.weights]
    saved_groups = [len(g["params"]) for g in checkpoint.optimizer.get("param_groups", [])]
    if saved_groups != [len(g["params"]) for g in optimizer.param_groups]:
        problems.append(f"optimizer groups of {saved_groups} parameters")
    if problems:
        raise UserError(
            f"checkpoint {checkpoint.folder} does not match the model (e.g. {problems[0]}); "
            "was the config changed? set train.resume=never to start over"
        )


def _apply(
    checkpoint: Checkpoint,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    strategy: Strategy,
) -> dict:
    strategy.load_trainable(model, checkpoint.weights)
    strategy.load_optimizer(model, optimizer, checkpoint.optimizer)
    rng = checkpoint.rng
    if len(rng.get("ranks", ())) == strategy.world_size > 1:  # the same number of processes
        rng = rng["ranks"][strategy.rank]
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    state = dict(checkpoint.state)
    random.setstate(state.pop("python_rng"))
    np.random.set_state(state.pop("numpy_rng"))
    return state


def _sha256(path: Path) -> str:
    return fingerprint_file(path).removeprefix("sha256:")


def _jsonable(obj):
    return [_jsonable(o) for o in obj] if isinstance(obj, tuple | list) else obj


def _tupled(obj):
    return tuple(_tupled(o) for o in obj) if isinstance(obj, list) else obj
