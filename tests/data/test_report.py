"""The prepare-run report, on a small run folder written here in the executor's layout."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from lmforge.data import report, report_render
from lmforge.data.report import sample_diversity, summarize, tfidf_mean_distance, write_report
from lmforge.errors import UserError


def _meta(source: str, lang: str, split: str, **extra) -> dict:
    return {
        "source": source,
        "file": f"{source}.jsonl",
        "line": 1,
        "lang": lang,
        "split": split,
        **extra,
    }


KEPT = [
    {
        "id": "d1",
        "text": "the cat sat on the mat",
        "label": "pos",
        "metadata": _meta("web", "en", "train"),
    },
    {
        "id": "d2",
        "text": "a dog ran in the park today",
        "label": "neg",
        "metadata": _meta("web", "en", "train", pii={"email": 2, "phone": 1}),
    },
    {
        "id": "d3",
        "text": "我们今天去公园散步",
        "label": "pos",
        "metadata": _meta("zh", "zh", "train"),
    },
    {
        "id": "d4",
        "messages": [
            {"role": "user", "content": "hi there"},
            {"role": "assistant", "content": "hello"},
        ],
        "metadata": _meta("chat", "en", "train"),
    },
    {
        "id": "d5",
        "text": "birds sing in spring",
        "label": "pos",
        "metadata": _meta(
            "web", "en", "train", augmented={"method": "back_translation", "from": "d0"}
        ),
    },
    {
        "id": "d6",
        "text": "rain falls on the town",
        "label": "neg",
        "metadata": _meta("web", "en", "test", dup_cluster=7),
    },
    {
        "id": "d7",
        "text": "stars shine at night",
        "label": "pos",
        "metadata": _meta("web", "en", "test", dup_cluster=7),
    },
    {"id": "d8", "text": "北京是中国的首都", "label": "neg", "metadata": _meta("zh", "zh", "test")},
]
DROPS = [
    {
        "id": "x1",
        "block": "dedup",
        "reason": "near_duplicate",
        "detail": {"duplicate_of": "d1", "jaccard_estimate": 0.9},
        "document": {"text": "the cat sat on the mat!", "metadata": {}},
    },
    {
        "id": "x2",
        "block": "dedup",
        "reason": "near_duplicate",
        "detail": {"duplicate_of": "d1", "jaccard_estimate": 0.85},
        "document": {"text": "the cat sat on a mat", "metadata": {}},
    },
    {
        "id": "x3",
        "block": "dedup",
        "reason": "near_duplicate",
        "detail": {"cluster": "d6"},
        "document": {"text": "rain falls on the town.", "metadata": {}},
    },
    {
        "id": "x4",
        "block": "quality",
        "reason": "too_short",
        "detail": {"words": 1},
        "document": {"text": "ok", "metadata": {}},
    },
    {
        "id": "x5",
        "block": "quality",
        "reason": "too_short",
        "detail": {"words": 1},
        "document": {"text": "no", "metadata": {}},
    },
]
REJECTS = [
    {"file": "web.jsonl", "line": 7, "reason": "invalid JSON: Expecting value", "row": "{oops"},
    {"file": "web.jsonl", "line": 9, "reason": "empty text", "row": {"text": ""}},
]
BLOCKS = [
    {
        "index": 0,
        "name": "normalize",
        "seen": 12,
        "kept": 12,
        "changed": 3,
        "added": 0,
        "dropped": {},
    },
    {
        "index": 1,
        "name": "quality",
        "seen": 12,
        "kept": 10,
        "changed": 0,
        "added": 0,
        "dropped": {"too_short": 2},
    },
    {
        "index": 2,
        "name": "augment",
        "seen": 10,
        "kept": 11,
        "changed": 0,
        "added": 1,
        "dropped": {},
    },
    {
        "index": 3,
        "name": "dedup",
        "seen": 11,
        "kept": 8,
        "changed": 0,
        "added": 0,
        "dropped": {"near_duplicate": 3},
    },
]
GLOBAL = {"split": {"kl": {"label": 0.0123, "lang": 0.2}, "leakage": 0}, "dedup": {"clusters": 2}}


def _jsonl(path: Path, rows: list[dict]) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    path.write_bytes(data)
    return data


def make_run(
    root: Path,
    kept: list[dict] = KEPT,
    drops: list[dict] = DROPS,
    rejects: list[dict] = REJECTS,
    blocks: list[dict] = BLOCKS,
    split_folders: bool = True,
    read: int | None = None,
) -> Path:
    """A finished prepare run folder: data/ (per split when ``split_folders``), exclusions/,
    rejects.jsonl, stats.json and manifest.json, with counts that reconcile."""
    root.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[dict]] = {}
    for row in kept:
        key = (
            f"data/{row['metadata']['split']}/part-00000.jsonl"
            if split_folders
            else "data/part-00000.jsonl"
        )
        groups.setdefault(key, []).append(row)
    shards = {}
    for rel, rows in sorted(groups.items()):
        data = _jsonl(root / rel, rows)
        shards[rel] = {"docs": len(rows), "sha256": hashlib.sha256(data).hexdigest()}
    _jsonl(root / "exclusions/part-00000.jsonl", drops)
    _jsonl(root / "rejects.jsonl", rejects)
    added = sum(b["added"] for b in blocks)
    totals = {
        "read": len(kept) + len(drops) + len(rejects) - added if read is None else read,
        "rejected": len(rejects),
        "kept": len(kept),
        "dropped": len(drops),
        "added": added,
    }
    stats = {
        "totals": totals,
        "blocks": blocks,
        "rejected": {"invalid JSON": 1, "empty text": 1},
        "global": GLOBAL,
        "shards": shards,
    }
    (root / "stats.json").write_text(json.dumps(stats))
    manifest = {"stage": "prepare", "config": {}, "inputs": [], "outputs": [], "counts": totals}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_summary_figures(tmp_path):
    s = summarize(make_run(tmp_path / "run"))
    assert s["totals"] == {"read": 14, "rejected": 2, "kept": 8, "dropped": 5, "added": 1}
    assert all(c["ok"] for c in s["checks"]) and len(s["checks"]) == 6 + 4
    assert [c["ok"] for c in s["shard_checks"]] == [True, True]
    kept = s["kept"]
    assert kept["languages"] == {"en": 6, "zh": 2}
    assert kept["labels"] == {"pos": 4, "neg": 3, "(none)": 1}
    assert kept["splits"] == {"train": 5, "test": 3}
    assert kept["sources"] == {"web": 5, "zh": 2, "chat": 1}
    assert (
        kept["length_chars"]["min"] == 8 and kept["length_chars"]["max"] == 27
    )  # 北京..., a dog...
    assert kept["length_chars"]["mean"] == pytest.approx(
        sum(len(r.get("text", "hi there\nhello")) for r in KEPT) / 8, abs=1e-3
    )
    assert kept["missing_ratio"]["label"] == 0.125
    assert kept["missing_ratio"]["messages"] == 0.875
    assert kept["missing_ratio"]["metadata.pii"] == 0.875
    assert kept["missing_ratio"]["metadata.dup_cluster"] == 0.75
    assert kept["missing_ratio"]["metadata.lang"] == 0.0
    assert kept["pii"] == {"docs": 1, "by_kind": {"email": 2, "phone": 1}}
    assert kept["augmented"] == {"rows": 1, "by_kind": {"back_translation": 1}}
    assert s["dropped"]["length_chars"]["count"] == 5 and s["dropped"]["length_chars"]["min"] == 2
    assert s["top_reasons"] == [
        {"block": "dedup", "reason": "near_duplicate", "count": 3, "examples": ["x1", "x2", "x3"]},
        {"block": "quality", "reason": "too_short", "count": 2, "examples": ["x4", "x5"]},
    ]
    assert s["rejects"]["reasons"] == [
        {"reason": "empty text", "count": 1, "examples": ["web.jsonl:9"]},
        {"reason": "invalid JSON", "count": 1, "examples": ["web.jsonl:7"]},
    ]
    # dropped: x1, x2 + kept d1 -> 3; x3 + its kept representative -> 2; marked: d6, d7 -> 2
    assert s["duplicates"] == {
        "clusters": 3,
        "docs_in_clusters": 7,
        "largest": 3,
        "size_histogram": {"2": 2, "3": 1},
    }
    assert s["diversity"]["sample_docs"] == 8


def test_report_files_and_rerun_identical(tmp_path):
    run = make_run(tmp_path / "run")
    md = write_report(run)
    assert md == run / "report" / "report.md"
    text = md.read_text()
    assert "read + added = kept + dropped + rejected: 14 + 1 = 8 + 5 + 2 (ok)" in text
    assert "| dedup | near_duplicate | 3 | x1, x2, x3 |" in text
    assert "| 3 | dedup | 11 | 8 | 0 | 0 | 3 | near_duplicate 3 |" in text
    assert "| kl.label | 0.0123 |" in text and "| leakage | 0 |" in text
    assert "| zh | 2 | 25.00% |" in text
    assert "![lengths](lengths.png)" in text
    pngs = sorted(p.name for p in (run / "report").glob("*.png"))
    assert pngs == [
        "drops.png",
        "duplicate_clusters.png",
        "labels.png",
        "languages.png",
        "lengths.png",
        "splits.png",
    ]
    page = (run / "report" / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 6 and ".png'" not in page
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert summary["kept"]["splits"] == {"train": 5, "test": 3} and summary["plots"] == [
        p[:-4] for p in pngs
    ]
    before = {p.name: p.read_bytes() for p in (run / "report").iterdir()}
    write_report(run)
    assert {p.name: p.read_bytes() for p in (run / "report").iterdir()} == before


def test_mismatch_is_flagged(tmp_path):
    run = make_run(tmp_path / "run", read=20)  # stats claim 20 rows read: 21 != 15
    (run / "data/test/part-00000.jsonl").write_text("")  # and a shard lost its rows
    s = summarize(run)
    failed = {c["check"] for c in s["checks"] if not c["ok"]}
    assert failed == {"read + added = kept + dropped + rejected", "kept = rows in data/"}
    assert [c["problem"] for c in s["shard_checks"] if not c["ok"]] == [
        "sha256 differs; 0 rows, stats say 3"
    ]
    text = write_report(run).read_text()
    assert "20 + 1 = 8 + 5 + 2 (**MISMATCH**)" in text
    assert "**2 count check(s) failed:**" in text


def test_without_matplotlib(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", split_folders=False)
    write_report(run)  # with plots first: the rerun must not leave them behind
    monkeypatch.setattr(report_render, "available", lambda: False)
    text = write_report(run).read_text()
    assert "matplotlib is not installed" in text and "![" not in text
    assert not list((run / "report").glob("*.png"))
    assert json.loads((run / "report/summary.json").read_text())["plots"] is None
    assert summarize(run)["kept"]["splits"] == {"train": 5, "test": 3}  # from metadata.split


def test_diversity_figures():
    div = sample_diversity(["The cat the cat", "a dog", "我们今天去公园"])
    # the, cat, the, cat | a, dog | 我们, 今天, 去, 公园 (jieba)
    assert (div["words"], div["distinct_words"], div["distinct_ratio"]) == (10, 8, 0.8)
    assert tfidf_mean_distance([["a", "b"], ["c"]])[0] == pytest.approx(1.0)
    assert tfidf_mean_distance([["a", "b"], ["b", "a"], []])[0] == pytest.approx(0.0, abs=1e-12)
    assert tfidf_mean_distance([["a"]])[0] is None  # no pair to compare


def test_tfidf_backends_agree():
    pytest.importorskip("sklearn")
    docs = [t.split() for t in ["a b c a", "b c d", "d e f f", "a f", "x", "b b b c"]]
    sk, _ = tfidf_mean_distance(docs, backend="scikit-learn")
    builtin, _ = tfidf_mean_distance(docs, backend="builtin")
    assert sk == pytest.approx(builtin, abs=1e-12)
    assert 0.5 < sk < 1.0


def test_sample_does_not_depend_on_order():
    a, b = report.Sample(3), report.Sample(3)
    ids = [f"doc{i}" for i in range(50)]
    for i in ids:
        a.add(i, i)
    for i in reversed(ids):
        b.add(i, i)
    assert a.texts() == b.texts() and len(a.texts()) == 3


def test_not_a_prepare_run(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        summarize(tmp_path / "missing")
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok/manifest.json").write_text(json.dumps({"stage": "tokenizer"}))
    with pytest.raises(UserError, match="'tokenizer' run"):
        summarize(tmp_path / "tok")
    with pytest.raises(UserError, match="no stats.json"):
        summarize(tmp_path)
