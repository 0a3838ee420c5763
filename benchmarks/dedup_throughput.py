"""MinHash dedup throughput per core: lmforge vs datatrove vs datasketch, same n-grams and hashes.

Corpus: C4 demo documents and WikiText-2 validation articles, repeated until ``--size-mb`` MB
of UTF-8 text; every repeat has random word substitutions so that no two documents are equal:
the first pass is the documents as they are, then 20% of the repeats are edited lightly (1% of
words: near duplicates of their base, Jaccard about 0.9) and the rest heavily (30%).

Every side uses word 5-grams and 128 hash functions and runs in this one process (per core):

- lmforge: ``MinHasher.signatures`` (signature stage); ``minhash_dedup``'s fit (whole dedup:
  signatures, LSH bands, verification from the signatures, union-find) over 5,000-document
  shards, with ``verify: estimate`` and ``verify: exact``.
- datatrove: ``MinhashDedupSignature.get_shingles`` + ``get_signature`` per document (its spaCy
  English word tokenizer, xxhash 64-bit); whole dedup = its stages 1-3 (signature files, 16
  bucket tasks of 8 hashes, cluster) run one after another in this process, on a temporary
  folder.
- datasketch: regex words, 5-gram shingles, ``MinHash.bulk`` (signature stage); whole dedup adds
  ``MinHashLSH(threshold)`` insert + query for every document and a union-find.

    .venv/bin/python benchmarks/dedup_throughput.py                 # 24 MB, a few minutes
    .venv/bin/python benchmarks/dedup_throughput.py --size-mb 2     # smoke run
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from common import (
    BenchError,
    busy_share,
    format_table,
    require,
    results_path,
    run_header,
    run_main,
    shared_file,
    write_results,
)
from dedup_quality import wikitext_articles

NGRAM = 5
NUM_PERM = 128
THRESHOLD = 0.8
BANDS, ROWS = 16, 8  # datatrove's layout; lmforge picks the same for 0.8 with verification
WORD_RE = re.compile(r"[^\W_]+")


# ----------------------------------------------------------------------------- corpus
def build_corpus(size_mb: float, seed: int = 0) -> list[str]:
    """Real documents repeated with random word substitutions up to ``size_mb`` MB (UTF-8)."""
    c4 = shared_file("llamafactory-demo/c4_demo.jsonl", "the C4 demo documents")
    wiki = shared_file("wikitext-2/valid.txt", "WikiText-2 (validation split)")
    bases = [json.loads(line)["text"] for line in c4.open(encoding="utf-8") if line.strip()]
    bases += wikitext_articles(wiki.read_text(encoding="utf-8"))
    vocab = sorted({w for text in bases for w in text.split() if w.isalpha()})
    rng = random.Random(seed)
    target = size_mb * 1e6
    corpus, size = [], 0
    first = True
    while size < target:
        for text in bases:
            words = text.split(" ")
            rate = 0.0 if first else 0.01 if rng.random() < 0.2 else 0.3
            for i in rng.sample(range(len(words)), int(rate * len(words))):
                words[i] = rng.choice(vocab)
            doc = " ".join(words)
            corpus.append(doc)
            size += len(doc.encode("utf-8"))
            if size >= target:
                break
        first = False
    return corpus


# ----------------------------------------------------------------------------- lmforge
def lmforge_signatures(texts: list[str]) -> int:
    from lmforge.data.minhash import MinHasher

    sig, _ = MinHasher(NUM_PERM, NGRAM, NGRAM).signatures(texts)
    return len(sig)


def lmforge_dedup(texts: list[str], verify: str, shard_docs: int = 5000) -> int:
    """Documents dropped by ``minhash_dedup`` (fit over in-memory shards)."""
    from lmforge.data.blocks import FitContext
    from lmforge.data.dedup import MinHashDedup
    from lmforge.data.document import Document

    docs = [Document(id=str(i), text=t) for i, t in enumerate(texts)]
    shards = [docs[s : s + shard_docs] for s in range(0, len(docs), shard_docs)]
    block = MinHashDedup(
        {"threshold": THRESHOLD, "num_perm": NUM_PERM, "ngram": NGRAM, "verify": verify}
    )
    ctx = FitContext(
        len(shards),
        lambda i: iter(shards[i]),
        lambda fn: [fn(i, iter(shard)) for i, shard in enumerate(shards)],
        0,
        block.name,
    )
    state = block.fit(ctx)
    assert (state["report"]["bands"], state["report"]["rows"]) == (BANDS, ROWS)
    return len(state["verdicts"])


# ----------------------------------------------------------------------------- datatrove
def _datatrove_config():
    from datatrove.pipeline.dedup.minhash import MinhashConfig

    return MinhashConfig(n_grams=NGRAM, num_buckets=BANDS, hashes_per_bucket=ROWS)


def datatrove_signatures(texts: list[str]) -> int:
    from datatrove.pipeline.dedup.minhash import MinhashDedupSignature

    with tempfile.TemporaryDirectory() as tmp:
        step = MinhashDedupSignature(output_folder=tmp, config=_datatrove_config())
        for text in texts:
            shingles = step.get_shingles(text)
            if shingles.size:
                step.get_signature(shingles)
    return len(texts)


def datatrove_dedup(texts: list[str]) -> int:
    """Documents datatrove would remove: stages 1-3 of its MinHash pipeline, in this process."""
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupSignature,
    )

    config = _datatrove_config()
    with tempfile.TemporaryDirectory() as tmp:
        sigs, buckets, clusters = (f"{tmp}/{name}" for name in ("sigs", "buckets", "clusters"))
        docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
        MinhashDedupSignature(output_folder=sigs, config=config).run(docs, rank=0, world_size=1)
        step = MinhashDedupBuckets(input_folder=sigs, output_folder=buckets, config=config)
        for rank in range(BANDS):
            step.run(None, rank=rank, world_size=BANDS)
        MinhashDedupCluster(input_folder=buckets, output_folder=clusters, config=config).run()
        removed = Path(clusters, "000000.remove")
        return removed.stat().st_size // 4 if removed.exists() else 0


# ----------------------------------------------------------------------------- datasketch
def _shingle_bytes(text: str) -> list[bytes]:
    words = WORD_RE.findall(text.lower())
    if len(words) < NGRAM:
        return [" ".join(words).encode()] if words else []
    return [" ".join(words[i : i + NGRAM]).encode() for i in range(len(words) - NGRAM + 1)]


def datasketch_signatures(texts: list[str]) -> list:
    from datasketch import MinHash

    out = []
    for start in range(0, len(texts), 1000):  # bulk shares one set of permutations
        batch = [_shingle_bytes(t) for t in texts[start : start + 1000]]
        out += MinHash.bulk(batch, num_perm=NUM_PERM)
    return out


def datasketch_dedup(texts: list[str]) -> int:
    from datasketch import MinHashLSH

    from lmforge.data.minhash import UnionFind

    hashes = datasketch_signatures(texts)
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    for i, m in enumerate(hashes):
        lsh.insert(i, m)
    uf = UnionFind(len(texts))
    for i, m in enumerate(hashes):
        for j in lsh.query(m):
            uf.union(i, j)
    reps = uf.representatives()
    return int(sum(int(r) != i for i, r in enumerate(reps)))


# ----------------------------------------------------------------------------- timing
def quiet_datatrove() -> None:
    """datatrove logs every bucket task through loguru; keep warnings only."""
    try:
        from loguru import logger
    except ImportError:
        return
    logger.remove()
    logger.add(sys.stderr, level="WARNING")


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


SIDES: dict[str, dict[str, Callable[[list[str]], object]]] = {
    "lmforge": {
        "signatures": lmforge_signatures,
        "dedup": lambda t: lmforge_dedup(t, "estimate"),
        "dedup (verify exact)": lambda t: lmforge_dedup(t, "exact"),
    },
    "datatrove": {"signatures": datatrove_signatures, "dedup": datatrove_dedup},
    "datasketch": {
        "signatures": lambda t: len(datasketch_signatures(t)),
        "dedup": datasketch_dedup,
    },
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=float, default=24.0, help="corpus size (default 24)")
    parser.add_argument("--sides", default=",".join(SIDES), help="comma-separated subset")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args(argv)
    require("datatrove", "datasketch", "spacy", "xxhash")
    sides = [s for s in args.sides.split(",") if s]
    if unknown := set(sides) - set(SIDES):
        raise BenchError(f"unknown sides {sorted(unknown)}; choose from {list(SIDES)}")
    texts = build_corpus(args.size_mb)
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    print(f"corpus: {len(texts)} documents, {mb:.1f} MB")
    results = run_header("dedup_throughput", sys.argv)
    results["corpus"] = {"documents": len(texts), "mb": round(mb, 2)}
    results["settings"] = {"ngram": NGRAM, "num_perm": NUM_PERM, "threshold": THRESHOLD}
    results["cpu_busy_share_before"] = busy_share()
    timings: dict[str, dict[str, dict]] = {}
    quiet_datatrove()
    for side in sides:
        for stage, fn in SIDES[side].items():
            fn(texts[:50])  # warm-up: imports, tables, spaCy's tokenizer, permutations
            seconds, out = timed(lambda fn=fn: fn(texts))
            removed = out if "dedup" in stage else None
            timings.setdefault(side, {})[stage] = {
                "seconds": round(seconds, 3),
                "docs_per_s": round(len(texts) / seconds, 1),
                "mb_per_s": round(mb / seconds, 3),
                "removed": removed,
            }
            print(f"{side} {stage}: {seconds:.2f} s, {mb / seconds:.2f} MB/s, removed {removed}")
    results["sides"] = timings
    rows = []
    base = timings.get("lmforge", {})
    for side, stages in timings.items():
        for stage, t in stages.items():
            ref = base.get(stage) or base.get("dedup")
            ratio = f"{t['seconds'] / ref['seconds']:.1f}x" if ref else "n/a"
            rows.append(
                [
                    f"{side} {stage}",
                    f"{t['seconds']:.2f}",
                    f"{t['docs_per_s']:.0f}",
                    f"{t['mb_per_s']:.2f}",
                    str(t["removed"] if t["removed"] is not None else "-"),
                    ratio,
                ]
            )
    print()
    print(format_table(["side / stage", "s", "docs/s", "MB/s", "removed", "time / lmforge"], rows))
    write_results(results, results_path("dedup_throughput", args.results, args.size_mb >= 20))
    return 0


if __name__ == "__main__":
    run_main(main)
