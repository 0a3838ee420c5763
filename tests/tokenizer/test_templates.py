"""Every named chat template: the exact text it renders (plain and tool conversations), labels
that cover exactly the assistant answers and tool calls through EOS, the EOS checks, and what
applying a template does to a tokenizer lmforge trained."""

from __future__ import annotations

import re

import pytest

from lmforge.config.groups import TokenizerConfig
from lmforge.data.schema import RowError, to_messages, tools_of
from lmforge.data.synthetic import make_corpus
from lmforge.errors import ConfigError
from lmforge.models.load import load_tokenizer
from lmforge.tokenizer.templates import (
    TEMPLATES,
    apply_template,
    check_eos_template,
    render,
    renders_tools,
)
from lmforge.tokenizer.train import train_tokenizer
from lmforge.training.sft import IGNORE, encode_messages_full

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "now",
            "parameters": {"type": "object", "properties": {}},
        },
    }
]
CALL = {"type": "function", "function": {"name": "get_time", "arguments": {"tz": "UTC"}}}
TOOL_CHAT = [
    {"role": "user", "content": "time?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": "12:00"},
    {"role": "assistant", "content": "It is noon."},
]
TOOL_JSON = (
    '{"type": "function", "function": {"name": "get_time", "description": "now", '
    '"parameters": {"type": "object", "properties": {}}}}'
)
HERMES_TOOLS = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    + TOOL_JSON
    + "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
)
HERMES_CALL = '<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>'
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
H, E = "<|start_header_id|>", "<|end_header_id|>\n\n"

RENDERED = {
    "chatml": (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
    ),
    "qwen": (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
    ),
    "llama3": (
        f"{H}system{E}Be brief.<|eot_id|>{H}user{E}hi<|eot_id|>{H}assistant{E}hello<|eot_id|>"
        f"{H}user{E}2+2?<|eot_id|>{H}assistant{E}4<|eot_id|>"
    ),
    "alpaca": (
        "Be brief.\n\n### Instruction:\nhi\n\n### Response:\nhello<|im_end|>\n\n"
        "### Instruction:\n2+2?\n\n### Response:\n4<|im_end|>\n\n"
    ),
    "default": (
        "System: Be brief.\nHuman: hi\nAssistant: hello<|im_end|>\n"
        "Human: 2+2?\nAssistant: 4<|im_end|>\n"
    ),
}
RENDERED_TOOLS = {
    "chatml": (
        "<|im_start|>system\n" + HERMES_TOOLS + "<|im_start|>user\ntime?<|im_end|>\n"
        "<|im_start|>assistant\n" + HERMES_CALL + "<|im_end|>\n"
        "<|im_start|>tool\n<tool_response>\n12:00\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nIt is noon.<|im_end|>\n"
    ),
    "qwen": (
        "<|im_start|>system\n"
        + QWEN_SYSTEM
        + "\n\n"
        + HERMES_TOOLS
        + "<|im_start|>user\ntime?<|im_end|>\n<|im_start|>assistant\n"
        + HERMES_CALL
        + "<|im_end|>\n<|im_start|>user\n<tool_response>\n12:00\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nIt is noon.<|im_end|>\n"
    ),
    "llama3": (
        f"{H}system{E}You have access to the following functions. To call a function, please "
        'respond with JSON for a function call. Respond in the format {"name": function name, '
        '"parameters": dictionary of argument name and its value}. Do not use variables.\n\n'
        '{\n    "type": "function",\n    "function": {\n        "name": "get_time",\n'
        '        "description": "now",\n        "parameters": {\n            "type": "object",\n'
        '            "properties": {}\n        }\n    }\n}\n\n<|eot_id|>'
        f"{H}user{E}time?<|eot_id|>{H}assistant{E}"
        '{"name": "get_time", "parameters": {"tz": "UTC"}}<|eot_id|>'
        f"{H}ipython{E}12:00<|eot_id|>{H}assistant{E}It is noon.<|eot_id|>"
    ),
    "default": (
        "System: You have access to the following tools:\n" + TOOL_JSON + "\n"
        "To use a tool, answer with\nAction: the tool name\nAction Input: the arguments as a "
        "JSON object\nHuman: time?\nAssistant: Action: get_time\nAction Input: "
        '{"tz": "UTC"}<|im_end|>\nObservation: 12:00\nAssistant: It is noon.<|im_end|>\n'
    ),
}
# what the labels of the tool-call turn decode to (the answers are "<answer><eos>")
LEARNED_CALL = {
    "chatml": HERMES_CALL + "<|im_end|>",
    "qwen": HERMES_CALL + "<|im_end|>",
    "llama3": '{"name": "get_time", "parameters": {"tz": "UTC"}}<|eot_id|>',
    "default": 'Action: get_time\nAction Input: {"tz": "UTC"}<|im_end|>',
}


