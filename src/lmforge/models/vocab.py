"""Growing a vocabulary: add tokens to a tokenizer and give the model sensible rows for them.

Two cases, one place:

- **Marker tokens** a chat template needs (``<|eot_id|>``): :func:`extend_vocabulary`. They have
  no meaningful pieces, so a new row starts at the mean of the existing rows (input embeddings,
  and the output head when it is not tied to them): the token's logit starts near the average and
  the model's next-token distribution barely moves (Hewitt, "Initializing new word embeddings for
  pretrained language models"). With LoRA the embeddings are frozen, so pass
  :func:`trainable_token_indices` to PEFT (``LoraConfig(trainable_token_indices=...)``) to train
  just those rows.
- **Domain terms** (``EBITDA``, ``市盈率``): :func:`add_terms`. Each term becomes a token of its
  own (a Hugging Face *added token*, matched in the text before the tokenizer's own splitting),
  and its row is the **mean of the rows of the sub-tokens the old tokenizer split it into**: the
  model starts out reading "EBITDA" roughly as it read E·B·IT·DA, instead of as noise. Rows of
  existing tokens are not touched, so on text without the terms the model's logits over the old
  vocabulary are exactly unchanged.

    ids = extend_vocabulary(model, tokenizer, ["<|eot_id|>"], special=True)
    report = add_terms(tokenizer, model, ["EBITDA", "市盈率", "资产负债表"])

Spaces. Tokenizers that keep the space inside the next token (byte-level BPE ``Ġword``,
SentencePiece ``▁word``) would otherwise read " EBITDA" as a lone space token plus the term, so a
term from a spaced script is also added with its leading space (" EBITDA", initialised from the
old pieces of " EBITDA"). Matching is literal: the spaced variant also matches the start of a
longer word (" EBITDAR" reads as " EBITDA" + "R"); the plain variant only matches a whole word.
Terms in CJK scripts, which have no spaces, match anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from lmforge.errors import ConfigError
from lmforge.text.segment import is_cjk_char


# ------------------------------------------------------------------ marker tokens
def add_tokens(tokenizer, tokens: Sequence[str], special: bool = False) -> list[str]:
    """Add the tokens ``tokenizer`` cannot write as one token; return those added, in order.

    A token counts as present when encoding its text gives exactly its own id (a string that is
    in the vocabulary but gets split by the pre-tokenizer is not usable as a marker).
    ``special``: never split, and dropped by ``decode(skip_special_tokens=True)``.
    """
    wanted = [t for t in dict.fromkeys(tokens) if not _is_single_token(tokenizer, t)]
    if wanted:
        tokenizer.add_tokens(wanted, special_tokens=special)
    broken = [t for t in wanted if not _is_single_token(tokenizer, t)]
    if broken:
        raise ConfigError(f"could not add {broken} to the tokenizer as single tokens")
    return wanted


def _is_single_token(tokenizer, token: str) -> bool:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        return False
    return tokenizer(token, add_special_tokens=False)["input_ids"] == [token_id]


def init_new_token_rows(
    model: torch.nn.Module, new_ids: Sequence[int], vocab_size: int, seed: int = 0
) -> None:
    """Make ``model`` have at least ``vocab_size`` embedding rows, with the rows of ``new_ids``
    at the mean of the other rows (input embeddings and an untied output head).

    ``vocab_size`` is ``len(tokenizer)`` after the tokens were added. ``seed`` seeds the tiny
    noise ``transformers`` adds to appended rows (the run stays reproducible).
    """
    emb = model.get_input_embeddings()
    rows = emb.weight.shape[0]
    if vocab_size > rows:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.resize_token_embeddings(vocab_size, mean_resizing=True)
    inside = sorted({int(i) for i in new_ids if int(i) < rows})  # rows that existed already
    if not inside:
        return
    matrices = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not matrices[0]:
        matrices.append(head.weight)
    with torch.no_grad():
        for weight in matrices:
            old = torch.ones(rows, dtype=torch.bool)
            old[inside] = False
            weight[inside] = weight[:rows][old].mean(dim=0).to(weight.dtype)


def extend_vocabulary(
    model: torch.nn.Module, tokenizer, tokens: Sequence[str], special: bool = False, seed: int = 0
) -> list[int]:
    """Add ``tokens`` to ``tokenizer`` and rows for them to ``model``; return the new ids."""
    added = add_tokens(tokenizer, tokens, special=special)
    ids = tokenizer.convert_tokens_to_ids(added)
    init_new_token_rows(model, ids, len(tokenizer), seed=seed)
    return ids


def trainable_token_indices(model: torch.nn.Module, ids: Sequence[int]) -> dict[str, list[int]]:
    """PEFT's ``trainable_token_indices`` for ``ids``: the input embedding, and the output head
    too when it is a separate matrix (a tied head shares the input rows and PEFT ties them)."""
    names = {id(m): n.rsplit(".", 1)[-1] for n, m in model.named_modules()}
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    out = {names[id(emb)]: sorted(int(i) for i in ids)}
    if head is not None and head.weight is not emb.weight and id(head) in names:
        out[names[id(head)]] = sorted(int(i) for i in ids)
    return out


# ------------------------------------------------------------------ domain terms
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
