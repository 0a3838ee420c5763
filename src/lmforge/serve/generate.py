"""Batched text generation with a Hugging Face causal LM (plain or PEFT-wrapped).

Prompts are left-padded into batches with an explicit attention mask and decoded by
``model.generate`` with its KV cache; greedy when ``temperature == 0``, otherwise sampling. The
completion excludes the prompt and special tokens and is cut at the first stop string.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from lmforge.config.groups import GenerationConfig
from lmforge.tokenizer.templates import render


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Switch to eval mode (no dropout) and back, so a training loop can call us mid-run."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def encode_prompts(
    tokenizer, prompts: list[list[dict]] | list[str], cfg: GenerationConfig
) -> list[list[int]]:
    """Token ids per prompt: chat messages through the template, or raw strings as they are."""
    encoded = []
    for prompt in prompts:
        if cfg.chat:
            if isinstance(prompt, str):
                prompt = [{"role": "user", "content": prompt}]
            if cfg.system:
                prompt = [{"role": "system", "content": cfg.system}, *prompt]
            text = render(tokenizer, prompt, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # template has its own
        else:
            if not isinstance(prompt, str):
                raise TypeError("generation.chat is off: prompts must be strings")
            ids = tokenizer(prompt)["input_ids"]  # a BOS, if the tokenizer adds one
        if not ids:
            raise ValueError(f"prompt {prompt!r:.60} encodes to no tokens")
        encoded.append(ids)
    return encoded


def left_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both ``(batch, longest)``, padded on the left."""
    longest = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, longest - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[row, longest - len(ids) :] = 1
    return input_ids, mask


def end_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS plus any end-of-turn ids the model's generation config declares."""
    declared = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [tokenizer.eos_token_id, *(declared if isinstance(declared, list) else [declared])]
    return list(dict.fromkeys(i for i in ids if i is not None))


def pad_id(tokenizer) -> int:
    """The id left padding uses: the tokenizer's pad token, else its EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def cut_at_end(ids: list[int], eos_ids: list[int]) -> tuple[list[int], bool]:
    """(the generated ids through the first end-of-turn id, whether there was one)."""
    for i, token in enumerate(ids):
        if token in eos_ids:
            return ids[: i + 1], True
    return ids, False


def _decode(tokenizer, ids: list[int], stop: list[str], eos_ids: list[int]) -> dict:
    """One completion from its generated ids: cut at EOS, trailing padding and stop strings."""
    pad = tokenizer.pad_token_id
    ids, ended = cut_at_end(ids, eos_ids)
    finish = "stop" if ended else "length"
    if not ended:
        while ids and pad is not None and ids[-1] == pad:  # rows that finished early on a stop
            ids = ids[:-1]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    cuts = [text.index(s) for s in stop if s and s in text]
    if cuts:
        text, finish = text[: min(cuts)], "stop"
    return {"text": text, "new_tokens": len(ids), "finish_reason": finish}


def decoding_kwargs(tokenizer, cfg: GenerationConfig, eos_ids: list[int]) -> dict:
    """Keyword arguments for ``model.generate`` that follow ``cfg`` exactly."""
    kwargs = {
        "max_new_tokens": cfg.max_new_tokens,
        "use_cache": True,
        "eos_token_id": eos_ids,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if cfg.temperature == 0:
        kwargs["do_sample"] = False
    else:  # top_k=0 must be explicit: transformers fills an unset top_k with 50
        kwargs.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
    if cfg.stop:
        kwargs.update(stop_strings=list(cfg.stop), tokenizer=tokenizer)
    return kwargs


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[list[dict]] | list[str],
    cfg: GenerationConfig,
    progress: bool = False,
) -> list[dict]:
    """Complete every prompt; returns per prompt ``{"text", "new_tokens", "finish_reason"}``.

    ``prompts`` are message lists (``cfg.chat``; a bare string counts as one user message) or raw
    strings. ``new_tokens`` counts generated tokens including a final EOS; ``finish_reason`` is
    ``"stop"`` (EOS or a stop string) or ``"length"`` (``max_new_tokens`` reached).
    ``progress`` shows a bar over batches on a terminal.
    """
    from tqdm.auto import tqdm

    encoded = encode_prompts(tokenizer, prompts, cfg)
    pad = pad_id(tokenizer)
    device = next(model.parameters()).device
    eos_ids = end_ids(model, tokenizer)
    kwargs = decoding_kwargs(tokenizer, cfg, eos_ids)
    torch.manual_seed(cfg.seed)
    results: list[dict] = []
    with eval_mode(model):
        starts = range(0, len(encoded), cfg.batch_size)
        for start in tqdm(
            starts, desc="generate", unit="batch", disable=None if progress else True
        ):
            input_ids, mask = left_pad(encoded[start : start + cfg.batch_size], pad)
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs
            )
            new = out[:, input_ids.shape[1] :].tolist()
            results.extend(_decode(tokenizer, ids, cfg.stop, eos_ids) for ids in new)
    return results
