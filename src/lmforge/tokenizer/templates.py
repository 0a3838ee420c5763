"""Chat templates and the pre-flight check that assistant turns end with the EOS token.

A model learns to stop only if every assistant turn in its training data ends with the token
generation stops on; a template that forgets it yields a model that never stops. The check
renders a probe conversation and refuses to train when the answer is not followed by EOS.
"""

from __future__ import annotations

from lmforge.errors import ConfigError

# ChatML; the assistant turn ends with {{ eos_token }} so the EOS check holds whatever eos is.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '<|im_end|>' }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TEMPLATES = {"chatml": CHATML}


def resolve_template(name_or_jinja: str) -> str:
    if name_or_jinja in TEMPLATES:
        return TEMPLATES[name_or_jinja]
    if "{%" in name_or_jinja or "{{" in name_or_jinja:
        return name_or_jinja
    raise ConfigError(
        f"chat template '{name_or_jinja}' is unknown: use one of {', '.join(TEMPLATES)} "
        "or a Jinja template string"
    )


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "the tokenizer has no chat template: train one with lmforge tokenizer "
            "(tokenizer.chat_template) or set chat_template in tokenizer_config.json"
        )
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def check_eos_template(tokenizer) -> None:
    """Raise ConfigError unless an assistant answer is followed directly by the EOS token."""
    probe = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]
    prompt = render(tokenizer, probe[:1], add_generation_prompt=True)
    full = render(tokenizer, probe)
    eos = tokenizer.eos_token
    if not full.startswith(prompt):
        raise ConfigError(
            "the chat template renders the conversation differently from its generation prompt; "
            "the prompt (add_generation_prompt=True) must be a prefix of the full conversation"
        )
    answer = full[len(prompt) :]
    if eos is None or not answer.startswith("pong" + eos):
        raise ConfigError(
            f"the chat template does not end assistant turns with the EOS token {eos!r} "
            f"(rendered answer: {answer!r}); the model would never learn to stop. Make the "
            "template emit {{ eos_token }} right after each assistant message, or set the "
            "tokenizer's eos_token to the token the template ends turns with"
        )
