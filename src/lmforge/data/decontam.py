"""``decontaminate``: flag or drop training documents that share n-grams with evaluation sets.

The GPT-3 / Llama recipe: a training document is contaminated when it shares at least one
n-gram (by default) with any evaluation example. Before n-gramming, text is lowercased and
punctuation and spaces are stripped, so formatting differences do not hide an overlap:

- spaced languages: word n-grams of ``ngram`` words (13, as in GPT-3), words from
  :func:`lmforge.text.segment.words` (the regex word pattern: punctuation dropped);
- CJK text (:func:`is_cjk_text`): character n-grams of ``char_ngram`` characters over the
  letters and digits only. Characters need no segmenter, and a segmenter can cut the same
  sentence differently in two contexts. 20 characters: jieba cuts Chinese into about 1.5
  characters per word (measured on the Chinese synthetic tables, see the report), so 20
  characters cover about as much text as 13 words.

An evaluation text shorter than n (but at least ``min_eval_len``) is indexed whole as one gram,
and training documents are then also checked with grams of that length. Evaluation examples are
read with :func:`lmforge.data.readers.iter_records` (any input format); each piece (question,
answer, ...) is indexed on its own, and system messages are left out, since evaluation sets share
boilerplate system prompts with training data.

The index (a dict from 64-bit xxh3 hash of the gram to the eval file it came from) is built in
``setup()``, once per worker; hash collisions are possible but rare (2^-64 per pair).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Literal

import xxhash
from pydantic import Field

from lmforge.config.base import Group
from lmforge.data.blocks import Block, ShardContext, register
from lmforge.data.document import TEXT_FIELDS, Document, _strings
from lmforge.data.readers import Rejects, check_files, iter_records
from lmforge.data.schema import RowError
from lmforge.errors import DataError
from lmforge.text.segment import is_cjk_text, words

log = logging.getLogger(__name__)

_NOT_ALNUM = re.compile(r"[\W_]+")
_SEP = "\x1f"


def normalize(text: str) -> str:
    """NFKC + lowercase: full-width letters and case do not hide an overlap."""
    return unicodedata.normalize("NFKC", text).lower()


def text_grams(text: str, ngram: int, char_ngram: int) -> tuple[str, list[str]]:
    """``(scheme, tokens)``: ``("c", characters)`` for CJK text, ``("w", words)`` otherwise.

    Tokens are lowercased, without punctuation or spaces; n-grams are built over them.
    """
    text = normalize(text)
    if is_cjk_text(text):
        return "c", list(_NOT_ALNUM.sub("", text))
    return "w", words(text, cjk=False)


def gram_hash(scheme: str, tokens: list[str]) -> int:
    """64-bit hash of one gram; the scheme is part of the key so word and char grams differ."""
    return xxhash.xxh3_64_intdigest(scheme + _SEP + _SEP.join(tokens))


def iter_gram_hashes(scheme: str, tokens: list[str], n: int) -> Iterator[tuple[int, int]]:
    """``(hash, start)`` of every ``n``-token window (none when the text is shorter than n)."""
    for start in range(len(tokens) - n + 1):
        yield gram_hash(scheme, tokens[start : start + n]), start


def eval_texts(doc: Document) -> list[str]:
    """The pieces of an eval example indexed separately (text, each non-system message,
    prompt / chosen / rejected): a training document holding only the question is caught even
    without the answer. System messages are boilerplate shared with training data."""
    parts = [doc.text] if doc.text is not None else []
    parts += [
        m["content"]
        for m in doc.messages or ()
        if isinstance(m.get("content"), str) and m.get("role") != "system"
    ]
    for key in TEXT_FIELDS:
        parts.extend(_strings(doc.fields.get(key)))
    return parts


@register("decontaminate")
class Decontaminate(Block):
    """Flag (``action: report``) or drop documents sharing n-grams with evaluation sets."""

    class Params(Group):
        eval_files: list[str] = Field(
            ..., min_length=1, description="evaluation sets to protect (any readable format)"
        )
        ngram: int = Field(13, ge=1, description="words per n-gram for spaced text (GPT-3: 13)")
        char_ngram: int = Field(
            20, ge=1, description="characters per n-gram for CJK text (~13 words of Chinese)"
        )
        min_overlap: float = Field(
            1,
            gt=0,
            description="flag at this many matching n-grams (>= 1), or this fraction of the "
            "document's n-grams (< 1)",
        )
        min_eval_len: int = Field(
            8,
            ge=1,
            description="skip eval texts shorter than this many words (characters for CJK): "
            "a 3-word answer would match nearly every document",
        )
        action: Literal["report", "drop"] = Field(
            "report",
            description="report: set metadata.contamination; drop: drop as 'contaminated'",
        )

    def __init__(self, params=None):
        super().__init__(params)
        check_files(self.params.eval_files, role="eval file")
        self._index: dict[int, int] | None = None
        self._short: dict[str, set[int]] = {"w": set(), "c": set()}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_index"] = None  # rebuilt by setup() in each worker
        state["_short"] = {"w": set(), "c": set()}
        return state

    # ------------------------------------------------------------------ index
    def setup(self) -> None:
        if self._index is not None:
            return
        index: dict[int, int] = {}
        rejects = Rejects()
        used = skipped = 0
        for file_no, path in enumerate(self.params.eval_files):
            for record in iter_records([path], rejects):
                try:
                    doc = Document.from_row(record.row, default_id=record.where)
                except RowError as exc:
                    rejects.add_record(record, str(exc))
                    continue
                for text in eval_texts(doc):
                    if self._index_text(text, file_no, index):
                        used += 1
                    else:
                        skipped += 1
        if rejects:
            log.warning(
                "decontaminate: %d unusable eval rows %s", len(rejects), rejects.by_reason()
            )
        if not index:
            raise DataError(
                f"decontaminate: no usable evaluation text in {self.params.eval_files} "
                f"({skipped} texts shorter than min_eval_len={self.params.min_eval_len})"
            )
        log.info(
            "decontaminate: %d eval texts, %d n-grams (%d too short)", used, len(index), skipped
        )
        self._index = index

    def _index_text(self, text: str, file_no: int, index: dict[int, int]) -> bool:
        scheme, tokens = text_grams(text, self.params.ngram, self.params.char_ngram)
        n = self.params.ngram if scheme == "w" else self.params.char_ngram
        if len(tokens) < self.params.min_eval_len:
            return False
        if len(tokens) < n:  # shorter than one gram: the whole text is the gram
            self._short[scheme].add(len(tokens))
            index.setdefault(gram_hash(scheme, tokens), file_no)
            return True
        for h, _ in iter_gram_hashes(scheme, tokens, n):
            index.setdefault(h, file_no)
        return True

    # ------------------------------------------------------------------ check
    def find(self, text: str) -> dict | None:
        """The contamination record for ``text`` (eval file, matches, example) or None."""
        if self._index is None:
            self.setup()
        index = self._index
        scheme, tokens = text_grams(text, self.params.ngram, self.params.char_ngram)
        n = self.params.ngram if scheme == "w" else self.params.char_ngram
        lengths = sorted({n, *self._short[scheme]}, reverse=True)
        matched: dict[int, tuple[int, int, int]] = {}  # hash -> (eval file, start, length)
        total = 0
        for length in lengths:
            for h, start in iter_gram_hashes(scheme, tokens, length):
                total += 1
                if h in index and h not in matched:
                    matched[h] = (index[h], start, length)
        if not matched or not self._enough(len(matched), total):
            return None
        file_no, start, length = next(iter(matched.values()))
        joiner = "" if scheme == "c" else " "
        return {
            "eval_file": self.params.eval_files[file_no],
            "matches": len(matched),
            "example": joiner.join(tokens[start : start + length]),
        }

    def _enough(self, matches: int, total: int) -> bool:
        threshold = self.params.min_overlap
        if threshold >= 1:
            return matches >= threshold
        return total > 0 and matches / total >= threshold

    def run(self, docs: Iterable[Document], ctx: ShardContext) -> Iterator[Document]:
        for doc in docs:
            found = self.find(doc.content)
            if found is None:
                yield doc
            elif self.params.action == "drop":
                ctx.drop(doc, "contaminated", found)
            else:
                doc.metadata["contamination"] = found
                ctx.changed()
                yield doc
