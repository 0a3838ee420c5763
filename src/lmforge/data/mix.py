"""Balancing and mixing: ``balance``, ``mixture`` and ``pretrain_mix``.

- ``balance``: resample a label (or any field / metadata key) to target ratios, or to equal
  counts: ``undersample`` drops documents (reason ``undersampled``), ``oversample`` adds
  copies.
- ``mixture``: take each ``metadata.source`` at a weight of a token budget, repeating a short
  source up to ``max_epochs`` times and dropping the surplus of a long one (``over_budget``).
- ``pretrain_mix``: add plain pretraining text to instruction data (a ``fraction`` of the
  result), the usual guard against forgetting during fine-tuning.

Copies get the id ``{id}#dup{k}`` and ``metadata["oversampled"] = k`` (k = 1, 2, ...), so
counts reconcile (``added``) and the report can tell copies from originals. Which documents are
kept or copied is decided by a hash of (seed, block, id): the same seed gives the same selection
whatever the sharding. Token counts are :func:`lmforge.text.segment.approx_tokens`
(whitespace words plus one per CJK character; no tokenizer is needed at this stage).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

from pydantic import Field, model_validator

from lmforge.config.base import Group
from lmforge.data.blocks import FitContext, GlobalBlock, ShardContext, register
from lmforge.data.document import Document
from lmforge.data.readers import Rejects, iter_records
from lmforge.data.schema import RowError, to_text
from lmforge.errors import DataError
from lmforge.text.segment import approx_tokens

log = logging.getLogger(__name__)


def order_key(seed: int, salt: str, doc_id: str) -> bytes:
    """Sort key of a document for a seeded random order that ignores input order."""
    return hashlib.sha256(f"{seed}\0{salt}\0{doc_id}".encode()).digest()[:8]


def apportion(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Largest-remainder rounding: integer shares of ``total`` within 1 of ``total * weight``."""
    norm = sum(weights.values())
    exact = {k: total * w / norm for k, w in weights.items()}
    out = {k: math.floor(v) for k, v in exact.items()}
    by_remainder = sorted(exact, key=lambda k: (-(exact[k] - out[k]), k))
    for k in by_remainder[: total - sum(out.values())]:
        out[k] += 1
    return out


def copies(doc: Document, n: int) -> Iterator[Document]:
    """``doc`` then ``n - 1`` copies with ids ``{id}#dup{k}`` and ``metadata.oversampled = k``."""
    yield doc
    for k in range(1, n):
        dup = copy.deepcopy(doc)
        dup.id = f"{doc.id}#dup{k}"
        dup.metadata["oversampled"] = k
        yield dup


def _emit(doc: Document, times: int, reason: str, ctx: ShardContext) -> Iterator[Document]:
    if times <= 0:
        ctx.drop(doc, reason)
    else:
        yield from copies(doc, times)


# ------------------------------------------------------------------ balance
def balance_counts(
    counts: dict[str, int], targets: dict[str, float] | None, mode: str
) -> dict[str, int]:
    """Output count per label: ratios ``targets`` (equal when None) reached by dropping
    (``undersample``: as many documents as possible, none copied) or by copying
    (``oversample``: none dropped)."""
    weights = targets or {label: 1.0 for label in counts}
    weights = {k: w for k, w in weights.items() if w > 0}
    norm = sum(weights.values())
    scale = [counts.get(k, 0) * norm / w for k, w in weights.items()]
    if mode == "undersample":
        total = math.floor(min(scale) + 1e-9)
    else:
        total = math.ceil(max(scale) - 1e-9)
    return apportion(total, weights)


