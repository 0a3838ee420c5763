"""Perplexity of a causal LM on texts, with lm-evaluation-harness's rolling-window convention.

Each text is tokenised without special tokens and prefixed with one token (BOS when the
tokenizer has one, else EOS), so that every text token is scored, the first one included. The
targets are then taken in chunks of ``stride`` new tokens; for a chunk whose last target sits at
index ``e`` of ``seq = [prefix] + tokens`` the model reads ``seq[max(0, e - window):e]`` and the
last ``len(chunk)`` predictions are scored. With ``stride == window`` (the default) these are
exactly lm-eval's disjoint ``loglikelihood_rolling`` windows; a smaller stride gives every token
at least ``window - stride + 1`` tokens of context at the price of more forward passes.

Word counts follow lm-eval's wikitext task: ``len(re.split(r"\\s+", text))`` on the original
text; bytes are UTF-8 bytes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from lmforge.serve.generate import eval_mode


@dataclass
class PerplexityResult:
    """Totals over a set of texts; ``nll`` is in nats, summed in float64."""

    nll: float = 0.0
    tokens: int = 0
    words: int = 0
    bytes: int = 0
    per_text: list[tuple[float, int]] = field(default_factory=list)  # (nll, tokens) per text

    @property
    def token_perplexity(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else float("nan")

    @property
    def word_perplexity(self) -> float:
        return math.exp(self.nll / self.words) if self.words else float("nan")

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (self.bytes * math.log(2)) if self.bytes else float("nan")

    def merge(self, other: PerplexityResult) -> PerplexityResult:
        return PerplexityResult(
            self.nll + other.nll,
            self.tokens + other.tokens,
            self.words + other.words,
            self.bytes + other.bytes,
            self.per_text + other.per_text,
        )

    def summary(self) -> dict:
        return {
            "nll": self.nll,
            "tokens": self.tokens,
            "words": self.words,
            "bytes": self.bytes,
            "token_perplexity": self.token_perplexity,
            "word_perplexity": self.word_perplexity,
            "bits_per_byte": self.bits_per_byte,
        }


def count_words(text: str) -> int:
    """lm-eval's wikitext convention (counted on the original text, empty edge pieces included)."""
    return len(re.split(r"\s+", text))


def prefix_token_id(tokenizer) -> int:
    """The token every text is conditioned on: BOS if the tokenizer has one, else EOS."""
    prefix = (
        tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    )
    if prefix is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start texts with")
    return prefix


def rolling_windows(seq: list[int], window: int, stride: int) -> list[tuple[list[int], list[int]]]:
    """(model input, scored targets) for every chunk of ``seq[1:]``; each target is scored once.

    The targets are the last ``len(targets)`` next-token predictions of the input.
    """
    out = []
    for first in range(1, len(seq), stride):
        end = min(first + stride, len(seq))  # targets seq[first:end]; the last one is seq[end - 1]
        out.append((seq[max(0, end - 1 - window) : end - 1], seq[first:end]))
    return out


def score_targets(
    model, batch: list[tuple[list[int], list[int]]], pad_id: int
) -> list[tuple[float, bool]]:
    """Per ``(model input, targets)``: ``-sum log p`` of the targets, which are the last
    ``len(targets)`` next-token predictions of the input, and whether each target was the
    argmax (lm-eval's ``is_greedy``). Right padding is harmless: attention is causal."""
    device = next(model.parameters()).device
    longest = max(len(inp) for inp, _ in batch)
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, (inp, _) in enumerate(batch):
        input_ids[row, : len(inp)] = torch.tensor(inp)
        mask[row, : len(inp)] = 1
    # the last ``longest`` positions: prompt/P-tuning adapters put virtual tokens in front
    logits = model(
        input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False
    ).logits[:, -longest:]
    out = []
    for row, (inp, targets) in enumerate(batch):
        logp = logits[row, len(inp) - len(targets) : len(inp)].float().log_softmax(-1)
        wanted = torch.tensor(targets, device=logp.device)
        picked = logp.gather(-1, wanted.unsqueeze(-1))
        out.append((-picked.double().sum().item(), bool((logp.argmax(-1) == wanted).all())))
    return out


@torch.no_grad()
def perplexity(
    model, tokenizer, texts: list[str], window: int, stride: int | None = None, batch_size: int = 8
) -> PerplexityResult:
    """Score ``texts`` with ``model``, reading at most ``window`` tokens per forward pass.

    ``stride`` (default ``window``) is the number of new tokens scored per forward pass.
    ``batch_size`` windows go through the model together; it changes speed, not the result.
    """
    stride = window if stride is None else stride
    if not 0 < stride <= window:
        raise ValueError(f"stride must be in 1..window ({window}), got {stride}")
    prefix = prefix_token_id(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix
    jobs: list[tuple[int, list[int], list[int]]] = []  # (text index, model input, targets)
    tokens, words, nbytes = [], 0, 0
    for index, text in enumerate(texts):
        seq = [prefix] + tokenizer(text, add_special_tokens=False)["input_ids"]
        jobs.extend((index, inp, targets) for inp, targets in rolling_windows(seq, window, stride))
        tokens.append(len(seq) - 1)
        words += count_words(text)
        nbytes += len(text.encode("utf-8"))
    jobs.sort(key=lambda job: -len(job[1]))  # similar lengths together: little padding
    nll = [0.0] * len(texts)
    with eval_mode(model):
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            scores = score_targets(model, [(inp, targets) for _, inp, targets in batch], pad_id)
            for (index, _, _), (score, _) in zip(batch, scores, strict=True):
                nll[index] += score
    return PerplexityResult(
        nll=math.fsum(nll),
        tokens=sum(tokens),
        words=words,
        bytes=nbytes,
        per_text=list(zip(nll, tokens, strict=True)),
    )
