"""Chat templates, applying one to a tokenizer, and the pre-flight checks on EOS.

A model learns to stop only if every assistant turn in its training data ends with the token
generation stops on; a template that forgets it yields a model that never stops. The checks
render probe conversations and refuse to train when an answer (or a tool call) is not followed
by EOS, or when the model's generation config would stop on a different token.

Named templates (the Jinja sources are in ``chat_templates/``; see each file's header):

========  ============================  ==================  ================================
name      turn ends with                default system      tool calls
========  ============================  ==================  ================================
chatml    ``{{ eos_token }}``           none                Hermes/Qwen ``<tool_call>`` JSON
qwen      ``<|im_end|>`` (must be EOS)  "You are Qwen, ..." Qwen2.5's ``<tool_call>`` JSON
llama3    ``<|eot_id|>`` (must be EOS)  none                Llama 3.1 JSON, ``ipython`` turns
alpaca    ``{{ eos_token }}``           "Below is an ..."   none: tool rows are rejected
default   ``{{ eos_token }}``           none                ``Action:`` / ``Observation:``
========  ============================  ==================  ================================

:func:`apply_template` puts one on a tokenizer. A template whose turn markers are not single
tokens of that tokenizer (Llama 3's ``<|eot_id|>`` on a tokenizer lmforge trained) gets them
added as special tokens, and one with its own end-of-turn token makes it the EOS token (as
LLaMA-Factory's ``replace_eos``); the model's embeddings then grow to match
(:func:`fit_model_to_template`, rows initialised to the mean of the existing ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

from lmforge.errors import ConfigError


@dataclass(frozen=True)
class ChatTemplate:
    """A named template: its Jinja source and what it needs from the tokenizer."""

    name: str
    eos: str | None  # the end-of-turn token it writes literally; None: {{ eos_token }}
    special_tokens: tuple[str, ...]  # markers that must be single (special) tokens
    default_system: str | None = None  # what it renders when a conversation has no system turn
    tools: bool = True  # renders tool definitions, calls and results

    @property
    def source(self) -> str:
        folder = resources.files("lmforge.tokenizer") / "chat_templates"
        return (folder / f"{self.name}.jinja").read_text(encoding="utf-8")


_CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
TEMPLATES = {
    t.name: t
    for t in (
        ChatTemplate("chatml", None, _CHATML_TOKENS),
        ChatTemplate(
            "qwen",
            "<|im_end|>",
            _CHATML_TOKENS,
            "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        ),
        ChatTemplate(
            "llama3", "<|eot_id|>", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
        ),
        ChatTemplate(
            "alpaca",
            None,
            (),
            "Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.",
            tools=False,
        ),
        ChatTemplate("default", None, ()),
    )
}


def resolve_template(name_or_jinja: str) -> str:
    """The Jinja source of a named template, or the string itself when it is Jinja."""
    if name_or_jinja in TEMPLATES:
        return TEMPLATES[name_or_jinja].source
    if "{%" in name_or_jinja or "{{" in name_or_jinja:
        return name_or_jinja
    raise ConfigError(
        f"chat template '{name_or_jinja}' is unknown: use one of {', '.join(TEMPLATES)} "
        "or a Jinja template string"
    )


def template_tokens(name_or_jinja: str) -> tuple[str | None, tuple[str, ...]]:
    """(end-of-turn token the template requires as EOS or None, special tokens it needs)."""
    spec = TEMPLATES.get(name_or_jinja)
    return (spec.eos, spec.special_tokens) if spec else (None, ())


@dataclass
class TemplateChange:
    """What :func:`apply_template` did to a tokenizer (recorded in the train manifest)."""

    template: str  # the name, or "custom" for a Jinja string
    added_tokens: list[str] = field(default_factory=list)
    eos_before: str | None = None
    eos_after: str | None = None

    @property
    def eos_changed(self) -> bool:
        return self.eos_before != self.eos_after

    def as_dict(self) -> dict:
        return {
            "template": self.template,
            "added_tokens": self.added_tokens,
            "eos_before": self.eos_before,
            "eos": self.eos_after,
        }


def apply_template(tokenizer, name_or_jinja: str) -> TemplateChange:
    """Give ``tokenizer`` (in place) the template, the special tokens it writes and its EOS."""
    from lmforge.models.vocab import add_tokens

    source = resolve_template(name_or_jinja)
    eos, specials = template_tokens(name_or_jinja)
    change = TemplateChange(
        name_or_jinja if name_or_jinja in TEMPLATES else "custom", eos_before=tokenizer.eos_token
    )
    change.added_tokens = add_tokens(tokenizer, [*specials, *([eos] if eos else [])], special=True)
    if eos and tokenizer.eos_token != eos:
        tokenizer.eos_token = eos
    change.eos_after = tokenizer.eos_token
    tokenizer.chat_template = source
    return change


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False, tools=None) -> str:
    """The conversation as text through the tokenizer's template; ``tools``: function schemas."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "the tokenizer has no chat template: set data.template (chatml, qwen, llama3, alpaca, "
            "default), train one with lmforge tokenizer (tokenizer.chat_template) or set "
            "chat_template in tokenizer_config.json"
        )
    return tokenizer.apply_chat_template(
        messages, tools=tools or None, tokenize=False, add_generation_prompt=add_generation_prompt
    )


