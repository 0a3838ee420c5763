"""Measured distributions behind the Chinese thresholds of lmforge's quality filters.

Reads ``tests/data/quality_samples/{zh,en}_{good,bad}.txt`` (documents written for lmforge:
``### id`` headers, then the text), adds generated junk (UTF-8 read as GBK, text with U+FFFD,
the good documents repeated line by line), computes every measure of ``gopher_quality``,
``gopher_repetition``, ``fineweb_quality`` and ``garbled`` on each Chinese document, prints
min / p10 / p50 / p90 / max over the good documents next to the bad ones, then the verdict of
every default filter (and ``c4_quality``) on every document.

Run (CPU, a few seconds; ``--speed`` prints documents/second of each block instead)::

    .venv/bin/python benchmarks/quality_zh_thresholds.py

How the Chinese thresholds were chosen (33 good documents of 150-210 characters, 14 written
+ 7 generated bad ones; figures of the run of 2026-11-23). Thresholds not listed keep the
English value: the good documents score 0 on hashes, ellipses, bullets, duplicate lines,
paragraphs and n-grams of 5-10 words, and at most 0.067 on top 2-4-gram ratios (limits
0.16-0.20), so Gopher's repetition limits carry over to jieba words unchanged.

=======================  ======================  ==========  ==================================
measure (Chinese)        good min / p50 / max    threshold   why
=======================  ======================  ==========  ==================================
words (jieba)            70 / 78 / 111           min 50      ~100 characters; English's 50
mean word length, chars  1.54 / 1.82 / 2.15      1.2 .. 3.0  GBK mojibake 1.01, number table 3.6;
                                                             wide margin for technical compounds
alpha words ratio        0.77 / 0.85 / 0.91      min 0.7     Chinese has more punctuation tokens
                                                             per word (English 0.8 drops 4 good);
                                                             hashtags 0.38, product list 0.61
distinct stop words      11 / 17 / 28            min 6       spam and lists 0, footer 4, login 5
C4 sentences             3 / 5 / 7               min 3       a 。-sentence is ~2-3 English ones;
                                                             no margin on these short documents
short line (<= 10 chars) 0 / 0 / 0.5             max 0.67    10 Chinese chars ~ 30 English chars
newlines per word        0.018 / 0.026 / 0.079   max 0.12    menus, footers, lists 0.12-0.79;
                                                             English 0.3 would keep them
=======================  ======================  ==========  ==================================

The exact figures of a run are what this script prints; the test
``tests/data/test_quality.py`` asserts that every good document is kept and every bad one
dropped by the default pipeline.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from lmforge.data.document import Document
from lmforge.data.garbled import Garbled, garbled_measure
from lmforge.data.quality import (
    C4Quality,
    FineWebQuality,
    GopherQuality,
    GopherRepetition,
    c4_clean,
    fineweb_measure,
    gopher_quality_measure,
    gopher_repetition_measure,
    stop_words,
)

SAMPLES = Path(__file__).resolve().parents[1] / "tests" / "data" / "quality_samples"


def read_samples(path: Path) -> list[tuple[str, str]]:
    """(id, text) for each ``### id`` section of a samples file."""
    docs: list[tuple[str, str]] = []
    for chunk in path.read_text(encoding="utf-8").split("### ")[1:]:
        head, _, body = chunk.partition("\n")
        docs.append((head.strip(), body.strip()))
    return docs


