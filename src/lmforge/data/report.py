"""The report of a ``lmforge prepare`` run: what was kept, what was dropped and why.

    from lmforge.data.report import write_report
    write_report("runs/prepare")  # -> runs/prepare/report/report.md

Writes into ``<run>/report/``: ``report.md``, ``report.html`` (one self-contained file, the
plots embedded as base64 PNGs), ``summary.json`` (every figure of the report, for scripts and
for ``lmforge data diff``) and the plots as ``*.png`` beside them. Without matplotlib the report
is written without plots and says so.

The run folder is streamed shard by shard (``data/``, ``exclusions/``, ``rejects.jsonl``); what
is held in memory is one length per document, counters, and a sample of at most
:data:`SAMPLE_SIZE` documents for the diversity figures. Output is deterministic (no times, the
sample is chosen by a hash of the id), so re-running on the same run gives identical files.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from array import array
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmforge.artifacts import atomic_write_text
from lmforge.data.document import Document
from lmforge.data.readers import Rejects, iter_records, reason_kind
from lmforge.errors import UserError
from lmforge.text.segment import words

REPORT_DIR = "report"
SAMPLE_SIZE = 2000  # documents for the vocabulary and TF-IDF figures (TF-IDF is O(sample))
SAMPLE_CHARS = (
    20_000  # characters of a sampled document that are kept (bounds memory and jieba time)
)
EXAMPLES = 3  # example ids shown per drop / reject reason
PERCENTILES = (5, 25, 50, 75, 95, 99)
NONE = "(none)"  # the value shown when a document has no language / label / source


# ----------------------------------------------------------------------------- the run folder
def check_run_dir(run_dir: str | Path) -> Path:
    """The run folder of a ``prepare`` run, or a :class:`UserError` saying what is wrong."""
    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"{path} is not a folder: pass the output_dir of a `lmforge prepare` run")
    manifest = path / "manifest.json"
    if manifest.is_file():
        stage = json.loads(manifest.read_text(encoding="utf-8")).get("stage")
        if stage != "prepare":
            raise UserError(f"{path} holds a '{stage}' run, not a `lmforge prepare` run")
    if not (path / "stats.json").is_file() or not (path / "data").is_dir():
        raise UserError(
            f"{path} has no stats.json and data/ folder: pass the output_dir of a finished "
            "`lmforge prepare` run"
        )
    return path


def load_stats(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "stats.json").read_text(encoding="utf-8"))


def shard_files(folder: Path) -> list[tuple[str, Path]]:
    """``(split, path)`` of every ``part-*`` shard under ``folder``, sorted by path.

    A shard directly in ``folder`` has split ``""``; ``folder/<split>/part-*`` has ``<split>``.
    """
    found = []
    for path in sorted(folder.rglob("part-*")):
        if path.is_file() and not path.name.startswith("."):
            rel = path.relative_to(folder).parent.as_posix()
            found.append(("" if rel == "." else rel, path))
    return found


def iter_rows(path: Path, bad: Rejects) -> Iterator[dict]:
    """Rows of one shard (jsonl, jsonl.gz or parquet); unparsable lines are counted in ``bad``."""
    for record in iter_records([path], bad):
        if isinstance(record.row, dict):
            yield record.row
        else:
            bad.add_record(record, "not a JSON object")


def row_split(row: dict, folder_split: str) -> str:
    return folder_split or (row.get("metadata") or {}).get("split") or NONE


# ----------------------------------------------------------------------------- row statistics
def _values(value: Any) -> list[str]:
    """A label / language value as counter keys (a list of labels counts each one)."""
    if value is None:
        return [NONE]
    if isinstance(value, list):
        return [str(v) for v in value] or [NONE]
    return [str(value)]


class RowStats:
    """Distributions over a stream of output rows: lengths (characters), languages, labels,
    sources, splits, missing fields, PII and augmentation counts. Memory: 8 bytes a row."""

    def __init__(self) -> None:
        self.rows = 0
        self.lengths = array("q")
        self.langs: Counter[str] = Counter()
        self.labels: Counter[str] = Counter()
        self.sources: Counter[str] = Counter()
        self.splits: Counter[str] = Counter()
        self.present: Counter[str] = Counter()  # key -> rows where it is set (not None)
        self.pii: Counter[str] = Counter()  # PII kind -> occurrences
        self.pii_docs = 0
        self.augmented: Counter[str] = Counter()  # augmentation kind -> rows
        self.dup_clusters: Counter[str] = Counter()  # metadata dup_cluster -> kept rows

    def add(self, row: dict, split: str) -> Document:
        doc = Document.from_stored(row)
        meta = doc.metadata
        self.rows += 1
        self.lengths.append(len(doc.content))
        self.langs.update(_values(meta.get("lang")))
        self.labels.update(_values(doc.get("label")))
        self.sources.update(_values(meta.get("source")))
        self.splits[split] += 1
        self.present.update(
            k for k, v in row.items() if k not in ("id", "metadata") and v is not None
        )
        self.present.update(f"metadata.{k}" for k, v in meta.items() if v is not None)
        self._add_pii(meta.get("pii"))
        if meta.get("augmented"):
            self.augmented[_augmentation(meta["augmented"])] += 1
        if meta.get("dup_cluster") is not None:
            self.dup_clusters[str(meta["dup_cluster"])] += 1
        return doc

    def _add_pii(self, pii: Any) -> None:
        """``pii`` as ``{kind: count}``, a list of kinds, a count or a flag."""
        if isinstance(pii, dict):
            found = Counter({str(k): int(v) for k, v in pii.items() if isinstance(v, (int, float))})
            found.update(str(k) for k, v in pii.items() if isinstance(v, list) for _ in v)
        elif isinstance(pii, list):
            found = Counter(
                str(p if not isinstance(p, dict) else p.get("type", "pii")) for p in pii
            )
        elif isinstance(pii, (bool, int, float)):
            found = Counter({"pii": int(pii)})
        else:
            return
        found = +found  # drop zero counts
        if found:
            self.pii_docs += 1
            self.pii.update(found)

    def summary(self) -> dict:
        missing = {key: round(1 - n / self.rows, 6) for key, n in sorted(self.present.items())}
        return {
            "rows": self.rows,
            "length_chars": length_summary(self.lengths),
            "languages": _sorted_counts(self.langs),
            "labels": _sorted_counts(self.labels),
            "sources": _sorted_counts(self.sources),
            "splits": _sorted_counts(self.splits),
            "missing_ratio": missing,
            "pii": {"docs": self.pii_docs, "by_kind": _sorted_counts(self.pii)},
            "augmented": {
                "rows": sum(self.augmented.values()),
                "by_kind": _sorted_counts(self.augmented),
            },
        }


def _augmentation(value: Any) -> str:
    """The kind of an augmented row: ``{"method": ...}`` (the augment blocks), a name, or a flag."""
    if isinstance(value, dict):
        return str(value.get("method", "augmented"))
    return value if isinstance(value, str) else "augmented"


def _sorted_counts(counts: Counter) -> dict[str, int]:
    """Most common first, ties by name: a stable order for tables and JSON."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def length_summary(lengths: array) -> dict:
    """Count, mean, min, max and :data:`PERCENTILES` of lengths (linear interpolation)."""
    import numpy as np

    if not len(lengths):
        return {"count": 0}
    values = np.frombuffer(lengths, dtype=np.int64)
    out = {
        "count": int(values.size),
        "mean": round(float(values.mean()), 3),
        "min": int(values.min()),
    }
    for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True):
        out[f"p{p}"] = round(float(v), 3)
    out["max"] = int(values.max())
    return out


