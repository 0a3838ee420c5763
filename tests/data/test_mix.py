"""Balance, mixture and pretrain_mix: exact output counts, counts that reconcile, copies marked,
token budgets met within one document, and the same selection whatever the sharding."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from pydantic import ValidationError

from lmforge.data.blocks import BlockStats
from lmforge.data.document import Document
from lmforge.data.mix import Balance, Mixture, PretrainMix, apportion, balance_counts
from lmforge.data.pipeline import run_in_memory
from lmforge.errors import DataError
from lmforge.text.segment import approx_tokens


def fit_run(block, shards, seed=0):
    out, exclusions, (counts,) = run_in_memory([block], shards, seed)
    total = BlockStats()
    total.merge(counts)
    assert total.seen + total.added == total.kept + total.dropped_total
    return [d for shard in out for d in shard], total, exclusions


def labelled(counts: dict[str, int]) -> list[Document]:
    return [
        Document(f"{label}{i}", text=f"text {label} {i}", fields={"label": label})
        for label, n in counts.items()
        for i in range(n)
    ]


def shards_of(docs, n):
    return [docs[i::n] for i in range(n)]


# ------------------------------------------------------------------ balance
def test_apportion_and_balance_counts():
    assert apportion(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    assert balance_counts({"a": 50, "b": 20, "c": 7}, None, "undersample") == dict.fromkeys(
        "abc", 7
    )
    assert balance_counts({"a": 50, "b": 20}, None, "oversample") == {"a": 50, "b": 50}
    # b limits: 20 / 0.3 = 66.7 -> 66 documents: a 33, b 20, c 13
    wanted = balance_counts(
        {"a": 50, "b": 20, "c": 30}, {"a": 0.5, "b": 0.3, "c": 0.2}, "undersample"
    )
    assert wanted == {"a": 33, "b": 20, "c": 13}


def test_undersample_to_equal_counts():
    docs = labelled({"a": 50, "b": 20, "c": 7})
    out, stats, exclusions = fit_run(Balance(), shards_of(docs, 3))
    assert Counter(d.fields["label"] for d in out) == {"a": 7, "b": 7, "c": 7}
    assert stats.to_dict()["dropped"] == {"undersampled": 43 + 13}
    assert stats.added == 0
    assert {e["reason"] for e in exclusions} == {"undersampled"}


def test_target_ratios_within_one_document():
    docs = labelled({"a": 50, "b": 20, "c": 30})
    targets = {"a": 0.5, "b": 0.3, "c": 0.2}
    for mode in ("undersample", "oversample"):
        out, stats, _ = fit_run(Balance({"targets": targets, "mode": mode}), shards_of(docs, 2))
        counts = Counter(d.fields["label"] for d in out)
        total = sum(counts.values())
        for label, ratio in targets.items():
            assert abs(counts[label] - ratio * total) <= 1, (mode, counts)
        if mode == "oversample":
            assert stats.dropped_total == 0 and counts["b"] >= 20


def test_oversampled_copies_are_marked():
    docs = labelled({"a": 10, "b": 3})
    out, stats, _ = fit_run(Balance({"mode": "oversample"}), [docs])
    b_docs = [d for d in out if d.fields["label"] == "b"]
    assert len(b_docs) == 10 and stats.added == 7
    ids = Counter(d.id.split("#")[0] for d in b_docs)
    assert sorted(ids.values()) == [3, 3, 4]
    copies = [d for d in b_docs if "#dup" in d.id]
    assert all(d.metadata["oversampled"] == int(d.id.split("#dup")[1]) for d in copies)
    assert all("oversampled" not in d.metadata for d in b_docs if "#" not in d.id)


def test_balance_by_source_leaves_unlisted_values_alone():
    docs = labelled({"x": 6}) + [
        Document(f"s{i}", text="t", metadata={"source": "web" if i < 8 else "books"})
        for i in range(12)
    ]
    block = Balance({"by": "source", "targets": {"web": 1, "books": 1}})
    out, _, _ = fit_run(block, [docs])
    assert Counter(str(d.metadata.get("source")) for d in out) == {"None": 6, "web": 4, "books": 4}
    with pytest.raises(DataError, match="no document has source"):
        fit_run(Balance({"by": "source", "targets": {"wiki": 1}}), [docs])
    with pytest.raises(ValidationError, match="positive ratio"):
        Balance({"targets": {"a": 0}})


def test_balance_is_deterministic_across_shards():
    docs = labelled({"a": 40, "b": 9})
    runs = [
        sorted(d.id for d in fit_run(Balance(), shards_of(docs, n), seed=5)[0]) for n in (1, 3, 4)
    ]
    assert runs[0] == runs[1] == runs[2]
    assert runs[0] != sorted(d.id for d in fit_run(Balance(), [docs], seed=6)[0])


# ------------------------------------------------------------------ mixture
def sourced(source: str, n: int, words: int) -> list[Document]:
    return [
        Document(f"{source}{i}", text=" ".join(["w"] * words), metadata={"source": source})
        for i in range(n)
    ]


def tokens_by_source(out):
    totals = Counter()
    for doc in out:
        totals[doc.metadata["source"]] += approx_tokens(doc.content)
    return totals


def test_approx_tokens():
    assert approx_tokens("Hello, world!  你好吗 ok") == 6


def test_mixture_budget_with_repeats():
    docs = sourced("web", 100, 10) + sourced("code", 20, 10) + sourced("spam", 5, 10)
    block = Mixture({"weights": {"web": 0.5, "code": 0.5}, "total_tokens": 800})
    out, stats, exclusions = fit_run(block, shards_of(docs, 3))
    assert tokens_by_source(out) == {"web": 400, "code": 400}
    code_ids = Counter(d.id.split("#")[0] for d in out if d.metadata["source"] == "code")
    assert set(code_ids.values()) == {2}  # two epochs of code
    assert stats.to_dict()["dropped"] == {"not_in_mixture": 5, "over_budget": 60}
    assert stats.added == 20
    assert block.mixture["code"] == {"target": 400, "tokens": 400, "available": 200}
    assert {e["detail"]["source"] for e in exclusions if e["reason"] == "not_in_mixture"} == {
        "spam"
    }


def test_mixture_caps_epochs_and_defaults_to_no_repeat():
    docs = sourced("web", 100, 10) + sourced("code", 20, 7)
    capped = Mixture({"weights": {"web": 0.5, "code": 0.5}, "total_tokens": 1600, "max_epochs": 2})
    out, _, _ = fit_run(capped, [docs])
    assert tokens_by_source(out) == {"web": 800, "code": 280}  # code short: 2 x 140
    free = Mixture({"weights": {"web": 3, "code": 1}})  # budget = 140 * 4 = 560 tokens
    out, stats, _ = fit_run(free, [docs])
    totals = tokens_by_source(out)
    assert totals["code"] == 140 and abs(totals["web"] - 420) < 10
    assert stats.added == 0
    with pytest.raises(DataError, match="no document has source"):
        fit_run(Mixture({"weights": {"wiki": 1}}), [docs])


def test_mixture_deterministic_across_shards():
    docs = sourced("a", 50, 3) + sourced("b", 50, 5)
    block = Mixture({"weights": {"a": 1, "b": 1}, "total_tokens": 200})
    one = sorted(d.id for d in fit_run(block, [docs], seed=1)[0])
    four = sorted(d.id for d in fit_run(block, shards_of(docs, 4), seed=1)[0])
    assert one == four


# ------------------------------------------------------------------ pretrain_mix
@pytest.fixture
def pretrain_files(tmp_path):
    jsonl = tmp_path / "web.jsonl"
    rows = [{"text": f"web document {i}"} for i in range(30)] + [{"text": ""}, {"title": "x"}]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    txt = tmp_path / "books.txt"
    txt.write_text("".join(f"book line {i}\n" for i in range(10)))
    return [str(jsonl), str(txt)]


def chats(n: int) -> list[Document]:
    return [
        Document(
            f"chat{i}",
            messages=[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}],
        )
        for i in range(n)
    ]


def test_pretrain_mix_fraction(pretrain_files):
    block = PretrainMix({"files": pretrain_files, "fraction": 0.15})
    out, stats, _ = fit_run(block, shards_of(chats(85), 3))
    added = [d for d in out if d.metadata.get("source") == "pretrain_mix"]
    assert len(added) == 15 and stats.added == 15 and len(out) == 100
    assert all(d.text and d.messages is None for d in added)
    assert all(d.id == f"pretrain_mix:{d.metadata['file']}:{d.metadata['line']}" for d in added)
    assert len({d.id for d in added}) == 15
    again, _, _ = fit_run(block, shards_of(chats(85), 1))
    assert {d.id for d in again if d.text} == {d.id for d in added}
    other, _, _ = fit_run(block, [chats(85)], seed=9)
    assert {d.id for d in other if d.text} != {d.id for d in added}


def test_pretrain_mix_short_files(pretrain_files):
    block = PretrainMix({"files": pretrain_files, "fraction": 0.5})
    out, stats, _ = fit_run(block, [chats(100)])
    assert stats.added == 40  # every usable row: 30 jsonl rows + 10 lines
    with pytest.raises(ValidationError):
        PretrainMix({"files": pretrain_files, "fraction": 1.0})
