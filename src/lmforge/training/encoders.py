"""Encoders for the stages beyond causal pretraining and SFT: rows -> pieces (see ``collate``).

Every encoder has the signature of ``data.pt_pieces``: it reads records, updates
``counts`` (read / used / rejected / truncated), sends unusable rows to ``rejects`` with the
reason, and yields ``(piece, ends_unit)``. They run through the same tokenised-data cache.

- :func:`masked_lm_pieces`: documents with the tokenizer's own special tokens (``[CLS] … [SEP]``
  for BERT), cut into blocks of ``max_length`` like pretraining; no targets yet (masked LM
  draws them per step, see ``objectives.masked``).
- :func:`contrastive_pieces`: ``[anchor, positive(, negative)]`` units.
- :func:`sequence_label_pieces`: one piece per example with its class as the target of the
  pooled position (first token for encoders, last for decoders; see ``objectives.heads``).
- :func:`token_label_pieces`: words and one tag per word; the first sub-token of each word
  learns the tag, the other sub-tokens and the special tokens learn nothing (the usual rule).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from lmforge.data.readers import Record, Rejects
from lmforge.data.schema import RowError, to_text
from lmforge.training.collate import IGNORE, Piece

Pieces = Iterator[tuple[Piece, bool]]
_BATCH = 256  # rows per tokenizer call


def cut_blocks(docs: Iterable[list[int]], max_length: int, targets_of=None) -> Pieces:
    """Token lists concatenated in order and cut into blocks of ``max_length`` tokens; a
    document cut by a block boundary continues in the next block as a new piece. ``targets_of``
    maps a document's ids to its targets (default: nothing learned)."""
    room = max_length
    for ids in docs:
        targets = targets_of(ids) if targets_of else [IGNORE] * len(ids)
        start = 0
        while start < len(ids):
            take = min(room, len(ids) - start)
            room -= take
            yield Piece(ids[start : start + take], targets[start : start + take]), room == 0
            start += take
            if room == 0:
                room = max_length


def accepted(
    records: Iterable[Record], rejects: Rejects, counts: dict, parse: Callable[[Any], Any]
) -> Iterator[Any]:
    """``parse(row)`` of every record, counted as read; a row it raises ``RowError`` for goes to
    ``rejects`` with the reason (counted as rejected) instead."""
    for record in records:
        counts["read"] += 1
        try:
            yield parse(record.row)
        except RowError as exc:
            rejects.add_record(record, str(exc))
            counts["rejected"] += 1


def masked_lm_pieces(
    records: Iterable[Record], cfg, tokenizer, rejects: Rejects, counts: dict
) -> Pieces:
    def docs() -> Iterator[list[int]]:
        rows = iter(records)
        while batch := list(islice(rows, _BATCH)):
            texts = list(accepted(batch, rejects, counts, lambda r: to_text(r, cfg.text_field)))
            if texts:
                for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]:
                    counts["used"] += 1
                    yield ids

    yield from cut_blocks(docs(), cfg.max_length)


def _encode_one(tokenizer, text: str, max_length: int) -> tuple[list[int], bool]:
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    return ids[:max_length], len(ids) > max_length


@dataclass
class PairFields:
    positive: str = "positive"
    negative: str = "negative"


def contrastive_pieces(
    records: Iterable[Record],
    cfg,
    tokenizer,
    rejects: Rejects,
    counts: dict,
    fields: PairFields | None = None,
) -> Pieces:
    """A unit per row: the anchor (``cfg.text_field``), its positive (the ``positive`` field;
    absent: the anchor itself, unsupervised SimCSE) and an optional hard ``negative``."""
    fields = fields or PairFields()

    def texts_of(row) -> list[str]:
        anchor = to_text(row, cfg.text_field)
        extra = row if isinstance(row, dict) else {}
        negative = _optional_text(extra, fields.negative)
        positive = _optional_text(extra, fields.positive) or anchor
        return [anchor, positive] + ([negative] if negative is not None else [])

    for texts in accepted(records, rejects, counts, texts_of):
        encoded = [_encode_one(tokenizer, t, cfg.max_length) for t in texts]
        counts["used"] += 1
        counts["truncated"] += int(any(cut for _, cut in encoded))
        for k, (ids, _) in enumerate(encoded):
            yield Piece(ids, [IGNORE] * len(ids)), k == len(encoded) - 1


def _optional_text(row: dict, key: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"field '{key}' must be a non-empty string")
    return value


