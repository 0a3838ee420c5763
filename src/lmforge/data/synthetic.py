"""Deterministic synthetic bilingual (English + Simplified Chinese) data for demos and tests.

Why synthetic?  The lmforge demo and test-suite must never download anything, and they must run
on a laptop CPU in minutes.  Real corpora are too large and too varied for a tiny model (hidden
size 128, two layers, ~4k byte-level BPE vocabulary) to show a measurable effect in that time.
This module therefore generates, in pure Python (stdlib only, ``random.Random(seed)``), data that
is small, reproducible and *learnable*:

* a pretraining corpus (:func:`make_corpus`) whose documents mix

  - factual prose that carries the knowledge the tasks need ("The number 42 is written
    forty-two.", "57 is an odd number because it ends in 7.", "数字42写作四十二。", "57是奇数。"),
  - short restaurant / hotel / show reviews built from the same positive and negative word lists
    that the sentiment tasks use, plus sentences that say which words are positive or negative,
  - filler prose about weather, travel, cooking, school and city life, from templates with many
    slot fillers so that the text is not trivially repetitive;

* instruction tasks in alpaca form (:func:`make_tasks`) with short (one to three word) answers
  that follow simple rules, so that after pretraining a LoRA fine-tune mostly has to learn the
  question/answer format and exact-match accuracy on held-out examples can rise from ~0 to well
  above 50%:

  ==================  =============================================  =================
  task                example instruction                            answer
  ==================  =============================================  =================
  ``en_parity``       Is 348 odd or even?                            even / odd
  ``en_number_words`` Write 42 in words.                             forty-two
  ``en_sentiment``    What is the sentiment of this review: ...      positive/negative
  ``zh_numerals``     用汉字写出数字42。                               四十二
  ``zh_sentiment``    判断这句评论的情感：这家餐厅的菜很好吃。         正面 / 负面
  ``zh_parity``       数字57是奇数还是偶数？                          奇数 / 偶数
  ==================  =============================================  =================

Each task uses four instruction templates so that the model learns the task rather than one
string.  Labels of the binary tasks are exactly balanced, and the number tasks sample numbers
without replacement whenever the requested count fits in the number range.

The word lists, slot fillers and sentence templates live in the package data file
``synthetic_tables.json`` next to this module, loaded once at import; this module holds only
the generation logic.

Everything is deterministic: the same ``seed`` gives identical output, a different seed gives
different output.  :func:`write_demo_data` writes both sets as UTF-8 JSON Lines.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from string import Formatter
from typing import Any

__all__ = [
    "TASKS",
    "make_corpus",
    "make_tasks",
    "number_to_chinese",
    "number_to_english",
    "write_demo_data",
]

TASKS: tuple[str, ...] = (
    "en_parity",
    "en_number_words",
    "en_sentiment",
    "zh_numerals",
    "zh_sentiment",
    "zh_parity",
)
"""Names of the instruction tasks produced by :func:`make_tasks`, in output-id order."""

_TASK_LANG = {name: name[:2] for name in TASKS}

# --------------------------------------------------------------------------------------------
# Data tables (synthetic_tables.json, loaded once)
# --------------------------------------------------------------------------------------------


def _freeze(obj: Any) -> Any:
    """Turn JSON lists into tuples, recursively; dicts keep their file order."""
    if isinstance(obj, list):
        return tuple(_freeze(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _freeze(v) for k, v in obj.items()}
    return obj


_TABLES: dict[str, Any] = _freeze(
    json.loads((files("lmforge.data") / "synthetic_tables.json").read_text(encoding="utf-8"))
)
_INSTRUCTIONS: dict[str, tuple[str, ...]] = _TABLES["instructions"]
if tuple(_INSTRUCTIONS) != TASKS:
    raise RuntimeError("synthetic_tables.json: 'instructions' keys must equal TASKS, in order")

# --------------------------------------------------------------------------------------------
# Number rendering
# --------------------------------------------------------------------------------------------

_EN_ONES: tuple[str, ...] = _TABLES["en"]["numbers"]["ones"]
_EN_TENS: tuple[str, ...] = _TABLES["en"]["numbers"]["tens"]
_ZH_DIGITS: str = _TABLES["zh"]["numbers"]["digits"]


def number_to_english(n: int) -> str:
    """Return the English words for ``0 <= n <= 99``, e.g. ``42 -> "forty-two"``."""
    if not 0 <= n <= 99:
        raise ValueError(f"number_to_english supports 0..99, got {n}")
    if n < 20:
        return _EN_ONES[n]
    tens, ones = divmod(n, 10)
    return _EN_TENS[tens] + (f"-{_EN_ONES[ones]}" if ones else "")


def number_to_chinese(n: int) -> str:
    """Return the Chinese numeral for ``0 <= n <= 99``, e.g. ``0 -> "零"``, ``12 -> "十二"``."""
    if not 0 <= n <= 99:
        raise ValueError(f"number_to_chinese supports 0..99, got {n}")
    if n < 10:
        return _ZH_DIGITS[n]
    tens, ones = divmod(n, 10)
    head = "十" if tens == 1 else _ZH_DIGITS[tens] + "十"
    return head + (_ZH_DIGITS[ones] if ones else "")


# --------------------------------------------------------------------------------------------
# Per-language tables
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lang:
    """One language's section of the tables, in the shapes the generators use."""

    spell: Callable[[int], str]
    parity_labels: tuple[str, str]  # (even, odd)
    sentiment_labels: tuple[str, str]  # (positive, negative)
    spelling_facts: tuple[str, ...]  # fields {n}, {w} (the words), {W} (capitalized words)
    parity_facts: tuple[str, ...]  # fields {n}, {d} (last digit), {kind} (a parity label)
    sentiment_facts: tuple[str, ...]  # fields {adj}, {label}, {a1}, {a2}, {noun}
    review_cats: dict[str, tuple[tuple[str, ...], ...]]  # category -> (nouns, places, pos, neg)
    review_templates: tuple[str, ...]
    closings: dict[bool, tuple[str, ...]]  # positive? -> closing phrases
    filler_templates: tuple[str, ...]
    filler_pools: dict[str, tuple[str, ...]]  # slot -> fillers; "{slot}2" shares slot's pool


