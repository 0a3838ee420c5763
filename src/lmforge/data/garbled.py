"""The ``garbled`` filter: broken encodings, symbol soup and boilerplate pages.

Rules, in order (each threshold None switches it off):

- ``replacement_char``: U+FFFD (what a decoder writes for bytes it could not read) per character;
- ``mojibake``: characters in UTF-8 text mis-decoded as cp1252/latin-1 (``Ã©``) or as GBK
  (``鏂伴椈``), per character (:func:`lmforge.data.normalize.mojibake_chars`; run ``normalize``
  first to repair the latin-1 kind, which it can do safely);
- ``symbols``: characters of Unicode categories Co (private use), Cn (unassigned), Cc/Cf
  (controls other than newline/tab), Cs (lone surrogates) and So/Sk/Sm (symbols), per
  character: what icon fonts, broken PDFs and binary junk leave behind. Emoji are So, so
  chat data full of emoji may need a higher limit;
- ``boilerplate``: non-blank lines matching one of the patterns of
  ``resources/boilerplate.txt`` (cookie notices, "all rights reserved", "click here",
  版权所有, 点击这里, 免责声明 ...) or of ``patterns``, per non-blank line. A long article with
  one footer line is kept; a page that is mostly footer, menu or consent banner is not.

Defaults were checked on ``tests/data/quality_samples`` (benchmarks/quality_zh_thresholds.py):
good documents in both languages score 0 on the first three and at most 1 boilerplate line
(``letter-thanks``: 0 of 6).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from importlib.resources import files

from pydantic import Field, field_validator

from lmforge.config.base import Group
from lmforge.data.blocks import Filter, register
from lmforge.data.document import Document
from lmforge.data.normalize import mojibake_chars

_ODD_CATEGORIES = frozenset({"Co", "Cn", "Cc", "Cf", "Cs", "So", "Sk", "Sm"})


@functools.lru_cache(maxsize=1)
def default_patterns() -> tuple[str, ...]:
    """The shipped boilerplate regexes (``resources/boilerplate.txt``)."""
    text = (files("lmforge.data") / "resources" / "boilerplate.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line.strip() and not line.startswith("#"))


@functools.lru_cache(maxsize=16)
def _compile(patterns: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE | re.MULTILINE)


def symbol_chars(text: str) -> int:
    """Characters in the odd categories above (newline and tab excluded)."""
    return sum(1 for ch in text if ch not in "\n\t" and unicodedata.category(ch) in _ODD_CATEGORIES)


def garbled_measure(text: str, boilerplate: re.Pattern) -> dict[str, float]:
    size = max(len(text), 1)
    lines = [line for line in text.split("\n") if line.strip()]
    return {
        "replacement_ratio": text.count("\ufffd") / size,
        "mojibake_ratio": mojibake_chars(text) / size,
        "symbol_ratio": symbol_chars(text) / size,
        "boilerplate_line_ratio": sum(1 for line in lines if boilerplate.search(line))
        / max(len(lines), 1),
    }


@register("garbled")
class Garbled(Filter):
    """Drop broken encodings, symbol soup and boilerplate-only pages (rules in module doc)."""

    class Params(Group):
        max_replacement_ratio: float | None = Field(
            0.01, description="most U+FFFD characters per character"
        )
        max_mojibake_ratio: float | None = Field(
            0.05, description="most characters in mis-decoded UTF-8 runs per character"
        )
        max_symbol_ratio: float | None = Field(
            0.1, description="most private-use/unassigned/control/symbol characters per character"
        )
        max_boilerplate_line_ratio: float | None = Field(
            0.3, description="most non-blank lines matching a boilerplate pattern"
        )
        patterns: list[str] = Field(
            default_factory=list, description="extra boilerplate regexes (case-insensitive)"
        )
        default_patterns: bool = Field(
            True, description="use the shipped patterns of resources/boilerplate.txt"
        )

        @field_validator("patterns")
        @classmethod
        def _valid_regexes(cls, value: list[str]) -> list[str]:
            for pattern in value:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"pattern {pattern!r} is not a valid regex: {exc}") from exc
            return value

    def boilerplate(self) -> re.Pattern:
        shipped = default_patterns() if self.params.default_patterns else ()
        patterns = (*shipped, *self.params.patterns)
        return _compile(patterns) if patterns else re.compile(r"(?!)")

    def check(self, doc: Document) -> tuple[str, dict] | None:
        p = self.params
        m = garbled_measure(doc.content, self.boilerplate())
        rules = (
            ("replacement_char", "replacement_ratio", p.max_replacement_ratio),
            ("mojibake", "mojibake_ratio", p.max_mojibake_ratio),
            ("symbols", "symbol_ratio", p.max_symbol_ratio),
            ("boilerplate", "boilerplate_line_ratio", p.max_boilerplate_line_ratio),
        )
        for reason, metric, threshold in rules:
            if threshold is not None and m[metric] > threshold:
                return reason, {metric: round(m[metric], 4), "threshold": threshold}
        return None
