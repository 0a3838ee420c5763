"""Robustness suites: score a model on clean prompts and on seeded, meaning-preserving noise.

Each perturbation is a pure function ``f(text, rate=..., seed=0) -> Perturbed(text, edits)``
with a fresh ``random.Random(seed)`` per call (same seed, same output). ``rate`` is the share of
eligible words, characters or gaps touched: ``max(1, round(rate * n))`` of ``n``, none at
``rate == 0``. Text a perturbation cannot apply to comes back unchanged with ``edits == 0``.

- ``typos`` (en): one typo in each chosen ASCII word of 3+ letters: QWERTY-neighbour
  substitution, deletion, duplication or adjacent transposition.
- ``casing`` (en): chosen Latin words of 2+ letters become UPPER, lower, Title or rAnDoM;
  ``upper`` / ``lower`` (en): every Latin word, single letters too (``rate`` only switches on).
- ``whitespace`` (en, zh): a space, two, a tab or a newline added to existing gaps, at either
  end, or beside a CJK character. Chinese is written without spaces, and stray spaces between
  characters (text pasted from PDFs, typed with an IME) are realistic noise, so they are
  inserted inside CJK runs too; never inside a Latin word or number, nor between two numerals.
- ``synonyms`` (en, zh): lexicon synonym swaps by :mod:`lmforge.data.augment_eda` (its regex or
  jieba words, its shipped ``resources/synonyms_en.tsv`` / ``synonyms_zh.tsv``); only lexicon
  words change, never digits or names (a few Chinese entries such as 十分 "very" hold a numeral
  character without being a quantity); ``rate`` is the share of words, like ``alpha_sr``.
- ``zh_char_noise`` (zh): on chosen CJK characters or marks: deletion, duplication, swap with
  the next character, a homophone from a small pinyin-confusion table (的/地/得, 在/再...),
  full-width <-> half-width punctuation, simplified -> traditional (with ``zhconv``, from the
  ``lmforge[data]`` extra; skipped without it).

Numbers are protected: a token holding a digit (``42``, ``3.5``, ``H2O``, ``0x1F``) is never
touched, punctuation beside a digit keeps its width (``3.5``, ``1,000``), and Chinese numerals
(一二三...十百千万两) are not deleted, duplicated, swapped or replaced. These are invariance tests:
the gold answer must still be right, and an arithmetic question whose numbers changed has
another answer. Single letters (option labels ``A``, variables ``x``) are likewise left alone by
``typos`` and ``casing``.

:func:`perturb` applies a registered perturbation (with ``lang`` given, one not meant for that
language leaves the text unchanged); :func:`robustness_report` scores clean prompts and each
perturbed suite with the caller's ``score(prompts) -> list[float]``.

Where the ideas come from: CheckList's invariance tests (Ribeiro et al., ACL 2020, "Beyond
Accuracy: Behavioral Testing of NLP Models with CheckList"); NL-Augmenter's transformations
(Dhole et al., 2021: butter-fingers typos, whitespace and casing changes, synonym substitution,
Chinese character perturbations); prompt-robustness benchmarks such as PromptBench (Zhu et al.,
2023). The code is written for lmforge; none of it is copied.
"""

from __future__ import annotations

import functools
import random
import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from lmforge.errors import ConfigError, DataError
from lmforge.text.segment import CJK_CLASS, is_cjk_text

try:  # simplified -> traditional noise; in the data extra
    import zhconv
except ImportError:
    zhconv = None


class Perturbed(NamedTuple):
    text: str
    edits: int  # words, characters or gaps changed (0: the text came back unchanged)


# a spaced-script token: letters/digits of non-CJK scripts
_TOKEN = re.compile(f"[^\\W_{CJK_CLASS}]+")
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_ZH_NUMERALS = frozenset("〇零一二三四五六七八九十百千万亿两壹贰叁肆伍陆柒捌玖拾佰仟")
_ASCII_WORD = re.compile(r"[A-Za-z]+")

