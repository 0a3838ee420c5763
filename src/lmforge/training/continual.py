"""Continual learning in ``lmforge train``: replay a previous task's rows, and EWC.

    # model.path learned task A from a.jsonl; now learn B without forgetting A
    lmforge train configs/continual_ewc.yaml model.path=runs/task_a data.train=[b.jsonl] \\
        continual.previous_data=[a.jsonl] continual.ewc_lambda=1e10 continual.replay_ratio=0.1

Both read the previous task's files through the stage's own encoder and the tokenised-data
cache (:func:`previous_data_config` keeps every ``data`` setting of the run, so the previous
run's cache entry is usually hit), so old and new rows are encoded the same way.

**Replay** (:func:`add_replay`): ``round(replay_ratio × new training units)`` units of the old
data join the training units. They are drawn seeded (``train.seed``) without repeats while the old
data lasts (whole seeded passes, then part of one more), and placed at seeded positions among the
new units, both keeping their order (the loop shuffles every epoch anyway). Mixing is done on
encoded units, not on rows through ``data.interleave``: the number replayed is exact (the
interleave strategies end on random draws), the old data is encoded once and cached, and the
validation split stays the new task's. ``counts.replay`` in the manifest says what was read,
used, rejected and replayed (``train_units = new_units + replayed``).

**EWC** (:func:`with_ewc`): the diagonal empirical Fisher of the stage's loss on the old data,
:func:`estimate_fisher`, is stored as ``fisher.safetensors`` in the run directory with the key it
was made for (the starting model and adapter, the old data's encoding key, the estimate's
settings) in its metadata, and reused when the key matches (a resumed or re-forced run); another
run can reuse it with ``continual.fisher_file`` (an input in its manifest) if it starts from the
same model. The objective is wrapped in :class:`~lmforge.training.objectives.ewc.EWCLoss`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from lmforge.artifacts import atomic_write_bytes, fingerprint_obj
from lmforge.config.groups import DataConfig
from lmforge.config.training import ContinualConfig
from lmforge.data.readers import Rejects, split_selector
from lmforge.errors import ConfigError, DataError
from lmforge.training.attention import varlen_attention
from lmforge.training.collate import Unit
from lmforge.training.data import Encoder, cache_key_parts, load_stage_data
from lmforge.training.forward import Layout, resolve_precision, token_loss_sum
from lmforge.training.lowrank import use_fast_lowrank
from lmforge.training.objectives.base import Objective
from lmforge.training.objectives.ewc import EWCLoss, trainable_parameters

FISHER_FILE = "fisher.safetensors"
_META_KEY = "lmforge_fisher"


def continual_inputs(cfg: ContinualConfig) -> dict:
    """Manifest inputs: the previous task's files, the replayed files, a reused Fisher."""
    out: dict = {}
    if cfg.previous_data:
        out["previous_data"] = [str(split_selector(f)[0]) for f in cfg.previous_data]
    if cfg.replay_files:
        out["replay_data"] = [str(split_selector(f)[0]) for f in cfg.replay_files]
    if cfg.fisher_file:
        out["fisher"] = str(fisher_path(cfg.fisher_file))
    return out


def fisher_path(path: str | Path) -> Path:
    """A Fisher file, or the one in a run directory."""
    p = Path(path)
    return p / FISHER_FILE if p.is_dir() else p


def previous_data_config(data: DataConfig, files: Sequence[str]) -> DataConfig:
    """The run's data settings (length, format, template, task fields) for ``files``, with no
    validation split, no LLaMA-Factory mixing and no ``max_examples``."""
    return data.model_copy(
        update={
            "train": list(files),
            "validation": [],
            "val_ratio": 0.0,
            "dataset_dir": None,
            "dataset": [],
            "eval_dataset": [],
            "mix_strategy": "concat",
            "interleave_probs": None,
            "max_examples": None,
        }
    )


# --------------------------------------------------------------------------- replay
def replay_indices(available: int, k: int, seed: int) -> np.ndarray:
    """``k`` indices into ``available`` rows: seeded permutations end to end, the last one cut,
    so every row is taken ``k // available`` or one more times."""
    if available <= 0:
        raise DataError("no usable rows to replay")
    rng = np.random.default_rng(seed)
    full, rest = divmod(k, available)
    parts = [rng.permutation(available) for _ in range(full)]
    parts.append(rng.permutation(available)[:rest])
    return np.concatenate(parts).astype(np.int64)