# --------------------------------------------------------------------------- classification
def label_name(value: Any) -> str:
    """Labels are compared as strings: ``1``, ``"1"`` and ``1.0`` are different only if they
    print differently; booleans print as ``true``/``false``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise RowError(f"label {value!r:.40} is a {type(value).__name__}, expected a string or number")


def sorted_labels(names: Iterable[str]) -> list[str]:
    """Numeric labels in numeric order, then the rest alphabetically."""

    def key(name: str):
        try:
            return (0, float(name), "")
        except ValueError:
            return (1, 0.0, name)

    return sorted(set(names), key=key)


@dataclass
class LabelFields:
    task: str = "sequence"  # sequence | token
    label: str = "label"
    tokens: str = "tokens"
    tags: str = "tags"
    names: list[str] = field(default_factory=list)  # index = class id
    pool: str = "first"  # sequence: the position that carries the label (first | last)

    def __post_init__(self) -> None:
        self._index = {n: i for i, n in enumerate(self.names)}

    def index(self, value: Any) -> int:
        """The class id of a label value; a label outside ``names`` is a RowError."""
        name = label_name(value)
        if name not in self._index:
            shown = ", ".join(self.names[:8]) + ("..." if len(self.names) > 8 else "")
            raise RowError(
                f"label {name!r} is not one of the {len(self.names)} training labels ({shown})"
            )
        return self._index[name]


def row_labels(row: Any, fields: LabelFields) -> list[str]:
    """The label names one row holds (one for sequence tasks, one per word for token tasks)."""
    if not isinstance(row, dict):
        raise RowError(f"row is a {type(row).__name__}, expected a JSON object")
    if fields.task == "token":
        tags = row.get(fields.tags)
        if not isinstance(tags, list):
            raise RowError(f"field '{fields.tags}' must be a list of tags")
        return [label_name(t) for t in tags]
    if fields.label not in row:
        raise RowError(f"missing field '{fields.label}'")
    return [label_name(row[fields.label])]


def sequence_label_pieces(
    records: Iterable[Record], cfg, tokenizer, rejects: Rejects, counts: dict, fields: LabelFields
) -> Pieces:
    def text_and_label(row) -> tuple[str, int]:
        return to_text(row, cfg.text_field), fields.index(row_labels(row, fields)[0])

    for text, label in accepted(records, rejects, counts, text_and_label):
        ids, cut = _encode_one(tokenizer, text, cfg.max_length)
        targets = [IGNORE] * len(ids)
        targets[0 if fields.pool == "first" else len(ids) - 1] = label
        counts["used"] += 1
        counts["truncated"] += int(cut)
        yield Piece(ids, targets), True


def token_label_pieces(
    records: Iterable[Record], cfg, tokenizer, rejects: Rejects, counts: dict, fields: LabelFields
) -> Pieces:
    for words, tags in accepted(records, rejects, counts, lambda r: _words_and_tags(r, fields)):
        encoding = tokenizer(words, is_split_into_words=True, add_special_tokens=True)
        ids = encoding["input_ids"]
        targets, previous = [], None
        for word in encoding.word_ids():
            first = word is not None and word != previous
            targets.append(tags[word] if first else IGNORE)
            previous = word
        cut = len(ids) > cfg.max_length
        counts["used"] += 1
        counts["truncated"] += int(cut)
        yield Piece(ids[: cfg.max_length], targets[: cfg.max_length]), True


def _words_and_tags(row: Any, fields: LabelFields) -> tuple[list[str], list[int]]:
    names = row_labels(row, fields)
    words = row.get(fields.tokens)
    if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
        raise RowError(f"field '{fields.tokens}' must be a non-empty list of strings")
    if len(words) != len(names):
        raise RowError(f"{len(words)} tokens but {len(names)} tags")
    return words, [fields.index(n) for n in names]


# ------------------------------------------------------------------------------ preference pairs
@dataclass
class PairSettings:
    reward: bool = False  # stage rm: one target, at the pooled position, instead of the answer
    pool: str = "last"  # where a reward model reads a sequence (see objectives.heads)
    margin_field: str | None = None  # rm: the row key holding how much better chosen is


def preference_pieces(
    records: Iterable[Record], cfg, tokenizer, rejects: Rejects, counts: dict, pair: PairSettings
) -> Pieces:
    """One ``[chosen, rejected]`` unit per preference row (``data.preference``): each piece is
    the prompt rendered with the chat template followed by one answer, encoded as SFT encodes
    it (``sft.encode_messages_full``), so the targets are the answer's tokens through its EOS.
    Earlier assistant turns of the prompt are context, not learned.

    For a reward model the only target of a piece is its pooled position (value 1 for the
    chosen answer, 0 for the rejected one: the class the pair accuracy checks), and both pieces
    carry the row's margin as their ``weight``. A row whose answer does not fit in
    ``max_length`` after its prompt is rejected (there would be nothing to compare)."""
    from lmforge.data.preference import to_preference
    from lmforge.training.multitask import finish_conversation

    def parse(row):
        pref = to_preference(row, pair.margin_field)
        finish_conversation(pref.prompt, row, cfg)
        encoded = [
            _answer_piece(tokenizer, pref.prompt, getattr(pref, key), pref.tools, cfg, key)
            for key in ("chosen", "rejected")
        ]
        return pref.margin, encoded

    for margin, encoded in accepted(records, rejects, counts, parse):
        counts["used"] += 1
        counts["truncated"] += int(any(cut for _, cut in encoded))
        for i, (piece, _) in enumerate(encoded):
            if pair.reward:
                targets = [IGNORE] * len(piece)
                targets[0 if pair.pool == "first" else len(piece) - 1] = 1 - i
                piece = Piece(piece.ids, targets, margin if pair.margin_field else 1.0)
            yield piece, i == 1


def _answer_piece(tokenizer, prompt, answer, tools, cfg, what: str) -> tuple[Piece, bool]:
    """(the prompt and ``answer`` as one piece learning the answer, truncated); earlier
    assistant turns of the prompt are context, not learned."""
    from lmforge.training.sft import encode_messages_full

    context = [{**m, "loss": False} if m["role"] == "assistant" else m for m in prompt]
    ids, labels, cut = encode_messages_full(tokenizer, [*context, answer], cfg.max_length, tools)
    piece = Piece.from_labels(ids, labels)
    if all(t == IGNORE for t in piece.targets):
        raise RowError(
            f"the {what} does not fit in data.max_length={cfg.max_length} after its prompt"
        )
    return piece, cut


DESIRABLE, UNDESIRABLE = 1.0, -1.0  # a KTO unit's first piece carries its label as weight


def kto_pieces(records: Iterable[Record], cfg, tokenizer, rejects: Rejects, counts: dict) -> Pieces:
    """One ``[answer, mismatched answer]`` unit per KTO row (``data.preference.to_unpaired``).

    The first piece is the prompt with its own answer (weight +1 when the answer is desirable,
    -1 when not); the second is the same prompt with the *next* row's answer (the last row
    takes the first row's), the mismatched pair from which KTO estimates the KL term, as TRL's
    ``KTOTrainer`` does by shifting the completions of a batch."""
    from lmforge.data.preference import to_unpaired
    from lmforge.training.multitask import finish_conversation

    def parse(row):
        example = to_unpaired(row)
        finish_conversation(example.prompt, row, cfg)
        own = _answer_piece(
            tokenizer, example.prompt, example.completion, example.tools, cfg, "answer"
        )
        return example, own

    first = previous = None  # each unit is emitted when the next row has been read
    for example, (piece, cut) in accepted(records, rejects, counts, parse):
        counts["used"] += 1
        counts["truncated"] += int(cut)
        if previous is not None:
            yield from _kto_unit(previous, example, tokenizer, cfg)
        first = first or example
        previous = (example, piece)
    if previous is not None:
        yield from _kto_unit(previous, first, tokenizer, cfg)


def _kto_unit(own, other, tokenizer, cfg) -> Pieces:
    example, piece = own
    weight = DESIRABLE if example.desirable else UNDESIRABLE
    yield Piece(piece.ids, piece.targets, weight), False
    try:
        mismatched, _ = _answer_piece(
            tokenizer, example.prompt, other.completion, example.tools, cfg, "answer"
        )
    except RowError:  # the other answer does not fit after this prompt: its own answer, then
        mismatched = piece
    yield mismatched, True


def rl_prompt_pieces(
    records: Iterable[Record], cfg, tokenizer, rejects: Rejects, counts: dict, needs_reference: bool
) -> Pieces:
    """One ``[prompt, reference]`` unit per row for stage ``grpo``: the prompt rendered through
    the chat template with the generation prompt (what the policy completes), and the row's
    reference answer as tokens (what an exact-match reward compares with; one EOS when the row
    has none). Neither learns anything itself: the rollouts (``rl.grpo``) make the targets.
    Rows are any SFT row (its last answer is the reference) or ``{"prompt", "reference"}``."""
    from lmforge.config.groups import GenerationConfig
    from lmforge.data.schema import prompt_messages
    from lmforge.serve.generate import encode_prompts
    from lmforge.training.multitask import finish_conversation

    def parse(row):
        prompt, reference = prompt_messages(row)
        finish_conversation(prompt, row, cfg)
        if needs_reference and not (reference or "").strip():
            raise RowError("no reference answer for the exact_match reward")
        (ids,) = encode_prompts(tokenizer, [prompt], GenerationConfig())  # as `generate` does
        if len(ids) >= cfg.max_length:
            raise RowError(
                f"prompt longer than max_length ({len(ids)} >= {cfg.max_length} tokens); "
                "raise data.max_length or shorten the prompt"
            )
        ref = tokenizer(reference, add_special_tokens=False)["input_ids"] if reference else []
        return ids, ref or [tokenizer.eos_token_id]

    for ids, ref in accepted(records, rejects, counts, parse):
        counts["used"] += 1
        yield Piece(ids, [IGNORE] * len(ids)), False
        yield Piece(ref, [IGNORE] * len(ref)), True