_KEYBOARD = dict(  # QWERTY neighbours of each letter
    q="wa", w="qeas", e="wrsd", r="etdf", t="ryfg", y="tugh", u="yihj", i="uojk", o="ipkl",
    p="ol", a="qwsz", s="awedxz", d="serfcx", f="drtgvc", g="ftyhbv", h="gyujnb", j="huikmn",
    k="jiolm", l="kop", z="asx", x="zsdc", c="xdfv", v="cfgb", b="vghn", n="bhjm", m="njk",
)  # fmt: skip
# Chinese pinyin-input confusions: same syllable (tone aside), none antonyms, no units
_HOMOPHONES = (
    "的地得", "在再", "做作", "他她它", "那哪", "已以", "像象", "即既", "坐座", "带戴", "进近",
    "是事", "会汇", "到道", "和合", "期其", "现线", "经精", "吗嘛", "因音", "位为", "知之",
    "题提", "成城", "心新", "里理",
)  # fmt: skip
_HOMOPHONE = {c: g.replace(c, "") for g in _HOMOPHONES for c in g}
_WIDTH = dict(zip("，。？！：；（）", ",.?!:;()", strict=True))
_WIDTH.update({half: full for full, half in list(_WIDTH.items())})
_SPACES = (" ", "  ", "\t", "\n")


def _check_rate(rate: float) -> float:
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
        raise ConfigError(f"perturbation rate must be a number in [0, 1], got {rate!r}")
    return float(rate)


def _count(n: int, rate: float) -> int:
    """How many of ``n`` eligible places to touch."""
    return 0 if n == 0 or rate == 0 else min(n, max(1, round(rate * n)))


def _is_numeral(ch: str) -> bool:
    return ch.isdigit() or ch in _ZH_NUMERALS


def _latin_words(text: str, min_len: int) -> list[re.Match]:
    """Latin-script words of ``min_len``+ letters; tokens holding a digit are never words."""
    return [
        m
        for m in _TOKEN.finditer(text)
        if len(m.group()) >= min_len and not any(c.isdigit() for c in m.group())
    ]


def _replace_spans(text: str, edits: dict[int, tuple[int, str]]) -> str:
    """Replace ``text[start:end]`` by ``new`` for each ``start -> (end, new)`` (no overlaps)."""
    out, pos = [], 0
    for start in sorted(edits):
        end, new = edits[start]
        out += [text[pos:start], new]
        pos = end
    return "".join(out) + text[pos:]


# ---------------------------------------------------------------------------- English
def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(len(word))
    op = rng.choice(("substitute", "delete", "duplicate", "transpose"))
    if op == "transpose" and i + 1 < len(word) and word[i].lower() != word[i + 1].lower():
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if op == "delete":
        return word[:i] + word[i + 1 :]
    if op == "duplicate":
        return word[: i + 1] + word[i:]
    near = rng.choice(_KEYBOARD[word[i].lower()])
    return word[:i] + (near.upper() if word[i].isupper() else near) + word[i + 1 :]


def typos(text: str, rate: float = 0.1, seed: int = 0) -> Perturbed:
    """One keyboard typo in each chosen ASCII word of 3+ letters (``rate``: share of them)."""
    rng = random.Random(seed)
    words = [m for m in _latin_words(text, 3) if _ASCII_WORD.fullmatch(m.group())]
    chosen = rng.sample(words, _count(len(words), _check_rate(rate)))
    edits = {m.start(): (m.end(), _typo(m.group(), rng)) for m in chosen}
    return Perturbed(_replace_spans(text, edits), len(edits))


def _random_case(word: str, rng: random.Random) -> str:
    options = [word.upper(), word.lower(), word[:1].upper() + word[1:].lower()]
    options.append("".join(c.upper() if rng.random() < 0.5 else c.lower() for c in word))
    options = [o for o in dict.fromkeys(options) if o != word]
    return rng.choice(options) if options else word


