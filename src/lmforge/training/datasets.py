"""LLaMA-Factory dataset folders used as they are: ``data.dataset_dir`` + ``data.dataset``.

    data:
      dataset_dir: data                    # the folder with dataset_info.json
      dataset: [alpaca_en_demo, identity, glaive_toolcall_en_demo]
      mix_strategy: interleave_under       # or concat (default), interleave_over
      interleave_probs: [0.5, 0.2, 0.3]
      placeholders: {name: Forge, author: ACME}

Each named dataset is read through :mod:`lmforge.data.llamafactory` (its columns, tags and
formatting from ``dataset_info.json``); its rows take the dataset's name as their task unless they
carry ``data.task_field`` themselves. Validation is ``data.eval_dataset``, else
``data.validation`` files, else ``data.val_ratio`` of each dataset held out *before* mixing (so
over-sampling never repeats a validation row into train). Training rows are then concatenated or
interleaved (:mod:`lmforge.data.interleave`, seeded with ``train.seed``); :func:`mixing_summary`
reports what the mix took from each dataset for the manifest.
"""

from __future__ import annotations

from collections.abc import Iterator

from lmforge.config.groups import DataConfig
from lmforge.data.interleave import RecordSource, interleave, mixing_plan, normalised, plan_counts
from lmforge.data.readers import Record, Rejects, iter_records
from lmforge.training.data import held_out
from lmforge.training.multitask import task_of


def _tagged(selector: str, name: str, field: str) -> RecordSource:
    """Records of one dataset; a row without a task gets the dataset's name."""

    def source(rejects: Rejects) -> Iterator[Record]:
        for record in iter_records([selector], rejects):
            row = record.row
            if isinstance(row, dict) and task_of(row, field) is None:
                row = {**row, field: name}
            yield Record(record.source, record.line, row)

    return source


def _masked(source: RecordSource, mask, keep: bool, quiet: bool) -> RecordSource:
    """The records of ``source`` whose held-out flag equals ``not keep`` (``quiet``: reader
    rejects go nowhere, because the train pass reports them)."""

    def masked(rejects: Rejects) -> Iterator[Record]:
        records = source(Rejects() if quiet else rejects)
        return (r for i, r in enumerate(records) if bool(mask[i]) != keep)

    return masked


def _count(source: RecordSource) -> int:
    return sum(1 for _ in source(Rejects()))


def _train_parts(cfg: DataConfig, seed: int) -> tuple[list[RecordSource], list, list[int]]:
    """(train source per dataset, held-out mask per dataset or None, train rows per dataset)."""
    sources = [_tagged(f"{cfg.dataset_dir}#{n}", n, cfg.task_field) for n in cfg.dataset]
    carve = not cfg.validation and cfg.val_ratio > 0
    masks, parts, sizes = [], [], []
    for source in sources:
        n = _count(source)
        mask = held_out(n, cfg.val_ratio, seed) if carve else None
        masks.append(mask)
        parts.append(_masked(source, mask, keep=True, quiet=False) if carve else source)
        sizes.append(n - int(mask.sum()) if carve else n)
    return parts, masks, sizes


def dataset_split_sources(cfg: DataConfig, seed: int) -> dict[str, RecordSource]:
    """For ``train`` and ``validation``, a function streaming the records (see the module doc)."""
    parts, masks, sizes = _train_parts(cfg, seed)

    def train(rejects: Rejects) -> Iterator[Record]:
        plan = mixing_plan(sizes, cfg.interleave_probs, cfg.mix_strategy, seed)
        return interleave(parts, sizes, plan, rejects)

    if cfg.eval_dataset:
        evals = [_tagged(f"{cfg.dataset_dir}#{n}", n, cfg.task_field) for n in cfg.eval_dataset]
    elif cfg.validation:
        evals = [lambda rej: iter_records(cfg.validation, rej)]
    elif masks and masks[0] is not None:
        tagged = [_tagged(f"{cfg.dataset_dir}#{n}", n, cfg.task_field) for n in cfg.dataset]
        evals = [_masked(s, m, keep=False, quiet=True) for s, m in zip(tagged, masks, strict=True)]
    else:
        evals = []

    def validation(rejects: Rejects) -> Iterator[Record]:
        for source in evals:
            yield from source(rejects)

    return {"train": train, "validation": validation}


def mixing_summary(cfg: DataConfig, seed: int) -> dict:
    """What the training mix takes from each ``data.dataset`` entry (for the manifest): rows
    available for training, rows drawn (repeats included), rows held out for validation.
    Empty when ``data.dataset`` is not used. Reads each dataset once to count its rows."""
    if not cfg.dataset:
        return {}
    _, masks, sizes = _train_parts(cfg, seed)
    drawn = plan_counts(sizes, cfg.interleave_probs, cfg.mix_strategy, seed)
    probs = normalised(cfg.interleave_probs, len(sizes)).round(6).tolist()
    return {
        "strategy": cfg.mix_strategy,
        "seed": seed,
        "datasets": {
            name: {
                "rows": n,
                "drawn": d,
                "held_out": int(m.sum()) if m is not None else 0,
                **({"probability": p} if cfg.mix_strategy != "concat" else {}),
            }
            for name, n, d, m, p in zip(cfg.dataset, sizes, drawn, masks, probs, strict=True)
        },
    }