class Sample:
    """The ``size`` documents with the smallest hash of their id: a deterministic sample that
    does not depend on shard order (bottom-k sampling)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._heap: list[tuple[int, str, str]] = []  # (-hash, id, text): a max-heap on hash

    def add(self, doc_id: str, text: str) -> None:
        h = int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "big")
        item = (-h, doc_id, text[:SAMPLE_CHARS])
        if len(self._heap) < self.size:
            heapq.heappush(self._heap, item)
        elif item > self._heap[0]:
            heapq.heapreplace(self._heap, item)

    def texts(self) -> list[str]:
        return [text for _, _, text in sorted(self._heap, reverse=True)]


# ----------------------------------------------------------------------------- diversity
def sample_diversity(texts: list[str]) -> dict:
    """Vocabulary diversity (distinct / total lower-cased words, Chinese segmented by
    :func:`~lmforge.text.segment.words`) and the mean pairwise cosine distance between TF-IDF
    vectors (0: all documents alike, 1: no words shared) of a sample of documents."""
    tokens = [[w.lower() for w in words(text)] for text in texts]
    total = sum(len(t) for t in tokens)
    distinct = len(set().union(*tokens)) if tokens else 0
    distance, backend = tfidf_mean_distance(tokens)
    return {
        "sample_docs": len(texts),
        "words": total,
        "distinct_words": distinct,
        "distinct_ratio": round(distinct / total, 6) if total else None,
        "tfidf_mean_cosine_distance": None if distance is None else round(distance, 6),
        "tfidf_backend": backend,
    }


def tfidf_mean_distance(
    tokens: list[list[str]], backend: str | None = None
) -> tuple[float | None, str]:
    """Mean cosine distance over all pairs of non-empty documents, and the backend used.

    TF-IDF as scikit-learn's defaults (raw counts, smooth idf, L2 rows). With unit rows x_i the
    sum of all pairwise similarities is |sum x_i|^2 - n, so the mean costs O(words), not O(n^2).
    ``backend``: "scikit-learn", "builtin" (pure Python, same figures), or None for the first
    one available.
    """
    import importlib.util

    if backend is None:
        backend = "scikit-learn" if importlib.util.find_spec("sklearn") else "builtin"
    nonempty = [t for t in tokens if t]
    if len(nonempty) < 2:
        return None, backend
    summed = _tfidf_sum_sklearn(tokens) if backend == "scikit-learn" else _tfidf_sum_builtin(tokens)
    n = len(nonempty)
    mean_similarity = (summed - n) / (n * (n - 1))
    return 1.0 - mean_similarity, backend


def _tfidf_sum_sklearn(tokens: list[list[str]]) -> float:
    """|sum of the L2-normalised TF-IDF rows|^2."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    matrix = TfidfVectorizer(analyzer=lambda doc: doc).fit_transform(tokens)
    total = np.asarray(matrix.sum(axis=0)).ravel()
    return float(total @ total)