@register("balance")
class Balance(GlobalBlock):
    """Resample the values of ``by`` to target ratios (or to equal counts)."""

    class Params(Group):
        by: str = Field("label", description="field or metadata key to balance (label, source)")
        targets: dict[str, float] | None = Field(
            None,
            description="ratio per value (normalised); values not listed pass unchanged. "
            "None: equal counts for every value",
        )
        mode: Literal["undersample", "oversample"] = Field(
            "undersample", description="reach the ratios by dropping or by copying documents"
        )

        @model_validator(mode="after")
        def _check(self) -> Balance.Params:
            if self.targets is not None and (
                not self.targets
                or any(w < 0 for w in self.targets.values())
                or sum(self.targets.values()) <= 0
            ):
                raise ValueError(f"targets need at least one positive ratio: {self.targets}")
            return self

    def _value(self, doc: Document) -> str:
        return str(doc.get(self.params.by))

    def _collect(self, shard: int, docs: Iterator[Document]) -> list[tuple[str, str]]:
        return [(doc.id, self._value(doc)) for doc in docs]

    def fit(self, ctx: FitContext) -> dict[str, int]:
        """Times each document appears in the output (0 = dropped), by id."""
        rows = [row for shard in ctx.map_shards(self._collect) for row in shard]
        by_value: dict[str, list[str]] = defaultdict(list)
        for doc_id, value in rows:
            by_value[value].append(doc_id)
        targets = self.params.targets
        managed = {v: ids for v, ids in by_value.items() if targets is None or v in targets}
        missing = sorted(set(targets or ()) - set(by_value))
        if missing:
            raise DataError(
                f"balance: no document has {self.params.by} = {missing} "
                f"(values found: {sorted(by_value)[:20]})"
            )
        if not managed:
            return {}
        wanted = balance_counts(
            {v: len(ids) for v, ids in managed.items()}, targets, self.params.mode
        )
        times: dict[str, int] = {}
        for value, ids in managed.items():
            ordered = sorted(ids, key=lambda i: order_key(ctx.seed, f"balance:{value}", i))
            times.update(spread(ordered, wanted.get(value, 0)))
        log.info("balance: %s -> %s", {v: len(i) for v, i in managed.items()}, wanted)
        return times

    def apply(self, doc: Document, state: dict, ctx: ShardContext) -> Iterable[Document]:
        return _emit(doc, state.get(doc.id, 1), "undersampled", ctx)


def spread(ordered: Sequence[str], wanted: int) -> dict[str, int]:
    """How many times each id appears so that ``wanted`` are emitted in all: the first
    ``wanted`` once each when there are enough, else every id ``wanted // n`` times and the
    first ``wanted % n`` once more."""
    n = len(ordered)
    if n == 0:
        return {}
    base, extra = divmod(wanted, n)
    return {doc_id: base + (rank < extra) for rank, doc_id in enumerate(ordered)}


