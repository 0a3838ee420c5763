"""``augment_eda``: Easy Data Augmentation (Wei & Zou, EMNLP 2019) for English and Chinese.

    - augment_eda: {num_aug: 4, alpha_sr: 0.1, alpha_ri: 0.1, alpha_rs: 0.1, alpha_rd: 0.1}
    - augment_eda: {num_aug: 16, lexicons: [my_synonyms.tsv], splits: [train]}

Each copy applies one of the four operations, as in the paper's reference code, to a text of
``n`` words: synonym replacement (``max(1, alpha_sr * n)`` words), random insertion of a synonym
of a word (``max(1, alpha_ri * n)`` times), random swap of two words (``max(1, alpha_rs * n)``
times), random deletion (each word with probability ``alpha_rd``). The operations cycle over the
copies from a random start, so ``num_aug = 4`` gives one copy per operation.

Words are jieba words for Chinese text (``lmforge.text.segment.words(text, cjk=True)``) and
regex words otherwise; punctuation, spacing and newlines between words are kept, so a rewritten
paragraph still reads as a paragraph.

Synonyms come from plain TSV lexicons (one group of interchangeable words per line) written for
the project: ``resources/synonyms_en.tsv`` (~270 groups) and ``resources/synonyms_zh.tsv`` (~240
groups), plus the user's own files (``lexicons``). WordNet, the paper's source, is not available
offline. Only words found in a lexicon are replaced or inserted, so stop words, numbers and
names are never replaced; the groups hold no antonyms, so sentiment labels survive.

Which text is rewritten, ids and metadata of the copies: see :mod:`lmforge.data.augment`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator
from importlib.resources import files
from pathlib import Path

from pydantic import Field, model_validator

from lmforge.data.augment import AugmentParams, augmented_copy, should_augment, slot_texts
from lmforge.data.blocks import ShardContext, register
from lmforge.data.document import Document
from lmforge.data.model_filters import ModelBlock
from lmforge.errors import DataError
from lmforge.text.segment import is_cjk_text, words

BUILTIN_LEXICONS = ("synonyms_en.tsv", "synonyms_zh.tsv")
OPS = ("sr", "ri", "rs", "rd")  # synonym replacement, random insertion, swap, deletion


def read_lexicon(text: str, source: str) -> dict[str, set[str]]:
    """word -> its synonyms, from TSV text: one group per line, ``#`` starts a comment line.
    English keys are lowercased (lookups are case-insensitive)."""
    table: dict[str, set[str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        group = [w.strip().lower() for w in line.split("\t") if w.strip()]
        if len(group) < 2:
            raise DataError(
                f"{source}:{number}: a synonym group needs two or more tab-separated words"
            )
        for word in group:
            table.setdefault(word, set()).update(w for w in group if w != word)
    return table


def load_lexicons(paths: tuple[str, ...], builtin: bool = True) -> dict[str, tuple[str, ...]]:
    """The merged synonym table (sorted tuples: choices must not depend on set order)."""
    merged: dict[str, set[str]] = {}
    sources = [(files("lmforge.data") / "resources" / name, name) for name in BUILTIN_LEXICONS]
    texts = [(path.read_text(encoding="utf-8"), name) for path, name in sources] if builtin else []
    for path in paths:
        if not Path(path).is_file():
            raise DataError(f"augment_eda lexicon not found: {path} (check lexicons=)")
        texts.append((Path(path).read_text(encoding="utf-8"), path))
    for text, source in texts:
        for word, synonyms in read_lexicon(text, source).items():
            merged.setdefault(word, set()).update(synonyms)
    return {word: tuple(sorted(syns)) for word, syns in merged.items()}


# ---------------------------------------------------------------------------- the operations
class Words:
    """A text as ``gaps[0] words[0] gaps[1] words[1] ... words[n-1] gaps[n]``: the operations
    move words while every gap (spaces, punctuation, newlines) stays where it was."""

    def __init__(self, text: str, cjk: bool):
        self.cjk = cjk
        self.words = words(text, cjk=cjk)
        self.gaps, pos = [], 0
        for word in self.words:  # words come in text order: find each after the previous
            start = text.index(word, pos)
            self.gaps.append(text[pos:start])
            pos = start + len(word)
        self.gaps.append(text[pos:])

    def text(self) -> str:
        return "".join(g + w for g, w in zip(self.gaps, [*self.words, ""], strict=True))

    def insert(self, index: int, word: str) -> None:
        """Put ``word`` before ``words[index]`` (or at the end), separated by a space unless CJK."""
        self.words.insert(index, word)
        self.gaps.insert(
            index + 1 if index < len(self.words) - 1 else index, "" if self.cjk else " "
        )

    def delete(self, index: int) -> None:
        """Remove ``words[index]`` and merge the gaps around it (no double spaces, no space
        before punctuation, no leading separator)."""
        after = self.gaps[index + 1]
        if index == 0 and not self.cjk:  # the next word starts the text: no ", " before it
            after = after.lstrip(" ,;:")
        merged = self.gaps[index] + after
        if not self.cjk:
            merged = _SPACE_BEFORE_PUNCT.sub("", re.sub(" {2,}", " ", merged))
        del self.words[index]
        self.gaps[index : index + 2] = [merged]


_SPACE_BEFORE_PUNCT = re.compile(r" +(?=[,.;:!?])")


def _lookup(word: str, lexicon: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    return lexicon.get(word.lower(), ())


def _match_case(template: str, word: str) -> str:
    if len(template) > 1 and template.isupper():
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def synonym_replacement(w: Words, n: int, lexicon: dict, rng: random.Random) -> int:
    """Replace up to ``n`` distinct words that have synonyms; returns how many were replaced."""
    candidates = [i for i, word in enumerate(w.words) if _lookup(word, lexicon)]
    rng.shuffle(candidates)
    for i in candidates[:n]:
        w.words[i] = _match_case(w.words[i], rng.choice(_lookup(w.words[i], lexicon)))
    return min(n, len(candidates))


def random_insertion(w: Words, n: int, lexicon: dict, rng: random.Random) -> int:
    """Insert a synonym of a random word at a random position, ``n`` times."""
    having = [word for word in w.words if _lookup(word, lexicon)]
    if not having:
        return 0
    for _ in range(n):
        synonym = rng.choice(_lookup(rng.choice(having), lexicon))
        w.insert(rng.randrange(len(w.words) + 1), synonym)
    return n


def random_swap(w: Words, n: int, rng: random.Random) -> int:
    """Swap two different random words, ``n`` times (texts of fewer than two words: no-op)."""
    if len(w.words) < 2:
        return 0
    for _ in range(n):
        i, j = rng.sample(range(len(w.words)), 2)
        w.words[i], w.words[j] = w.words[j], w.words[i]
    return n


def random_deletion(w: Words, p: float, rng: random.Random) -> int:
    """Delete each word with probability ``p``, keeping at least one word."""
    if len(w.words) < 2:
        return 0
    doomed = [i for i in range(len(w.words)) if rng.random() < p]
    if len(doomed) == len(w.words):
        doomed.remove(rng.choice(doomed))
    for i in reversed(doomed):
        w.delete(i)
    return len(doomed)


# ---------------------------------------------------------------------------- the block
class EdaParams(AugmentParams):
    num_aug: int = Field(
        4, gt=0, description="copies per document (paper: 16 below 500 examples, 4 above 5000)"
    )
    alpha_sr: float = Field(0.1, ge=0, le=1, description="share of words replaced by synonyms")
    alpha_ri: float = Field(0.1, ge=0, le=1, description="synonyms inserted, as share of words")
    alpha_rs: float = Field(0.1, ge=0, le=1, description="word swaps, as share of words")
    alpha_rd: float = Field(0.1, ge=0, le=1, description="probability of deleting each word")
    lexicons: list[str] = Field(
        default_factory=list, description="extra synonym TSV files (one group per line, tabs)"
    )
    builtin_lexicons: bool = Field(
        True, description="use lmforge's English and Chinese synonym groups as well"
    )

    @model_validator(mode="after")
    def _some_op(self):
        if not any((self.alpha_sr, self.alpha_ri, self.alpha_rs, self.alpha_rd)):
            raise ValueError("every alpha is 0: enable at least one EDA operation")
        if not self.builtin_lexicons and not self.lexicons and (self.alpha_sr or self.alpha_ri):
            raise ValueError("synonym operations need a lexicon: set lexicons or builtin_lexicons")
        return self


@register("augment_eda")
class AugmentEda(ModelBlock):
    """Add up to ``num_aug`` EDA copies per document (``{id}#eda{k}``, ``metadata["augmented"]
    = {"method": "eda", "from": id, "ops": [{"op": "sr", "n": 2}]}``). A copy equal to the
    source or to an earlier copy is not added, so short texts may get fewer copies."""

    Params = EdaParams

    def setup(self) -> None:
        self._lexicon = load_lexicons(tuple(self.params.lexicons), self.params.builtin_lexicons)

    def operations(self) -> list[str]:
        p = self.params
        alphas = {"sr": p.alpha_sr, "ri": p.alpha_ri, "rs": p.alpha_rs, "rd": p.alpha_rd}
        return [op for op in OPS if alphas[op] > 0]

    def rewrite(self, text: str, op: str, rng: random.Random) -> tuple[str, int]:
        """(``text`` after one operation, number of words changed)."""
        if not hasattr(self, "_lexicon"):
            self.setup()
        p = self.params
        w = Words(text, cjk=is_cjk_text(text))
        n_words = len(w.words)
        if op == "sr":
            changed = synonym_replacement(w, max(1, int(p.alpha_sr * n_words)), self._lexicon, rng)
        elif op == "ri":
            changed = random_insertion(w, max(1, int(p.alpha_ri * n_words)), self._lexicon, rng)
        elif op == "rs":
            changed = random_swap(w, max(1, int(p.alpha_rs * n_words)), rng)
        else:
            changed = random_deletion(w, p.alpha_rd, rng)
        return (w.text(), changed) if changed else (text, 0)

    def run(self, docs: Iterable[Document], ctx: ShardContext) -> Iterator[Document]:
        ops = self.operations()
        for doc in docs:
            yield doc
            if should_augment(doc, self.params.splits):
                yield from self._copies(doc, ops, ctx)

    def _copies(self, doc: Document, ops: list[str], ctx: ShardContext) -> Iterator[Document]:
        texts = slot_texts(doc)
        if not texts:
            return
        seen = {tuple(texts)}
        start = ctx.rng(doc, "eda").randrange(len(ops))
        for k in range(self.params.num_aug):
            op = ops[(start + k) % len(ops)]
            rng = ctx.rng(doc, f"eda{k}")
            results = [self.rewrite(t, op, rng) for t in texts]
            new = [text for text, _ in results]
            if tuple(new) in seen:
                continue
            seen.add(tuple(new))
            info = {"method": "eda", "ops": [{"op": op, "n": sum(n for _, n in results)}]}
            yield augmented_copy(doc, new, f"eda{k}", info)