class MixedUnits(Sequence):
    """``new`` units with ``old[picks]`` placed at seeded positions among them (both in order).

    Holds two int64 arrays of the mixed length; units are read from ``new``/``old`` (lists or
    cached :class:`~lmforge.training.cache.TokenizedUnits`) when asked for."""

    def __init__(self, new: Sequence[Unit], old: Sequence[Unit], picks: np.ndarray, seed: int):
        self.new, self.old = new, old
        total = len(new) + len(picks)
        is_old = np.zeros(total, dtype=bool)
        is_old[np.random.default_rng(seed + 1).choice(total, len(picks), replace=False)] = True
        self.is_old = is_old
        self.index = np.empty(total, dtype=np.int64)
        self.index[~is_old] = np.arange(len(new))
        self.index[is_old] = picks

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        source = self.old if self.is_old[i] else self.new
        return source[int(self.index[i])]


def add_replay(
    encoder: Encoder,
    cfg,
    tokenizer,
    new_units: Sequence[Unit],
    rejects: Rejects,
    fingerprints: dict | None = None,
) -> tuple[Sequence[Unit], dict]:
    """(training units with the replayed ones, ``counts.replay``) for ``cfg`` (a TrainRecipe).

    Rows of the replay files that cannot be used go to ``rejects`` like training rows."""
    c = cfg.continual
    files = c.replay_files or c.previous_data
    old_cfg = previous_data_config(cfg.data, files)
    old, _ = load_stage_data(encoder, old_cfg, tokenizer, rejects, cfg.train.seed, fingerprints)
    k = round(c.replay_ratio * len(new_units))
    picks = replay_indices(len(old.units), k, cfg.train.seed)
    mixed = MixedUnits(new_units, old.units, picks, cfg.train.seed)
    counts = {
        "files": list(files),
        "ratio": c.replay_ratio,
        **{key: old.counts[key] for key in ("read", "used", "rejected", "truncated")},
        "available": len(old.units),
        "replayed": k,
        "distinct": int(len(np.unique(picks))),
        "new_units": len(new_units),
        "train_units": len(mixed),
        "data_cache": old.cache,
    }
    if "tasks" in old.counts:
        counts["tasks_available"] = old.counts["tasks"]
    return mixed, counts


# --------------------------------------------------------------------------- EWC
def estimate_fisher(
    objective: Objective, units: Sequence[Unit], layout, batch_size: int, autocast_dtype=None
) -> tuple[dict[str, torch.Tensor], dict]:
    """The diagonal empirical Fisher of ``objective``'s loss on ``units``.

    ``F_i = mean over micro-batches b of (∂ℓ_b/∂θ_i)²`` with ``ℓ_b`` the micro-batch's loss
    normalised as training normalises it (its sum over its count: the mean per target token for
    the language-model losses), over the trainable parameters; ``batch_size=1`` is the
    per-example empirical Fisher. ``layout`` is the loop's :class:`~lmforge.training.forward.Layout`
    (varlen attention must be switched on by the caller when it is used). The model runs in eval
    mode (no dropout). Returns (Fisher by parameter name, float32 on the parameter's device;
    ``{"batches", "examples", "skipped"}``, skipped: micro-batches without targets).
    """
    params = trainable_parameters(objective.model)
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params}
    was_training = objective.training
    objective.eval()
    used = skipped = 0
    try:
        for start in range(0, len(units), batch_size):
            chosen = objective.prepare(list(units[start : start + batch_size]), -1 - start)
            for _, p in params:
                p.grad = None
            loss, count = token_loss_sum(objective, layout.batch(chosen), autocast_dtype)[:2]
            if not count:
                skipped += 1
                continue
            (loss / count).backward()
            for n, p in params:
                if p.grad is not None:
                    fisher[n] += p.grad.float().square()
            used += 1
    finally:
        for _, p in params:
            p.grad = None
        objective.train(was_training)
    for f in fisher.values():
        f /= max(1, used)
    return fisher, {"batches": used, "examples": len(units), "skipped": skipped}


def fisher_key(cfg, run, model: torch.nn.Module, data_parts: dict | None) -> dict:
    """What a Fisher depends on: the starting model (its weights' fingerprint, how it was built
    and adapted, the trainable names and shapes), the old data's encoding key and the
    estimate's settings."""
    base = next((i["fingerprint"] for i in run.inputs if i["role"] == "base_model"), None)
    built = cfg.model.model_dump(exclude={"path", "tokenizer", "adapter"})
    trainable = [(n, list(p.shape)) for n, p in trainable_parameters(model)]
    c = cfg.continual
    return {
        "model": fingerprint_obj(
            {
                "base": base,
                "model": built,
                "adapter": cfg.adapter.model_dump(),
                "template": cfg.data.template,
                "seed": cfg.train.seed,
                "trainable": trainable,
            }
        ),
        "data": fingerprint_obj(data_parts) if data_parts is not None else None,
        "estimate": {
            "examples": c.fisher_examples,
            "batch_size": c.fisher_batch_size,
            "seed": cfg.train.seed,
        },
    }


