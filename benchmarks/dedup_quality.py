"""Near-duplicate detection quality: lmforge ``minhash_dedup`` vs datasketch ``MinHashLSH``.

A planted set built from real text: every base document (C4 demo documents and WikiText-2
validation articles for English; the Chinese paragraphs of ``benchmarks/data/zh_paragraphs.txt``)
gets one edited copy. Edits are random word (English) or character (Chinese) substitutions,
deletions, insertions and adjacent swaps; their number is chosen by bisection so that the true
Jaccard of the copy with its base hits a target drawn from 0.5-1.0, with a third of the targets
within 0.05 of the threshold (the hard cases).

Ground truth: a pair is a duplicate when the exact Jaccard of its shingle sets is >= threshold.
Shingles are defined here independently of lmforge, with the same rules: lower-cased words
(``[^\\W_]+``) 5-grams, or for Chinese character 5-grams with spaces and punctuation removed.
datasketch gets exactly these shingles (``MinHash.update_batch``); lmforge gets the texts.

A side's positive pairs: for lmforge, every pair of documents in the same cluster (what the block
drops); for datasketch, every pair a ``query`` returns. Any positive pair across two bases is
checked with its exact Jaccard too, so the truth is complete for both sides.

    .venv/bin/python benchmarks/dedup_quality.py            # 3 rounds, ~1,400 pairs
    .venv/bin/python benchmarks/dedup_quality.py --quick    # smoke run, seconds
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from common import (
    format_table,
    require,
    results_path,
    run_header,
    run_main,
    shared_file,
    write_results,
)

HERE = Path(__file__).resolve().parent
ZH_FILE = HERE / "data" / "zh_paragraphs.txt"
WORD_RE = re.compile(r"[^\W_]+")
NON_WORD_RE = re.compile(r"[\W_]+")
NGRAM = 5
HAN_PUNCT = "，。、；："


# ----------------------------------------------------------------------------- corpus
def english_bases(min_words: int = 60) -> list[str]:
    """C4 demo documents and WikiText-2 validation articles with at least ``min_words`` words."""
    c4 = shared_file("llamafactory-demo/c4_demo.jsonl", "the C4 demo documents")
    wiki = shared_file("wikitext-2/valid.txt", "WikiText-2 (validation split)")
    texts = [json.loads(line)["text"] for line in c4.open(encoding="utf-8") if line.strip()]
    texts += wikitext_articles(wiki.read_text(encoding="utf-8"))
    return [t for t in texts if len(t.split()) >= min_words]


def wikitext_articles(raw: str) -> list[str]:
    """Split WikiText at its top-level `` = Title = `` headings (not `` = = Section = = ``)."""
    articles, current = [], []
    for line in raw.splitlines():
        if re.fullmatch(r" = [^=].* = ", line) and current:
            articles.append(" ".join(current))
            current = []
        if line.strip():
            current.append(line.strip())
    if current:
        articles.append(" ".join(current))
    return articles


def chinese_bases() -> list[str]:
    return [
        line.strip() for line in ZH_FILE.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


# ----------------------------------------------------------------------------- truth
def shingles(text: str, chinese: bool) -> set[tuple[str, ...]]:
    """The shingle set the truth is computed on (same rules as lmforge, written separately)."""
    tokens = list(NON_WORD_RE.sub("", text.lower())) if chinese else WORD_RE.findall(text.lower())
    if len(tokens) < NGRAM:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + NGRAM]) for i in range(len(tokens) - NGRAM + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


# ----------------------------------------------------------------------------- edits
def edit_ops(rng: random.Random, length: int, count: int, pool: Sequence[str]) -> list[tuple]:
    """``count`` random edits (kind, relative position, token) over a sequence of ``length``."""
    kinds = ("substitute", "delete", "insert", "swap")
    return [(rng.choice(kinds), rng.random(), rng.choice(pool)) for _ in range(count)]


def apply_ops(tokens: list[str], ops: Sequence[tuple]) -> list[str]:
    out = list(tokens)
    for kind, where, token in ops:
        if len(out) < 2:
            break
        i = min(int(where * len(out)), len(out) - 2)
        if kind == "substitute":
            out[i] = token
        elif kind == "delete":
            del out[i]
        elif kind == "insert":
            out.insert(i, token)
        else:
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


def edited_copy(
    text: str, chinese: bool, target: float, rng: random.Random, pool: Sequence[str]
) -> tuple[str, float]:
    """A copy of ``text`` whose exact Jaccard with it is as close to ``target`` as edits allow.

    Bisection on the number of edits taken from one random edit sequence (Jaccard falls, not
    strictly, as edits accumulate). Returns (copy, its exact Jaccard with ``text``).
    """
    tokens = list(text) if chinese else text.split(" ")
    join = "".join if chinese else " ".join
    base = shingles(text, chinese)
    ops = edit_ops(rng, len(tokens), max(4, len(tokens)), pool)

    def copy_with(k: int) -> tuple[str, float]:
        new = join(apply_ops(tokens, ops[:k]))
        return new, jaccard(base, shingles(new, chinese))

    lo, hi = 0, len(ops)  # J(copy_with(lo)) >= target > J(copy_with(hi)) ideally
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if copy_with(mid)[1] >= target:
            lo = mid
        else:
            hi = mid
    candidates = [copy_with(k) for k in (lo, hi)]
    return min(candidates, key=lambda c: abs(c[1] - target))


def draw_target(rng: random.Random, threshold: float) -> float:
    """Uniform on [0.5, 1] for two thirds of the pairs, within 0.05 of threshold for a third."""
    if rng.random() < 1 / 3:
        return rng.uniform(threshold - 0.05, threshold + 0.05)
    return rng.uniform(0.5, 1.0)


def planted_round(
    bases: list[str], chinese: bool, threshold: float, seed: int
) -> tuple[list[str], list[float]]:
    """bases + one edited copy of each (copy of base i at index len(bases) + i), and their
    exact Jaccards."""
    rng = random.Random(seed)
    if chinese:
        pool = sorted({c for text in bases for c in text if c not in HAN_PUNCT})
    else:
        pool = sorted({w for text in bases for w in text.split(" ") if w.isalpha()})
    copies, truths = [], []
    for text in bases:
        copy, jac = edited_copy(text, chinese, draw_target(rng, threshold), rng, pool)
        copies.append(copy)
        truths.append(jac)
    return bases + copies, truths


# ----------------------------------------------------------------------------- sides
def lmforge_pairs(texts: list[str], threshold: float, num_perm: int, verify: str) -> set:
    """Pairs in the same ``minhash_dedup`` cluster, running the block's fit on one shard."""
    from lmforge.data.blocks import FitContext
    from lmforge.data.dedup import MinHashDedup
    from lmforge.data.document import Document

    docs = [Document(id=str(i), text=t) for i, t in enumerate(texts)]
    block = MinHashDedup({"threshold": threshold, "num_perm": num_perm, "verify": verify})
    ctx = FitContext(1, lambda i: iter(docs), lambda fn: [fn(0, iter(docs))], 0, block.name)
    state = block.fit(ctx)
    clusters: dict[int, list[int]] = {}
    for (_, position), (_, _, detail, _) in state["verdicts"].items():
        clusters.setdefault(int(detail["cluster"]), [detail["cluster"]]).append(position)
    return {
        (min(a, b), max(a, b))
        for members in clusters.values()
        for k, a in enumerate(members)
        for b in members[k + 1 :]
    }


