"""Log-likelihoods of continuations given contexts, with lm-evaluation-harness's conventions, so
that lmforge's multiple-choice scores and lm-eval's agree item by item (a test checks it):

- a pair is tokenised as lm-eval's ``TemplateLM._encode_pair`` does for causal models: trailing
  spaces of the context move to the continuation, ``context + continuation`` is encoded whole
  and split at the length of the encoded context; an empty context becomes the prefix token
  (BOS, else EOS; ``perplexity.prefix_token_id``);
- the model reads at most ``max_length`` tokens before each continuation token (the input is
  ``(context + continuation)[-(max_length + 1):][:-1]``);
- the result per pair is ``(sum of log p(continuation tokens), every token the argmax)``.
"""

from __future__ import annotations

import torch

from lmforge.eval.perplexity import prefix_token_id, score_targets
from lmforge.serve.generate import eval_mode, pad_id


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``(context ids, continuation ids)`` as lm-eval splits them (see the module doc)."""
    if not context:
        cont = encode(tokenizer, continuation)
        prefix = prefix_token_id(tokenizer)
        return ([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = encode(tokenizer, context + continuation)
    n = len(encode(tokenizer, context))
    return whole[:n], whole[n:]


def token_loglikelihoods(
    model, tokenizer, pairs: list[tuple[list[int], list[int]]], max_length: int, batch_size: int
) -> list[tuple[float, bool]]:
    """``(log-likelihood, greedy)`` of each ``(context ids, continuation ids)`` pair."""
    jobs = []
    for context, continuation in pairs:
        if not continuation:
            raise ValueError("an empty continuation has no log-likelihood")
        whole = (list(context) + list(continuation))[-(max_length + 1) :]
        jobs.append((whole[:-1], list(continuation)))
    order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i][0]))  # similar lengths together
    out: list = [None] * len(jobs)
    pad = pad_id(tokenizer)
    with torch.no_grad(), eval_mode(model):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for i, (nll, greedy) in zip(
                chunk, score_targets(model, [jobs[i] for i in chunk], pad), strict=True
            ):
                out[i] = (-nll, greedy)
    return out


def loglikelihoods(
    model, tokenizer, pairs: list[tuple[str, str]], max_length: int, batch_size: int = 8
) -> list[tuple[float, bool]]:
    """``(log-likelihood, greedy)`` of each ``(context, continuation)`` text pair."""
    encoded = [encode_pair(tokenizer, c, x) for c, x in pairs]
    return token_loglikelihoods(model, tokenizer, encoded, max_length, batch_size)