def _tfidf_sum_builtin(tokens: list[list[str]]) -> float:
    """The same figure without scikit-learn: idf = ln((1 + n) / (1 + df)) + 1."""
    import math

    n = len(tokens)
    df = Counter(w for t in tokens for w in set(t))
    idf = {w: math.log((1 + n) / (1 + d)) + 1 for w, d in df.items()}
    total: Counter[str] = Counter()
    for t in tokens:
        weights = {w: c * idf[w] for w, c in Counter(t).items()}
        norm = math.sqrt(sum(v * v for v in weights.values()))
        for w, v in weights.items():
            total[w] += v / norm if norm else 0.0
    return sum(v * v for v in total.values())


# ----------------------------------------------------------------------------- exclusions
class DropStats:
    """Dropped documents: counts and example ids per (block, reason), their lengths, and the
    duplicate clusters named by ``detail.cluster`` or ``detail.duplicate_of``."""

    def __init__(self) -> None:
        self.rows = 0
        self.lengths = array("q")
        self.reasons: Counter[tuple[str, str]] = Counter()
        self.examples: dict[tuple[str, str], list[str]] = {}
        self.cluster_members: Counter[str] = Counter()

    def add(self, item: dict) -> None:
        self.rows += 1
        key = (str(item.get("block", "?")), str(item.get("reason", "?")))
        self.reasons[key] += 1
        examples = self.examples.setdefault(key, [])
        if len(examples) < EXAMPLES:
            examples.append(str(item.get("id")))
        document = item.get("document")
        if isinstance(document, dict):
            self.lengths.append(len(Document.from_stored({"id": "", **document}).content))
        detail = item.get("detail") or {}
        cluster = detail.get("cluster", detail.get("duplicate_of"))
        if cluster is not None:
            self.cluster_members[f"{key[0]}:{cluster}"] += 1

    def top_reasons(self) -> list[dict]:
        order = sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        return [
            {"block": b, "reason": r, "count": n, "examples": self.examples[(b, r)]}
            for (b, r), n in order
        ]

    def clusters(self, marked: Counter) -> dict:
        """Cluster sizes. A dropped document names its cluster (``detail.cluster``, else
        ``detail.duplicate_of``; per block) whose one kept representative adds 1 to the size;
        a dedup block in "mark" mode drops nothing and tags every kept member with
        ``metadata.dup_cluster`` (``marked``: tag -> kept rows)."""
        sizes = Counter(n + 1 for n in self.cluster_members.values())
        sizes.update(n for n in marked.values() if n > 1)
        return {
            "clusters": sum(sizes.values()),
            "docs_in_clusters": sum(s * n for s, n in sizes.items()),
            "largest": max(sizes, default=0),
            "size_histogram": {str(s): sizes[s] for s in sorted(sizes)},
        }


