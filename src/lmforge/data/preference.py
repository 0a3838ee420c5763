"""Preference rows in the one example schema: a shared prompt (a conversation up to the answer)
and two answers, ``chosen`` and ``rejected`` (stages ``rm`` and ``dpo``).

The formats users bring, each converted once here (stages never parse raw formats):

- **explicit prompt**: ``{"prompt": str | [messages], "chosen": ..., "rejected": ...}`` (TRL's
  layout); an answer is a string, an assistant message, or a list of messages that ends with
  the assistant's answer (TRL's conversational layout, the prompt being left out of it);
- **conversation + answers**: a training row without its final answer (``messages``,
  sharegpt ``conversations``, alpaca ``instruction``/``input``/``history``: what
  ``data.llamafactory`` makes of LLaMA-Factory ``ranking: true`` datasets such as
  ``dpo_en_demo``) plus ``chosen`` and ``rejected``;
- **Anthropic HH transcripts**: ``chosen`` and ``rejected`` are whole transcripts
  (``"\\n\\nHuman: ... \\n\\nAssistant: ..."``) and the prompt is what they share: everything up
  to the last ``"\\n\\nAssistant:"``, which must be the same in both.

Unpaired rows for KTO (:func:`to_unpaired`): a prompt, one answer and a boolean label
(desirable or not).

A row that fits none of them, or whose two answers are the same, raises :class:`RowError` with
the reason (the caller writes it to the rejects file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lmforge.data.schema import (
    RowError,
    check_messages,
    detect_format,
    is_answer,
    to_messages,
    tools_of,
)

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


@dataclass
class Preference:
    prompt: list[dict]  # the conversation up to the answer (ends with a user or tool turn)
    chosen: dict  # assistant messages
    rejected: dict
    tools: list[dict] | None = None
    margin: float = 0.0  # how much better chosen is (reward-model margin), when the row says


def to_preference(row: Any, margin_field: str | None = None) -> Preference:
    """One preference row in any of the formats of the module doc."""
    if not isinstance(row, dict):
        raise RowError(f"row is a {type(row).__name__}, expected a JSON object")
    for key in ("chosen", "rejected"):
        if key not in row:
            raise RowError(f"missing field '{key}' (a preference row has chosen and rejected)")
    if "prompt" not in row and isinstance(row["chosen"], str) and _is_transcript(row["chosen"]):
        prompt, chosen, rejected = _hh(row["chosen"], row["rejected"])
    else:
        prompt = _prompt(row["prompt"]) if "prompt" in row else _conversation_prompt(row)
        chosen = _answer(row["chosen"], prompt, "chosen")
        rejected = _answer(row["rejected"], prompt, "rejected")
    _check_prompt(prompt)
    if chosen == rejected:
        raise RowError("chosen and rejected are the same answer: nothing to prefer")
    for key, answer in (("chosen", chosen), ("rejected", rejected)):
        if not is_answer(answer):
            raise RowError(f"the {key} answer is empty")
    return Preference(prompt, chosen, rejected, tools_of(row), _margin(row, margin_field))


def _check_prompt(prompt: list[dict]) -> None:
    if not prompt or prompt[-1]["role"] not in ("user", "tool"):
        raise RowError("the prompt must end with a user (or tool) turn before the answer")


def _margin(row: dict, field: str | None) -> float:
    if not field:
        return 0.0
    value = row.get(field, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RowError(f"margin field '{field}' is {type(value).__name__}, expected a number")
    return float(value)


def _prompt(value: Any) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise RowError("empty prompt")
        return [{"role": "user", "content": value}]
    return check_messages(value)


def _conversation_prompt(row: dict) -> list[dict]:
    """The conversation of a training row that has no final answer of its own."""
    rest = {k: v for k, v in row.items() if k not in ("chosen", "rejected")}
    try:
        fmt = detect_format(rest)
    except RowError:
        fmt = None
    if fmt == "alpaca":  # instruction/input/history: the answer slot is filled for parsing
        return to_messages({**row, "output": "-"}, "alpaca")[:-1]
    if fmt == "messages":
        return check_messages(row["messages"])
    if fmt == "sharegpt":
        probe = {**row, "conversations": [*row["conversations"], {"from": "gpt", "value": "-"}]}
        return to_messages(probe, "sharegpt")[:-1]
    raise RowError(
        "a preference row needs a prompt: 'prompt', 'messages', 'conversations' or "
        "'instruction' beside 'chosen' and 'rejected'"
    )


def _answer(value: Any, prompt: list[dict], key: str) -> dict:
    if isinstance(value, str):
        return {"role": "assistant", "content": value}
    if isinstance(value, dict):
        value = [value]
    messages = check_messages(value)
    if messages[: len(prompt)] == prompt and len(messages) > len(prompt):
        messages = messages[len(prompt) :]  # a whole conversation repeating the prompt
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise RowError(f"{key} must be one assistant answer (a string or an assistant message)")
    return messages[0]


def _is_transcript(text: str) -> bool:
    return text.lstrip("\n").startswith("Human:") or HUMAN in text


def _hh_turns(text: str) -> list[dict]:
    text = text if text.startswith("\n\n") else "\n\n" + text.lstrip("\n")
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise RowError("an HH transcript must start with 'Human:'")
    turns = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        role = "user" if speaker == "Human" else "assistant"
        turns.append({"role": role, "content": content.strip()})
    return turns


def _hh(chosen: Any, rejected: Any) -> tuple[list[dict], dict, dict]:
    if not isinstance(rejected, str):
        raise RowError("rejected must be a transcript like chosen (HH format)")
    ends = [t.rfind(ASSISTANT) for t in (chosen, rejected)]
    if min(ends) < 0:
        raise RowError("an HH transcript has no '\\n\\nAssistant:' answer")
    if chosen[: ends[0]] != rejected[: ends[1]]:
        raise RowError(
            "chosen and rejected do not share the prompt (everything before the last "
            "'\\n\\nAssistant:' must be the same)"
        )
    prompt = _hh_turns(chosen[: ends[0]])
    answers = [
        t[e + len(ASSISTANT) :].strip() for t, e in zip((chosen, rejected), ends, strict=True)
    ]
    return prompt, *({"role": "assistant", "content": a} for a in answers)


@dataclass
class Unpaired:
    """One KTO example: a prompt, one answer and whether the answer is desirable."""

    prompt: list[dict]
    completion: dict
    desirable: bool
    tools: list[dict] | None = None


def to_unpaired(row: Any, label_field: str = "label") -> Unpaired:
    """A KTO row: ``{"prompt", "completion", "label": bool}`` (TRL's unpaired layout; prompt and
    completion as strings or messages), or any training conversation whose last assistant turn is
    the answer, with the boolean label (LLaMA-Factory's ``kto_tag`` becomes ``label``)."""
    if not isinstance(row, dict):
        raise RowError(f"row is a {type(row).__name__}, expected a JSON object")
    label = row.get(label_field)
    if not isinstance(label, bool):
        raise RowError(
            f"field '{label_field}' must be true (a desirable answer) or false, "
            f"got {type(label).__name__}"
        )
    if "completion" in row:
        if "prompt" not in row:
            raise RowError("a row with a 'completion' needs its 'prompt'")
        prompt = _prompt(row["prompt"])
        completion = _answer(row["completion"], prompt, "completion")
    else:
        messages = to_messages({k: v for k, v in row.items() if k != label_field})
        prompt, completion = messages[:-1], messages[-1]
    _check_prompt(prompt)
    if not is_answer(completion):
        raise RowError("the completion is empty")
    return Unpaired(prompt, completion, label, tools_of(row))
