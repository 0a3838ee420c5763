"""``split``: train / validation / test by ratio, stratified, with duplicates kept on one side.

Documents are first grouped: a group is a set of documents that must land in the same split —
same id, same normalised text (exact duplicates), same ``metadata["dup_cluster"]`` (set by an
earlier ``minhash_dedup`` with ``action: mark``) or, with ``dedup_aware`` and no such
metadata, the same near-duplicate cluster from
:func:`lmforge.data.minhash.cluster_near_duplicates`. A near duplicate in the test split of a
training document would make the test score a memorisation score.

Assignment (deterministic for a seed, independent of how the input is sharded): groups of each
label (``stratify``) are ordered by length bucket, randomly within a bucket, and each goes
to the split furthest below its share of the groups seen so far (sequential proportional
allocation). Each prefix of that order is split by the ratios, so every split gets the same mix
of labels *and* lengths, and each split's size ends within one group of its target.

Checks (:func:`split_checks`, kept in the fit state as ``checks`` and on the block as
``block.checks``): sizes, label and length-bucket distributions, their KL divergence from train
(warned above ``kl_warn``), and leakage — exact and near-duplicate pairs across splits,
recomputed independently of the grouping (own shingles, datasketch LSH, exact Jaccard). Any leak
stops the run: it would mean the grouping missed a pair.
"""

from __future__ import annotations

import logging
import math
import random
import re
import unicodedata
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence

import xxhash
from pydantic import Field, model_validator

from lmforge.config.base import Group
from lmforge.data.blocks import FitContext, GlobalBlock, ShardContext, register
from lmforge.data.document import Document
from lmforge.errors import DataError
from lmforge.text.segment import CJK_CLASS, approx_tokens, is_cjk_text

log = logging.getLogger(__name__)

_NON_WORD = re.compile(r"[\W_]+")
_WORD = re.compile(r"[^\W_]+")
_CJK_RE = re.compile(f"[{CJK_CLASS}]")
SHINGLE = 5  # words (or CJK characters) per shingle in the leak check, as minhash_dedup uses


def exact_key(text: str) -> int:
    """64-bit hash of the text after NFKC, lowercasing and collapsing punctuation/spaces."""
    norm = _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()
    return xxhash.xxh3_64_intdigest(norm)


def length_bucket(tokens: int) -> int:
    """Half-octave bucket of a token count: 0, 1, 2, 3, 4-5, 6-7, 8-11, 12-15, ..."""
    return int(2 * math.log2(tokens + 1))


# ------------------------------------------------------------------ grouping
def group_documents(
    ids: Sequence[str],
    exact: Sequence[int],
    clusters: Sequence[object | None],
    texts: Sequence[str] | None,
    threshold: float,
) -> list[int]:
    """Group index of every document: same id, exact key, ``dup_cluster`` or near-dup cluster.

    ``texts`` (None to skip) are clustered with ``cluster_near_duplicates`` when given.
    """
    from lmforge.data.minhash import UnionFind, cluster_near_duplicates

    n = len(ids)
    uf = UnionFind(n)
    for keys in (ids, exact, clusters):
        first: dict[object, int] = {}
        for i, key in enumerate(keys):
            if key is not None:
                uf.union(i, first.setdefault(key, i))
    if texts is not None and n > 1:
        for i, rep in enumerate(cluster_near_duplicates(texts, threshold)):
            uf.union(i, rep)
    return [uf.find(i) for i in range(n)]


def _majority(labels: Iterable[str]) -> str:
    counts = Counter(labels)
    return min(counts, key=lambda label: (-counts[label], label))