def reject_stats(path: Path) -> dict:
    """Counts and example ``file:line`` per reason kind of ``rejects.jsonl``."""
    counts: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    if path.is_file():
        for row in iter_rows(path, Rejects()):
            kind = reason_kind(str(row.get("reason", "?")))
            counts[kind] += 1
            shown = examples.setdefault(kind, [])
            if len(shown) < EXAMPLES:
                shown.append(f"{row.get('file')}:{row.get('line')}")
    return {
        "rows": sum(counts.values()),
        "reasons": [
            {"reason": k, "count": n, "examples": examples[k]}
            for k, n in _sorted_counts(counts).items()
        ],
    }


# ----------------------------------------------------------------------------- checks
def reconcile(stats: dict, kept_rows: int, dropped_rows: int, rejected_rows: int) -> list[dict]:
    """Every count identity the run must satisfy, each with ``ok``; the report flags failures."""
    t = {
        k: int(stats.get("totals", {}).get(k, 0))
        for k in ("read", "added", "kept", "dropped", "rejected")
    }
    blocks = stats.get("blocks", [])
    checks = [
        _check(
            "read + added = kept + dropped + rejected",
            f"{t['read']} + {t['added']}",
            f"{t['kept']} + {t['dropped']} + {t['rejected']}",
            t["read"] + t["added"],
            t["kept"] + t["dropped"] + t["rejected"],
        ),
        _check("kept = rows in data/", t["kept"], kept_rows),
        _check("dropped = rows in exclusions/", t["dropped"], dropped_rows),
        _check("rejected = rows in rejects.jsonl", t["rejected"], rejected_rows),
        _check("dropped = sum of block drops", t["dropped"], sum(_dropped(b) for b in blocks)),
        _check(
            "added = sum of block additions",
            t["added"],
            sum(int(b.get("added", 0)) for b in blocks),
        ),
    ]
    for b in blocks:
        seen_added = int(b.get("seen", 0)) + int(b.get("added", 0))
        kept_dropped = int(b.get("kept", 0)) + _dropped(b)
        checks.append(
            _check(
                f"block {b.get('index')} {b.get('name')}: seen + added = kept + dropped",
                seen_added,
                kept_dropped,
            )
        )
    return checks


def _dropped(block: dict) -> int:
    dropped = block.get("dropped", 0)
    return sum(dropped.values()) if isinstance(dropped, dict) else int(dropped)


