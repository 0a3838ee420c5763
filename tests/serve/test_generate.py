"""Generation: greedy equals a plain argmax loop, stop strings, left padding, PEFT models."""

from __future__ import annotations

import pytest
import torch

from lmforge.config.groups import GenerationConfig, ModelConfig
from lmforge.config.training import AdapterConfig
from lmforge.models.adapters import add_lora
from lmforge.models.load import build_model
from lmforge.serve.generate import _decode, encode_prompts, generate

PROMPTS = ["Is 41 even or odd?", "hi", "Spell out the number 62, please, in English words."]


@pytest.fixture(scope="module")
def model(tokenizer):
    """A tiny llama with large random weights, so greedy outputs vary from token to token."""
    cfg = ModelConfig(preset="tiny-llama", tokenizer="unused", overrides={"initializer_range": 0.5})
    return build_model(cfg, tokenizer, seed=1).eval()


def argmax_loop(model, tokenizer, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Reference decoder: one full forward pass per token, no KV cache, no padding."""
    ids, new = list(prompt_ids), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits
            token = int(logits[0, -1].argmax())
            ids.append(token)
            new.append(token)
            if token == tokenizer.eos_token_id:
                break
    return new


def test_greedy_equals_manual_argmax_loop(model, tokenizer):
    cfg = GenerationConfig(max_new_tokens=12, batch_size=1)
    results = generate(model, tokenizer, [[{"role": "user", "content": PROMPTS[0]}]], cfg)
    prompt_ids = encode_prompts(tokenizer, [[{"role": "user", "content": PROMPTS[0]}]], cfg)[0]
    expected = argmax_loop(model, tokenizer, prompt_ids, 12)
    assert results[0]["new_tokens"] == len(expected)
    assert results[0]["text"] == tokenizer.decode(expected, skip_special_tokens=True)
    assert results[0]["text"].strip()  # the reference is not trivially empty


def test_chat_prompt_uses_template_and_system(tokenizer):
    cfg = GenerationConfig(system="Be brief.")
    ids = encode_prompts(tokenizer, [[{"role": "user", "content": "hi"}]], cfg)[0]
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nBe brief.")
    assert text.endswith("<|im_start|>assistant\n")
    raw = encode_prompts(tokenizer, ["hi"], GenerationConfig(chat=False))[0]
    assert tokenizer.decode(raw) == "hi"


def test_batch_with_left_padding_equals_one_at_a_time(model, tokenizer):
    lengths = {len(ids) for ids in encode_prompts(tokenizer, PROMPTS, GenerationConfig())}
    assert len(lengths) == 3  # the prompts really need padding
    batched = generate(model, tokenizer, PROMPTS, GenerationConfig(max_new_tokens=10, batch_size=3))
    single = generate(model, tokenizer, PROMPTS, GenerationConfig(max_new_tokens=10, batch_size=1))
    assert batched == single
    raw = GenerationConfig(max_new_tokens=6, chat=False, batch_size=3)  # no template
    assert generate(model, tokenizer, PROMPTS, raw) == generate(
        model, tokenizer, PROMPTS, raw.model_copy(update={"batch_size": 1})
    )


def test_stop_string_cuts_text_and_stops_early(model, tokenizer):
    cfg = GenerationConfig(max_new_tokens=16, chat=False)
    full = generate(model, tokenizer, [PROMPTS[2]], cfg)[0]
    text = full["text"]
    # a stop string whose first occurrence is well inside the completion
    k = next(
        k
        for k in range(4, len(text) - 2)
        if text[k : k + 2].isascii() and text[k : k + 2].strip() and text.find(text[k : k + 2]) == k
    )
    stop = text[k : k + 2]
    cut = generate(model, tokenizer, [PROMPTS[2]], cfg.model_copy(update={"stop": [stop]}))[0]
    assert cut["text"] == text[:k]
    assert cut["finish_reason"] == "stop"
    assert cut["new_tokens"] < full["new_tokens"]  # transformers stopped, not just our cut


def test_decode_counts_eos_and_strips_padding(tokenizer):
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    a, b = tokenizer("hello world", add_special_tokens=False)["input_ids"][:2]
    assert _decode(tokenizer, [a, b, eos, pad, pad], [], [eos]) == {
        "text": tokenizer.decode([a, b]),
        "new_tokens": 3,
        "finish_reason": "stop",
    }
    assert _decode(tokenizer, [a, b, a], [], [eos])["finish_reason"] == "length"
    assert _decode(tokenizer, [a, b, a], [], [eos, b])["new_tokens"] == 2  # another end id


def test_sampling_is_seeded(model, tokenizer):
    cfg = GenerationConfig(max_new_tokens=8, temperature=1.0, top_k=20, top_p=0.9, seed=3)
    first = generate(model, tokenizer, PROMPTS[:2], cfg)
    assert first == generate(model, tokenizer, PROMPTS[:2], cfg)
    assert generate(model, tokenizer, PROMPTS[:2], cfg.model_copy(update={"seed": 4})) != first


def test_peft_wrapped_model(tokenizer):
    base = build_model(
        ModelConfig(preset="tiny-llama", tokenizer="unused", overrides={"initializer_range": 0.5}),
        tokenizer,
        seed=1,
    )
    peft_model = add_lora(base, AdapterConfig(type="lora", rank=4))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    peft_model.eval()
    cfg = GenerationConfig(max_new_tokens=8)
    out = generate(peft_model, tokenizer, PROMPTS[:2], cfg)
    for prompt, result in zip(PROMPTS[:2], out, strict=True):
        ids = encode_prompts(tokenizer, [prompt], cfg)[0]
        expected = argmax_loop(peft_model, tokenizer, ids, 8)
        assert result["text"] == tokenizer.decode(expected, skip_special_tokens=True)
    with peft_model.disable_adapter():
        assert generate(peft_model, tokenizer, PROMPTS[:2], cfg) != out  # the adapter acts