def _load_lang(code: str, spell: Callable[[int], str]) -> _Lang:
    t = _TABLES[code]
    reviews, filler = t["reviews"], t["filler"]
    return _Lang(
        spell=spell,
        parity_labels=t["labels"]["parity"],
        sentiment_labels=t["labels"]["sentiment"],
        spelling_facts=t["number_facts"]["spelling"],
        parity_facts=t["number_facts"]["parity"],
        sentiment_facts=t["sentiment_facts"],
        review_cats={
            name: (c["nouns"], c["places"], c["positive"], c["negative"])
            for name, c in reviews["categories"].items()
        },
        review_templates=reviews["templates"],
        closings={True: reviews["closings"]["positive"], False: reviews["closings"]["negative"]},
        # Templates are grouped by topic (weather, travel, ...) in the file; flatten in order.
        filler_templates=tuple(x for group in filler["templates"].values() for x in group),
        filler_pools={**filler["pools"], **{k + "2": v for k, v in filler["pools"].items()}},
    )


_LANGS: dict[str, _Lang] = {
    "en": _load_lang("en", number_to_english),
    "zh": _load_lang("zh", number_to_chinese),
}

# --------------------------------------------------------------------------------------------
# Template filling
# --------------------------------------------------------------------------------------------

_FIELDS_CACHE: dict[str, tuple[str, ...]] = {}


def _fields(template: str) -> tuple[str, ...]:
    fields = _FIELDS_CACHE.get(template)
    if fields is None:
        # dict.fromkeys keeps first-seen order (a set would depend on PYTHONHASHSEED).
        fields = tuple(dict.fromkeys(f for _, f, _, _ in Formatter().parse(template) if f))
        _FIELDS_CACHE[template] = fields
    return fields


def _fill(
    template: str, rng: random.Random, pools: Mapping[str, Sequence[str]], **fixed: str
) -> str:
    """Fill ``{slot}`` fields of ``template`` from ``fixed`` or a random choice from ``pools``."""
    values = {f: fixed[f] if f in fixed else rng.choice(pools[f]) for f in _fields(template)}
    return template.format(**values)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


# --------------------------------------------------------------------------------------------
# Sentence generators (reviews are shared by the corpus and the sentiment tasks)
# --------------------------------------------------------------------------------------------


def _review(rng: random.Random, lang: _Lang, positive: bool) -> str:
    nouns, places, pos, neg = lang.review_cats[rng.choice(tuple(lang.review_cats))]
    noun, noun2 = rng.sample(nouns, 2)
    adj, adj2 = rng.sample(pos if positive else neg, 2)
    return _fill(
        rng.choice(lang.review_templates),
        rng,
        {"place": places, "closing": lang.closings[positive]},
        noun=noun,
        noun2=noun2,
        adj=adj,
        adj2=adj2,
        article="an" if adj[0] in "aeiou" else "a",  # English "What {article} {adj} {noun}!"
    )


