"""MinHash signatures, LSH banding and union-find clustering, vectorised with numpy.

This is the engine under the ``minhash_dedup`` block (:mod:`lmforge.data.dedup`) and under
anything else that needs near-duplicate clusters (:func:`cluster_near_duplicates`).

Shingles. A spaced-language document is lower-cased and cut into words (letters and digits;
punctuation dropped); its shingles are the word ``word_ngram``-grams. A CJK document
(:func:`lmforge.text.segment.is_cjk_text`) has no spaces, so its shingles are character
``char_ngram``-grams of the lower-cased text with spaces and punctuation removed. A document
shorter than ``n`` tokens has one shingle: all of its tokens.

Why by hand: datasketch and datatrove hash every shingle in Python, one document at a time. Here a
batch of documents is processed at once with no Python work per word or character:

1. the batch is one array of code points; a 64K-entry table classifies them (word character,
   CJK, space); tokens are runs of word characters (single characters in CJK texts), hashed as
   the polynomial ``sum_j (code_j + 1) * P**j mod 2**64`` (one gather of cached powers, one
   multiply, one ``np.add.reduceat``) and mixed once with a seeded splitmix64. Polynomial hashes
   modulo 2**64 do collide on crafted strings (Thue-Morse, thousands of characters long);
   natural words are far shorter, and a collision only merges two words' shingles;
2. n-gram hashes by vectorised arithmetic over the token hashes: ``sum_k h[i+k] * c_k mod 2**64``
   with random odd ``c_k`` (documents padded with ``n-1`` zeros so n-grams never cross them);
   a shingle is the top 32 bits;
3. the ``num_perm`` permutations are ``(a * x + b) mod 2**32`` with random odd ``a`` (a
   bijection of 32-bit values; datasketch's "affine32" scheme), computed as one
   ``(num_perm, shingles)`` uint32 product per chunk of 4096 shingles;
4. ``np.minimum.reduceat`` over document offsets gives each document's minima: a signature is
   ``num_perm`` uint32 values.

Two signatures agree at a position with probability equal to the Jaccard similarity of the
shingle sets, so ``mean(sig_a == sig_b)`` estimates it (standard error ``sqrt(J(1-J)/num_perm)``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import numpy as np

from lmforge.text.segment import CJK_CLASS

_WORD, _CJK, _SPACE = np.uint8(1), np.uint8(2), np.uint8(4)  # bits of a character's class
CJK_THRESHOLD = 0.3  # as lmforge.text.segment.is_cjk_text
_SHIFT = np.uint64(32)
# shingles per permutation chunk: (num_perm, chunk) uint32 = 2 MiB at 128 permutations, which
# stays in cache
SHINGLE_CHUNK = 4096
# characters tokenised at once: bounds memory (about 100 bytes per character of working arrays
# and 16 MiB of cached powers) and keeps the arrays in cache; 1M measured faster than 4M
TEXT_BATCH_CHARS = 1_000_000
DEFAULT_WORD_NGRAM = 5
DEFAULT_CHAR_NGRAM = 5


# --------------------------------------------------------------------------- shingles
def _mix64(values: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 finaliser: spreads small integers (code points) over 64 bits. Shape kept."""
    z = values.astype(np.uint64) + np.uint64((0x9E3779B97F4A7C15 * (seed + 1)) & 0xFFFFFFFFFFFFFFFF)
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


@functools.lru_cache(maxsize=1)
def _bmp_classes() -> np.ndarray:
    """(65536,) uint8 class of every BMP code point: WORD (``[^\\W_]``), CJK, SPACE bits."""
    chars = "".join(chr(c) if not 0xD800 <= c < 0xE000 else " " for c in range(0x10000))
    table = np.zeros(0x10000, dtype=np.uint8)
    for pattern, bit in ((r"[^\W_]", _WORD), (f"[{CJK_CLASS}]", _CJK), (r"\s", _SPACE)):
        table[[m.start() for m in re.finditer(pattern, chars)]] |= bit
    return table