@pytest.fixture
def templated(tokenizer_dir):
    """A fresh copy of the session tokenizer with the named template applied."""

    def make(name: str):
        tok = load_tokenizer(tokenizer_dir)
        apply_template(tok, name)
        return tok

    return make


def _spans(ids: list[int], labels: list[int]) -> list[list[int]]:
    spans: list[list[int]] = []
    previous = IGNORE
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE:
            assert label == token
            if previous == IGNORE:
                spans.append([])
            spans[-1].append(token)
        previous = label
    return spans


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_rendered_text(templated, name) -> None:
    tok = templated(name)
    assert render(tok, CHAT) == RENDERED[name]
    assert renders_tools(tok) == (name in RENDERED_TOOLS)
    if name in RENDERED_TOOLS:
        assert render(tok, TOOL_CHAT, tools=TOOLS) == RENDERED_TOOLS[name]


def test_chatml_renders_what_it_rendered_before(templated, tokenizer) -> None:
    """Conversations without tools: byte for byte the template the tokenizer was trained with."""
    tok = templated("chatml")
    for conversation in (CHAT, CHAT[1:3]):
        assert render(tok, conversation) == render(tokenizer, conversation)
        assert render(tok, conversation[:-1], True) == render(tokenizer, conversation[:-1], True)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_labels_are_every_answer_through_eos(templated, name) -> None:
    tok = templated(name)
    ids, labels, _ = encode_messages_full(tok, CHAT, max_length=512)
    assert [tok.decode(s) for s in _spans(ids, labels)] == [
        "hello" + tok.eos_token,
        "4" + tok.eos_token,
    ]
    assert tok.decode(ids) == render(tok, CHAT)  # the whole conversation, nothing dropped


@pytest.mark.parametrize("name", sorted(LEARNED_CALL))
def test_labels_cover_tool_calls_not_tool_results(templated, name) -> None:
    tok = templated(name)
    ids, labels, _ = encode_messages_full(tok, TOOL_CHAT, max_length=1024, tools=TOOLS)
    learned = [tok.decode(s) for s in _spans(ids, labels)]
    assert learned == [LEARNED_CALL[name], "It is noon." + tok.eos_token]
    assert tok.decode(ids) == render(tok, TOOL_CHAT, tools=TOOLS)
    assert labels.count(IGNORE) == len(ids) - sum(len(s) for s in _spans(ids, labels))


def test_turns_marked_loss_false_are_context_only(templated) -> None:
    tok = templated("qwen")
    chat = [dict(m) for m in CHAT]
    chat[2]["loss"] = False
    ids, labels, _ = encode_messages_full(tok, chat, max_length=512)
    assert [tok.decode(s) for s in _spans(ids, labels)] == ["4<|im_end|>"]


