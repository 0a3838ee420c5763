"""Tokenised training data cached on disk as shards, and read back memory-mapped.

Encoding is the slow start of a run (a tokenizer pass over every document, a chat-template
render per SFT example), and its result depends only on the inputs. ``load_stage_data``
therefore writes it once to ``<root>/tokenized/<key>/`` and every later run, in any process,
maps the same files instead of encoding again (``data.cache=false`` turns this off). The root
is ``data.cache_dir``, else ``$LMFORGE_CACHE``, else ``~/.cache/lmforge`` (see
:func:`cache_root`); the manifest of a train run records the folder used and whether it was hit.

The key is a sha256 over everything the units depend on (``cache_key_parts`` in ``data`` builds
it): the content fingerprints of the data files (not their paths), the tokenizer's content
(:func:`tokenizer_fingerprint`), the stage, the data settings, the split seed when validation is
carved out of train, and the encoder version. One entry folder::

    meta.json                   format, the key's parts, per split: counts and the shard list
    rejects.jsonl               rejected rows in the order they were found ("file" is an index
                                into the data files, so a moved file still hits)
    train-00000.ids.npy         uint32 (tokens,)      the shard's pieces' token ids, end to end
    train-00000.targets.npy     int32  (tokens,)      next-token targets, -100 where not learned
    train-00000.pieces.npy      int64  (pieces + 1,)  where each piece starts in ``ids``
    train-00000.units.npy       int64  (units + 1,)   where each unit starts in ``pieces``
    train-00000.weights.npy     float64 (pieces,)     each piece's loss weight; written only
                                                      when one is not 1 (``data.task_weights``,
                                                      the shard's ``"weighted": true``)
    validation-00000.*.npy      the same for the validation split

A shard holds whole units and is closed once it has ``data.cache_shard_tokens`` tokens, so
writing holds one shard in memory (8 bytes a token), however large the corpus: pretraining
streams documents through :class:`ShardWriter`. Reading maps the files
(``np.load(mmap_mode="r")``) and :class:`TokenizedUnits` builds a unit only when the training
loop asks for it, so a corpus larger than RAM trains from the page cache.

An entry is published whole: it is written to a ``.<key>.tmp-*`` folder that is renamed into
place once complete. A reader sees a complete entry or none; a crashed writer leaves a temp
folder that is never read (delete it at leisure); when two processes race to write the same
entry, the second rename fails and that process uses the first one's entry, which is identical.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
import time
import uuid
from array import array
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Protocol

import numpy as np

from lmforge.artifacts import fingerprint, fingerprint_obj, fsync_path
from lmforge.data.readers import Rejects
from lmforge.errors import DataError
from lmforge.training.collate import IGNORE, Piece, Unit

# the on-disk layout above; bump when it changes. The optional weights file did not need a bump:
# entries without it read as weight 1 (what they were written with), and only keys that name
# data.task_weights (which older code never builds) lead to entries that have it
FORMAT_VERSION = 1
META = "meta.json"
REJECTS = "rejects.jsonl"
_KINDS = {"ids": np.uint32, "targets": np.int32, "pieces": np.int64, "units": np.int64}
WEIGHTS = "weights"  # float64 per piece (exactly the encoder's), only in "weighted" shards
_TYPECODES = {"ids": "I", "targets": "i", "pieces": "q", "units": "q"}
assert all(array(c).itemsize == np.dtype(_KINDS[k]).itemsize for k, c in _TYPECODES.items())


def cache_root(configured: str | None) -> Path:
    """``data.cache_dir``, else ``$LMFORGE_CACHE``, else ``~/.cache/lmforge``."""
    if configured:
        return Path(configured).expanduser()
    env = os.environ.get("LMFORGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lmforge"


def entry_folder(root: Path, parts: dict) -> Path:
    """``root/tokenized/<first 32 hex digits of the sha256 of parts>``."""
    return root / "tokenized" / fingerprint_obj(parts).removeprefix("sha256:")[:32]


def tokenizer_fingerprint(tokenizer) -> str:
    """What a tokenizer does to text: its serialised pipeline (vocab, merges, normaliser,
    pre-tokeniser, added tokens), special tokens, chat template, and the library versions
    that run them. Independent of the folder it was loaded from."""
    from importlib import metadata

    versions = {}
    for name in ("transformers", "tokenizers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow (Python) tokenizer: hash the files it saves
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            return fingerprint_obj({"files": fingerprint(tmp), "versions": versions})
    return fingerprint_obj(
        {
            "class": type(tokenizer).__name__,
            "backend": backend.to_str(),
            "special_tokens": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
            "special_ids": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id],
            "chat_template": getattr(tokenizer, "chat_template", None),
            "versions": versions,
        }
    )


# --------------------------------------------------------------------------- writing
class Sink(Protocol):
    """Where encoders put their output: ``add`` a piece, closing the unit when ``ends_unit``."""

    def add(self, piece: Piece, ends_unit: bool) -> None: ...

    def close(self) -> None: ...


class ShardWriter:
    """Appends one split's pieces to shard files in ``folder``; a unit never straddles shards.

    Holds at most one shard (about ``shard_tokens`` tokens, 8 bytes each) in compact arrays.
    After :meth:`close`, ``shards`` lists ``{name, units, pieces, tokens, target_tokens}``.
    """

    def __init__(self, folder: Path, split: str, shard_tokens: int) -> None:
        self.folder, self.split, self.shard_tokens = Path(folder), split, shard_tokens
        self.shards: list[dict] = []
        self._reset()

    def _reset(self) -> None:
        self._buf = {kind: array(code) for kind, code in _TYPECODES.items()}
        self._buf["pieces"].append(0)
        self._buf["units"].append(0)
        self._weights = array("d")

    def add(self, piece: Piece, ends_unit: bool) -> None:
        self._buf["ids"].extend(piece.ids)
        self._buf["targets"].extend(piece.targets)
        self._buf["pieces"].append(len(self._buf["ids"]))
        self._weights.append(piece.weight)
        if ends_unit:
            self._end_unit()

    def _end_unit(self) -> None:
        n_pieces = len(self._buf["pieces"]) - 1
        if self._buf["units"][-1] == n_pieces:
            return  # no open pieces
        self._buf["units"].append(n_pieces)
        if len(self._buf["ids"]) >= self.shard_tokens:
            self._flush()

    def close(self) -> None:
        self._end_unit()
        self._flush()

    def _flush(self) -> None:
        n_units = len(self._buf["units"]) - 1
        if n_units == 0:
            return
        name = f"{self.split}-{len(self.shards):05d}"
        arrays = {k: np.frombuffer(self._buf[k], dtype=dtype) for k, dtype in _KINDS.items()}
        for kind, values in arrays.items():
            np.save(self.folder / f"{name}.{kind}.npy", values)
        shard = {
            "name": name,
            "units": n_units,
            "pieces": len(arrays["pieces"]) - 1,
            "tokens": len(arrays["ids"]),
            "target_tokens": int(np.count_nonzero(arrays["targets"] != IGNORE)),
        }
        weights = np.frombuffer(self._weights, dtype=np.float64)
        if (weights != 1.0).any():
            np.save(self.folder / f"{name}.{WEIGHTS}.npy", weights)
            shard["weighted"] = True
        self.shards.append(shard)
        self._reset()


# --------------------------------------------------------------------------- reading
class TokenizedUnits(Sequence):
    """The units of one split, read from memory-mapped shard files when accessed.

    ``units[i]`` builds a fresh :data:`Unit` (pieces with Python-list ``ids``/``targets``, as the
    in-memory encoders make); ``units[a:b]`` a list of them; :meth:`head` a view on the first
    ``n``. Pickling reopens the files, so the object can cross to worker processes.
    """

    def __init__(self, folder: Path, shards: list[dict], limit: int | None = None) -> None:
        self.folder, self.shards = Path(folder), shards
        self._starts = list(accumulate((s["units"] for s in shards), initial=0))
        self._len = self._starts[-1] if limit is None else min(limit, self._starts[-1])
        self._open()

    def _open(self) -> None:
        # every shard is mapped now: the mappings stay valid even if the folder is removed later
        self._arrays = [
            {
                k: np.load(self.folder / f"{s['name']}.{k}.npy", mmap_mode="r")
                for k in (*_KINDS, *((WEIGHTS,) if s.get("weighted") else ()))
            }
            for s in self.shards
        ]

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_arrays"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._unit(i) for i in range(*index.indices(self._len))]
        i = index + self._len if index < 0 else index
        if not 0 <= i < self._len:
            raise IndexError(f"unit {index} out of range ({self._len} units)")
        return self._unit(i)

    def _unit(self, i: int) -> Unit:
        s = bisect_right(self._starts, i) - 1
        a, j = self._arrays[s], i - self._starts[s]
        bounds = a["pieces"][a["units"][j] : a["units"][j + 1] + 1]
        lo, hi = int(bounds[0]), int(bounds[-1])
        ids, targets = a["ids"][lo:hi].tolist(), a["targets"][lo:hi].tolist()
        cuts = (bounds - lo).tolist()
        pieces = [Piece(ids[x:y], targets[x:y]) for x, y in zip(cuts, cuts[1:], strict=False)]
        if WEIGHTS in a:
            first = int(a["units"][j])
            for k, w in enumerate(a[WEIGHTS][first : first + len(pieces)].tolist()):
                pieces[k].weight = w
        return pieces

    def head(self, n: int) -> TokenizedUnits:
        view = copy.copy(self)  # shares the mappings
        view._len = min(n, self._len)
        return view

    def target_tokens(self) -> int:
        """Target tokens (not ``-100``) in these units, mostly from the counts stored per shard."""
        total, left = 0, self._len
        for shard, a in zip(self.shards, self._arrays, strict=True):
            if left <= 0:
                break
            if shard["units"] <= left:
                total += shard["target_tokens"]
            else:
                end = int(a["pieces"][a["units"][left]])
                total += int(np.count_nonzero(a["targets"][:end] != IGNORE))
            left -= shard["units"]
        return total


# --------------------------------------------------------------------------- entries
@dataclass
class CacheEntry:
    folder: Path
    units: dict[str, TokenizedUnits]  # split -> units
    counts: dict[str, dict[str, int]]  # split -> counts, before data.max_examples
    rejects: list[dict]  # Rejects items, "file" mapped back to this run's paths


# encode(sink_for, rejects) fills one sink per split and returns the counts per split
Encode = Callable[[Callable[[str], Sink], Rejects], dict[str, dict[str, int]]]


def load_or_write(
    folder: Path, sources: list[str], shard_tokens: int, encode: Encode, about: dict
) -> tuple[CacheEntry, bool]:
    """The entry in ``folder`` and True (a hit), or write it with ``encode`` and return False.

    ``sources`` are the data files (train, then validation) as the readers name them: rejects
    are stored with an index into this list. ``about`` (the key's parts) goes into meta.json.
    """
    entry = read_entry(folder, sources)
    if entry is None and folder.exists():
        entry = read_entry(folder, sources)  # published by another process just now?
        if entry is None:  # published entries are whole: this one was damaged by hand
            _discard(folder)
    if entry is not None:
        return entry, True
    _write(folder, sources, shard_tokens, encode, about)
    entry = read_entry(folder, sources)
    if entry is None:
        raise DataError(f"the tokenised-data cache {folder} could not be read back; delete it")
    return entry, False


def read_entry(folder: Path, sources: list[str]) -> CacheEntry | None:
    """The complete entry in ``folder``, or None when there is none (or it is unreadable)."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_VERSION:
            return None
        splits = meta["splits"]
        units = {name: TokenizedUnits(folder, s["shards"]) for name, s in splits.items()}
        lines = (folder / REJECTS).read_text(encoding="utf-8").splitlines()
        rejects = [json.loads(line) for line in lines]
        for item in rejects:
            if isinstance(item["file"], int) and item["file"] < len(sources):
                item["file"] = sources[item["file"]]
        counts = {name: s["counts"] for name, s in splits.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return CacheEntry(folder, units, counts, rejects)


def _write(folder: Path, sources: list[str], shard_tokens: int, encode: Encode, about: dict):
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        writers: dict[str, ShardWriter] = {}

        def sink_for(split: str) -> ShardWriter:
            writers[split] = ShardWriter(tmp, split, shard_tokens)
            return writers[split]

        rejects = Rejects()
        counts = encode(sink_for, rejects)
        index = {s: i for i, s in reversed(list(enumerate(sources)))}
        items = [{**item, "file": index.get(item["file"], item["file"])} for item in rejects.items]
        (tmp / REJECTS).write_text(
            "".join(json.dumps(i, ensure_ascii=False, default=str) + "\n" for i in items),
            encoding="utf-8",
        )
        meta = {
            "format": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "key": about,
            "splits": {s: {"counts": counts[s], "shards": w.shards} for s, w in writers.items()},
        }
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _publish(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, folder: Path) -> None:
    """Rename the finished ``tmp`` to ``folder``; if another process got there first, keep its."""
    for f in tmp.iterdir():
        fsync_path(f)
    fsync_path(tmp)
    try:
        os.rename(tmp, folder)  # fails when folder exists and is not empty: never replaces
    except OSError:
        if not (folder / META).is_file():
            raise
        return  # the same entry, written by a process that finished first
    fsync_path(folder.parent)


def _discard(folder: Path) -> None:
    aside = folder.with_name(f".{folder.name}.bad-{uuid.uuid4().hex[:8]}")
    with contextlib.suppress(OSError):
        os.rename(folder, aside)
        shutil.rmtree(aside, ignore_errors=True)