def _char_classes(points: np.ndarray) -> np.ndarray:
    """Class bits of every code point; beyond the BMP (rare: emoji, old scripts) one by one."""
    if not len(points) or points.max() <= 0xFFFF:
        return _bmp_classes()[points]
    classes = _bmp_classes()[np.minimum(points, 0xFFFF)]
    high = points > 0xFFFF
    uniq, inverse = np.unique(points[high], return_inverse=True)
    bits = np.array([_WORD if chr(c).isalnum() else 0 for c in uniq], dtype=np.uint8)
    classes[high] = bits[inverse]
    return classes


_POWER_BASE = 0x9E3779B97F4A7C15  # odd, so invertible modulo 2**64


@functools.lru_cache(maxsize=1)
def _powers(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(P**i, P**-i) mod 2**64 for i < size (uint64); callers ask for powers of two."""
    power = np.full(size, _POWER_BASE, dtype=np.uint64)
    power[0] = 1
    np.multiply.accumulate(power, out=power)
    inverse = np.full(size, pow(_POWER_BASE, -1, 2**64), dtype=np.uint64)
    inverse[0] = 1
    np.multiply.accumulate(inverse, out=inverse)
    return power, inverse


def _per_text(sorted_positions: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """How many of ``sorted_positions`` fall in each [bounds[i], bounds[i+1]) range."""
    return np.diff(np.searchsorted(sorted_positions, bounds))


def _cjk_texts(texts: Sequence[str], classes: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """(docs,) bool: CJK characters are at least CJK_THRESHOLD of the non-space characters."""
    cjk_chars = _per_text(np.flatnonzero(classes & _CJK), bounds)
    cjk = np.zeros(len(texts), dtype=bool)
    for i in np.flatnonzero(cjk_chars).tolist():  # only texts with a CJK character at all
        visible = sum(map(len, texts[i].split()))  # non-space characters, as is_cjk_text
        cjk[i] = visible > 0 and cjk_chars[i] >= CJK_THRESHOLD * visible
    return cjk


def _tokens(texts: Sequence[str], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokenise a batch at once on its code points: no Python work per word or character.

    Returns (64-bit token hashes of all texts concatenated, token count per text, CJK mask per
    text). A token is a maximal run of word characters (``[^\\W_]``, as ``re``'s ``\\w`` minus
    ``_``) in a spaced text and a single word character in a CJK text; text is lower-cased.
    A token's hash is the polynomial ``sum_j (code_j + 1) * P**j mod 2**64`` over its characters,
    computed from global powers (``P**pos`` summed per token, times ``P**-start``) and mixed once.
    """
    docs = len(texts)
    lowered = [t.lower() for t in texts]
    lengths = np.fromiter((len(t) + 1 for t in lowered), dtype=np.int64, count=docs)
    # "\x00" (not a word character) ends every text so no token runs across two texts
    blob = "\x00".join(lowered) + "\x00"
    points = np.frombuffer(blob.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    classes = _char_classes(points)
    bounds = np.zeros(docs + 1, dtype=np.int64)
    np.cumsum(lengths, out=bounds[1:])
    cjk = _cjk_texts(lowered, classes, bounds)
    word = (classes & _WORD).view(bool)  # bit 0: values 0/1, a valid bool array
    token_start = word.copy()
    token_start[1:] &= ~word[:-1]
    if cjk.any():  # CJK: every word character is a token
        token_start |= word & np.repeat(cjk, lengths)
    positions = np.flatnonzero(word)
    first = np.flatnonzero(token_start[positions])  # index in positions where tokens begin
    counts = _per_text(positions[first], bounds)
    if not len(first):
        return np.zeros(0, dtype=np.uint64), counts, cjk
    power, inverse = _powers(1 << int(len(points) - 1).bit_length())
    values = points[positions].astype(np.uint64)
    values += np.uint64(1)
    values *= power[positions]
    hashes = np.add.reduceat(values, first)
    hashes *= inverse[positions[first]]
    return _mix64(hashes, seed), counts, cjk


def _gather_segments(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Indices of the segments [starts[i], starts[i] + counts[i]) one after another."""
    before = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=before[1:])
    return np.repeat(starts - before, counts) + np.arange(int(counts.sum()))


def _ngram_hashes(
    tokens: np.ndarray, lengths: np.ndarray, n: int, mults: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the ``n``-grams of each document, concatenated, and the count per document.

    ``tokens``: (sum(lengths),) uint64 token hashes. A document with fewer than ``n`` (but > 0)
    tokens yields one shingle over all its tokens; an empty one yields none.
    """
    docs = len(lengths)
    pad = n - 1
    padded_len = lengths + pad
    starts = np.zeros(docs + 1, dtype=np.int64)
    np.cumsum(padded_len, out=starts[1:])
    padded = np.zeros(int(starts[-1]) + pad, dtype=np.uint64)
    # position of every token in the padded array: its index plus pad per document before it
    doc_of_token = np.repeat(np.arange(docs), lengths)
    padded[np.arange(len(tokens)) + doc_of_token * pad] = tokens
    grams = padded[: len(padded) - pad] * mults[0]
    for k in range(1, n):
        grams += padded[k : len(padded) - pad + k] * mults[k]
    counts = np.where(lengths >= n, lengths - n + 1, np.minimum(lengths, 1))
    return grams[_gather_segments(starts[:-1], counts)], counts


def _min_permutations(
    shingles: np.ndarray, counts: np.ndarray, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """Per-document minima of ``(a * x + b) mod 2**32`` over its shingles ``x``.

    ``shingles``: (sum(counts),) uint32; ``counts`` > 0 for every document; ``a`` (odd), ``b``:
    (num_perm,) uint32. Returns (len(counts), num_perm) uint32.

    Layout (num_perm, chunk): the reduction then runs along contiguous memory, which numpy
    vectorises (measured 0.2 ns per value against 2 ns for the (chunk, num_perm) layout).
    """
    docs = len(counts)
    offsets = np.zeros(docs + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    out = np.full((len(a), docs), 0xFFFFFFFF, dtype=np.uint32)
    total = int(offsets[-1])
    buffer = np.empty((len(a), min(SHINGLE_CHUNK, total)), dtype=np.uint32)
    a_col, b_col = a[:, None], b[:, None]
    for c0 in range(0, total, SHINGLE_CHUNK):
        c1 = min(c0 + SHINGLE_CHUNK, total)
        d0 = int(np.searchsorted(offsets, c0, side="right")) - 1
        d1 = int(np.searchsorted(offsets, c1, side="left"))
        seg = offsets[d0:d1] - c0
        seg[0] = 0
        values = buffer[:, : c1 - c0]
        np.multiply(a_col, shingles[None, c0:c1], out=values)
        np.add(values, b_col, out=values)
        part = np.minimum.reduceat(values, seg, axis=1)
        np.minimum(out[:, d0:d1], part, out=out[:, d0:d1])
    return np.ascontiguousarray(out.T)


class MinHasher:
    """Computes MinHash signatures: ``num_perm`` uint32 per document, fixed by ``seed``.

    The same seed, n-gram sizes and ``num_perm`` give the same signature for a text in any
    process, batch or order, so signatures from different shards can be compared.
    """

    def __init__(
        self,
        num_perm: int = 128,
        word_ngram: int = DEFAULT_WORD_NGRAM,
        char_ngram: int = DEFAULT_CHAR_NGRAM,
        seed: int = 1,
    ):
        if num_perm < 1 or word_ngram < 1 or char_ngram < 1:
            raise ValueError("num_perm and n-gram sizes must be positive")
        self.num_perm = num_perm
        self.word_ngram = word_ngram
        self.char_ngram = char_ngram
        self.seed = seed
        rng = np.random.default_rng(seed)
        top32, top64 = np.iinfo(np.uint32).max, np.iinfo(np.uint64).max
        self._a = rng.integers(0, top32, size=num_perm, dtype=np.uint32, endpoint=True) | 1
        self._b = rng.integers(0, top32, size=num_perm, dtype=np.uint32, endpoint=True)
        n_max = max(word_ngram, char_ngram)
        self._mults = rng.integers(0, top64, size=n_max, dtype=np.uint64, endpoint=True) | 1

    def shingles(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(32-bit shingle hashes of ``texts`` concatenated in order, shingle count per text).

        A text's shingles may repeat (a set is what :meth:`shingle_sets` gives).
        """
        tokens, token_counts, cjk = _tokens(texts, self.seed)
        token_cjk = np.repeat(cjk, token_counts)
        counts = np.zeros(len(texts), dtype=np.int64)
        parts = []
        for mask, token_mask, n in (
            (~cjk, ~token_cjk, self.word_ngram),
            (cjk, token_cjk, self.char_ngram),
        ):
            if mask.any():
                grams, counts[mask] = _ngram_hashes(
                    tokens[token_mask], token_counts[mask], n, self._mults
                )
                parts.append((grams >> _SHIFT).astype(np.uint32))
        if len(parts) < 2:
            return (parts[0] if parts else np.zeros(0, dtype=np.uint32)), counts
        # spaced texts' shingles came first, then CJK ones: put them back in input order
        grouped = np.concatenate(parts)
        order = np.concatenate([np.flatnonzero(~cjk), np.flatnonzero(cjk)])
        grouped_start = np.zeros(len(texts), dtype=np.int64)
        grouped_start[order] = np.concatenate([[0], np.cumsum(counts[order])[:-1]])
        return grouped[_gather_segments(grouped_start, counts)], counts

    def shingle_sets(self, texts: Sequence[str]) -> list[np.ndarray]:
        """The distinct 32-bit shingle hashes of each text, sorted (for exact Jaccard)."""
        flat, counts = self.shingles(texts)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        return [np.unique(flat[bounds[i] : bounds[i + 1]]) for i in range(len(texts))]

    def signatures(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Signatures (len(texts), num_perm) uint32 and shingle counts (len(texts),) int64.

        A text with no word or character at all has count 0 and an all-0xFFFFFFFF signature;
        callers must not treat such texts as near-duplicates of each other.
        """
        sig = np.full((len(texts), self.num_perm), 0xFFFFFFFF, dtype=np.uint32)
        counts = np.zeros(len(texts), dtype=np.int64)
        for lo, hi in _batches(texts):
            flat, counts[lo:hi] = self.shingles(texts[lo:hi])
            keep = np.flatnonzero(counts[lo:hi])
            if len(keep):
                sig[lo + keep] = _min_permutations(flat, counts[lo + keep], self._a, self._b)
        return sig, counts


def _batches(texts: Sequence[str]) -> Iterable[tuple[int, int]]:
    """(start, end) ranges of ``texts`` holding about TEXT_BATCH_CHARS characters each."""
    start, chars = 0, 0
    for i, text in enumerate(texts):
        chars += len(text)
        if chars >= TEXT_BATCH_CHARS:
            yield start, i + 1
            start, chars = i + 1, 0
    if start < len(texts):
        yield start, len(texts)


# --------------------------------------------------------------------------- LSH
def candidate_probability(similarity: np.ndarray | float, bands: int, rows: int) -> np.ndarray:
    """P(two documents share at least one band) at Jaccard ``similarity``: 1 - (1 - s^r)^b."""
    s = np.asarray(similarity, dtype=np.float64)
    return 1.0 - (1.0 - s**rows) ** bands


def optimal_bands(
    threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5
) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the weighted error of the S-curve.

    False positive area: integral over s in [0, threshold] of P(candidate | s); false negative
    area: integral over [threshold, 1] of 1 - P(candidate | s) (the idea of datasketch's
    ``_optimal_param``, integrated here on a 1001-point grid with the trapezoid rule).
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    grid = np.linspace(0.0, 1.0, 1001)
    below, above = grid <= threshold, grid >= threshold
    best, best_err = (1, num_perm), np.inf
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            p = candidate_probability(grid, bands, rows)
            fp = np.trapezoid(p[below], grid[below])
            fn = np.trapezoid(1.0 - p[above], grid[above])
            err = fp_weight * fp + fn_weight * fn
            if err < best_err - 1e-12:
                best, best_err = (bands, rows), err
    return best


def band_keys(sig: np.ndarray, bands: int, rows: int, seed: int = 0) -> np.ndarray:
    """(bands, n) uint64: one hash per band of ``rows`` signature values (a random linear form)."""
    mults = np.random.default_rng(seed + 7919).integers(
        1, np.iinfo(np.uint64).max, size=rows, dtype=np.uint64, endpoint=True
    ) | np.uint64(1)
    keys = np.empty((bands, len(sig)), dtype=np.uint64)
    for band in range(bands):
        block = sig[:, band * rows : (band + 1) * rows].astype(np.uint64)
        keys[band] = (block * mults).sum(axis=1, dtype=np.uint64)
    return keys


def candidate_pairs(keys: np.ndarray, neighbours: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Distinct pairs (lo, hi), lo < hi, of documents sharing a band key.

    Within a bucket, documents in index order are paired with the next ``neighbours`` members:
    1 gives a chain (enough for clustering without verification); a larger value gives every
    pair of a bucket of up to ``neighbours + 1`` documents, which verification needs so that a
    false member of a bucket does not break the chain between true ones.
    """
    los, his = [], []
    for band_key in keys:
        order = np.argsort(band_key, kind="stable")
        sorted_keys = band_key[order]
        for d in range(1, neighbours + 1):
            if d >= len(order):
                break
            same = sorted_keys[d:] == sorted_keys[:-d]
            if not same.any():
                break
            los.append(order[:-d][same])
            his.append(order[d:][same])
    if not los:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    lo, hi = np.concatenate(los), np.concatenate(his)
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    packed = np.unique(lo.astype(np.int64) * keys.shape[1] + hi)
    return packed // keys.shape[1], packed % keys.shape[1]


def jaccard_estimates(sig: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Estimated Jaccard of each pair (lo[i], hi[i]): share of equal signature values."""
    out = np.empty(len(lo), dtype=np.float64)
    step = max(1, 2_000_000 // max(sig.shape[1], 1))
    for s in range(0, len(lo), step):
        out[s : s + step] = (sig[lo[s : s + step]] == sig[hi[s : s + step]]).mean(axis=1)
    return out


# --------------------------------------------------------------------------- union-find
class UnionFind:
    """Disjoint sets over 0..n-1 with path halving and union by size."""

    def __init__(self, n: int):
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, x: int, y: int) -> int:
        """Merge the sets of ``x`` and ``y``; returns the new root."""
        rx, ry = self.find(x), self.find(y)
        if rx == ry:
            return rx
        if self.size[rx] < self.size[ry]:
            rx, ry = ry, rx
        self.parent[ry] = rx
        self.size[rx] += self.size[ry]
        return rx

    def union_pairs(self, lo: Iterable[int], hi: Iterable[int]) -> None:
        for x, y in zip(lo, hi, strict=True):
            self.union(x, y)

    def representatives(self) -> np.ndarray:
        """(n,) int64: for every element, the lowest index of its set."""
        n = len(self.parent)
        roots = np.fromiter((self.find(i) for i in range(n)), dtype=np.int64, count=n)
        lowest = np.full(n, n, dtype=np.int64)
        np.minimum.at(lowest, roots, np.arange(n))
        return lowest[roots]


Verify = Literal["none", "estimate", "exact"]
# weights of (false positive, false negative) areas when choosing bands and rows: with
# verification, LSH only proposes pairs, so it should miss few (a pair LSH never proposes is lost)
BAND_WEIGHTS: dict[str, tuple[float, float]] = {
    "none": (0.5, 0.5),
    "estimate": (0.05, 0.95),
    "exact": (0.05, 0.95),
}


def band_plan(threshold: float, num_perm: int, verify: Verify) -> tuple[int, int]:
    """(bands, rows) for ``threshold`` and ``num_perm``, weighted for the verification mode."""
    return optimal_bands(threshold, num_perm, *BAND_WEIGHTS[verify])


def exact_jaccards(sets: dict[int, np.ndarray], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Jaccard of each pair from sorted distinct shingle arrays ``sets[index]``."""
    out = np.empty(len(lo), dtype=np.float64)
    for k, (i, j) in enumerate(zip(lo.tolist(), hi.tolist(), strict=True)):
        a, b = sets[i], sets[j]
        common = len(np.intersect1d(a, b, assume_unique=True))
        out[k] = common / max(len(a) + len(b) - common, 1)
    return out


def cluster_signatures(
    sig: np.ndarray,
    counts: np.ndarray,
    threshold: float,
    bands: int | None = None,
    rows: int | None = None,
    verify: Verify = "estimate",
    neighbours: int = 32,
    seed: int = 0,
    exact: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster documents by LSH over their signatures.

    Returns (representative (n,) int64 = lowest index of each document's cluster, and the edge
    list lo, hi that formed the clusters). Documents with no shingle (``counts == 0``) stay
    alone. ``verify``: "none" links every LSH candidate pair; "estimate" keeps pairs whose
    estimated Jaccard reaches ``threshold``; "exact" keeps pairs whose true Jaccard, computed by
    ``exact(lo, hi)`` for the pairs whose estimate is within 4 standard errors, reaches it.
    """
    if verify == "exact" and exact is None:
        raise ValueError("verify='exact' needs the exact(lo, hi) Jaccard function")
    if bands is None or rows is None:
        bands, rows = band_plan(threshold, sig.shape[1], verify)
    n = len(sig)
    valid = np.flatnonzero(counts > 0)
    keys = band_keys(sig[valid], bands, rows, seed)
    lo, hi = candidate_pairs(keys, 1 if verify == "none" else neighbours)
    lo, hi = valid[lo], valid[hi]
    if verify != "none" and len(lo):
        margin = 4 * np.sqrt(threshold * (1 - threshold) / sig.shape[1]) if verify == "exact" else 0
        ok = jaccard_estimates(sig, lo, hi) >= threshold - margin
        lo, hi = lo[ok], hi[ok]
    if verify == "exact" and len(lo):
        ok = exact(lo, hi) >= threshold
        lo, hi = lo[ok], hi[ok]
    uf = UnionFind(n)
    uf.union_pairs(lo.tolist(), hi.tolist())
    return uf.representatives(), lo, hi


def cluster_near_duplicates(
    texts: Sequence[str],
    threshold: float = 0.8,
    num_perm: int = 128,
    ngram: int | None = None,
    seed: int = 1,
    verify: Verify = "estimate",
) -> list[int]:
    """For each text, the index of its near-duplicate cluster's representative (lowest index).

    ``threshold``: Jaccard of the shingle sets at or above which two texts are linked (clusters
    are transitive). ``ngram``: shingle size for both words and CJK characters (None: 5 words /
    5 characters). ``verify``: see :func:`cluster_signatures`; "exact" removes the estimation
    noise (standard error 0.035 at J=0.8, 128 permutations) from the decision. A text without
    any word is never a near duplicate.
    """
    texts = list(texts)
    hasher = MinHasher(num_perm, ngram or DEFAULT_WORD_NGRAM, ngram or DEFAULT_CHAR_NGRAM, seed)
    sig, counts = hasher.signatures(texts)

    def exact(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        needed = np.union1d(lo, hi).tolist()
        sets = dict(zip(needed, hasher.shingle_sets([texts[i] for i in needed]), strict=True))
        return exact_jaccards(sets, lo, hi)

    reps, _, _ = cluster_signatures(sig, counts, threshold, verify=verify, seed=seed, exact=exact)
    return reps.tolist()
