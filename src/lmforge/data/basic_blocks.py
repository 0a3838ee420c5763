"""Small general-purpose blocks: length limits and required fields."""

from __future__ import annotations

from pydantic import Field

from lmforge.config.base import Group
from lmforge.data.blocks import Filter, register
from lmforge.data.document import Document
from lmforge.text.segment import words


@register("length_filter")
class LengthFilter(Filter):
    """Drop documents outside a character or word range (words are jieba-segmented for CJK)."""

    class Params(Group):
        min_chars: int = Field(0, ge=0, description="drop documents with fewer characters")
        max_chars: int | None = Field(None, gt=0, description="drop documents with more")
        min_words: int = Field(0, ge=0, description="drop documents with fewer words")
        max_words: int | None = Field(None, gt=0, description="drop documents with more words")

    def check(self, doc: Document):
        p = self.params
        chars = len(doc.content)
        if chars < p.min_chars:
            return "too_short", {"chars": chars, "min_chars": p.min_chars}
        if p.max_chars is not None and chars > p.max_chars:
            return "too_long", {"chars": chars, "max_chars": p.max_chars}
        if p.min_words or p.max_words is not None:
            n = len(words(doc.content))
            if n < p.min_words:
                return "too_few_words", {"words": n, "min_words": p.min_words}
            if p.max_words is not None and n > p.max_words:
                return "too_many_words", {"words": n, "max_words": p.max_words}
        return None


@register("require_fields")
class RequireFields(Filter):
    """Drop documents missing a field or metadata key (e.g. ``label`` before a classifier)."""

    class Params(Group):
        fields: list[str] = Field(default_factory=list, description="keys that must be present")

    def check(self, doc: Document):
        missing = [f for f in self.params.fields if doc.get(f) in (None, "")]
        if missing:
            return "missing_field", {"missing": missing}
        return None