def datasketch_pairs(texts: list[str], chinese: bool, threshold: float, num_perm: int) -> set:
    """Pairs returned by MinHashLSH.query, on the same shingles as the truth."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes = []
    for i, text in enumerate(texts):
        m = MinHash(num_perm=num_perm)
        m.update_batch([" ".join(s).encode("utf-8") for s in shingles(text, chinese)])
        lsh.insert(i, m)
        hashes.append(m)
    return {(min(i, j), max(i, j)) for i, m in enumerate(hashes) for j in lsh.query(m) if j != i}


# ----------------------------------------------------------------------------- scoring
def score(
    predicted: set, planted: dict, truth_of: Callable[[int, int], float], threshold: float
) -> dict:
    """Precision/recall of ``predicted`` pairs against exact Jaccard >= threshold."""
    true_pairs = {pair for pair, jac in planted.items() if jac >= threshold}
    for pair in predicted - planted.keys():  # a cross-base pair: judge it by its exact Jaccard
        if truth_of(*pair) >= threshold:
            true_pairs.add(pair)
    tp = len(predicted & true_pairs)
    precision = tp / len(predicted) if predicted else 1.0
    recall = tp / len(true_pairs) if true_pairs else 1.0
    near = [p for p, j in planted.items() if abs(j - threshold) <= 0.05]
    near_errors = sum((p in predicted) != (planted[p] >= threshold) for p in near)
    return {
        "tp": tp,
        "fp": len(predicted) - tp,
        "fn": len(true_pairs) - tp,
        "precision": precision,
        "recall": recall,
        "near_threshold_pairs": len(near),
        "near_threshold_errors": near_errors,
    }


SIDES = ("lmforge (estimate)", "lmforge (exact)", "datasketch")


def evaluate_round(
    texts: list[str], planted: dict, chinese: bool, threshold: float, num_perm: int
) -> dict[str, dict]:
    """Every side's score and seconds on one planted round."""
    sets: dict[int, set] = {}

    def truth_of(i: int, j: int) -> float:
        for k in (i, j):
            if k not in sets:
                sets[k] = shingles(texts[k], chinese)
        return jaccard(sets[i], sets[j])

    runs = {
        SIDES[0]: lambda: lmforge_pairs(texts, threshold, num_perm, "estimate"),
        SIDES[1]: lambda: lmforge_pairs(texts, threshold, num_perm, "exact"),
        SIDES[2]: lambda: datasketch_pairs(texts, chinese, threshold, num_perm),
    }
    scores = {}
    for side, run in runs.items():
        start = time.perf_counter()
        predicted = run()
        seconds = time.perf_counter() - start
        scores[side] = {**score(predicted, planted, truth_of, threshold), "seconds": seconds}
    return scores


