"""Split: ratios within one group of target, stratified labels, near-duplicate clusters never
straddle splits, leaks and KL skew detected independently, deterministic for a seed whatever
the sharding."""

from __future__ import annotations

import random
import warnings
from collections import Counter, defaultdict

import pytest
from pydantic import ValidationError

from lmforge.data.document import Document
from lmforge.data.pipeline import run_in_memory
from lmforge.data.split import Split, cross_split_pairs, kl_divergence, split_checks
from lmforge.errors import DataError

VOCAB = [f"w{i}" for i in range(400)]


def text(seed: int, words: int = 100) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(words))


def near_copy(base: str, k: int) -> str:
    """``base`` with its last word changed: only the last word 5-gram differs (Jaccard ~95/97)."""
    words = base.split()
    words[-1] = f"variant{k}"
    return " ".join(words)


def corpus(n_plain: int = 170, n_clusters: int = 10, size: int = 3) -> list[Document]:
    """Labels a:b about 7:3, lengths 20-160 words, plus clusters of near duplicates."""
    docs = []
    for i in range(n_plain):
        docs.append(
            Document(
                f"d{i:03d}", text=text(i, 20 + (i * 7) % 140), fields={"label": "ab"[i % 10 > 6]}
            )
        )
    for c in range(n_clusters):
        base = text(10_000 + c)
        for k in range(size):
            docs.append(Document(f"c{c}-{k}", text=near_copy(base, k), fields={"label": "a"}))
    return docs


def shards_of(docs, n):
    return [docs[i::n] for i in range(n)]


def fit_run(block, shards, seed=0):
    out, _, (total,) = run_in_memory([block], shards, seed)
    assert total["seen"] + total["added"] == total["kept"] + sum(total["dropped"].values())
    assert total["seen"] == total["kept"] and total["changed"] == 0  # annotating is not changing
    return {d.id: d.metadata["split"] for shard in out for d in shard}, {"checks": block.checks}


def test_ratios_strata_and_clusters():
    docs = corpus()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a well-mixed split raises no KL warning
        assignment, state = fit_run(Split({"stratify": "label"}), shards_of(docs, 3))
    sizes = Counter(assignment.values())
    n = len(docs)
    for name, ratio in zip(("train", "validation", "test"), (0.7, 0.15, 0.15), strict=True):
        assert abs(sizes[name] - ratio * n) <= 3, sizes  # one group = up to 3 documents
    by_label = defaultdict(Counter)
    for doc in docs:
        by_label[doc.fields["label"]][assignment[doc.id]] += 1
    for label, counts in by_label.items():
        total = sum(counts.values())
        for name, ratio in (("train", 0.7), ("validation", 0.15), ("test", 0.15)):
            assert abs(counts[name] - ratio * total) <= 3, (label, counts)
    for c in range(10):
        assert len({assignment[f"c{c}-{k}"] for k in range(3)}) == 1, c
    checks = state["checks"]
    assert checks["sizes"] == dict(sizes)
    assert checks["leaks"] == {"exact": 0, "near": 0, "examples": []}
    assert checks["groups"] == 170 + 10
    assert max(checks["kl_label"].values()) < 0.01
    assert max(checks["kl_length"].values()) < 0.1
    assert checks["warnings"] == []


def test_deterministic_and_shard_independent():
    docs = corpus(80, 4)
    first, _ = fit_run(Split(), shards_of(docs, 1), seed=3)
    again, _ = fit_run(Split(), shards_of(docs, 4), seed=3)
    reordered, _ = fit_run(Split(), shards_of(list(reversed(docs)), 2), seed=3)
    other, _ = fit_run(Split(), shards_of(docs, 1), seed=4)
    assert first == again == reordered
    assert first != other
    assert Counter(first.values()) == Counter(other.values())


def test_dup_cluster_metadata_and_exact_duplicates():
    docs = [Document(f"u{i}", text=text(i, 30)) for i in range(40)]
    # unrelated texts that an earlier minhash_dedup marked as one cluster must stay together
    for i in range(6):
        docs[i].metadata["dup_cluster"] = "u0"
    docs.append(Document("copy", text=docs[10].text.upper() + " !!"))
    assignment, state = fit_run(Split({"ratios": [0.5, 0.5], "names": ["tr", "te"]}), [docs])
    assert len({assignment[f"u{i}"] for i in range(6)}) == 1
    assert assignment["copy"] == assignment["u10"]
    assert set(assignment.values()) == {"tr", "te"}
    assert state["checks"]["groups"] == 40 - 5


def test_kl_warning_on_forced_skew():
    splits = ["train"] * 80 + ["test"] * 20
    labels = ["a"] * 80 + ["b"] * 20
    tokens = [10] * 80 + [1000] * 20
    with pytest.warns(UserWarning) as caught:
        checks = split_checks(splits, labels, tokens)
    assert [str(w.message).split(" differs")[0] for w in caught] == [
        "split: the label distribution of 'test'",
        "split: the length distribution of 'test'",
    ]
    assert checks["kl_label"]["test"] > 1 and checks["kl_length"]["test"] > 1
    assert len(checks["warnings"]) == 2
    assert kl_divergence(Counter(a=5, b=5), Counter(a=50, b=50)) == 0.0


def test_leaks_are_found_independently():
    base = text(1)
    texts = [base, near_copy(base, 1), text(2), text(2).upper(), text(3)]
    splits = ["train", "test", "train", "validation", "test"]
    checks = split_checks(splits, ["x"] * 5, [100] * 5, texts, ids=list("abcde"))
    assert checks["leaks"]["exact"] == 1
    # c and d are also exact duplicates, so the near check sees them too (Jaccard 1)
    assert checks["leaks"]["near"] == 2
    assert checks["leaks"]["examples"] == [["a", "b", 0.9794], ["c", "d", 1.0]]
    assert cross_split_pairs(texts, ["train"] * 5, 0.9) == []


def test_params_validated():
    with pytest.raises(ValidationError, match="sum to 1"):
        Split({"ratios": [0.7, 0.2, 0.2]})
    with pytest.raises(ValidationError, match="2 ratios for 3 names"):
        Split({"ratios": [0.5, 0.5]})
    with pytest.raises(ValidationError, match="must differ"):
        Split({"ratios": [0.5, 0.5], "names": ["a", "a"]})


def test_missed_near_duplicates_stop_the_run():
    # an earlier block marked every document as its own cluster, missing 20 near-duplicate pairs
    docs = []
    for p in range(20):
        base = text(500 + p)
        docs += [Document(f"p{p}-{k}", text=near_copy(base, k)) for k in range(2)]
    for doc in docs:
        doc.metadata["dup_cluster"] = doc.id
    with pytest.raises(DataError, match="near-duplicate pairs cross splits"):
        fit_run(Split(), [docs])
    assignment, state = fit_run(Split({"dedup_aware": False}), [docs])
    assert state["checks"]["leaks"]["near"] == 0  # not checked without dedup_aware
    assert len(assignment) == 40
