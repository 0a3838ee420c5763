"""Turn training files into units (see ``collate``) for a stage (pt and sft here, the others in
``encoders``), with counts.

Counts add up: ``read = used + rejected``; ``truncated`` counts used SFT examples cut to
``max_length``, ``segmented`` those trained in windows instead (``data.long_examples=segment``).
Rejected rows go to the ``Rejects`` collector with file, line and reason, in file order.

Encoding streams: records are read one at a time and an encoder (:func:`pt_pieces`,
:func:`sft_pieces`) yields ``(piece, ends_unit)`` into a *sink*: a list in memory
(``data.cache=false``; :func:`encode_pt`, :func:`encode_sft`) or the shard writer of the
tokenised-data cache (``data.cache=true``, the default; see ``lmforge.training.cache``). Both
receive the same pieces, so a cached run trains on exactly the units an uncached one would.
With the cache a pretraining corpus never has to fit in memory: it is written a shard at a time
and read back memory-mapped, one unit when the loop asks for it.

The cache key (:func:`cache_key_parts`) holds everything the units depend on: the content
fingerprints of the data files, the tokenizer's content, the stage, every ``data`` setting
except paths, cache placement and ``max_examples`` (applied after the cache, so runs that use
fewer examples share an entry), the split seed when validation is carved out of train, and
:data:`ENCODER_VERSION`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from lmforge.artifacts import fingerprint
from lmforge.config.groups import DataConfig
from lmforge.data.readers import Record, Rejects, check_files, iter_records, split_selector
from lmforge.data.schema import RowError, detect_format, to_text
from lmforge.errors import DataError
from lmforge.training.cache import (
    Sink,
    TokenizedUnits,
    cache_root,
    entry_folder,
    load_or_write,
    tokenizer_fingerprint,
)
from lmforge.training.collate import IGNORE, Piece, Unit, unit_targets
from lmforge.training.encoders import cut_blocks
from lmforge.training.multitask import (
    UNTAGGED,
    count_task,
    group_by_task,
    prepare_conversation,
    task_of,
)
from lmforge.training.sft import encode_messages_full, segments

# Bump when pt_pieces, sft_pieces, sft.encode_messages_full or the split change their output:
# it is part of the cache key, so entries written by the old code are no longer used.
# 2: plain-text rows among SFT conversations are trained on; 3: tool calls, tool results and
# system/task prefixes are encoded, validation is in task order, "folder#name" keys by name
ENCODER_VERSION = 3
SPLITS = ("train", "validation")
_TOKENIZE_BATCH = 256  # documents per tokenizer call (fast tokenizers batch in Rust)
# DataConfig fields that do not change the units: the paths (their contents are hashed
# instead), where the cache lives, and max_examples (applied after the cache)
_NOT_IN_KEY = {
    "train",
    "validation",
    "dataset_dir",
    "cache",
    "cache_dir",
    "cache_shard_tokens",
    "max_examples",
    "task_weights",  # in the key only when set (see cache_key_parts): old entries stay valid
}


@dataclass
class Encoded:
    units: Sequence[Unit] = field(default_factory=list)  # a list, or TokenizedUnits (cached)
    counts: dict[str, int] = field(default_factory=dict)
    # {"enabled": bool, "hit": bool, "path": entry folder} when data.cache is on
    cache: dict = field(default_factory=lambda: {"enabled": False})


def _new_counts() -> dict[str, int]:
    return {"read": 0, "used": 0, "rejected": 0, "truncated": 0}


class UnitList:
    """A sink that keeps the units in memory as a list."""

    def __init__(self) -> None:
        self.units: list[Unit] = []
        self._open: Unit = []

    def add(self, piece: Piece, ends_unit: bool) -> None:
        self._open.append(piece)
        if ends_unit:
            self.close()

    def close(self) -> None:
        if self._open:
            self.units.append(self._open)
            self._open = []


# --------------------------------------------------------------------------- encoders
Pieces = Iterator[tuple[Piece, bool]]


def sft_pieces(
    records: Iterable[Record], cfg: DataConfig, tokenizer, rejects: Rejects, counts: dict
) -> Pieces:
    """One piece (= one unit) per usable conversation; ``counts`` are updated as rows go by."""
    for record in records:
        counts["read"] += 1
        try:
            whole = cfg.long_examples == "segment"
            if cfg.format == "auto" and _is_text_row(record.row):
                ids, labels, truncated = _encode_replay_text(record.row, cfg, tokenizer, whole)
            else:
                messages, tools = prepare_conversation(record.row, cfg)
                ids, labels, truncated = encode_messages_full(
                    tokenizer, messages, cfg.max_length, tools, keep_whole=whole
                )
        except RowError as exc:
            rejects.add_record(record, str(exc))
            counts["rejected"] += 1
            continue
        counts["used"] += 1
        task = task_of(record.row, cfg.task_field)
        count_task(counts, task)
        weight = cfg.task_weights.get(task or UNTAGGED, 1.0)
        if truncated and whole:  # one unit per window; every label learned once
            counts["segmented"] = counts.get("segmented", 0) + 1
            for window_ids, window_labels in segments(
                ids, labels, cfg.max_length, cfg.segment_overlap
            ):
                yield Piece.from_labels(window_ids, window_labels, weight), True
            continue
        counts["truncated"] += int(truncated)
        yield Piece.from_labels(ids, labels, weight), True


def _is_text_row(row) -> bool:
    try:
        return detect_format(row) == "text"
    except RowError:
        return False


def _encode_replay_text(
    row, cfg: DataConfig, tokenizer, whole: bool = False
) -> tuple[list[int], list[int], bool]:
    """A plain-text row among conversations (``prepare``'s ``pretrain_mix``): learned on every
    token, like pretraining, as replay against forgetting. Cut to ``max_length`` (with EOS),
    unless ``whole`` (segmented later)."""
    text = to_text(row, cfg.text_field)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    truncated = len(ids) > cfg.max_length
    if not whole:
        ids = ids[: cfg.max_length]
    return ids, list(ids), truncated


def pt_pieces(
    records: Iterable[Record], cfg: DataConfig, tokenizer, rejects: Rejects, counts: dict
) -> Pieces:
    """Documents + EOS, concatenated in order and cut into blocks of ``max_length`` tokens.

    A document cut by a block boundary continues in the next block as a new piece (positions
    restart); the last token before the cut still predicts the first token after it. A piece
    that fills its block comes with ``ends_unit=True``; the last block may be shorter.
    """
    eos = tokenizer.eos_token_id

    def docs() -> Iterator[list[int]]:
        rows = iter(records)
        while batch := list(islice(rows, _TOKENIZE_BATCH)):
            texts = []
            for record in batch:
                counts["read"] += 1
                try:
                    texts.append(to_text(record.row, cfg.text_field))
                except RowError as exc:
                    rejects.add_record(record, str(exc))
                    counts["rejected"] += 1
            if not texts:
                continue
            for doc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
                counts["used"] += 1
                yield doc + [eos]

    yield from cut_blocks(docs(), cfg.max_length, targets_of=lambda ids: ids[1:] + [IGNORE])


@dataclass(frozen=True)
class Encoder:
    """How a stage turns rows into units: ``pieces`` (the signature of :func:`pt_pieces`), the
    name and ``settings`` that go into the cache key, and whether the encoded data must hold
    target tokens (masked LM draws its targets per step instead)."""

    kind: str
    pieces: Callable[..., Pieces]
    settings: dict = field(default_factory=dict)
    needs_targets: bool = True


ENCODERS = {"pt": Encoder("pt", pt_pieces), "sft": Encoder("sft", sft_pieces)}


def as_encoder(stage: str | Encoder) -> Encoder:
    return stage if isinstance(stage, Encoder) else ENCODERS[stage]


def _collect(pieces: Pieces, counts: dict) -> Encoded:
    sink = UnitList()
    for piece, ends_unit in pieces:
        sink.add(piece, ends_unit)
    sink.close()
    return Encoded(sink.units, counts)


def encode_sft(records: list[Record], cfg: DataConfig, tokenizer, rejects: Rejects) -> Encoded:
    counts = _new_counts()
    return _collect(sft_pieces(records, cfg, tokenizer, rejects, counts), counts)


def encode_pt(records: list[Record], cfg: DataConfig, tokenizer, rejects: Rejects) -> Encoded:
    """Pretraining blocks in memory; see :func:`pt_pieces`."""
    counts = _new_counts()
    return _collect(pt_pieces(records, cfg, tokenizer, rejects, counts), counts)


# --------------------------------------------------------------------------- splits
def held_out(n: int, ratio: float, seed: int) -> np.ndarray:
    """Boolean mask over ``n`` rows: the seeded ``ratio`` (at least one row) held out for
    validation, chosen before encoding so no document straddles. ``n`` bytes of memory."""
    mask = np.zeros(n, dtype=bool)
    if ratio > 0 and n > 0:
        n_val = max(1, round(n * ratio))
        mask[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return mask


RecordSource = Callable[[Rejects], Iterator[Record]]


def split_sources(cfg: DataConfig, seed: int) -> dict[str, RecordSource]:
    """For each split, a function that streams its records (reader rejects to the argument).

    Carving validation out of train reads the train files three times (count, train,
    validation) instead of holding them in memory; only the train pass reports reader rejects.
    LLaMA-Factory datasets (``data.dataset``) are mixed by ``training.datasets``.
    """
    if cfg.dataset:
        from lmforge.training.datasets import dataset_split_sources  # it builds on held_out

        return dataset_split_sources(cfg, seed)
    if cfg.validation:
        return {
            "train": lambda rej: iter_records(cfg.train, rej),
            "validation": lambda rej: iter_records(cfg.validation, rej),
        }
    if cfg.val_ratio <= 0:
        return {
            "train": lambda rej: iter_records(cfg.train, rej),
            "validation": lambda rej: iter(()),
        }
    mask = held_out(sum(1 for _ in iter_records(cfg.train, Rejects())), cfg.val_ratio, seed)

    def train(rej: Rejects) -> Iterator[Record]:
        return (r for i, r in enumerate(iter_records(cfg.train, rej)) if not mask[i])

    def validation(rej: Rejects) -> Iterator[Record]:
        return (r for i, r in enumerate(iter_records(cfg.train, Rejects())) if mask[i])

    return {"train": train, "validation": validation}


def encode_splits(
    stage: str | Encoder,
    cfg: DataConfig,
    tokenizer,
    rejects: Rejects,
    seed: int,
    sink_for: Callable[[str], Sink],
    progress: bool = False,
) -> dict[str, dict[str, int]]:
    """Encode train then validation into ``sink_for(split)``; return the counts per split."""
    from tqdm.auto import tqdm

    encoder = as_encoder(stage)
    out = {}
    for split, source in split_sources(cfg, seed).items():
        counts, sink, before = _new_counts(), sink_for(split), len(rejects)
        rows = tqdm(source(rejects), desc=f"tokenising {split}", unit=" rows", disable=not progress)
        split_cfg = cfg
        if encoder.kind == "sft" and split == "validation":  # per-task eval slices (multitask)
            rows = group_by_task(rows, cfg.task_field)
            # validation losses stay plain per-token means, comparable across task weights
            split_cfg = cfg.model_copy(update={"task_weights": {}})
        for piece, ends_unit in encoder.pieces(rows, split_cfg, tokenizer, rejects, counts):
            sink.add(piece, ends_unit)
        sink.close()
        # rows the reader could not parse (bad JSON, bad UTF-8) are read-and-rejected too
        unreadable = len(rejects) - before - counts["rejected"]
        counts["read"] += unreadable
        counts["rejected"] += unreadable
        out[split] = counts
    return out


# --------------------------------------------------------------------------- entry point
def cache_key_parts(
    stage: str | Encoder, cfg: DataConfig, tokenizer, seed: int, fingerprints: dict | None = None
) -> dict:
    """What the units depend on. ``fingerprints`` (resolved path -> fingerprint, e.g. from the
    run manifest's inputs) saves hashing a large corpus twice."""
    known = fingerprints or {}

    def content(path: str) -> str:
        base, name = split_selector(path)  # folder#dataset: the folder's content + the name
        found = known.get(str(base.resolve())) or fingerprint(base)
        return found if name is None else f"{found}#{name}"

    carved = not cfg.validation and cfg.val_ratio > 0
    encoder = as_encoder(stage)
    parts = {
        "encoder": ENCODER_VERSION,
        "stage": encoder.kind,
        "train": [content(p) for p in cfg.train],
        "validation": [content(p) for p in cfg.validation],
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "settings": cfg.model_dump(exclude=_NOT_IN_KEY),
        "split_seed": seed if carved else None,
    }
    if encoder.settings:  # absent for pt/sft, so their existing cache entries stay valid
        parts["encoding"] = encoder.settings
    if cfg.task_weights:  # the same: absent unless set
        parts["task_weights"] = cfg.task_weights
    return parts


def load_stage_data(
    stage: str | Encoder,
    cfg: DataConfig,
    tokenizer,
    rejects: Rejects,
    seed: int,
    fingerprints: dict | None = None,
    progress: bool = False,
) -> tuple[Encoded, Encoded]:
    """(train, validation) units; validation from ``cfg.validation`` or ``cfg.val_ratio``.

    With ``cfg.cache`` the units come from (or are first written to) the tokenised-data cache
    and are :class:`~lmforge.training.cache.TokenizedUnits`; ``Encoded.cache`` says whether the
    cache was hit. Counts and rejects are the same either way.
    """
    sources = [str(p) for p in check_files([*cfg.train, *cfg.validation])]
    if cfg.cache:
        train, val = _load_cached(
            stage, cfg, tokenizer, rejects, seed, sources, fingerprints, progress
        )
    else:
        sinks: dict[str, UnitList] = {}

        def sink_for(split: str) -> UnitList:
            return sinks.setdefault(split, UnitList())

        counts = encode_splits(stage, cfg, tokenizer, rejects, seed, sink_for, progress)
        train, val = (Encoded(sinks[s].units, counts[s]) for s in SPLITS)
    if cfg.max_examples is not None and len(train.units) > cfg.max_examples:
        train.counts["unused_over_max_examples"] = len(train.units) - cfg.max_examples
        train.units = _first(train.units, cfg.max_examples)
    if not train.units:
        raise DataError(
            f"no usable training rows in {cfg.train}: {train.counts['rejected']} rejected "
            "(see rejects.jsonl in the run directory for the reasons)"
        )
    if as_encoder(stage).needs_targets and _target_tokens(train.units) == 0:
        raise DataError("the training data has no target tokens to learn from")
    return train, val


def _load_cached(stage, cfg, tokenizer, rejects, seed, sources, fingerprints, progress):
    parts = cache_key_parts(stage, cfg, tokenizer, seed, fingerprints)
    folder = entry_folder(cache_root(cfg.cache_dir), parts)

    def encode(sink_for, fresh: Rejects) -> dict:
        return encode_splits(stage, cfg, tokenizer, fresh, seed, sink_for, progress)

    entry, hit = load_or_write(folder, sources, cfg.cache_shard_tokens, encode, parts)
    rejects.items.extend(entry.rejects)
    info = {"enabled": True, "hit": hit, "path": str(folder)}
    return (Encoded(entry.units[s], dict(entry.counts[s]), dict(info)) for s in SPLITS)


def _first(units: Sequence[Unit], n: int) -> Sequence[Unit]:
    return units.head(n) if isinstance(units, TokenizedUnits) else units[:n]


def _target_tokens(units: Sequence[Unit]) -> int:
    if isinstance(units, TokenizedUnits):
        return units.target_tokens()
    return sum(unit_targets(u) for u in units)
