"""Preference pairs built from the synthetic instruction tasks (``data.synthetic``), for tests,
the demo and the alignment benchmarks: nothing is downloaded.

The preference is a rule: the correct answer is chosen, a wrong answer of the same task is
rejected (parity and sentiment: the other label; spelling a number: the spelling of another
number, a near one half of the time so that the pair differs in one word). A reward model must
read the prompt to tell them apart, since both answers are well-formed answers of the task;
DPO must raise the probability of the correct one for the prompt at hand.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from lmforge.data.schema import prompt_messages
from lmforge.data.synthetic import _LANGS, _TASK_LANG, make_tasks


def _wrong(task: str, right: str, rng: random.Random) -> str:
    lang = _LANGS[_TASK_LANG[task]]
    if task.endswith("parity"):
        return next(a for a in lang.parity_labels if a != right)
    if task.endswith("sentiment"):
        return next(a for a in lang.sentiment_labels if a != right)
    spelled = {lang.spell(n): n for n in range(100)}
    n = spelled[right]
    while True:
        other = n + rng.choice((-1, 1)) if rng.random() < 0.5 else rng.randrange(100)
        if 0 <= other < 100 and other != n:
            return lang.spell(other)


def to_pairs(rows: list[dict], seed: int = 0) -> list[dict]:
    """Task rows (``make_tasks``' alpaca rows, or the ``messages`` rows ``lmforge prepare``
    writes from them; each with its ``task``) as preference rows: the prompt, ``chosen`` = the
    correct answer, ``rejected`` = a wrong answer of the same task."""
    rng = random.Random(f"lmforge-pairs-{seed}")
    out = []
    for row in rows:
        prompt, right = prompt_messages(row)
        if "messages" in row:
            pair = {"messages": prompt}
        else:
            pair = {k: row[k] for k in ("instruction", "input", "output") if k in row}
        kept = {k: row[k] for k in ("task", "lang") if k in row}
        pair_id = f"pair-{row.get('id', len(out))}"
        rejected = _wrong(row["task"], right, rng)
        out.append({"id": pair_id, **pair, **kept, "chosen": right, "rejected": rejected})
    return out


def make_pairs(n_per_task: int, seed: int = 0, tasks: tuple[str, ...] | None = None) -> list[dict]:
    """``{"id", "instruction", "input": "", "chosen", "rejected", "output", "task", "lang"}``
    rows (``output`` = ``chosen``: the same rows serve SFT and exact-match evaluation), in the
    order of ``make_tasks``; ``tasks`` keeps only those tasks."""
    rows = make_tasks(n_per_task, seed)
    return to_pairs([r for r in rows if not tasks or r["task"] in tasks], seed)


def write_pairs(path: str | Path, rows: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
