"""The bigram-shift task: is a real sentence as written, or were two adjacent words swapped?

SentEval's "BShift" probing task (Conneau et al. 2018), built here from real text nobody on the
project wrote (all in ``../shared/data``): sentences of WikiText-2's validation split, of
LLaMA-Factory's ``c4_demo`` web documents, and of every text field of its ``alpaca_en_demo``,
``dpo_en_demo`` and ``glaive_toolcall_en_demo`` rows (instructions, answers, both sides of a
preference pair, the human and assistant turns of tool conversations). Each distinct
sentence of 8-30 words is used once, as ``original`` or (chosen with probability 1/2, seeded)
as ``shifted``: two adjacent alphabetic words, not the same word, exchanged. A shifted
sentence holds exactly the words of its original, so a bag of words cannot tell the classes
apart (its accuracy is chance by construction), and the output format gives nothing away;
only word order does.

    python benchmarks/bigram_shift.py runs/bigram_shift     # writes train.jsonl and test.jsonl
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from common import BenchError, shared_file

TEST_ROWS = 1500
MIN_WORDS, MAX_WORDS = 8, 30


def _wikitext(path: Path) -> Iterator[str]:
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("="):  # blank lines and section titles
            continue
        # WikiText's tokenised numbers: "1 @,@ 000" -> "1,000", "2 @.@ 5" -> "2.5", "a @-@ b"
        for marker, char in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", ".")):
            line = line.replace(marker, char)
        yield from re.split(r"(?<= \.) ", line)


def _split(text: str) -> list[str]:
    return re.split(r"(?<=[.!?])\s+", text)


def _c4(path: Path) -> Iterator[str]:
    for line in path.read_text(encoding="utf-8").splitlines():
        yield from _split(json.loads(line)["text"])


def _texts(path: Path) -> Iterator[str]:
    """Every text field of LLaMA-Factory alpaca rows and sharegpt conversations (human and
    assistant turns, ``chosen``/``rejected`` answers), split into sentences."""
    for row in json.loads(path.read_text(encoding="utf-8")):
        fields = [row.get(k) for k in ("instruction", "input", "output", "chosen", "rejected")]
        turns = row.get("conversations") or []
        fields += [t for t in turns if t.get("from") in ("human", "gpt")]
        for field in fields:
            text = field.get("value") if isinstance(field, dict) else field
            if isinstance(text, str):
                yield from _split(text)


def sentences() -> list[list[str]]:
    wikitext = shared_file("wikitext-2/valid.txt", "WikiText-2 validation text")
    demo = "LLaMA-Factory's demo datasets"
    c4 = shared_file("llamafactory-demo/c4_demo.jsonl", demo)
    rows = [
        shared_file(f"llamafactory-demo/{name}.json", demo)
        for name in ("alpaca_en_demo", "dpo_en_demo", "glaive_toolcall_en_demo")
    ]
    out: dict[str, list[str]] = {}  # each distinct sentence once: no train/test twins
    for text in [*_wikitext(wikitext), *_c4(c4), *(t for path in rows for t in _texts(path))]:
        words = text.split()
        if MIN_WORDS <= len(words) <= MAX_WORDS and words.count("<unk>") <= 1:
            out.setdefault(" ".join(words), words)
    return list(out.values())


def swap_candidates(words: list[str]) -> list[int]:
    return [
        i
        for i in range(len(words) - 1)
        if words[i].isalpha()
        and words[i + 1].isalpha()
        and words[i].lower() != words[i + 1].lower()
    ]


def build(seed: int = 0) -> list[dict]:
    """``{"text", "label"}`` rows in a seeded order, labels ``original`` / ``shifted``. Only
    sentences that could be shifted take part, in both classes (else "has no two adjacent
    words to swap" would give an original away)."""
    rng = random.Random(seed)
    pool = [words for words in sentences() if swap_candidates(words)]
    rng.shuffle(pool)
    rows = []
    for words in pool:
        shifted = rng.random() < 0.5
        if shifted:
            i = rng.choice(swap_candidates(words))
            words = [*words[:i], words[i + 1], words[i], *words[i + 2 :]]
        rows.append({"text": " ".join(words), "label": "shifted" if shifted else "original"})
    return rows


def write(folder: Path, seed: int = 0) -> dict[str, Path]:
    """``folder/train.jsonl`` and ``folder/test.jsonl`` (the last 1,500 rows)."""
    rows = build(seed)
    if len(rows) <= TEST_ROWS:
        raise BenchError(f"only {len(rows)} sentences qualified; expected several thousand")
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in (("train", rows[:-TEST_ROWS]), ("test", rows[-TEST_ROWS:])):
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[-1])
    for name, path in write(Path(sys.argv[1])).items():
        n = sum(1 for _ in path.open(encoding="utf-8"))
        print(f"{name}: {n} rows -> {path}")
