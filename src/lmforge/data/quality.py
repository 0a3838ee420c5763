"""Heuristic quality filters: ``gopher_quality``, ``gopher_repetition``, ``c4_quality``,
``fineweb_quality`` — with Chinese measures and thresholds for Chinese documents.

English defaults are the published ones, with datatrove's semantics (``GopherQualityFilter``,
``GopherRepetitionFilter``, ``C4QualityFilter``, ``FineWebQualityFilter``): Rae et al. 2021
(Gopher, table A1), Raffel et al. 2020 (C4), Penedo et al. 2024 (FineWeb).

A document is Chinese when ``metadata["lang"]`` is a Chinese code (``zh``, ``yue``, ``wuu``;
set by ``langid``) or, with no ``lang``, when at least half its letters are Han without kana
(:func:`lmforge.data.langid.script_language`). Chinese documents are measured in Chinese terms
and compared with the ``zh`` thresholds of each filter:

- words come from jieba (:func:`lmforge.text.segment.words`), so lengths are in characters of
  words of 1-4 characters, not of space-separated tokens;
- stop words come from ``resources/stopwords_zh.txt`` (331 function words);
- terminal punctuation is ``。！？…」』”`` (and the ASCII ``.!?``); ellipses are ``…`` / ``……``;
- n-grams join words without spaces.

The Chinese thresholds were chosen from measured distributions over 33 good and 21 bad
Chinese documents (``tests/data/quality_samples``; rerun with
``.venv/bin/python benchmarks/quality_zh_thresholds.py``), keeping every good document (with
a margin, except C4's sentence count) and dropping the junk; the table of percentiles and the
choice for each threshold is in that script's docstring. Other languages get the English
rules: run ``langid`` first and keep the languages these filters are meant for.

Every filter computes its measures in a ``*_measure`` function (a dict of floats) over
``doc.content`` and drops on the first rule broken, with the measured value and the threshold
in the detail. Differences from datatrove, on purpose: tokens are words plus runs of one
punctuation mark (datatrove uses an NLTK/spaCy tokenizer, which needs downloads), and C4
counts sentences by their end marks rather than with NLTK punkt.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator

from pydantic import Field, field_validator

from lmforge.config.base import Group
from lmforge.data.blocks import Block, Filter, ShardContext, register
from lmforge.data.document import Document
from lmforge.data.quality_zh import (
    ZH_TERMINAL,
    ChineseAware,
    doc_words,
    is_chinese,
    stop_words,
    zh_defaults,
)

EN_TERMINAL = (".", "!", "?")
BULLETS = ("•", "-", "●", "◆", "■", "▪", "·", "*")
_ELLIPSIS = re.compile(r"\.\.\.|…+")
# a symbol token: a run of one repeated punctuation/symbol character ("...", "！！", "。")
_SYMBOL = re.compile(r"([^\w\s])\1*")


# ---------------------------------------------------------------------- shared helpers
def nonblank_lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.strip()]


def find_duplicates(items: list[str]) -> tuple[int, int]:
    """(number of items seen before, their characters) — datatrove's ``find_duplicates``."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def first_violation(
    metrics: dict[str, float], rules: list[tuple[str, str, str, float | None]], zh: bool
) -> tuple[str, dict] | None:
    """The first broken rule as (reason, detail), or None.

    ``rules``: (reason, metric, "min" | "max", threshold); a None threshold is switched off.
    """
    for reason, metric, kind, threshold in rules:
        if threshold is None:
            continue
        value = metrics[metric]
        if (value < threshold) if kind == "min" else (value > threshold):
            detail = {metric: round(value, 4), "threshold": threshold, "lang": "zh" if zh else "en"}
            return reason, detail
    return None