def casing(text: str, rate: float = 0.2, seed: int = 0, mode: str = "random") -> Perturbed:
    """Re-case Latin words: ``mode="random"`` re-cases a ``rate`` share of the words of 2+
    letters (UPPER, lower, Title or mixed); ``"upper"``/``"lower"`` every word (when rate > 0)."""
    if mode not in ("random", "upper", "lower"):
        raise ConfigError(f"casing mode must be one of random, upper, lower; got {mode!r}")
    rng, rate = random.Random(seed), _check_rate(rate)
    if rate == 0:
        return Perturbed(text, 0)
    if mode == "random":
        words = _latin_words(text, 2)
        chosen = rng.sample(words, _count(len(words), rate))
        new = {m.start(): (m.end(), _random_case(m.group(), rng)) for m in chosen}
    else:
        new = {
            m.start(): (m.end(), m.group().upper() if mode == "upper" else m.group().lower())
            for m in _latin_words(text, 1)
        }
    edits = {start: span for start, span in new.items() if text[start : span[0]] != span[1]}
    return Perturbed(_replace_spans(text, edits), len(edits))


# ---------------------------------------------------------------------------- both languages
def _gaps(text: str) -> list[tuple[int, int]]:
    """Where whitespace may go, as (start, end) spans to extend: existing whitespace runs, the
    text's two ends, and boundaries next to a CJK character (never between two numerals)."""
    spaces = [(m.start(), m.end()) for m in re.finditer(r"\s+", text)]
    taken = {s for span in spaces for s in span}
    places = [(0, 0)] if 0 not in taken else []
    for i in range(1, len(text)):
        a, b = text[i - 1], text[i]
        if a.isspace() or b.isspace() or (_is_numeral(a) and _is_numeral(b)):
            continue
        if _HAN.match(a) or _HAN.match(b):
            places.append((i, i))
    places += spaces
    if len(text) not in taken:
        places.append((len(text), len(text)))
    return sorted(set(places))


def whitespace(text: str, rate: float = 0.1, seed: int = 0) -> Perturbed:
    """Add a space, two spaces, a tab or a newline at a ``rate`` share of the places in
    :func:`_gaps`; Latin words and numbers are never split."""
    rng = random.Random(seed)
    if not text.strip():
        return Perturbed(text, 0)
    places = _gaps(text)
    chosen = rng.sample(places, _count(len(places), _check_rate(rate)))
    edits = {s: (e, text[s:e] + rng.choice(_SPACES)) for s, e in sorted(chosen)}
    return Perturbed(_replace_spans(text, edits), len(edits))


