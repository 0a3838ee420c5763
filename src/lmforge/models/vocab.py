"""Add domain terms to a tokenizer and give the model sensible rows for them.

    report = add_terms(tokenizer, model, ["EBITDA", "市盈率", "资产负债表"])

Each term becomes a token of its own (a Hugging Face *added token*, matched in the text before
the tokenizer's own splitting), the embedding matrix grows to the new vocabulary, and each new
row is the **mean of the rows of the sub-tokens the old tokenizer split the term into** (also in
the output head when it is not tied to the embedding): the model starts out reading "EBITDA"
roughly as it read E·B·IT·DA, instead of as noise. Rows of existing tokens are not touched, so
on text without the terms the model's logits over the old vocabulary are exactly unchanged.

Spaces. Tokenizers that keep the space inside the next token (byte-level BPE ``Ġword``,
SentencePiece ``▁word``) would otherwise read " EBITDA" as a lone space token plus the term, so a
term from a spaced script is also added with its leading space (" EBITDA", initialised from the
old pieces of " EBITDA"). Matching is literal: the spaced variant also matches the start of a
longer word (" EBITDAR" reads as " EBITDA" + "R"); the plain variant only matches a whole word.
Terms in CJK scripts, which have no spaces, match anywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from lmforge.text.segment import is_cjk_char

_PROBE = "a"  # a word before the term, to see whether a space before it costs a token


@dataclass
class TermReport:
    """One token added (or not) for a term: ``token`` is the text it matches."""

    term: str
    token: str
    status: str  # added | already one token | already one token after a space
    id: int | None = None
    before: list[str] = field(default_factory=list)  # the old tokenizer's pieces of ``token``
    before_ids: list[int] = field(default_factory=list)  # rows averaged into the new row


@dataclass
class VocabReport:
    init: str  # mean | random
    old_size: int  # len(tokenizer) before
    new_size: int
    embedding_rows: tuple[int, int]  # (before, after)
    tied_head: bool  # the output head shares the embedding matrix
    tokens: list[TermReport] = field(default_factory=list)

    @property
    def added(self) -> list[TermReport]:
        return [t for t in self.tokens if t.status == "added"]

    def to_dict(self) -> dict:
        return {**asdict(self), "added": len(self.added)}


def _spaced(term: str) -> bool:
    """A term of a script written with spaces between words (matched as whole words)."""
    return not (is_cjk_char(term[0]) or is_cjk_char(term[-1]))


def _word_edges(term: str) -> bool:
    return term[0].isalnum() and term[-1].isalnum()


def clean_terms(terms: list[str]) -> list[str]:
    """Strip, drop empty lines and ``#`` comments, keep the first of each duplicate."""
    out = []
    for term in terms:
        term = term.strip()
        if term and not term.startswith("#") and term not in out:
            out.append(term)
    return out


def add_terms(
    tokenizer, model: torch.nn.Module | None, terms: list[str], init: str = "mean", seed: int = 0
) -> VocabReport:
    """Add ``terms`` to ``tokenizer`` in place and resize/initialise ``model`` (None: tokenizer
    only). ``init``: ``mean`` (rows of the old sub-tokens averaged) or ``random`` (normal with
    the model's ``initializer_range``, seeded: the baseline mean-init is measured against).

    Returns which token was added for each term, how the old tokenizer split it, and which rows
    were averaged. A term the tokenizer already reads as one token is left alone; so is a term
    of a spaced script whose spaced form (" term", the usual one mid-sentence) is one token.
    """
    from tokenizers import AddedToken

    terms = clean_terms(terms)
    old_size = len(tokenizer)
    with_space = marks_spaces(tokenizer)

    def report(term: str, token: str) -> TermReport:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]  # the old tokenizer's
        status = "already one token" if len(ids) == 1 else "added"
        pieces = tokenizer.convert_ids_to_tokens(ids)
        return TermReport(term, token, status, ids[0] if len(ids) == 1 else None, pieces, ids)

    plan: list[TermReport] = []
    for term in terms:
        if not (with_space and _spaced(term)):
            plan.append(report(term, term))
            continue
        spaced = report(term, " " + term)
        plain = report(term, term)
        if spaced.status != "added" and plain.status == "added":
            # adding "term" would split " term" into a space token and the term: worse
            plain.status = "already one token after a space"
        plan += [plain, spaced]
    new = [t for t in plan if t.status == "added"]
    tokenizer.add_tokens([_added_token(AddedToken, t) for t in new])
    for t in new:
        t.id = tokenizer.convert_tokens_to_ids(t.token)

    rows_before = rows_after = 0
    tied = False
    if model is not None:
        rows_before, rows_after, tied = _init_rows(model, len(tokenizer), new, init, seed)
    return VocabReport(
        init=init,
        old_size=old_size,
        new_size=len(tokenizer),
        embedding_rows=(rows_before, rows_after),
        tied_head=tied,
        tokens=plan,
    )


def _added_token(cls, t: TermReport):
    """The plain form of a spaced-script term matches whole words only; its spaced form and
    CJK terms match wherever they occur."""
    whole_word = t.token == t.term and _spaced(t.term) and _word_edges(t.term)
    return cls(t.token, single_word=whole_word)


def marks_spaces(tokenizer) -> bool:
    """Whether the tokenizer keeps a space inside the following token (byte-level BPE ``Ġ``,
    SentencePiece ``▁``), tried on a copy: then an added word costs a lone space token after a
    space unless it is also added with its leading space."""
    import copy

    probe = copy.deepcopy(tokenizer)
    probe.add_tokens(["lmforgeprobeword"])  # only this copy sees it

    def n(text: str) -> int:
        return len(probe(text, add_special_tokens=False)["input_ids"])

    return n(f"{_PROBE} lmforgeprobeword") > n(_PROBE) + 1


@torch.no_grad()
def _init_rows(model, vocab: int, new: list[TermReport], init: str, seed: int):
    """Grow the embedding (and head) to ``vocab`` rows when smaller, then write the rows of the
    ``new`` tokens (also when they existed: a checkpoint's vocabulary may be padded)."""
    embed = model.get_input_embeddings()
    before = embed.weight.shape[0]
    if vocab > before:
        # our own init below replaces transformers' (mean of all rows plus noise)
        model.resize_token_embeddings(vocab, mean_resizing=False)
        embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is None or head.weight is embed.weight
    std = float(getattr(model.config, "initializer_range", 0.02))
    gen = torch.Generator().manual_seed(seed)
    for t in new:
        matrices = [embed.weight] + ([] if tied else [head.weight])
        for weight in matrices:
            if init == "mean":
                weight[t.id] = weight[t.before_ids].mean(dim=0)
            else:
                noise = torch.randn(weight.shape[1], generator=gen) * std
                weight[t.id] = noise.to(weight.dtype)
        bias = None if tied else getattr(head, "bias", None)
        if bias is not None:
            bias[t.id] = bias[t.before_ids].mean() if init == "mean" else 0.0
    return before, model.get_input_embeddings().weight.shape[0], tied