COUNTS = ("tp", "fp", "fn", "near_threshold_pairs", "near_threshold_errors", "seconds")


def evaluate(
    language: str, bases: list[str], rounds: int, threshold: float, num_perm: int
) -> tuple[dict, dict]:
    """(per side: precision, recall and counts over all rounds; the planted pairs' summary)."""
    chinese = language == "zh"
    totals = {side: dict.fromkeys(COUNTS, 0) for side in SIDES}
    jaccards: list[float] = []
    for r in range(rounds):
        texts, truths = planted_round(bases, chinese, threshold, seed=1000 * r + len(language))
        jaccards += truths
        planted = {(i, len(bases) + i): jac for i, jac in enumerate(truths)}
        for side, s in evaluate_round(texts, planted, chinese, threshold, num_perm).items():
            for key in COUNTS:
                totals[side][key] += s[key]
    results = {}
    for side, t in totals.items():
        predicted, positives = t["tp"] + t["fp"], t["tp"] + t["fn"]
        results[side] = {
            "precision": t["tp"] / predicted if predicted else 1.0,
            "recall": t["tp"] / positives if positives else 1.0,
            **t,
            "seconds": round(t["seconds"], 2),
        }
    bins = [0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 1.0, 1.01]
    histogram = {
        f"{lo:.2f}-{hi:.2f}": sum(lo <= j < hi for j in jaccards)
        for lo, hi in zip(bins, bins[1:], strict=False)
    }
    positives = sum(j >= threshold for j in jaccards)
    return results, {"pairs": len(jaccards), "positives": positives, "jaccard_histogram": histogram}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="planted copies per base document")
    parser.add_argument("--quick", action="store_true", help="smoke run: few documents, 1 round")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args(argv)
    require("datasketch", "lmforge")
    languages = {"en": english_bases(), "zh": chinese_bases()}
    rounds = args.rounds
    if args.quick:
        languages = {"en": languages["en"][:60], "zh": languages["zh"][:20]}
        rounds = 1
    results = run_header("dedup_quality", sys.argv)
    results["settings"] = {
        "threshold": args.threshold,
        "num_perm": args.num_perm,
        "ngram": NGRAM,
        "rounds": rounds,
    }
    rows = []
    for language, bases in languages.items():
        sides, planted = evaluate(language, bases, rounds, args.threshold, args.num_perm)
        results[language] = {"bases": len(bases), **planted, "sides": sides}
        for side, r in sides.items():
            rows.append(
                [
                    f"{language} {side}",
                    str(planted["pairs"]),
                    str(planted["positives"]),
                    f"{r['precision']:.3f}",
                    f"{r['recall']:.3f}",
                    f"{r['fp']}/{r['fn']}",
                    f"{r['near_threshold_errors']}/{r['near_threshold_pairs']}",
                    f"{r['seconds']:.1f}",
                ]
            )
        print(f"{language}: planted Jaccard histogram {planted['jaccard_histogram']}")
    headers = ["side", "pairs", "true", "precision", "recall", "FP/FN", "err |J-t|<=.05", "s"]
    print(format_table(headers, rows))
    write_results(results, results_path("dedup_quality", args.results, not args.quick))
    return 0


if __name__ == "__main__":
    run_main(main)
