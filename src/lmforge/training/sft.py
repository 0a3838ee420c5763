"""Supervised fine-tuning examples: chat-template rendering with loss on assistant tokens only.

Each assistant turn (an answer, or a tool call: the model must learn to emit calls) is split
into a *prompt piece* (everything the template renders before the answer, including the
generation prompt) and an *answer piece* (the answer and what the template appends). Pieces
are tokenised separately and concatenated, exactly as a prompt is tokenised at inference time
followed by generated tokens. Labels cover the answer up to and
including the first EOS token (so the model learns to stop); anything the template adds after
EOS (ChatML's newline) is in the input but not learned. Tool results, like user turns, are
never learned; nor is an assistant turn marked ``"loss": false``. A conversation with tools,
calls or results whose template cannot show them (see ``templates.renders_tools``) is rejected
rather than trained with the calls silently missing.
"""

from __future__ import annotations

from lmforge.data.schema import RowError
from lmforge.errors import ConfigError
from lmforge.tokenizer.templates import render, renders_tools

IGNORE = -100


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _uses_tools(messages: list[dict], tools) -> bool:
    return bool(tools) or any(m["role"] == "tool" or m.get("tool_calls") for m in messages)


def encode_messages_full(
    tokenizer,
    messages: list[dict],
    max_length: int,
    tools: list[dict] | None = None,
    keep_whole: bool = False,
) -> tuple[list[int], list[int], bool]:
    """``(input_ids, labels, truncated)`` for one conversation; ``tools``: its function schemas.

    ``labels[i]`` is ``input_ids[i]`` where the token belongs to an assistant answer or tool call
    (through its EOS) and ``-100`` elsewhere (unshifted, Hugging Face convention). Raises
    :class:`RowError` when the first prompt alone does not fit in ``max_length`` tokens, or the
    template cannot render the conversation's tools; otherwise a long conversation is cut to
    ``max_length`` (``keep_whole``: not cut, for :func:`segments`) and ``truncated`` is True.
    """
    if _uses_tools(messages, tools) and not renders_tools(tokenizer):
        raise RowError(
            "the chat template does not render tool calls (tools, tool_calls or tool results "
            "in this conversation): use data.template qwen, llama3, chatml or default"
        )
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    first_prompt_len = None
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt_text = render(tokenizer, messages[:i], add_generation_prompt=True, tools=tools)
        full_text = render(tokenizer, messages[: i + 1], tools=tools)
        if not prompt_text.startswith(rendered) or not full_text.startswith(prompt_text):
            raise ConfigError(
                "the chat template is not incremental: rendering a conversation prefix must give "
                "a prefix of the full rendering (needed to find the assistant tokens)"
            )
        prompt_ids = _encode(tokenizer, prompt_text[len(rendered) :])
        answer_ids = _encode(tokenizer, full_text[len(prompt_text) :])
        if message.get("loss") is False:
            answer_labels = [IGNORE] * len(answer_ids)
        elif eos in answer_ids:
            cut = answer_ids.index(eos) + 1
            answer_labels = answer_ids[:cut] + [IGNORE] * (len(answer_ids) - cut)
        else:
            answer_labels = list(answer_ids)
        ids += prompt_ids
        labels += [IGNORE] * len(prompt_ids)
        if first_prompt_len is None:
            first_prompt_len = len(ids)
        ids += answer_ids
        labels += answer_labels
        rendered = full_text
    if first_prompt_len is None:
        raise RowError("no assistant message to learn from")
    if first_prompt_len >= max_length:
        raise RowError(
            f"prompt longer than max_length ({first_prompt_len} >= {max_length} tokens); "
            "raise data.max_length or shorten the prompt"
        )
    truncated = len(ids) > max_length
    if keep_whole:
        return ids, labels, truncated
    return ids[:max_length], labels[:max_length], truncated


def segments(
    ids: list[int], labels: list[int], max_length: int, overlap: int
) -> list[tuple[list[int], list[int]]]:
    """A long example as windows of at most ``max_length`` tokens, each repeating the last
    ``overlap`` tokens of the one before as context, so that every label is learned exactly
    once: in a window after the first, the labels of the repeated tokens are ignored (the
    window before learned them), and the first new token is predicted from the context.
    Windows with nothing to learn are left out. ``1 <= overlap < max_length``."""
    if not 1 <= overlap < max_length:
        raise ValueError(f"overlap must be in [1, {max_length}), got {overlap}")
    out, start = [], 0
    while True:
        end = min(start + max_length, len(ids))
        window = list(labels[start:end])
        if start:
            window[:overlap] = [IGNORE] * overlap
        if any(x != IGNORE for x in window[1:]):  # position 0 predicts nothing of its own
            out.append((list(ids[start:end]), window))
        if end == len(ids):
            return out
        start = end - overlap


def encode_messages(
    tokenizer, messages: list[dict], max_length: int, tools: list[dict] | None = None
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)``; see :func:`encode_messages_full`."""
    ids, labels, _ = encode_messages_full(tokenizer, messages, max_length, tools)
    return ids, labels
