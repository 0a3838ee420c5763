"""How the quality filters recognise and measure a Chinese document.

- :func:`is_chinese`: ``metadata["lang"]`` (set by ``langid``) when present, else the script;
- :func:`doc_words`: jieba words for Chinese, regex words otherwise (cached per text: several
  filters in a row ask for the same document's words);
- :func:`stop_words`: the shipped lists ``resources/stopwords_{en,zh}.txt``;
- :data:`ZH_TERMINAL`: Chinese sentence-final marks (and closing quotes) plus ASCII ``.!?``;
- :func:`zh_defaults`: lets ``zh: {min_words: 40}`` in a pipeline.yaml override one Chinese
  threshold and keep the other Chinese defaults.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from importlib.resources import files
from typing import Any

from lmforge.config.base import Group
from lmforge.data.document import Document
from lmforge.data.langid import normalise_code, script_language
from lmforge.errors import MissingDependency
from lmforge.text.segment import words

CHINESE_CODES = frozenset({"zh", "yue", "wuu", "gan", "lzh"})
ZH_TERMINAL = ("。", "！", "？", "…", "」", "』", "”", ".", "!", "?")


def is_chinese(doc: Document) -> bool:
    """Chinese by ``metadata["lang"]`` when set, else by the script of the content."""
    lang = doc.metadata.get("lang")
    if lang:
        return normalise_code(str(lang)) in CHINESE_CODES
    by_script = script_language(doc.content)
    return by_script is not None and by_script[0] == "zh"


@functools.lru_cache(maxsize=64)
def doc_words(text: str, zh: bool) -> tuple[str, ...]:
    """Words without punctuation (jieba for Chinese); cached because every filter asks."""
    return tuple(words(text, cjk=zh))


@functools.lru_cache(maxsize=4)
def stop_words(lang: str) -> frozenset[str]:
    """The shipped stop-word list ``resources/stopwords_<lang>.txt`` (``en`` or ``zh``)."""
    path = files("lmforge.data") / "resources" / f"stopwords_{lang}.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    return frozenset(w.strip() for w in lines if w.strip() and not w.startswith("#"))


class ChineseAware:
    """Mixin: checks at construction that jieba is there (the Chinese thresholds assume its
    words; character fallback words would drop every Chinese document as too short-worded)."""

    def __init__(self, params: Group | dict | None = None):
        super().__init__(params)
        if importlib.util.find_spec("jieba") is None:
            raise MissingDependency("jieba", "data", f"the {self.name} block (Chinese words)")


def zh_defaults(defaults: dict) -> Callable[[Any], Any]:
    """A before-validator: a partial ``zh: {...}`` override keeps the other Chinese defaults."""

    def merge(value: Any) -> Any:
        if isinstance(value, dict):
            return {**defaults, **value}
        return value

    return merge