def test_templates_without_tools_reject_tool_rows(templated) -> None:
    tok = templated("alpaca")
    with pytest.raises(RowError, match="does not render tool calls"):
        encode_messages_full(tok, TOOL_CHAT, max_length=512, tools=TOOLS)
    # a template that silently drops the calls is treated the same (the session tokenizer's
    # ChatML is unchanged, so take a plain template that ignores tool_calls and tools)
    tok.chat_template = (
        "{% for m in messages %}{{ m.role + ': ' + m.content }}"
        "{% if m.role == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    check_eos_template(tok)
    assert not renders_tools(tok)
    with pytest.raises(RowError, match="does not render tool calls"):
        encode_messages_full(tok, TOOL_CHAT, max_length=512)


def test_default_system_prompts(templated) -> None:
    qwen = templated("qwen")
    assert render(qwen, CHAT[1:3]).startswith(f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n")
    alpaca = templated("alpaca")
    assert render(alpaca, CHAT[1:3]).startswith("Below is an instruction that describes a task.")
    assert TEMPLATES["qwen"].default_system == QWEN_SYSTEM


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_eos_check_passes_for_every_template(templated, name) -> None:
    check_eos_template(templated(name))


def test_eos_check_names_the_token_a_broken_template_misses(templated) -> None:
    tok = templated("qwen")  # ends turns with the literal <|im_end|>
    tok.eos_token = "<|endoftext|>"
    with pytest.raises(
        ConfigError, match=r"does not end assistant turns with the EOS token '<\|endoftext\|>'"
    ):
        check_eos_template(tok)
    # answers end with EOS, tool calls do not: caught too
    tok = templated("chatml")
    tok.chat_template = (
        "{% if tools %}{{ 'tools: ' + tools[0].function.name + '\\n' }}{% endif %}"
        "{% for m in messages %}{% if m.role == 'assistant' and m.tool_calls %}"
        "{{ 'call ' + m.tool_calls[0].function.name + '\\n' }}"
        "{% elif m.role == 'assistant' %}{{ m.content + eos_token + '\\n' }}"
        "{% else %}{{ m.role + ': ' + m.content + '\\n' }}{% endif %}{% endfor %}"
    )
    assert renders_tools(tok)
    with pytest.raises(ConfigError, match="does not end tool-call turns with the EOS token"):
        check_eos_template(tok)


def test_llama3_on_an_lmforge_tokenizer_adds_its_tokens_and_eos(tokenizer_dir) -> None:
    tok = load_tokenizer(tokenizer_dir)
    before = len(tok)
    change = apply_template(tok, "llama3")
    assert change.added_tokens == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    assert len(tok) == before + 3 and change.eos_before == "<|im_end|>"
    assert tok.eos_token == change.eos_after == "<|eot_id|>"
    for token in change.added_tokens:  # one token each, and dropped from decoded answers
        (token_id,) = tok(token, add_special_tokens=False)["input_ids"]
        assert tok.decode([token_id], skip_special_tokens=True) == ""
    again = apply_template(tok, "llama3")
    assert again.added_tokens == [] and not again.eos_changed


def test_unknown_template_is_a_config_error(tokenizer_dir) -> None:
    with pytest.raises(ConfigError, match="use one of chatml, qwen, llama3, alpaca, default"):
        apply_template(load_tokenizer(tokenizer_dir), "vicuna")


def test_tokenizer_trained_with_llama3_template() -> None:
    cfg = TokenizerConfig(vocab_size=300, chat_template="llama3")
    assert cfg.eos_token == "<|eot_id|>"
    assert {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"} <= set(cfg.special_tokens)
    tok = train_tokenizer((d["text"] for d in make_corpus(50, seed=0)), cfg)
    check_eos_template(tok)
    assert len(tok("<|eot_id|>", add_special_tokens=False)["input_ids"]) == 1
    with pytest.raises(ValueError, match=re.escape("set tokenizer.eos_token=<|eot_id|> (or")):
        TokenizerConfig(chat_template="llama3", eos_token="<|im_end|>")
    with pytest.raises(ValueError, match="chat template 'vicuna' is unknown"):
        TokenizerConfig(chat_template="vicuna")


def test_llamafactory_tool_rows_become_tool_calls() -> None:
    row = {
        "messages": [
            {"role": "user", "content": "time?"},
            {"role": "tool_call", "content": '{"name": "get_time", "arguments": {"tz": "UTC"}}'},
            {"role": "tool", "content": "12:00"},
            {"role": "assistant", "content": "It is noon."},
        ],
        "tools": '[{"name": "get_time", "description": "now", '
        '"parameters": {"type": "object", "properties": {}}}]',
    }
    assert to_messages(row) == TOOL_CHAT
    assert tools_of(row) == TOOLS
    openai = {  # OpenAI layout: arguments as a JSON string, content null
        "messages": [
            TOOL_CHAT[0],
            {"role": "assistant", "content": None, "tool_calls": [
                {"type": "function", "function": {"name": "get_time", "arguments": '{"tz": "UTC"}'}}
            ]},
            {"role": "tool", "content": "12:00", "tool_call_id": "c1"},
            TOOL_CHAT[3],
        ]
    }  # fmt: skip
    messages = to_messages(openai)
    assert messages[1] == TOOL_CHAT[1] and messages[2]["tool_call_id"] == "c1"
    for bad, reason in [
        ('{"arguments": {}}', "not a function call with a 'name'"),
        ('{"name": "f", "arguments": "{oops"}', "arguments is not valid JSON"),
        ("not json", "is not valid JSON"),
    ]:
        broken = {"messages": [TOOL_CHAT[0], {"role": "tool_call", "content": bad}]}
        with pytest.raises(RowError, match=reason):
            to_messages(broken)
    with pytest.raises(RowError, match="'tools' is not valid JSON"):
        tools_of({"tools": "[{"})
