"""The one example schema every stage uses, and converters from the formats users bring.

- plain text: ``{"text": str}``
- conversation: ``{"messages": [message, ...], "tools": [function schema, ...]}`` (tools optional)

A message is ``{"role": "system"|"user"|"assistant"|"tool", "content": str}``; an assistant
message may carry ``"tool_calls": [{"type": "function", "function": {"name": str, "arguments":
dict}}, ...]`` (the layout ``transformers`` chat templates read) and ``"loss": false`` (an
assistant turn kept as context but not learned). A ``tool`` message is a tool's result. A tool is
``{"type": "function", "function": {"name", "description", "parameters"}}``.

Readers convert alpaca (``instruction``/``input``/``output``/``system``/``history``), ``messages``
and sharegpt (``conversations`` with ``from``/``value``) rows into this once; stages never parse raw
formats. LLaMA-Factory's function calls (role ``tool_call`` or sharegpt ``function_call``, whose
content is the call as JSON: ``{"name": ..., "arguments": {...}}`` or a list of them) become
assistant messages with ``tool_calls``; its observations (``observation``) become ``tool``
messages; OpenAI-style calls whose ``arguments`` is a JSON string are parsed. A row that cannot be
converted raises :class:`RowError` with the reason, and the caller writes it to the rejects file.
"""

from __future__ import annotations

import json
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
TOOL_CALL = "tool_call"  # input only: a call written as JSON, becomes assistant + tool_calls
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": TOOL_CALL,
    "observation": "tool",
    "tool": "tool",
}
_PASSED_KEYS = ("name", "tool_call_id")  # kept on tool messages (OpenAI layout) when strings


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


def _json(value: Any, what: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise RowError(f"{what} is not valid JSON ({exc.msg})") from None


def _tool_call(value: Any, where: str) -> dict:
    """One call in the schema's layout from ``{"name", "arguments"}`` (LLaMA-Factory, Llama's
    ``"parameters"``) or ``{"type": "function", "function": {...}}`` (OpenAI)."""
    call = value.get("function", value) if isinstance(value, dict) else None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        raise RowError(f"{where} is not a function call with a 'name'")
    arguments = call.get("arguments", call.get("parameters", {}))
    arguments = _json(arguments, f"{where} arguments")
    if not isinstance(arguments, dict):
        raise RowError(f"{where} arguments are {type(arguments).__name__}, expected an object")
    return {"type": "function", "function": {"name": call["name"], "arguments": arguments}}


def _tool_calls(value: Any, where: str) -> list[dict]:
    calls = value if isinstance(value, list) else [value]
    if not calls:
        raise RowError(f"{where} holds no function call")
    return [_tool_call(c, f"{where} call {j}") for j, c in enumerate(calls)]


def tools_of(row: Any) -> list[dict] | None:
    """The row's tool definitions (``tools``: a list, or the JSON string LLaMA-Factory stores) in
    the schema's layout, or None when it has none."""
    tools = row.get("tools") if isinstance(row, dict) else None
    tools = _json(tools, "'tools'")
    if tools in (None, "", [], {}):
        return None
    tools = [tools] if isinstance(tools, dict) else tools
    if not isinstance(tools, list):
        raise RowError(f"'tools' is {type(tools).__name__}, expected a list of functions")
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) and "function" in tool else tool
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise RowError(f"tool {i} is not a function with a 'name'")
        out.append({"type": "function", "function": fn})
    return out


def check_messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise RowError("'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RowError(f"message {i} is not an object")
        role, content = m.get("role"), m.get("content")
        if role == TOOL_CALL:  # the call is the content, as JSON
            if not isinstance(content, str | dict | list):
                raise RowError(f"message {i} ({TOOL_CALL}) content is not a function call")
            calls = _tool_calls(_json(content, f"message {i} ({TOOL_CALL})"), f"message {i}")
            out.append({"role": "assistant", "content": "", "tool_calls": calls})
            continue
        if role not in ROLES:
            raise RowError(f"message {i} has role {role!r}; expected one of {(*ROLES, TOOL_CALL)}")
        if content is None and role == "assistant" and m.get("tool_calls"):
            content = ""  # OpenAI: a message that only calls tools has content null
        if not isinstance(content, str):
            raise RowError(f"message {i} content is {type(content).__name__}, expected a string")
        message: dict = {"role": role, "content": content}
        if m.get("tool_calls"):
            if role != "assistant":
                raise RowError(f"message {i} is a {role} message with tool_calls")
            message["tool_calls"] = _tool_calls(m["tool_calls"], f"message {i}")
        if role == "assistant" and "loss" in m:
            if not isinstance(m["loss"], bool):
                raise RowError(f"message {i} 'loss' must be true or false")
            message["loss"] = m["loss"]
        if role == "tool":
            message.update({k: m[k] for k in _PASSED_KEYS if isinstance(m.get(k), str)})
        out.append(message)
    return out


def is_answer(message: dict) -> bool:
    """An assistant turn with something to learn: text or tool calls."""
    return message["role"] == "assistant" and bool(
        message["content"].strip() or message.get("tool_calls")
    )


def to_messages(row: Any, fmt: str = "auto") -> list[dict]:
    """Convert one row to the conversation schema; the last message must be a non-empty answer."""
    fmt = detect_format(row) if fmt == "auto" else fmt
    if not isinstance(row, dict):
        raise RowError(f"row is a {type(row).__name__}, expected a JSON object")
    if fmt == "alpaca":
        messages = alpaca_to_messages(row)
    elif fmt == "messages":
        messages = check_messages(row.get("messages"))
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
        messages = check_messages(converted)
    else:
        raise RowError(f"format '{fmt}' is not a conversation format")
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("no assistant message to learn from")
    if not is_answer(messages[-1]):
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