def assign_groups(
    groups: Sequence[int],
    labels: Sequence[str],
    buckets: Sequence[int],
    ratios: Sequence[float],
    seed: int,
    order_keys: Sequence[str],
) -> list[int]:
    """Split index per document (see the module docstring for the method).

    ``order_keys`` (document ids) make the random order independent of input order.
    """
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    by_label: dict[str, list[tuple[int, str, list[int]]]] = defaultdict(list)
    for docs in members.values():
        label = _majority(labels[i] for i in docs)
        bucket = int(sorted(buckets[i] for i in docs)[len(docs) // 2])
        by_label[label].append((bucket, min(order_keys[i] for i in docs), docs))
    out = [0] * len(groups)
    for label in sorted(by_label):
        rng = random.Random(f"{seed}\0split\0{label}")
        entries = sorted(by_label[label], key=lambda e: e[1])
        tiebreak = {e[1]: rng.random() for e in entries}
        entries.sort(key=lambda e: (e[0], tiebreak[e[1]]))
        assigned = [0] * len(ratios)
        done = 0
        for _, _, docs in entries:
            done += len(docs)
            deficit = [r * done - a for r, a in zip(ratios, assigned, strict=True)]
            best = max(range(len(ratios)), key=lambda s: (deficit[s], -s))
            assigned[best] += len(docs)
            for i in docs:
                out[i] = best
    return out


# ------------------------------------------------------------------ checks
def kl_divergence(p: Counter, q: Counter, alpha: float = 1.0) -> float:
    """KL(p || q) in nats over the union of categories, with add-``alpha`` smoothing."""
    keys = sorted(set(p) | set(q), key=str)
    if not keys:
        return 0.0
    p_total = sum(p.values()) + alpha * len(keys)
    q_total = sum(q.values()) + alpha * len(keys)
    kl = 0.0
    for k in keys:
        pk = (p.get(k, 0) + alpha) / p_total
        qk = (q.get(k, 0) + alpha) / q_total
        kl += pk * math.log(pk / qk)
    return kl


def _shingles(text: str) -> set[str]:
    """Word 5-grams (spaced text) or 5-character grams (CJK), lowercased, no punctuation."""
    text = unicodedata.normalize("NFKC", text).lower()
    if is_cjk_text(text):
        chars = _NON_WORD.sub("", text)
        return {chars[i : i + SHINGLE] for i in range(max(1, len(chars) - SHINGLE + 1))} - {""}
    tokens = _WORD.findall(text)
    n = min(SHINGLE, len(tokens))
    return {" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)} if tokens else set()


def cross_split_pairs(texts: Sequence[str], splits: Sequence[str], threshold: float) -> list:
    """``(i, j, jaccard)`` of document pairs in different splits whose shingle sets have exact
    Jaccard >= ``threshold``. Candidates come from datasketch's MinHashLSH (128 permutations);
    this is a second, independent implementation next to :mod:`lmforge.data.minhash`."""
    from datasketch import MinHash, MinHashLSH

    sets = [_shingles(t) for t in texts]
    lsh = MinHashLSH(threshold=max(0.05, threshold - 0.1), num_perm=128)
    pairs = []
    for i, shingles in enumerate(sets):
        if not shingles:
            continue
        mh = MinHash(num_perm=128, seed=1)
        mh.update_batch([s.encode("utf-8") for s in shingles])
        for j in lsh.query(mh):
            if splits[j] != splits[i]:
                jac = len(shingles & sets[j]) / len(shingles | sets[j])
                if jac >= threshold:
                    pairs.append((j, i, round(jac, 4)))
        lsh.insert(i, mh)
    return sorted(pairs)


def split_checks(
    splits: Sequence[str],
    labels: Sequence[str],
    tokens: Sequence[int],
    texts: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    train: str = "train",
    kl_warn: float = 0.1,
    leak_threshold: float | None = 0.9,
) -> dict:
    """Sizes, distributions, KL divergences from ``train`` and leaks of a finished split.

    Returns ``{"sizes", "labels", "length_buckets", "kl_label", "kl_length", "warnings",
    "leaks": {"exact": n, "near": n, "examples": [[id_a, id_b, jaccard], ...]}}``; leaks are
    only computed when ``texts`` are given, near duplicates only with a ``leak_threshold``.
    Warnings (also issued with :mod:`warnings`) name each split whose label or length KL
    from train exceeds ``kl_warn``.
    """
    names = sorted(set(splits), key=lambda s: (s != train, s))
    label_dist = {s: Counter() for s in names}
    length_dist = {s: Counter() for s in names}
    for split, label, count in zip(splits, labels, tokens, strict=True):
        label_dist[split][label] += 1
        length_dist[split][length_bucket(count)] += 1
    checks: dict = {
        "sizes": {s: sum(label_dist[s].values()) for s in names},
        "labels": {s: dict(sorted(label_dist[s].items())) for s in names},
        "length_buckets": {s: dict(sorted(length_dist[s].items())) for s in names},
        "kl_label": {},
        "kl_length": {},
        "warnings": [],
    }
    if train in label_dist:
        for s in names:
            if s == train:
                continue
            for key, dist in (("kl_label", label_dist), ("kl_length", length_dist)):
                kl = kl_divergence(dist[s], dist[train])
                checks[key][s] = round(kl, 4)
                if kl > kl_warn:
                    what = "label" if key == "kl_label" else "length"
                    message = (
                        f"split: the {what} distribution of '{s}' differs from '{train}' "
                        f"(KL {kl:.3f} > {kl_warn})"
                    )
                    checks["warnings"].append(message)
                    log.warning(message)
                    warnings.warn(message, stacklevel=2)
    if texts is not None:
        checks["leaks"] = _leaks(texts, splits, ids, leak_threshold)
    return checks


def _leaks(texts, splits, ids, threshold) -> dict:
    where: dict[int, set[str]] = defaultdict(set)
    for text, split in zip(texts, splits, strict=True):
        where[exact_key(text)].add(split)
    exact = sum(1 for found in where.values() if len(found) > 1)
    near = [] if threshold is None else cross_split_pairs(texts, splits, threshold)
    name = (lambda i: ids[i]) if ids is not None else (lambda i: i)
    return {
        "exact": exact,
        "near": len(near),
        "examples": [[name(i), name(j), jac] for i, j, jac in near[:5]],
    }


# ------------------------------------------------------------------ block
@register("split")
class Split(GlobalBlock):
    """Assign ``metadata.split`` (train/validation/test by default), stratified, leak-free."""

    class Params(Group):
        ratios: list[float] = Field([0.7, 0.15, 0.15], description="share of each split")
        names: list[str] = Field(
            ["train", "validation", "test"], description="split names; the first is train"
        )
        stratify: str | None = Field(
            None, description="field or metadata key whose distribution every split keeps"
        )
        dedup_aware: bool = Field(
            True, description="keep each (near-)duplicate cluster inside one split"
        )
        threshold: float = Field(
            0.8, gt=0, le=1, description="Jaccard for near-duplicate clusters (minhash_dedup's)"
        )
        leak_threshold: float = Field(
            0.9,
            gt=0,
            le=1,
            description="exact Jaccard at which a cross-split pair is a leak (error); above "
            "threshold so MinHash estimation noise near it is not taken for a bug",
        )
        kl_warn: float = Field(
            0.1, ge=0, description="warn when a split's KL from train passes this"
        )

        @model_validator(mode="after")
        def _check(self) -> Split.Params:
            if len(self.ratios) != len(self.names):
                raise ValueError(f"{len(self.ratios)} ratios for {len(self.names)} names")
            if len(set(self.names)) != len(self.names):
                raise ValueError(f"split names must differ: {self.names}")
            if any(r < 0 for r in self.ratios) or abs(sum(self.ratios) - 1) > 1e-6:
                raise ValueError(f"ratios must be >= 0 and sum to 1, got {self.ratios}")
            return self

    checks: dict | None = None

    def _collect(self, shard: int, docs: Iterator[Document]) -> list[tuple]:
        """Per document: (id, label, approx tokens, exact key, dup_cluster, text)."""
        rows = []
        for doc in docs:
            text = doc.content
            label = "" if self.params.stratify is None else str(doc.get(self.params.stratify))
            cluster = doc.metadata.get("dup_cluster")
            rows.append((doc.id, label, approx_tokens(text), exact_key(text), cluster, text))
        return rows

    def fit(self, ctx: FitContext) -> dict:
        rows = [row for shard in ctx.map_shards(self._collect) for row in shard]
        if not rows:
            return {"assignment": {}, "checks": {}}
        ids, labels, tokens, exact, clusters, texts = (list(col) for col in zip(*rows, strict=True))
        marked = [None if c is None else ("cluster", str(c)) for c in clusters]
        # near-dup clusters are computed here only when no earlier block marked them
        need_minhash = self.params.dedup_aware and all(c is None for c in clusters)
        groups = group_documents(
            ids, exact, marked, texts if need_minhash else None, self.params.threshold
        )
        buckets = [length_bucket(t) for t in tokens]
        chosen = assign_groups(groups, labels, buckets, self.params.ratios, ctx.seed, ids)
        names = self.params.names
        splits = [names[s] for s in chosen]
        checks = split_checks(
            splits,
            labels,
            tokens,
            texts,
            ids,
            train=names[0],
            kl_warn=self.params.kl_warn,
            leak_threshold=self.params.leak_threshold if self.params.dedup_aware else None,
        )
        checks["groups"] = len(set(groups))
        self.checks = checks
        leaks = checks.get("leaks", {})
        if leaks.get("exact") or leaks.get("near"):
            raise DataError(
                f"split: {leaks['exact']} exact and {leaks['near']} near-duplicate pairs cross "
                f"splits (e.g. {leaks['examples'][:2]}); the grouping missed them. If "
                "dup_cluster came from an earlier block, re-run it with a lower threshold."
            )
        return {"assignment": dict(zip(ids, splits, strict=True)), "checks": checks}

    def apply(self, doc: Document, state: dict, ctx: ShardContext) -> Iterable[Document]:
        split = state["assignment"].get(doc.id)
        if split is None:
            raise DataError(f"split: document {doc.id!r} was not seen in fit (a bug)")
        doc.metadata["split"] = split  # an annotation, not a change to the document
        yield doc