def generated_bad(good: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Junk made from good documents: GBK mojibake, U+FFFD holes, a document repeated."""
    out = []
    for doc_id, text in good[:3]:
        out.append((f"gbk-mojibake-{doc_id}", text.encode("utf-8").decode("gbk", errors="replace")))
    doc_id, text = good[3]
    out.append(
        (f"gbk-mojibake-lossy-{doc_id}", text.encode("utf-8").decode("gbk", errors="ignore"))
    )
    holes = "".join("\ufffd" if i % 7 == 3 else ch for i, ch in enumerate(text))
    out.append((f"replacement-{doc_id}", holes))
    doc_id, text = good[4]
    out.append((f"repeated-{doc_id}", "\n\n".join([text] * 4)))
    first_line = good[5][1].split("\n")[0]
    out.append(("repeated-line", "\n".join([first_line] * 6)))
    return out


def measures(text: str, zh: bool) -> dict[str, float]:
    gr = GopherRepetition().params
    fw = FineWebQuality().params
    m = gopher_quality_measure(text, zh, stop_words("zh" if zh else "en"))
    thresholds = gr.zh if zh else gr
    m |= gopher_repetition_measure(
        text, zh, sorted(thresholds.top_ngram_ratios), sorted(thresholds.dup_ngram_ratios)
    )
    m |= fineweb_measure(text, zh, (fw.zh if zh else fw).short_line_chars)
    m |= garbled_measure(text, Garbled().boilerplate())
    m["c4_sentences"] = c4_clean(text, zh, C4Quality().settings(zh)).sentences
    return m


def verdicts(doc_id: str, text: str) -> list[str]:
    """Reason of each default filter that drops the document ('' when kept)."""
    from lmforge.data.blocks import ShardContext, run_block

    out = []
    for block in (Garbled(), GopherQuality(), GopherRepetition(), FineWebQuality(), C4Quality()):
        ctx = ShardContext(shard=0, seed=0)
        kept = list(run_block(block, [Document(id=doc_id, text=text)], ctx))
        out.append("" if kept else next(iter(ctx.stats.dropped)))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def speed(repeat: int = 20) -> None:
    """Documents per second of each block alone on the good samples (one process, warm).

    Each document is new to the block (the per-text word cache does not help here; in a
    pipeline, consecutive blocks share it).
    """
    import time

    from lmforge.data.blocks import ShardContext, run_block

    for name in ("zh_good.txt", "en_good.txt"):
        texts = [t for _, t in read_samples(SAMPLES / name)] * repeat
        blocks = (Garbled(), GopherQuality(), GopherRepetition(), FineWebQuality(), C4Quality())
        for block in blocks:
            list(run_block(block, [Document(id="warm", text=texts[0])], ShardContext(0, 0)))
            docs = [Document(id=f"{i}", text=t + f" {i}") for i, t in enumerate(texts)]
            start = time.perf_counter()
            list(run_block(block, docs, ShardContext(shard=0, seed=0)))
            rate = len(docs) / (time.perf_counter() - start)
            print(f"{name:12} {block.name:18} {rate:9,.0f} docs/s")


def main() -> None:
    if "--speed" in sys.argv:
        speed()
        return
    good = read_samples(SAMPLES / "zh_good.txt")
    bad = read_samples(SAMPLES / "zh_bad.txt") + generated_bad(good)
    good_m = [measures(t, zh=True) for _, t in good]
    bad_m = {i: measures(t, zh=True) for i, t in bad}
    print(f"Chinese good documents: {len(good)}, bad: {len(bad)}")
    print(f"{'measure':24} {'min':>7} {'p10':>7} {'p50':>7} {'p90':>7} {'max':>7}  bad (min..max)")
    for key in good_m[0]:
        values = [m[key] for m in good_m]
        bad_values = [m[key] for m in bad_m.values()]
        stats = [min(values), *(percentile(values, q) for q in (0.1, 0.5, 0.9)), max(values)]
        cells = " ".join(f"{v:7.3f}" for v in stats)
        print(f"{key:24} {cells}  {min(bad_values):.3f}..{max(bad_values):.3f}")
    print(f"\ngood mean of chars per doc: {statistics.mean(len(t) for _, t in good):.0f}")
    names = ["garbled", "gopher_q", "gopher_rep", "fineweb", "c4"]
    for label, docs in (
        ("zh good", good),
        ("zh bad", bad),
        ("en good", read_samples(SAMPLES / "en_good.txt")),
        ("en bad", read_samples(SAMPLES / "en_bad.txt")),
    ):
        print(f"\n{label}: " + " | ".join(names))
        for doc_id, text in docs:
            cells = verdicts(doc_id, text)
            mark = "DROP" if any(cells) else "keep"
            print(f"  {mark} {doc_id:36} " + " | ".join(c or "-" for c in cells))


if __name__ == "__main__":
    main()