def _check(
    name: str, left: Any, right: Any, lvalue: int | None = None, rvalue: int | None = None
) -> dict:
    lvalue = left if lvalue is None else lvalue
    rvalue = right if rvalue is None else rvalue
    return {"check": name, "left": str(left), "right": str(right), "ok": lvalue == rvalue}


def shard_checks(run_dir: Path, stats: dict, counted: dict[str, int]) -> list[dict]:
    """Compare each shard's recorded docs and sha256 (stats.json ``shards``) with the file."""
    out = []
    for rel, info in sorted((stats.get("shards") or {}).items()):
        path = run_dir / rel
        if not path.is_file():
            out.append({"shard": rel, "ok": False, "problem": "file missing"})
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        want = str(info.get("sha256", "")).removeprefix("sha256:")
        problems = []
        if want and want != digest:
            problems.append("sha256 differs")
        if "docs" in info and int(info["docs"]) != counted.get(rel, 0):
            problems.append(f"{counted.get(rel, 0)} rows, stats say {info['docs']}")
        out.append({"shard": rel, "ok": not problems, "problem": "; ".join(problems)})
    return out


# ----------------------------------------------------------------------------- summary
def summarize(run_dir: str | Path, sample_size: int = SAMPLE_SIZE) -> dict:
    """Every figure of the report as JSON-ready data (what ``summary.json`` holds)."""
    return _collect(run_dir, sample_size)[0]


def _collect(run_dir: str | Path, sample_size: int) -> tuple[dict, dict[str, array]]:
    """The summary, and the kept / dropped lengths (characters) the length plot needs."""
    run = check_run_dir(run_dir)
    stats = load_stats(run)
    kept, drops, sample, bad = RowStats(), DropStats(), Sample(sample_size), Rejects()
    per_shard: dict[str, int] = {}
    for split, path in shard_files(run / "data"):
        rel = path.relative_to(run).as_posix()
        for row in iter_rows(path, bad):
            doc = kept.add(row, row_split(row, split))
            sample.add(doc.id, doc.content)
            per_shard[rel] = per_shard.get(rel, 0) + 1
    if (run / "exclusions").is_dir():
        for _, path in shard_files(run / "exclusions"):
            for item in iter_rows(path, bad):
                drops.add(item)
    rejects = reject_stats(run / "rejects.jsonl")
    checks = reconcile(stats, kept.rows, drops.rows, rejects["rows"])
    if len(bad):
        checks.append(_check("unreadable rows in data/ and exclusions/", 0, len(bad)))
    return {
        "run": run.name,
        "totals": stats.get("totals", {}),
        "checks": checks,
        "shard_checks": shard_checks(run, stats, per_shard),
        "blocks": stats.get("blocks", []),
        "kept": kept.summary(),
        "dropped": {"rows": drops.rows, "length_chars": length_summary(drops.lengths)},
        "top_reasons": drops.top_reasons(),
        "rejects": rejects,
        "duplicates": drops.clusters(kept.dup_clusters),
        "global": stats.get("global", {}),
        "diversity": sample_diversity(sample.texts()),
    }, {"kept": kept.lengths, "dropped": drops.lengths}


def write_report(run_dir: str | Path, sample_size: int = SAMPLE_SIZE) -> Path:
    """Write ``<run>/report/`` (report.md, report.html, summary.json, PNGs); returns report.md."""
    from lmforge.data import report_render
    from lmforge.data.report_render import render_html, render_markdown, report_sections

    summary, lengths = _collect(run_dir, sample_size)
    out = Path(run_dir) / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):  # a rerun may have fewer plots: leave none from before
        old.unlink()
    plots = report_render.write_plots(summary, lengths, out) if report_render.available() else None
    summary["plots"] = sorted(plots) if plots is not None else None
    sections = report_sections(summary, plots)
    atomic_write_text(
        out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    )
    atomic_write_text(
        out / "report.html", render_html(sections, out, f"lmforge prepare report: {summary['run']}")
    )
    return atomic_write_text(
        out / "report.md", render_markdown(sections, f"lmforge prepare report: {summary['run']}")
    )
