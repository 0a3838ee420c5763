"""Checkpoints that resume exactly: trainable weights, optimizer, RNG states, step counters.

Layout of ``RUN/checkpoints/step-000120/`` (written atomically: a killed process leaves the
previous checkpoint, never half of one):

- ``trainable.safetensors``  the parameters that require grad (all of them for full training,
  the adapter for LoRA), by their ``named_parameters`` names
- ``optimizer.pt``           ``optimizer.state_dict()`` (tensors, ints and floats only)
- ``rng.pt``                 torch CPU (and CUDA) generator states
- ``state.json``             step, tokens seen, elapsed seconds, python/numpy RNG states

The data position is not stored separately: the sampler's order is a pure function of the seed
and the epoch, and the position within the epoch follows from the step.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lmforge.artifacts import atomic_dir
from lmforge.errors import UserError

_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _STEP_DIR.match(p.name)) and (p / "state.json").is_file()
    ]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict,
    keep_last: int,
) -> Path:
    folder = root / f"step-{step:06d}"
    trainable = {
        n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad
    }
    np_state = np.random.get_state()
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    full_state = {
        **state,
        "step": step,
        "python_rng": _jsonable(random.getstate()),
        "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    with atomic_dir(folder) as tmp:
        save_file(trainable, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(full_state))
    for old in checkpoint_dirs(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore weights, optimizer and RNG states in place; return the saved state dict."""
    try:
        weights = load_file(str(folder / "trainable.safetensors"))
        state = json.loads((folder / "state.json").read_text())
        opt_state = torch.load(folder / "optimizer.pt", weights_only=True)
        rng = torch.load(folder / "rng.pt", weights_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(
            f"checkpoint {folder} cannot be read ({exc}); delete it or set train.resume=never"
        ) from None
    params = dict(model.named_parameters())
    unknown = [n for n in weights if n not in params]
    if unknown:
        raise UserError(
            f"checkpoint {folder} does not match the model (e.g. {unknown[0]}); "
            "was the config changed? set train.resume=never to start over"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(opt_state)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(_tupled(state.pop("python_rng")))
    np_state = state.pop("numpy_rng")
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    return state


def _jsonable(obj):
    return [_jsonable(o) for o in obj] if isinstance(obj, tuple | list) else obj


def _tupled(obj):
    return tuple(_tupled(o) for o in obj) if isinstance(obj, list) else obj