def _sentiment_fact(rng: random.Random, lang: _Lang) -> str:
    positive = rng.random() < 0.5
    nouns, _, pos, neg = lang.review_cats[rng.choice(tuple(lang.review_cats))]
    label = lang.sentiment_labels[0 if positive else 1]
    adj = rng.choice(pos if positive else neg)
    a1, a2 = rng.sample(pos if positive else neg, 2)
    # Every template that mentions {noun} draws its own noun, in template order, *before* one
    # sentence is chosen: the random-number sequence (hence the output) depends on this.
    options = [
        t.format(adj=adj, label=label, a1=a1, a2=a2, noun=rng.choice(nouns))
        if "noun" in _fields(t)
        else t.format(adj=adj, label=label, a1=a1, a2=a2)
        for t in lang.sentiment_facts
    ]
    return rng.choice(options)


def _number_fact(rng: random.Random, lang: _Lang) -> str:
    """A fact about how a number 0..99 is written, or about the parity of a number 0..999."""
    if rng.random() < 0.5:
        n = rng.randrange(100)
        w = lang.spell(n)
        return rng.choice(lang.spelling_facts).format(n=n, w=w, W=_cap(w))
    n = rng.randrange(1000)
    d = n % 10
    return rng.choice(lang.parity_facts).format(n=n, d=d, kind=lang.parity_labels[d % 2])


def _filler(rng: random.Random, lang: _Lang) -> str:
    """Everyday prose (weather, travel, cooking, school, city life)."""
    template, pools = rng.choice(lang.filler_templates), lang.filler_pools
    # Draw paired slots (item/item2, ...) without replacement so they differ.
    fixed: dict[str, str] = {}
    fields = _fields(template)
    for f in fields:
        if f.endswith("2") and f[:-1] in fields:
            fixed[f[:-1]], fixed[f] = rng.sample(pools[f[:-1]], 2)
    return _cap(_fill(template, rng, pools, **fixed))


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------

# Sentence kinds, in the order of the weights in _PROFILES.
_KINDS: dict[str, Callable[[random.Random, _Lang], str]] = {
    "number": _number_fact,
    "review": lambda rng, lang: _review(rng, lang, rng.random() < 0.5),
    "sentiment_fact": _sentiment_fact,
    "filler": _filler,
}
# Document "profiles": relative weights of number facts, reviews, sentiment facts, filler.
_PROFILES: tuple[tuple[int, int, int, int], ...] = (
    (6, 1, 1, 2),  # mostly number knowledge
    (1, 6, 2, 1),  # mostly reviews
    (1, 1, 1, 6),  # mostly everyday prose
    (3, 3, 1, 3),  # a mix
)


