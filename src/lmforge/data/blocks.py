"""Pipeline blocks: documents in, documents out, and a reason for every document dropped.

A block is registered under the name a ``pipeline.yaml`` uses and declares its parameters as a
typed config group (``Params``), so a recipe is validated before any work starts::

    @register("min_length")
    class MinLength(Filter):
        class Params(Group):
            chars: int = Field(10, ge=0, description="drop documents shorter than this")

        def check(self, doc):
            if len(doc.content) < self.params.chars:
                return "too_short", {"chars": len(doc.content)}
            return None

Kinds of block:

- :class:`Filter` — ``check(doc)`` returns None to keep, or a reason (optionally with a detail
  dict) to drop. Filters never change documents.
- :class:`Mapper` — ``map(doc)`` changes the document in place and returns whether it changed.
- :class:`Block` — the general form, ``run(docs, ctx)``: a generator that may drop
  (``ctx.drop``), change (``ctx.changed``) and add documents (augmentation, oversampling).
- :class:`GlobalBlock` — needs every document before deciding (dedup, split, balancing):
  ``fit(ctx)`` sees all shards once and returns a picklable state; ``apply(doc, state, ctx)``
  then runs per shard like a general block.

Blocks must be picklable (executors send them to worker processes or Ray tasks): keep models
and other heavy objects out of ``__init__`` and load them in ``setup()``, which every worker
calls once before its first document. Randomness comes from ``ctx.rng(doc)``, seeded by the
pipeline seed, the block and the document id, so the output does not depend on the executor,
the number of workers or the order shards run in.

The executor counts for every block ``seen``, ``kept``, ``changed``, ``added`` and ``dropped``
by reason, and checks ``seen + added == kept + dropped``: a block that loses a document without
a reason is a bug, and the run stops with an error naming it.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lmforge.config.base import Group
from lmforge.data.document import Document
from lmforge.errors import DataError

REGISTRY: dict[str, type[Block]] = {}


def register(name: str) -> Callable[[type[Block]], type[Block]]:
    def wrap(cls: type[Block]) -> type[Block]:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"two blocks registered as {name!r}")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


class NoParams(Group):
    pass


@dataclass
class BlockStats:
    seen: int = 0
    kept: int = 0
    changed: int = 0
    added: int = 0
    dropped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {
            "seen": self.seen,
            "kept": self.kept,
            "changed": self.changed,
            "added": self.added,
            "dropped": dict(sorted(self.dropped.items())),
        }

    def merge(self, other: dict) -> None:
        self.seen += other["seen"]
        self.kept += other["kept"]
        self.changed += other["changed"]
        self.added += other["added"]
        self.dropped.update(other["dropped"])

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


class ShardContext:
    """What a block sees while it processes one shard: drop, changed, rng, counts."""

    def __init__(self, shard: int, seed: int, exclusions: list[dict] | None = None):
        self.shard = shard
        self.seed = seed
        self.exclusions = [] if exclusions is None else exclusions
        self.block_name = ""
        self.stats = BlockStats()

    def drop(self, doc: Document, reason: str, detail: dict | None = None) -> None:
        """Record ``doc`` as dropped by the current block with a short ``reason`` key."""
        self.stats.dropped[reason] += 1
        entry = {"id": doc.id, "block": self.block_name, "reason": reason}
        if detail:
            entry["detail"] = detail
        entry["document"] = doc.to_row()
        self.exclusions.append(entry)

    def changed(self) -> None:
        self.stats.changed += 1

    def rng(self, doc: Document | str, salt: str = "") -> random.Random:
        """A generator seeded by (pipeline seed, block, document id, salt)."""
        key = doc.id if isinstance(doc, Document) else doc
        digest = hashlib.sha256(f"{self.seed}\0{self.block_name}\0{key}\0{salt}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "little"))


class FitContext:
    """What :meth:`GlobalBlock.fit` sees: every shard of the block's input.

    ``map_shards(fn)`` runs ``fn(shard_index, documents)`` once per shard through the executor
    (in parallel: worker processes or Ray tasks) and returns the results in shard order; ``fn``
    must be picklable (a module-level function or a method of the block). ``iter_docs()`` reads
    every document in order in this process.
    """

    def __init__(
        self,
        num_shards: int,
        read_shard: Callable[[int], Iterator[Document]],
        map_shards: Callable[[Callable[[int, Iterator[Document]], Any]], list],
        seed: int,
        block_name: str,
    ):
        self.num_shards = num_shards
        self.read_shard = read_shard
        self._map_shards = map_shards
        self.seed = seed
        self.block_name = block_name

    def map_shards(self, fn: Callable[[int, Iterator[Document]], Any]) -> list:
        return self._map_shards(fn)

    def iter_docs(self) -> Iterator[Document]:
        for shard in range(self.num_shards):
            yield from self.read_shard(shard)


class Block:
    """The general block. Subclasses set ``Params`` and override ``run`` (or use a subclass)."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[Group]] = NoParams
    #: True when the block needs every document before it can decide (see GlobalBlock)
    is_global: ClassVar[bool] = False

    def __init__(self, params: Group | dict | None = None):
        if params is None:
            params = self.Params()
        elif isinstance(params, dict):
            params = self.Params(**params)
        self.params = params

    def setup(self) -> None:
        """Load models or tables; called once per worker before the first document."""

    def run(self, docs: Iterable[Document], ctx: ShardContext) -> Iterator[Document]:
        raise NotImplementedError

    #: parameter names that hold paths the block reads (their contents join the run's cache key)
    PATH_PARAMS: ClassVar[tuple[str, ...]] = (
        "files",
        "eval_files",
        "model",
        "reverse_model",
        "tokenizer",
        "lexicons",
    )

    def input_paths(self) -> list[str]:
        """Existing files or folders named by the block's parameters (eval sets, models ...)."""
        from pathlib import Path

        found = []
        for name in self.PATH_PARAMS:
            value = getattr(self.params, name, None)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str) and Path(item.split("#")[0]).exists():
                    found.append(item.split("#")[0])
        return found

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