@functools.lru_cache(maxsize=8)
def _lexicon(paths: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    from lmforge.data.augment_eda import load_lexicons

    return load_lexicons(paths)


def synonyms(
    text: str, rate: float = 0.1, seed: int = 0, lexicons: tuple[str, ...] = ()
) -> Perturbed:
    """Swap a ``rate`` share of the words (jieba words for Chinese) for lexicon synonyms, with
    ``augment_eda.synonym_replacement``; ``lexicons``: extra TSV files besides the shipped ones."""
    from lmforge.data.augment_eda import Words, synonym_replacement

    rng, rate = random.Random(seed), _check_rate(rate)
    if rate == 0 or not text.strip():
        return Perturbed(text, 0)
    w = Words(text, cjk=is_cjk_text(text))
    n = _count(len(w.words), rate)
    before = list(w.words)
    synonym_replacement(w, n, _lexicon(tuple(lexicons)), rng)
    changed = sum(a != b for a, b in zip(before, w.words, strict=True))
    return Perturbed(w.text(), changed) if changed else Perturbed(text, 0)


# ---------------------------------------------------------------------------- Chinese
def _traditional(text: str) -> dict[int, str]:
    """index -> the traditional form of that character, where it differs (needs zhconv)."""
    if zhconv is None or not _HAN.search(text):
        return {}
    whole = zhconv.convert(text, "zh-hant")  # phrase-aware; char by char if lengths differ
    if len(whole) != len(text):
        whole = "".join(c if not _HAN.match(c) else zhconv.convert(c, "zh-hant")[:1] for c in text)
    return {i: t for i, (s, t) in enumerate(zip(text, whole, strict=True)) if s != t}


def _zh_ops(text: str, i: int, traditional: dict[int, str]) -> list[str]:
    ch, nxt = text[i], text[i + 1 : i + 2]
    if ch in _WIDTH:
        beside = text[i - 1 : i] + nxt
        return [] if any(c.isdigit() for c in beside) else ["width"]
    if not _HAN.match(ch) or ch in _ZH_NUMERALS:
        return []
    ops = ["delete", "duplicate"]
    if nxt and _HAN.match(nxt) and nxt not in _ZH_NUMERALS and nxt != ch:
        ops.append("swap")
    if ch in _HOMOPHONE:
        ops.append("homophone")
    if i in traditional:
        ops.append("traditional")
    return ops


def zh_char_noise(
    text: str, rate: float = 0.1, seed: int = 0, traditional: bool = True
) -> Perturbed:
    """Noise on a ``rate`` share of the CJK characters and punctuation marks: delete, duplicate,
    swap with the next character, homophone, punctuation width, simplified -> traditional
    (``traditional=False`` or no zhconv: not that one). Numerals and text without CJK: kept."""
    rng, rate = random.Random(seed), _check_rate(rate)
    if rate == 0 or not _HAN.search(text):
        return Perturbed(text, 0)
    trad = _traditional(text) if traditional else {}
    ops = {i: o for i in range(len(text)) if (o := _zh_ops(text, i, trad))}
    slots, touched, edits = list(text), set(), 0
    for i in rng.sample(sorted(ops), _count(len(ops), rate)):
        if i in touched:
            continue
        op = rng.choice(ops[i])
        if op == "swap" and i + 1 in touched:
            op = rng.choice([o for o in ops[i] if o != "swap"])
        touched.add(i)
        edits += 1
        if op == "swap":
            slots[i], slots[i + 1] = text[i + 1], text[i]
            touched.add(i + 1)
        elif op == "homophone":
            slots[i] = rng.choice(_HOMOPHONE[text[i]])
        else:
            simple = {"delete": "", "duplicate": text[i] * 2, "width": _WIDTH.get(text[i])}
            slots[i] = simple[op] if op in simple else trad[i]
    new = "".join(slots)
    return Perturbed(new, edits) if new != text else Perturbed(text, 0)


# ---------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Perturbation:
    name: str
    fn: Callable[..., Perturbed]  # fn(text, rate, seed) -> Perturbed
    langs: frozenset[str]


_EN, _BOTH, _ZH = frozenset({"en"}), frozenset({"en", "zh"}), frozenset({"zh"})
PERTURBATIONS: dict[str, Perturbation] = {
    p.name: p
    for p in (
        Perturbation("typos", typos, _EN),
        Perturbation("casing", casing, _EN),
        Perturbation("upper", functools.partial(casing, mode="upper"), _EN),
        Perturbation("lower", functools.partial(casing, mode="lower"), _EN),
        Perturbation("whitespace", whitespace, _BOTH),
        Perturbation("synonyms", synonyms, _BOTH),
        Perturbation("zh_char_noise", zh_char_noise, _ZH),
    )
}


def _spec(name: str) -> Perturbation:
    if name not in PERTURBATIONS:
        raise ConfigError(f"unknown perturbation {name!r}; choose from: {', '.join(PERTURBATIONS)}")
    return PERTURBATIONS[name]


def _lang(lang: str | None) -> str | None:
    """``"zh-CN"`` -> ``"zh"``, ``"EN_us"`` -> ``"en"``."""
    return None if lang is None else re.split(r"[-_]", lang.strip().lower())[0]


def perturb(
    text: str, name: str, rate: float = 0.1, seed: int = 0, lang: str | None = None
) -> Perturbed:
    """Apply the registered perturbation ``name``; unchanged when ``lang`` is given and not
    one of its languages (``PERTURBATIONS[name].langs``); ``lang=None``: no language filter."""
    spec, rate = _spec(name), _check_rate(rate)
    if lang is not None and _lang(lang) not in spec.langs:
        return Perturbed(text, 0)
    result = spec.fn(text, rate=rate, seed=seed)
    return result if result.text != text else Perturbed(text, 0)  # edits > 0 <=> changed


def item_seed(seed: int, name: str, item_id: object) -> int:
    """The seed for one item: stable across runs and independent of the item's position."""
    return zlib.crc32(f"{seed}\0{name}\0{item_id}".encode())


# ---------------------------------------------------------------------------- driver
_ROW = ("id", "prompt", "changed", "edits", "clean_score", "perturbed_score")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _accuracy(clean: list[float], noisy: list[float]) -> dict:
    a, b = _mean(clean), _mean(noisy)
    return {"clean": a, "perturbed": b, "drop": None if a is None else a - b}


def _scores(score: Callable, prompts: list[str], items: list[dict], what: str) -> list[float]:
    result = [float(s) for s in score(prompts, items)] if prompts else []
    if len(result) != len(prompts):
        raise ValueError(f"score() returned {len(result)} scores for {len(prompts)} {what} prompts")
    return result


def robustness_report(
    items: Iterable[dict],
    score: Callable[[list[str], list[dict]], list[float]],
    names: Iterable[str] | None = None,
    rate: float = 0.1,
    seed: int = 0,
) -> dict:
    """Clean vs perturbed scores of ``items`` (dicts with ``id``, ``prompt``, ``reference``,
    optional ``lang``) for each perturbation in ``names`` (default: all registered).

    ``score(prompts, items)`` gives one score per prompt (e.g. exact match 0/1 of the answers;
    ``items`` are the prompts' own items, for their references); it is called once on the clean
    prompts and, per perturbation, once on the prompts it changed (an unchanged prompt keeps its
    clean score). Each item gets ``item_seed(seed, name, id)``.
    Per perturbation: ``changed`` / ``unchanged`` item counts and total ``edits``; ``all``:
    ``{clean, perturbed, drop}`` mean scores over all items (drop = clean - perturbed);
    ``changed_only``: the same over the changed items (``None`` when none changed); ``flips``:
    items whose score went ``down`` / ``up``; ``rows``: ``{id, prompt, changed, edits,
    clean_score, perturbed_score}`` per item, for error analysis.
    """
    rate, items = _check_rate(rate), list(items)
    names = list(dict.fromkeys(PERTURBATIONS if names is None else names))
    if not names:
        raise ConfigError(f"no perturbation given; choose from: {', '.join(PERTURBATIONS)}")
    for name in names:
        _spec(name)
    for n, item in enumerate(items):
        if missing := [k for k in ("id", "prompt", "reference") if k not in item]:
            raise DataError(f"robustness item {n} lacks {', '.join(missing)}")
        if not isinstance(item["prompt"], str):
            raise DataError(f"robustness item {item['id']!r}: prompt must be a string")
    if len({item["id"] for item in items}) != len(items):
        raise DataError("robustness items need distinct ids")
    prompts = [item["prompt"] for item in items]
    clean = _scores(score, prompts, items, "clean")
    report = {"items": len(items), "rate": rate, "seed": seed, "clean_accuracy": _mean(clean)}
    report["perturbations"] = {}
    for name in names:
        noisy = [
            perturb(it["prompt"], name, rate, item_seed(seed, name, it["id"]), it.get("lang"))
            for it in items
        ]
        changed = [i for i, p in enumerate(noisy) if p.text != prompts[i]]
        perturbed = list(clean)
        new = _scores(score, [noisy[i].text for i in changed], [items[i] for i in changed], name)
        for i, s in zip(changed, new, strict=True):
            perturbed[i] = s
        report["perturbations"][name] = {
            "changed": len(changed),
            "unchanged": len(items) - len(changed),
            "edits": sum(p.edits for p in noisy),
            "all": _accuracy(clean, perturbed),
            "changed_only": _accuracy([clean[i] for i in changed], [perturbed[i] for i in changed]),
            "flips": {
                "down": sum(b < a for a, b in zip(clean, perturbed, strict=True)),
                "up": sum(b > a for a, b in zip(clean, perturbed, strict=True)),
            },
            "rows": [
                dict(zip(_ROW, (it["id"], p.text, p.edits > 0, p.edits, a, b), strict=True))
                for it, p, a, b in zip(items, noisy, clean, perturbed, strict=True)
            ],
        }
    return report