# ------------------------------------------------------------------ mixture
def take_tokens(ordered: Sequence[tuple[str, int]], budget: float, max_epochs: int) -> dict:
    """Times each document is used to fill ``budget`` tokens: whole epochs first, then a
    prefix of the (random) order, stopping once the budget is reached (at most one document
    over), never more than ``max_epochs`` passes."""
    total = sum(t for _, t in ordered)
    times = dict.fromkeys((i for i, _ in ordered), 0)
    if total == 0 or budget <= 0:
        return times
    epochs = min(max_epochs, int(budget // total))
    for doc_id in times:
        times[doc_id] = epochs
    left = budget - epochs * total
    if epochs < max_epochs:
        for doc_id, tokens in ordered:
            if left <= 0:
                break
            times[doc_id] += 1
            left -= tokens
    return times


@register("mixture")
class Mixture(GlobalBlock):
    """Mix sources (``metadata.source``) at token weights, optionally to a token budget."""

    class Params(Group):
        weights: dict[str, float] = Field(
            ..., min_length=1, description="share of tokens per source (normalised)"
        )
        total_tokens: int | None = Field(
            None,
            gt=0,
            description="token budget of the mixture (approx tokens); None: the largest "
            "mixture that keeps the weights without repeating any source",
        )
        max_epochs: int = Field(
            4,
            ge=1,
            description="most passes over a source too short for its share of total_tokens "
            "(4: Muennighoff et al. 2023 find ~4 epochs of repeated data nearly as good as new)",
        )

    def _collect(self, shard: int, docs: Iterator[Document]) -> list[tuple[str, str, int]]:
        return [(d.id, str(d.metadata.get("source")), approx_tokens(d.content)) for d in docs]

    def fit(self, ctx: FitContext) -> dict:
        rows = [row for shard in ctx.map_shards(self._collect) for row in shard]
        by_source: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for doc_id, source, tokens in rows:
            by_source[source].append((doc_id, tokens))
        weights = {s: w for s, w in self.params.weights.items() if w > 0}
        missing = sorted(set(weights) - set(by_source))
        if missing:
            raise DataError(
                f"mixture: no document has source {missing} (sources: {sorted(by_source)[:20]})"
            )
        sizes = {s: sum(t for _, t in by_source[s]) for s in weights}
        budget = self._budget(sizes, weights)
        norm = sum(weights.values())
        times: dict[str, int] = {}
        report = {}
        for source, docs in by_source.items():
            if source not in weights:
                continue
            want = budget * weights[source] / norm
            ordered = sorted(docs, key=lambda d: order_key(ctx.seed, f"mixture:{source}", d[0]))
            chosen = take_tokens(ordered, want, self.params.max_epochs)
            times.update(chosen)
            got = sum(tokens * chosen[i] for i, tokens in docs)
            report[source] = {"target": round(want), "tokens": got, "available": sizes[source]}
            if got < 0.99 * want:
                log.warning(
                    "mixture: source %r gives %d of %d tokens even after %d epochs",
                    source,
                    got,
                    round(want),
                    self.params.max_epochs,
                )
        unlisted = sorted(set(by_source) - set(weights))
        if unlisted:
            log.warning("mixture: sources without a weight are dropped: %s", unlisted)
        self.mixture = report
        return {"times": times, "report": report}

    def _budget(self, sizes: dict[str, int], weights: dict[str, float]) -> float:
        if self.params.total_tokens is not None:
            return float(self.params.total_tokens)
        norm = sum(weights.values())
        return min(sizes[s] * norm / w for s, w in weights.items())

    def apply(self, doc: Document, state: dict, ctx: ShardContext) -> Iterable[Document]:
        times = state["times"].get(doc.id)
        if times is None:
            ctx.drop(doc, "not_in_mixture", {"source": str(doc.metadata.get("source"))})
            return iter(())
        return _emit(doc, times, "over_budget", ctx)


# ------------------------------------------------------------------ pretrain_mix
@register("pretrain_mix")
class PretrainMix(GlobalBlock):
    """Add pretraining documents so that they are ``fraction`` of the output."""

    class Params(Group):
        files: list[str] = Field(..., min_length=1, description="pretraining text files")
        fraction: float = Field(
            0.15,
            ge=0.0,
            lt=1.0,
            description="share of the output that is pretraining text (0.1-0.2 is usual)",
        )
        text_field: str = Field("text", description="column holding the text in the files")
        text_mode: Literal["line", "paragraph"] = Field(
            "line", description="plain-text files: a document per line or per paragraph"
        )

    def _count(self, shard: int, docs: Iterator[Document]) -> list[str]:
        return [doc.id for doc in docs]

    def fit(self, ctx: FitContext) -> dict[str, list[dict]]:
        """Rows of the pretraining documents to add, keyed by the id they follow."""
        hosts = [doc_id for shard in ctx.map_shards(self._count) for doc_id in shard]
        f = self.params.fraction
        wanted = round(len(hosts) * f / (1 - f))
        picked = self._sample(wanted, ctx.seed)
        if len(picked) < wanted:
            log.warning("pretrain_mix: wanted %d documents, the files hold %d", wanted, len(picked))
        rng = random.Random(f"{ctx.seed}\0pretrain_mix\0hosts")
        ordered_hosts = sorted(set(hosts))
        after: dict[str, list[dict]] = defaultdict(list)
        for row in picked:
            after[ordered_hosts[rng.randrange(len(ordered_hosts))]].append(row)
        return dict(after)

    def _sample(self, k: int, seed: int) -> list[dict]:
        """``k`` rows chosen uniformly from the files in one pass (reservoir sampling), in
        file order; unusable rows are skipped and counted in the log."""
        if k <= 0:
            return []
        rng = random.Random(f"{seed}\0pretrain_mix\0sample")
        rejects = Rejects()
        reservoir: list[tuple[int, dict]] = []
        seen = 0
        for record in iter_records(self.params.files, rejects, self.params.text_mode):
            try:
                text = to_text(record.row, self.params.text_field)
            except RowError as exc:
                rejects.add_record(record, str(exc))
                continue
            row = {"text": text, "file": record.source, "line": record.line}
            if seen < k:
                reservoir.append((seen, row))
            else:
                slot = rng.randrange(seen + 1)
                if slot < k:
                    reservoir[slot] = (seen, row)
            seen += 1
        if rejects:
            log.warning("pretrain_mix: %d unusable rows %s", len(rejects), rejects.by_reason())
        return [row for _, row in sorted(reservoir, key=lambda item: item[0])]

    def apply(self, doc: Document, state: dict, ctx: ShardContext) -> Iterable[Document]:
        yield doc
        for row in state.get(doc.id, ()):
            yield Document(
                id=f"pretrain_mix:{row['file']}:{row['line']}",
                text=row["text"],
                metadata={"source": "pretrain_mix", "file": row["file"], "line": row["line"]},
            )
