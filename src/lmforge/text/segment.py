"""CJK-aware word segmentation and n-grams.

Chinese, Japanese and Korean text has no spaces between words, so English habits (``split()``,
word n-grams) see one "word" per sentence. Here Chinese text is segmented with jieba when it is
installed (``pip install 'lmforge[data]'``) and falls back to single characters otherwise;
spaced languages use a Unicode-aware regex. Dedup and decontamination on CJK use character
n-grams (:func:`char_ngrams`), which need no segmenter at all.
"""

from __future__ import annotations

import functools
import re

# CJK Unified Ideographs (+ Extension A, compatibility), Hiragana, Katakana, Hangul syllables
_CJK_RANGES = (
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0x3040, 0x30FF),
    (0xAC00, 0xD7AF),
    (0x20000, 0x2A6DF),
)
CJK_CLASS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_CJK_RE = re.compile(f"[{CJK_CLASS}]")
# a "word" in spaced text: letters/digits with inner apostrophes or hyphens
_WORD_RE = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")
# words of spaced scripts, or single CJK characters (the fallback segmentation)
_MIXED_RE = re.compile(f"[{CJK_CLASS}]|[^\\W_{CJK_CLASS}]+(?:['’\\-][^\\W_{CJK_CLASS}]+)*")


def is_cjk_char(ch: str) -> bool:
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def cjk_ratio(text: str) -> float:
    """Share of non-space characters that are CJK (0 for empty text)."""
    visible = sum(1 for ch in text if not ch.isspace())
    if not visible:
        return 0.0
    return len(_CJK_RE.findall(text)) / visible


def is_cjk_text(text: str, threshold: float = 0.3) -> bool:
    """True when CJK characters make up at least ``threshold`` of the visible characters."""
    return cjk_ratio(text) >= threshold


@functools.lru_cache(maxsize=1)
def _jieba():
    try:
        import jieba
    except ImportError:
        return None
    jieba.setLogLevel(60)  # silence the "Building prefix dict" banner
    return jieba


def words(text: str, cjk: bool | None = None) -> list[str]:
    """Words of ``text`` without punctuation or spaces.

    ``cjk``: segment as Chinese (jieba, or characters without it); None decides from the text.
    Mixed text keeps its Latin words whole either way.
    """
    if cjk is None:
        cjk = bool(_CJK_RE.search(text))
    if not cjk:
        return _WORD_RE.findall(text)
    jieba = _jieba()
    if jieba is None:
        return _MIXED_RE.findall(text)
    return [w for w in jieba.lcut(text) if _MIXED_RE.match(w)]


def has_segmenter() -> bool:
    return _jieba() is not None


def word_ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    """Consecutive ``n``-word tuples; a text shorter than ``n`` gives one shorter tuple."""
    if len(tokens) < n:
        return [tuple(tokens)] if tokens else []
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def char_ngrams(text: str, n: int, strip_space: bool = True) -> list[str]:
    """Consecutive ``n``-character strings (spaces removed first by default)."""
    if strip_space:
        text = "".join(text.split())
    if len(text) < n:
        return [text] if text else []
    return [text[i : i + n] for i in range(len(text) - n + 1)]


def approx_tokens(text: str) -> int:
    """A tokenizer-free token count: whitespace-separated words plus one per CJK character.

    Used for token budgets and length buckets before any tokenizer is chosen; BPE tokenizers
    give roughly 1.3 tokens per English word and 1-1.5 per Chinese character, so this count is
    a lower bound of the same order, not a substitute for the real one.
    """
    cjk = len(_CJK_RE.findall(text))
    return cjk + len(_CJK_RE.sub(" ", text).split())
