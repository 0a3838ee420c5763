"""The one example schema every stage uses, and converters from the formats users bring.

- plain text: ``{"text": str}``
- conversation: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``

Readers convert alpaca (``instruction``/``input``/``output``/``system``/``history``), ``messages``
and sharegpt (``conversations`` with ``from``/``value``) rows into this once; stages never parse raw
formats. A row that cannot be converted raises :class:`RowError` with the reason, and the caller
writes it to the rejects file.
"""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant")
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


class RowError(ValueError):
    """A data row cannot be used; the message is the reason written to the rejects file."""


def detect_format(row: Any) -> str:
    if isinstance(row, str):
        return "text"
    if not isinstance(row, dict):
        raise RowError(f"row is a {type(row).__name__}, expected a JSON object")
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row or "output" in row:
        return "alpaca"
    if "text" in row:
        return "text"
    raise RowError(f"cannot tell the format from keys {sorted(row)[:8]}")


def to_text(row: Any, text_field: str = "text") -> str:
    if isinstance(row, str):
        text = row
    elif isinstance(row, dict):
        if text_field not in row:
            raise RowError(f"missing field '{text_field}'")
        text = row[text_field]
        if not isinstance(text, str):
            raise RowError(f"field '{text_field}' is {type(text).__name__}, expected a string")
    else:
        raise RowError(f"row is a {type(row).__name__}, expected a JSON object or text")
    if not text.strip():
        raise RowError("empty text")
    return text


def _require_str(row: dict, key: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise RowError(f"missing field '{key}'")
        return ""
    if not isinstance(value, str):
        raise RowError(f"field '{key}' is {type(value).__name__}, expected a string")
    return value


def alpaca_to_messages(row: dict) -> list[dict]:
    instruction = _require_str(row, "instruction")
    extra = _require_str(row, "input", required=False)
    output = _require_str(row, "output")
    system = _require_str(row, "system", required=False)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = [{"role": "system", "content": system}] if system.strip() else []
    history = row.get("history") or []
    if not isinstance(history, list):
        raise RowError("'history' must be a list of [user, assistant] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise RowError(f"history item {i} is not a [user, assistant] pair")
        if not all(isinstance(x, str) for x in pair):
            raise RowError(f"history item {i} holds a non-string")
        messages += [
            {"role": "user", "content": pair[0]},
            {"role": "assistant", "content": pair[1]},
        ]
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _check_messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise RowError("'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RowError(f"message {i} is not an object")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise RowError(f"message {i} has role {role!r}; expected one of {ROLES}")
        if not isinstance(content, str):
            raise RowError(f"message {i} content is {type(content).__name__}, expected a string")
        out.append({"role": role, "content": content})
    return out


def to_messages(row: Any, fmt: str = "auto") -> list[dict]:
    """Convert one row to the conversation schema; the last message must be a non-empty answer."""
    fmt = detect_format(row) if fmt == "auto" else fmt
    if not isinstance(row, dict):
        raise RowError(f"row is a {type(row).__name__}, expected a JSON object")
    if fmt == "alpaca":
        messages = alpaca_to_messages(row)
    elif fmt == "messages":
        messages = _check_messages(row.get("messages"))
    elif fmt == "sharegpt":
        turns = row.get("conversations")
        if not isinstance(turns, list):
            raise RowError("'conversations' must be a list")
        converted = []
        for t in turns:
            if not isinstance(t, dict) or t.get("from") not in _SHAREGPT_ROLES:
                raise RowError(f"sharegpt turn {t!r:.60} has an unknown 'from'")
            converted.append({"role": _SHAREGPT_ROLES[t["from"]], "content": t.get("value")})
        if isinstance(row.get("system"), str) and row["system"].strip():
            converted.insert(0, {"role": "system", "content": row["system"]})
        messages = _check_messages(converted)
    else:
        raise RowError(f"format '{fmt}' is not a conversation format")
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("no assistant message to learn from")
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise RowError("the last message must be a non-empty assistant answer")
    return messages


def prompt_messages(row: Any, fmt: str = "auto") -> tuple[list[dict], str | None]:
    """For generation and evaluation: (messages up to the answer, reference answer or None).

    Accepts the training formats (the final assistant message becomes the reference) and a bare
    ``{"prompt": str}`` row.
    """
    if isinstance(row, str):
        if not row.strip():
            raise RowError("empty prompt")
        return [{"role": "user", "content": row}], None
    if isinstance(row, dict) and "prompt" in row:
        prompt = _require_str(row, "prompt")
        if not prompt.strip():
            raise RowError("empty prompt")
        ref = row.get("reference", row.get("output"))
        return [{"role": "user", "content": prompt}], ref if isinstance(ref, str) else None
    messages = to_messages(row, fmt)
    return messages[:-1], messages[-1]["content"]
