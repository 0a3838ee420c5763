"""Rollouts: answers sampled from the policy inside a training run.

The prompts are token ids already rendered through the chat template (with the generation
prompt); each is completed ``n`` times in one batched ``generate`` call with the KV cache. An
answer's ids end at (and include) the first end-of-turn token, as the SFT labels do, so the
policy is trained on exactly what it produced, stop included.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmforge.config.groups import GenerationConfig
from lmforge.serve.generate import (
    cut_at_end,
    decoding_kwargs,
    end_ids,
    eval_mode,
    left_pad,
    pad_id,
)
from lmforge.training.attention import generation_attention


@dataclass
class Answer:
    ids: list[int]  # through the first end-of-turn token, when one was produced
    text: str  # decoded without special tokens
    finished: bool  # ended with an end-of-turn token (else cut at max_new_tokens)


@torch.no_grad()
def sample_answers(
    model, tokenizer, prompts: list[list[int]], n: int, rl, seed: int
) -> list[list[Answer]]:
    """``n`` sampled answers per prompt (``rl``: ``max_new_tokens``, ``temperature``,
    ``top_p``), drawn from a random stream seeded with ``seed`` and forked from the caller's."""
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    eos_ids = end_ids(model, tokenizer)
    cfg = GenerationConfig(
        max_new_tokens=rl.max_new_tokens, temperature=rl.temperature, top_p=rl.top_p
    )
    kwargs = decoding_kwargs(tokenizer, cfg, eos_ids)
    batch = [ids for ids in prompts for _ in range(n)]
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), eval_mode(model), generation_attention(model):
        torch.manual_seed(seed)
        input_ids, mask = left_pad(batch, pad)
        out = model.generate(
            input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs
        )
    new = out[:, input_ids.shape[1] :].tolist()
    answers = []
    for ids in new:
        ids, finished = cut_at_end(ids, eos_ids)
        answers.append(Answer(ids, tokenizer.decode(ids, skip_special_tokens=True), finished))
    return [answers[i * n : (i + 1) * n] for i in range(len(prompts))]


def prompts_and_references(units, tokenizer) -> tuple[list[list[int]], list[str]]:
    """The prompt ids and reference texts of ``[prompt, reference]`` units
    (``training.encoders.rl_prompt_pieces``; cached units hold arrays, hence the ``int``)."""
    prompts = [[int(t) for t in u[0].ids] for u in units]
    references = [
        tokenizer.decode([int(t) for t in u[1].ids], skip_special_tokens=True) for u in units
    ]
    return prompts, references