# --------------------------------------------------------------------------- pre-flight checks
_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "probe_lookup",
        "description": "probe",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    },
}
_PROBE_CALL = {"type": "function", "function": {"name": "probe_lookup", "arguments": {"q": "x"}}}
_PROBE_TOOL_CHAT = [
    {"role": "user", "content": "ping"},
    {"role": "assistant", "content": "", "tool_calls": [_PROBE_CALL]},
    {"role": "tool", "content": "probe-result"},
    {"role": "assistant", "content": "pong"},
]
_TOOL_SUPPORT: dict[tuple, bool] = {}


def _answer(tokenizer, messages: list[dict], tools=None) -> str:
    """What the template renders for the last message after its generation prompt."""
    prompt = render(tokenizer, messages[:-1], add_generation_prompt=True, tools=tools)
    full = render(tokenizer, messages, tools=tools)
    if not full.startswith(prompt):
        raise ConfigError(
            "the chat template renders the conversation differently from its generation prompt; "
            "the prompt (add_generation_prompt=True) must be a prefix of the full conversation"
        )
    return full[len(prompt) :]


def renders_tools(tokenizer) -> bool:
    """Whether the template shows tool definitions, tool calls and tool results (probed once
    per template and EOS). A template that raises on them or silently drops them does not."""
    # repr: a tokenizer may hold a dict of named templates
    key = (repr(tokenizer.chat_template), tokenizer.eos_token, tokenizer.bos_token)
    if key not in _TOOL_SUPPORT:
        import jinja2

        try:
            prompt = render(tokenizer, _PROBE_TOOL_CHAT[:1], True, tools=[_PROBE_TOOL])
            call = _answer(tokenizer, _PROBE_TOOL_CHAT[:2], tools=[_PROBE_TOOL])
            full = render(tokenizer, _PROBE_TOOL_CHAT, tools=[_PROBE_TOOL])
            _TOOL_SUPPORT[key] = (
                "probe_lookup" in prompt and "probe_lookup" in call and "probe-result" in full
            )
        except (jinja2.TemplateError, TypeError, ValueError):
            _TOOL_SUPPORT[key] = False
    return _TOOL_SUPPORT[key]


def check_eos_template(tokenizer) -> None:
    """Raise ConfigError unless an assistant answer, and a tool call where the template renders
    tools, is followed directly by the EOS token."""
    eos = tokenizer.eos_token
    probe = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]
    answer = _answer(tokenizer, probe)
    if eos is None or not answer.startswith("pong" + eos):
        raise ConfigError(
            f"the chat template does not end assistant turns with the EOS token {eos!r} "
            f"(rendered answer: {answer!r}); the model would never learn to stop. Make the "
            "template emit {{ eos_token }} right after each assistant message, or set the "
            "tokenizer's eos_token to the token the template ends turns with"
        )
    if renders_tools(tokenizer):
        call = _answer(tokenizer, _PROBE_TOOL_CHAT[:2], tools=[_PROBE_TOOL])
        if eos not in call or call.index(eos) < call.index("probe_lookup"):
            raise ConfigError(
                f"the chat template does not end tool-call turns with the EOS token {eos!r} "
                f"(rendered call: {call!r}); the model would not stop after calling a tool"
            )


def _as_ids(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def check_generation_eos(model, tokenizer) -> None:
    """Raise ConfigError when the model's generation config stops on tokens that do not include
    the tokenizer's EOS: the template ends turns with EOS, so ``transformers``' ``generate``
    (and every server reading generation_config.json) would run past the answer."""
    declared = _as_ids(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    if declared and tokenizer.eos_token_id not in declared:
        names = tokenizer.convert_ids_to_tokens(declared)
        raise ConfigError(
            f"the model's generation config stops on {names} (ids {declared}) but the tokenizer's "
            f"EOS, which ends every assistant turn, is {tokenizer.eos_token!r} "
            f"(id {tokenizer.eos_token_id}): set data.template (lmforge then adds its EOS to the "
            "generation config) or fix eos_token_id in the model's generation_config.json"
        )


def fit_model_to_template(
    model, tokenizer, change: TemplateChange | None, seed: int = 0, check: bool = True
):
    """After :func:`apply_template`: grow the embeddings for the added tokens (mean-initialised
    rows, see ``models.vocab``) and make generation stop on the new EOS as well; then (``check``)
    :func:`check_generation_eos`.

    Returns the ids of the added tokens (empty when none were added).
    """
    from lmforge.models.vocab import init_new_token_rows

    new_ids = []
    if change is not None and change.added_tokens:
        new_ids = tokenizer.convert_tokens_to_ids(change.added_tokens)
        init_new_token_rows(model, new_ids, len(tokenizer), seed=seed)
    if change is not None and change.eos_changed and hasattr(model, "generation_config"):
        gen = model.generation_config
        gen.eos_token_id = list(dict.fromkeys([tokenizer.eos_token_id, *_as_ids(gen.eos_token_id)]))
    if check:
        check_generation_eos(model, tokenizer)
    return new_ids