def _reason(result: Any) -> tuple[str, dict | None] | None:
    if result is None:
        return None
    if isinstance(result, tuple):
        return result[0], result[1]
    return str(result), None


class Filter(Block):
    """Keep or drop, with a reason. Override ``check``."""

    def check(self, doc: Document) -> str | tuple[str, dict] | None:
        raise NotImplementedError

    def run(self, docs: Iterable[Document], ctx: ShardContext) -> Iterator[Document]:
        for doc in docs:
            verdict = _reason(self.check(doc))
            if verdict is None:
                yield doc
            else:
                ctx.drop(doc, verdict[0], verdict[1])


class Mapper(Block):
    """Change documents in place. Override ``map`` (returns True when the document changed)."""

    def map(self, doc: Document) -> bool:
        raise NotImplementedError

    def run(self, docs: Iterable[Document], ctx: ShardContext) -> Iterator[Document]:
        for doc in docs:
            if self.map(doc):
                ctx.changed()
            yield doc


class GlobalBlock(Block):
    """A block that sees every document (``fit``) before processing shards (``apply``).

    ``apply`` may drop (``ctx.drop``), annotate metadata, or yield several documents; the default
    ``run`` calls it for each document.
    """

    is_global: ClassVar[bool] = True

    def fit(self, ctx: FitContext) -> Any:
        raise NotImplementedError

    def apply(self, doc: Document, state: Any, ctx: ShardContext) -> Iterable[Document]:
        raise NotImplementedError

    def summary(self, state: Any) -> dict | None:
        """What the run report shows for this block: ``report`` or ``checks`` of the state."""
        if isinstance(state, dict):
            found = state.get("report") or state.get("checks")
            return found if isinstance(found, dict) else None
        return getattr(state, "report", None)

    def run(self, docs: Iterable[Document], ctx: ShardContext, state: Any = None):
        for doc in docs:
            yield from self.apply(doc, state, ctx)


def run_block(
    block: Block, docs: Iterable[Document], ctx: ShardContext, state: Any = None
) -> Iterator[Document]:
    """Run ``block`` over ``docs``, counting into a fresh ``ctx.stats`` (read it afterwards)."""
    ctx.block_name = block.name
    stats = ctx.stats = BlockStats()

    def counted_in() -> Iterator[Document]:
        for doc in docs:
            stats.seen += 1
            yield doc

    out = block.run(counted_in(), ctx, state) if block.is_global else block.run(counted_in(), ctx)
    for doc in out:
        stats.kept += 1
        yield doc
    surplus = stats.kept + stats.dropped_total - stats.seen
    if surplus < 0:
        raise DataError(
            f"block {block.name!r} lost {-surplus} documents without a reason (a bug in the block)"
        )
    stats.added = surplus


def build_block(name: str, params: dict | None) -> Block:
    """A registered block from its pipeline.yaml name and parameters (validated)."""
    load_all_blocks()
    if name not in REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list(REGISTRY), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise DataError(f"unknown block '{name}'{hint} (blocks: {', '.join(sorted(REGISTRY))})")
    cls = REGISTRY[name]
    return cls(cls.Params(**(params or {})))


# modules whose import registers blocks; listed here so pipeline.yaml needs no imports
BLOCK_MODULES = (
    "lmforge.data.normalize",
    "lmforge.data.langid",
    "lmforge.data.quality",
    "lmforge.data.model_filters",
    "lmforge.data.dedup",
    "lmforge.data.pii",
    "lmforge.data.decontam",
    "lmforge.data.split",
    "lmforge.data.mix",
    "lmforge.data.augment",
    "lmforge.data.augment_eda",
    "lmforge.data.basic_blocks",
)


def load_all_blocks() -> None:
    import importlib

    for module in BLOCK_MODULES:
        importlib.import_module(module)  # block modules import optional packages lazily