# ---------------------------------------------------------------------- gopher_quality
class GopherQualityThresholds(Group):
    min_words: int | None = Field(50, description="fewest words (not counting punctuation)")
    max_words: int | None = Field(100_000, description="most words")
    min_mean_word_length: float | None = Field(3, description="shortest mean word, characters")
    max_mean_word_length: float | None = Field(10, description="longest mean word, characters")
    max_symbol_word_ratio: float | None = Field(
        0.1, description="most '#' or ellipses per token (each counted separately)"
    )
    max_bullet_lines_ratio: float | None = Field(
        0.9, description="most lines starting with a bullet"
    )
    max_ellipsis_lines_ratio: float | None = Field(
        0.3, description="most lines ending with an ellipsis"
    )
    min_alpha_words_ratio: float | None = Field(
        0.8, description="fewest tokens (words and symbols) with a letter"
    )
    min_stop_words: int | None = Field(2, description="fewest distinct stop words present")
    stop_words: list[str] | None = Field(
        None, description="stop words; None uses resources/stopwords_<en|zh>.txt"
    )


# measured on tests/data/quality_samples (benchmarks/quality_zh_thresholds.py)
GOPHER_QUALITY_ZH = {
    "min_words": 50,
    "min_mean_word_length": 1.2,
    "max_mean_word_length": 3.0,
    "min_alpha_words_ratio": 0.7,
    "min_stop_words": 6,
}


def gopher_quality_measure(text: str, zh: bool, stops: frozenset[str]) -> dict[str, float]:
    """Gopher's document measures; ratios are over tokens = words + symbol runs."""
    ws = doc_words(text, zh)
    n_tokens = max(len(ws) + len(_SYMBOL.findall(text)), 1)
    lines = text.splitlines() or [""]
    return {
        "words": len(ws),
        "mean_word_length": sum(map(len, ws)) / len(ws) if ws else 0.0,
        "hash_ratio": text.count("#") / n_tokens,
        "ellipsis_ratio": len(_ELLIPSIS.findall(text)) / n_tokens,
        "bullet_lines_ratio": sum(s.lstrip().startswith(BULLETS) for s in lines) / len(lines),
        "ellipsis_lines_ratio": sum(s.rstrip().endswith(("...", "…")) for s in lines) / len(lines),
        "alpha_words_ratio": sum(any(c.isalpha() for c in w) for w in ws) / n_tokens,
        "stop_words": len(stops.intersection(ws)),
    }


@register("gopher_quality")
class GopherQuality(ChineseAware, Filter):
    """Gopher's quality rules (Rae et al. 2021, A.1.1); Chinese documents use ``zh``."""

    class Params(GopherQualityThresholds):
        zh: GopherQualityThresholds = Field(
            default_factory=lambda: GopherQualityThresholds(**GOPHER_QUALITY_ZH),
            description="thresholds for Chinese documents (keys left out keep Chinese defaults)",
        )
        merge_zh = field_validator("zh", mode="before")(zh_defaults(GOPHER_QUALITY_ZH))

    def check(self, doc: Document) -> tuple[str, dict] | None:
        zh = is_chinese(doc)
        t = self.params.zh if zh else self.params
        stops = frozenset(t.stop_words) if t.stop_words else stop_words("zh" if zh else "en")
        m = gopher_quality_measure(doc.content, zh, stops)
        return first_violation(
            m,
            [
                ("too_few_words", "words", "min", t.min_words),
                ("too_many_words", "words", "max", t.max_words),
                ("mean_word_length_low", "mean_word_length", "min", t.min_mean_word_length),
                ("mean_word_length_high", "mean_word_length", "max", t.max_mean_word_length),
                ("too_many_hashes", "hash_ratio", "max", t.max_symbol_word_ratio),
                ("too_many_ellipses", "ellipsis_ratio", "max", t.max_symbol_word_ratio),
                ("too_many_bullet_lines", "bullet_lines_ratio", "max", t.max_bullet_lines_ratio),
                (
                    "too_many_ellipsis_lines",
                    "ellipsis_lines_ratio",
                    "max",
                    t.max_ellipsis_lines_ratio,
                ),
                ("too_few_alpha_words", "alpha_words_ratio", "min", t.min_alpha_words_ratio),
                ("too_few_stop_words", "stop_words", "min", t.min_stop_words),
            ],
            zh,
        )


