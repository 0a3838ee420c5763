"""SFT encoding: labels cover exactly the assistant answers and their EOS, nothing else."""

from __future__ import annotations

import pytest

from lmforge.data.schema import RowError
from lmforge.tokenizer.templates import render
from lmforge.training.sft import IGNORE, encode_messages, encode_messages_full

SINGLE = [
    {"role": "user", "content": "Write 42 in words."},
    {"role": "assistant", "content": "forty-two"},
]
MULTI = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "Is 57 odd or even?"},
    {"role": "assistant", "content": "odd"},
    {"role": "user", "content": "用汉字写出数字42。"},
    {"role": "assistant", "content": "四十二"},
]


def _labelled_spans(ids: list[int], labels: list[int]) -> list[list[int]]:
    """Maximal runs of positions whose label is not IGNORE, as token ids."""
    spans: list[list[int]] = []
    previous = IGNORE
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE:
            assert label == token  # unshifted, Hugging Face convention
            if previous == IGNORE:
                spans.append([])
            spans[-1].append(token)
        previous = label
    return spans


@pytest.mark.parametrize("messages", [SINGLE, MULTI], ids=["single-turn", "multi-turn"])
def test_labels_are_the_assistant_answers_plus_eos(tokenizer, messages) -> None:
    ids, labels = encode_messages(tokenizer, messages, max_length=512)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    spans = _labelled_spans(ids, labels)
    assert [tokenizer.decode(s) for s in spans] == [a + tokenizer.eos_token for a in answers]
    # every other token (system, user, role headers, ChatML's newline after EOS) is -100
    n_labelled = sum(len(s) for s in spans)
    assert labels.count(IGNORE) == len(ids) - n_labelled
    assert labels[0] == IGNORE and labels[-1] == IGNORE  # last: the newline after EOS
    # the input is the whole rendered conversation, nothing dropped or added
    assert tokenizer.decode(ids) == render(tokenizer, messages)


def test_prompt_tokens_match_inference_prompt(tokenizer) -> None:
    """The unlabelled prefix is exactly how the prompt is tokenised at generation time."""
    ids, labels = encode_messages(tokenizer, SINGLE, max_length=512)
    prompt = render(tokenizer, SINGLE[:1], add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    first = next(i for i, label in enumerate(labels) if label != IGNORE)
    assert ids[:first] == prompt_ids
    assert set(labels[:first]) == {IGNORE}


def test_prompt_longer_than_max_length_is_rejected(tokenizer) -> None:
    long_prompt = [
        {"role": "user", "content": "word " * 200},
        {"role": "assistant", "content": "ok"},
    ]
    with pytest.raises(RowError, match="prompt longer than max_length"):
        encode_messages_full(tokenizer, long_prompt, max_length=64)


def test_long_answer_is_truncated(tokenizer) -> None:
    answer = " ".join(["forty-two"] * 60)
    messages = [{"role": "user", "content": "Count."}, {"role": "assistant", "content": answer}]
    full_ids, _, truncated = encode_messages_full(tokenizer, messages, max_length=4096)
    assert truncated is False
    ids, labels, truncated = encode_messages_full(tokenizer, messages, max_length=32)
    assert truncated is True
    assert len(ids) == len(labels) == 32
    assert ids == full_ids[:32]
    # the cut answer is still learned (a prefix of it), but its EOS is gone
    (span,) = _labelled_spans(ids, labels)
    assert answer.startswith(tokenizer.decode(span))
    assert tokenizer.eos_token_id not in span


def test_exactly_max_length_is_not_truncated(tokenizer) -> None:
    ids, _, _ = encode_messages_full(tokenizer, SINGLE, max_length=4096)
    same, _, truncated = encode_messages_full(tokenizer, SINGLE, max_length=len(ids))
    assert truncated is False and same == ids