def save_fisher(path: Path, fisher: dict[str, torch.Tensor], about: dict) -> None:
    tensors = {n: f.detach().cpu().contiguous() for n, f in fisher.items()}
    atomic_write_bytes(path, save(tensors, metadata={_META_KEY: json.dumps(about)}))


def read_fisher(path: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """(Fisher, what it was saved with) from ``path``; None when absent or unreadable."""
    try:
        with safe_open(str(path), "pt") as fh:
            about = json.loads((fh.metadata() or {})[_META_KEY])
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
    except (OSError, ValueError, KeyError, SafetensorError):
        return None
    return tensors, about


def _check_reused(about: dict, key: dict, path: Path, compare_data: bool) -> None:
    changed = [part for part in ("model", "data") if about["key"].get(part) != key[part]]
    if not compare_data:
        changed = [part for part in changed if part != "data"]
    if changed:
        what = {"model": "starting model or adapter", "data": "previous data"}
        raise ConfigError(
            f"continual.fisher_file {path} was estimated for another "
            f"{' and '.join(what[p] for p in changed)}; leave fisher_file unset to estimate "
            "a new one"
        )


def with_ewc(cfg, plan, model, tokenizer, run, strategy, opts) -> Callable:
    """The objective factory for ``LoopOptions.objective``: the stage's objective inside
    :class:`EWCLoss`, with the Fisher loaded, reused from the run directory or estimated now
    (rank 0 first; the others then read its file). Records ``counts.ewc`` and the output."""
    c = cfg.continual
    device = strategy.device_for(cfg.train.device)
    model.to(device)
    use_fast_lowrank(model, device)
    known = {i["path"]: i["fingerprint"] for i in run.inputs}
    old_cfg = previous_data_config(cfg.data, c.previous_data) if c.previous_data else None
    parts = (
        cache_key_parts(plan.encoder, old_cfg, tokenizer, cfg.train.seed, known)
        if old_cfg
        else None
    )
    key = fisher_key(cfg, run, model, parts)
    own = run.dir / FISHER_FILE
    info: dict = {"lambda": c.ewc_lambda}
    with strategy.main_first():
        t0 = time.perf_counter()
        if c.fisher_file:
            path = fisher_path(c.fisher_file)
            found = read_fisher(path)
            if found is None:
                raise ConfigError(f"continual.fisher_file {path} is not a Fisher lmforge saved")
            _check_reused(found[1], key, path, compare_data=old_cfg is not None)
            fisher, about, info["source"] = found[0], found[1], f"file {path}"
        else:
            path = own
            found = read_fisher(own)
            if found is not None and found[1].get("key") == key:
                fisher, about, info["source"] = found[0], found[1], "reused from the run directory"
            elif not strategy.is_main:
                raise DataError(f"rank 0 did not leave a matching Fisher in {own}")
            else:
                fisher, about = _estimate(cfg, plan, model, tokenizer, opts, old_cfg, known, key)
                about["seconds"] = round(time.perf_counter() - t0, 3)
                save_fisher(own, fisher, about)
                info["source"] = "estimated"
    info.update({k: v for k, v in about.items() if k != "key"}, path=str(path))
    run.counts["ewc"] = info
    if path == own and strategy.is_main:
        run.add_output(own, "fisher")
    if strategy.is_main:
        print(
            f"lmforge: EWC lambda={c.ewc_lambda}: Fisher {info['source']} "
            f"({about['stats']['batches']} batches of the previous task)"
        )
    return lambda m: EWCLoss(plan.objective(m), fisher, c.ewc_lambda)


def _estimate(cfg, plan, model, tokenizer, opts, old_cfg, known, key) -> tuple[dict, dict]:
    c = cfg.continual
    old, _ = load_stage_data(plan.encoder, old_cfg, tokenizer, Rejects(), cfg.train.seed, known)
    n = min(c.fisher_examples, len(old.units))
    chosen = np.random.default_rng(cfg.train.seed).permutation(len(old.units))[:n]
    units = [old.units[int(i)] for i in chosen]
    device = next(model.parameters()).device
    spec = plan.objective(model).to(device)
    layout = Layout.of(model, spec, opts)
    switched = varlen_attention(model, device) if layout.varlen else contextlib.nullcontext()
    with switched:
        fisher, stats = estimate_fisher(
            spec, units, layout, c.fisher_batch_size, resolve_precision(cfg.train.precision, device)
        )
    values = torch.cat([f.flatten() for f in fisher.values()]) if fisher else torch.zeros(1)
    stats.update(mean=float(values.mean()), max=float(values.max()), parameters=values.numel())
    data = {k: old.counts[k] for k in ("read", "used", "rejected")}
    return fisher, {"key": key, "stats": stats, "data": data}