# ---------------------------------------------------------------------- gopher_repetition
class GopherRepetitionThresholds(Group):
    max_dup_line_ratio: float | None = Field(0.3, description="most duplicate lines / lines")
    max_dup_para_ratio: float | None = Field(
        0.3, description="most duplicate paragraphs / paragraphs"
    )
    max_dup_line_char_ratio: float | None = Field(
        0.2, description="most characters in duplicate lines / characters"
    )
    max_dup_para_char_ratio: float | None = Field(
        0.2, description="most characters in duplicate paragraphs / characters"
    )
    top_ngram_ratios: dict[int, float] = Field(
        {2: 0.20, 3: 0.18, 4: 0.16},
        description="n -> most characters covered by the most frequent word n-gram",
    )
    dup_ngram_ratios: dict[int, float] = Field(
        {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> most characters covered by repeated word n-grams",
    )


GOPHER_REPETITION_ZH = {
    "top_ngram_ratios": {2: 0.20, 3: 0.18, 4: 0.16},
    "dup_ngram_ratios": {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
}


def _top_ngram_chars(ws: tuple[str, ...], n: int, sep: str) -> int:
    grams = Counter(sep.join(ws[i : i + n]) for i in range(len(ws) - n + 1))
    if not grams:
        return 0
    gram, count = grams.most_common(1)[0]
    return len(gram) * count


def _dup_ngram_chars(ws: tuple[str, ...], n: int) -> int:
    """Characters of n-grams seen before, skipping past each repeat (datatrove's rule)."""
    seen: set[str] = set()
    chars = i = 0
    while i < len(ws) - n + 1:
        gram = "".join(ws[i : i + n])
        if gram in seen:
            chars += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


def gopher_repetition_measure(
    text: str, zh: bool, top_ns: list[int], dup_ns: list[int]
) -> dict[str, float]:
    """Repetition ratios; character counts are over ``len(text)``."""
    size = max(len(text), 1)
    paragraphs = re.split(r"\n{2,}", text.strip())
    lines = [line for line in re.split(r"\n+", text) if line]
    para_dups, para_chars = find_duplicates(paragraphs)
    line_dups, line_chars = find_duplicates(lines)
    ws = doc_words(text, zh)
    m = {
        "dup_para_ratio": para_dups / max(len(paragraphs), 1),
        "dup_para_char_ratio": para_chars / size,
        "dup_line_ratio": line_dups / max(len(lines), 1),
        "dup_line_char_ratio": line_chars / size,
    }
    sep = "" if zh else " "
    for n in top_ns:
        m[f"top_{n}gram_ratio"] = _top_ngram_chars(ws, n, sep) / size
    for n in dup_ns:
        m[f"dup_{n}gram_ratio"] = _dup_ngram_chars(ws, n) / size
    return m


@register("gopher_repetition")
class GopherRepetition(ChineseAware, Filter):
    """Gopher's repetition rules (Rae et al. 2021, table A1); Chinese documents use ``zh``."""

    class Params(GopherRepetitionThresholds):
        zh: GopherRepetitionThresholds = Field(
            default_factory=lambda: GopherRepetitionThresholds(**GOPHER_REPETITION_ZH),
            description="thresholds for Chinese documents (keys left out keep Chinese defaults)",
        )
        merge_zh = field_validator("zh", mode="before")(zh_defaults(GOPHER_REPETITION_ZH))

    def check(self, doc: Document) -> tuple[str, dict] | None:
        zh = is_chinese(doc)
        t = self.params.zh if zh else self.params
        top, dup = sorted(t.top_ngram_ratios), sorted(t.dup_ngram_ratios)
        m = gopher_repetition_measure(doc.content, zh, top, dup)
        rules = [
            ("dup_paragraphs", "dup_para_ratio", "max", t.max_dup_para_ratio),
            ("dup_paragraph_chars", "dup_para_char_ratio", "max", t.max_dup_para_char_ratio),
            ("dup_lines", "dup_line_ratio", "max", t.max_dup_line_ratio),
            ("dup_line_chars", "dup_line_char_ratio", "max", t.max_dup_line_char_ratio),
        ]
        rules += [(f"top_{n}gram", f"top_{n}gram_ratio", "max", t.top_ngram_ratios[n]) for n in top]
        rules += [(f"dup_{n}gram", f"dup_{n}gram_ratio", "max", t.dup_ngram_ratios[n]) for n in dup]
        return first_violation(m, rules, zh)


# ---------------------------------------------------------------------- fineweb_quality
class FineWebThresholds(Group):
    min_line_punct_ratio: float | None = Field(
        0.12, description="fewest lines ending in terminal punctuation / lines"
    )
    max_short_line_ratio: float | None = Field(0.67, description="most short lines / lines")
    short_line_chars: int = Field(30, ge=1, description="a line this long or shorter is short")
    max_char_dup_ratio: float | None = Field(
        0.01, description="most characters in duplicate lines / characters (newlines excluded)"
    )
    max_newline_word_ratio: float | None = Field(0.3, description="most newlines per word")


FINEWEB_ZH = {"short_line_chars": 10, "max_newline_word_ratio": 0.12}


def fineweb_measure(text: str, zh: bool, short_line_chars: int) -> dict[str, float]:
    lines = nonblank_lines(text) or [""]
    terminal = ZH_TERMINAL if zh else EN_TERMINAL
    ws = doc_words(text, zh)
    return {
        "line_punct_ratio": sum(line.endswith(terminal) for line in lines) / len(lines),
        "short_line_ratio": sum(len(line) <= short_line_chars for line in lines) / len(lines),
        "char_dup_ratio": find_duplicates(lines)[1] / max(len(text.replace("\n", "")), 1),
        "newline_word_ratio": text.count("\n") / max(len(ws), 1),
    }


@register("fineweb_quality")
class FineWebQuality(ChineseAware, Filter):
    """FineWeb's extra rules (Penedo et al. 2024); Chinese documents use ``zh``."""

    class Params(FineWebThresholds):
        zh: FineWebThresholds = Field(
            default_factory=lambda: FineWebThresholds(**FINEWEB_ZH),
            description="thresholds for Chinese documents (keys left out keep Chinese defaults)",
        )
        merge_zh = field_validator("zh", mode="before")(zh_defaults(FINEWEB_ZH))

    def check(self, doc: Document) -> tuple[str, dict] | None:
        zh = is_chinese(doc)
        t = self.params.zh if zh else self.params
        m = fineweb_measure(doc.content, zh, t.short_line_chars)
        return first_violation(
            m,
            [
                ("line_punct_ratio", "line_punct_ratio", "min", t.min_line_punct_ratio),
                ("short_line_ratio", "short_line_ratio", "max", t.max_short_line_ratio),
                ("char_dup_ratio", "char_dup_ratio", "max", t.max_char_dup_ratio),
                ("list_ratio", "newline_word_ratio", "max", t.max_newline_word_ratio),
            ],
            zh,
        )


# ---------------------------------------------------------------------- c4_quality
C4_END = (".", "?", "!", '"', "'")
C4_END_ZH = ("。", "！", "？", "」", "』", "”", "’", *C4_END)
C4_POLICY = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
C4_POLICY_ZH = ("隐私政策", "隐私条款", "使用条款", "用户协议", "服务条款", "cookie")
# Chinese sentences (。-delimited) are long: 3 is the fewest in the good samples (150-210 chars)
C4_ZH = {"min_sentences": 3}
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")
_SENTENCE_END_ZH = re.compile(r"(?:[。！？!?]+|…+|\.(?=\s|$))[”’」』）)]*")


class C4Params(Group):
    remove_citations: bool = Field(True, description="strip [1], [edit], [citation needed]")
    terminal_punct: bool = Field(True, description="remove lines not ending in . ? ! \" '")
    min_sentences: int = Field(5, description="drop documents with fewer sentences left; -1 off")
    min_words_per_line: int = Field(3, description="remove lines with fewer words; -1 off")
    max_word_length: int = Field(1000, description="remove lines with a longer word; -1 off")
    lorem_ipsum: bool = Field(True, description="drop documents containing 'lorem ipsum'")
    javascript: bool = Field(True, description="remove lines mentioning javascript")
    curly_bracket: bool = Field(True, description="drop documents containing '{' (code, templates)")
    policy: bool = Field(True, description="remove cookie / privacy-policy / terms lines")


class LineVerdict:
    """What C4 made of one piece of text: its kept lines, sentences, or a document-level reason."""

    def __init__(self) -> None:
        self.kept: list[str] = []
        self.sentences = 0
        self.reason: tuple[str, dict] | None = None


def c4_clean(text: str, zh: bool, p: C4Params) -> LineVerdict:
    """C4's line rules over one text (datatrove ``C4QualityFilter`` with ``split_paragraph``).

    Chinese: words from jieba, terminal marks ``。！？」』”`` too, policy phrases in Chinese, and
    sentences counted by ``。！？`` / ``……``. A line ending in an ellipsis is never terminal.
    """
    out = LineVerdict()
    ends, policy = (C4_END_ZH, C4_POLICY + C4_POLICY_ZH) if zh else (C4_END, C4_POLICY)
    for raw in text.splitlines():
        line = raw.strip()
        ws = doc_words(line, zh) if zh else line.split()
        if p.max_word_length != -1 and any(len(w) > p.max_word_length for w in ws):
            continue
        if p.remove_citations:
            line = _CITATION.sub("", line)
        if p.terminal_punct and (not line.endswith(ends) or line.endswith(("...", "…"))):
            continue
        if len(ws) < p.min_words_per_line:
            continue
        lower = line.lower()
        if p.lorem_ipsum and "lorem ipsum" in lower:
            out.reason = ("lorem_ipsum", {})
            return out
        if p.javascript and "javascript" in lower:
            continue
        if p.curly_bracket and "{" in line:
            out.reason = ("curly_bracket", {})
            return out
        if p.policy and any(phrase in lower for phrase in policy):
            continue
        out.sentences += max(len((_SENTENCE_END_ZH if zh else _SENTENCE_END).findall(line)), 1)
        out.kept.append(line)
    return out


@register("c4_quality")
class C4Quality(ChineseAware, Block):
    """C4's rules (Raffel et al. 2020): removes lines *and* drops documents.

    A general block rather than a Filter because removing lines changes documents (counted as
    ``changed``). Documents are dropped for ``lorem_ipsum``, ``curly_bracket``,
    ``too_few_sentences`` (after line removal) and ``no_lines_left``. Every text piece (text,
    message contents, prompt/chosen/rejected) is cleaned; sentences are summed over pieces.
    The bad-words list of C4 is not applied (it needs a download; see ``garbled.patterns``).
    """

    class Params(C4Params):
        zh: C4Params = Field(
            default_factory=lambda: C4Params(**C4_ZH),
            description="settings for Chinese documents (keys left out keep Chinese defaults)",
        )
        merge_zh = field_validator("zh", mode="before")(zh_defaults(C4_ZH))

    def settings(self, zh: bool) -> C4Params:
        return self.params.zh if zh else self.params

    def run(self, docs: Iterable[Document], ctx: ShardContext) -> Iterator[Document]:
        for doc in docs:
            zh = is_chinese(doc)
            verdicts: list[LineVerdict] = []

            def probe(piece: str, verdicts: list[LineVerdict] = verdicts, zh: bool = zh) -> str:
                verdicts.append(c4_clean(piece, zh, self.settings(zh)))
                return piece

            doc.map_text(probe)
            reason = next((v.reason for v in verdicts if v.reason), None)
            sentences = sum(v.sentences for v in verdicts)
            if reason is None and not any(v.kept for v in verdicts):
                reason = ("no_lines_left", {"lang": "zh" if zh else "en"})
            elif reason is None and sentences < (min_sentences := self.settings(zh).min_sentences):
                detail = {"sentences": sentences, "threshold": min_sentences}
                reason = ("too_few_sentences", {**detail, "lang": "zh" if zh else "en"})
            if reason is not None:
                ctx.drop(doc, *reason)
                continue
            cleaned = iter(["\n".join(v.kept).strip() for v in verdicts])
            if doc.map_text(lambda _piece, cleaned=cleaned: next(cleaned)):
                ctx.changed()
            yield doc


# importing this module registers the blocks that live beside it
from lmforge.data import garbled as _garbled  # noqa: E402, F401