def make_corpus(n_docs: int, seed: int = 0) -> list[dict]:
    """Generate a deterministic bilingual pretraining corpus.

    Each document has 3-10 sentences mixing number facts (spelling and parity), reviews,
    sentences about which words are positive/negative, and everyday filler prose.  Exactly half
    of the documents (rounded) are English and the rest Simplified Chinese, in shuffled order.
    Chinese documents contain no spaces and use Chinese punctuation.

    Returns:
        A list of ``n_docs`` dicts ``{"id": "doc-000001", "text": str, "lang": "en" | "zh"}``
        with ids numbered from 1 in list order.
    """
    if n_docs < 0:
        raise ValueError(f"n_docs must be >= 0, got {n_docs}")
    rng = random.Random(f"lmforge-corpus-{seed}")
    langs = ["en"] * ((n_docs + 1) // 2) + ["zh"] * (n_docs // 2)
    rng.shuffle(langs)
    docs: list[dict] = []
    for i, lang in enumerate(langs, start=1):
        weights = rng.choice(_PROFILES)
        kinds = rng.choices(tuple(_KINDS), weights=weights, k=rng.randint(3, 10))
        sentences = [_KINDS[k](rng, _LANGS[lang]) for k in kinds]
        text = (" " if lang == "en" else "").join(sentences)
        docs.append({"id": f"doc-{i:06d}", "text": text, "lang": lang})
    return docs


# --------------------------------------------------------------------------------------------
# Instruction tasks
# --------------------------------------------------------------------------------------------


def _number_prompts(
    values: Sequence[int], n_templates: int, count: int, rng: random.Random
) -> list[tuple[int, int]]:
    """Pick ``count`` (number, template index) pairs.

    Numbers are drawn without replacement while ``count <= len(values)``; beyond that every
    number is used again in further shuffled passes, each pass moving every number to its next
    template so that (number, template) pairs stay unique for ``n_templates`` passes.
    """
    if not values:
        return []
    base = {v: rng.randrange(n_templates) for v in values}
    out: list[tuple[int, int]] = []
    k = 0
    while len(out) < count:
        order = list(values)
        rng.shuffle(order)
        for v in order[: count - len(out)]:
            t = (base[v] + k) % n_templates if k < n_templates else rng.randrange(n_templates)
            out.append((v, t))
        k += 1
    return out


def _balanced_labels(count: int, rng: random.Random) -> list[bool]:
    labels = [True] * (count // 2) + [False] * (count - count // 2)
    rng.shuffle(labels)
    return labels


def _parity_examples(task: str, count: int, rng: random.Random) -> list[tuple[str, str]]:
    templates = _INSTRUCTIONS[task]
    answers = _LANGS[_TASK_LANG[task]].parity_labels
    n_even = count // 2
    pairs = _number_prompts(range(0, 1000, 2), len(templates), n_even, rng)
    pairs += _number_prompts(range(1, 1000, 2), len(templates), count - n_even, rng)
    rng.shuffle(pairs)
    return [(templates[t].format(x=n), answers[n % 2]) for n, t in pairs]


def _spelling_examples(task: str, count: int, rng: random.Random) -> list[tuple[str, str]]:
    templates = _INSTRUCTIONS[task]
    spell = _LANGS[_TASK_LANG[task]].spell
    pairs = _number_prompts(range(100), len(templates), count, rng)
    return [(templates[t].format(x=n), spell(n)) for n, t in pairs]


def _sentiment_examples(task: str, count: int, rng: random.Random) -> list[tuple[str, str]]:
    templates = _INSTRUCTIONS[task]
    lang = _LANGS[_TASK_LANG[task]]
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for positive in _balanced_labels(count, rng):
        for _ in range(50):  # retry to avoid duplicates; the space is large
            instruction = rng.choice(templates).format(x=_review(rng, lang, positive))
            if instruction not in seen:
                break
        seen.add(instruction)
        out.append((instruction, lang.sentiment_labels[0 if positive else 1]))
    return out


_TASK_BUILDERS: dict[str, Callable[[str, int, random.Random], list[tuple[str, str]]]] = {
    "en_parity": _parity_examples,
    "en_number_words": _spelling_examples,
    "en_sentiment": _sentiment_examples,
    "zh_numerals": _spelling_examples,
    "zh_sentiment": _sentiment_examples,
    "zh_parity": _parity_examples,
}


def make_tasks(n_per_task: int, seed: int = 0) -> list[dict]:
    """Generate deterministic instruction examples for every task in :data:`TASKS`.

    Binary tasks have exactly balanced labels (within one for odd counts).  Number tasks draw
    numbers without replacement when ``n_per_task`` fits in the number range (0..999 for parity,
    0..99 for spelling), and never repeat an instruction string while unique ones remain.

    Returns:
        A list of ``len(TASKS) * n_per_task`` alpaca-style dicts
        ``{"id": "<task>-00001", "instruction": str, "input": "", "output": str,
        "task": str, "lang": "en" | "zh"}``, shuffled across tasks so that any contiguous
        train/test split is roughly stratified.
    """
    if n_per_task < 0:
        raise ValueError(f"n_per_task must be >= 0, got {n_per_task}")
    rng = random.Random(f"lmforge-tasks-{seed}")
    records: list[dict] = []
    for task in TASKS:
        task_rng = random.Random(f"lmforge-tasks-{seed}-{task}")
        examples = _TASK_BUILDERS[task](task, n_per_task, task_rng)
        for i, (instruction, output) in enumerate(examples, start=1):
            records.append(
                {
                    "id": f"{task}-{i:05d}",
                    "instruction": instruction,
                    "input": "",
                    "output": output,
                    "task": task,
                    "lang": _TASK_LANG[task],
                }
            )
    rng.shuffle(records)
    return records


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def write_demo_data(
    out_dir: str | Path, n_docs: int = 3000, n_per_task: int = 400, seed: int = 0
) -> dict[str, Path]:
    """Write the demo corpus and tasks as UTF-8 JSON Lines (``ensure_ascii=False``).

    Creates ``out_dir`` if needed and (over)writes ``out_dir/corpus.jsonl`` (from
    :func:`make_corpus`) and ``out_dir/tasks.jsonl`` (from :func:`make_tasks`), one JSON object
    per line.

    Returns:
        ``{"corpus": Path to corpus.jsonl, "tasks": Path to tasks.jsonl}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"corpus": out / "corpus.jsonl", "tasks": out / "tasks.jsonl"}
    _write_jsonl(paths["corpus"], make_corpus(n_docs, seed=seed))
    _write_jsonl(paths["tasks"], make_tasks(n_per_task, seed=seed))
    return paths
