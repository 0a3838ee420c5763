"""Perplexity equals independent token-by-token reference computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.config.groups import ModelConfig
from lmforge.eval.perplexity import count_words, perplexity, prefix_token_id, rolling_windows
from lmforge.models.load import build_model

TEXTS = [
    "The quick brown fox jumps over the lazy dog, and the number 4096 is even.\n"
    "A second line follows with more words to score.",
    "这家餐厅的服务非常好，菜也很好吃。我们下次还会再来。司机非常热情，强烈推荐给大家。",
]


@pytest.fixture(scope="module")
def model(tokenizer):
    cfg = ModelConfig(preset="tiny-llama", tokenizer="unused", overrides={"initializer_range": 0.3})
    return build_model(cfg, tokenizer, seed=2).eval()


def tokens_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def logits_of(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()


def close(a: float, b: float, rel: float = 1e-4) -> bool:
    return math.isclose(a, b, rel_tol=rel)


def test_whole_text_in_one_window_is_plain_cross_entropy(model, tokenizer):
    toks = tokens_of(tokenizer, TEXTS[0])
    seq = [prefix_token_id(tokenizer)] + toks
    logits = logits_of(model, seq)
    reference = F.cross_entropy(logits[:-1], torch.tensor(seq[1:]), reduction="sum").item()
    result = perplexity(model, tokenizer, [TEXTS[0]], window=len(seq) + 5)
    assert result.tokens == len(toks)
    assert close(result.nll, reference)
    assert close(result.token_perplexity, math.exp(reference / len(toks)))


def test_disjoint_windows_match_lm_eval_rolling_windows(model, tokenizer):
    """stride == window: lm-eval's loglikelihood_rolling, windows spelled out one by one."""
    window = 16
    total_ref, total_tokens = 0.0, 0
    for text in TEXTS:
        toks = tokens_of(tokenizer, text)
        assert len(toks) > 2 * window and len(toks) % window  # several windows + a short one
        # first window: [prefix] + toks[:window-1] predicts toks[:window]
        inp = [prefix_token_id(tokenizer)] + toks[: window - 1]
        ref = F.cross_entropy(
            logits_of(model, inp), torch.tensor(toks[:window]), reduction="sum"
        ).item()
        # later windows: predict the next block; the input is the `window` tokens before its end
        for a in range(window, len(toks), window):
            b = min(a + window, len(toks))
            inp = toks[b - window - 1 : b - 1]
            logits = logits_of(model, inp)[-(b - a) :]
            ref += F.cross_entropy(logits, torch.tensor(toks[a:b]), reduction="sum").item()
        single = perplexity(model, tokenizer, [text], window=window)
        assert single.tokens == len(toks)
        assert close(single.nll, ref)
        total_ref += ref
        total_tokens += len(toks)
    both = perplexity(model, tokenizer, TEXTS, window=window, batch_size=3)
    assert both.tokens == total_tokens
    assert close(both.nll, total_ref)
    assert [t for _, t in both.per_text] == [len(tokens_of(tokenizer, t)) for t in TEXTS]


@pytest.mark.parametrize("stride", [1, 5])
def test_strided_windows_match_per_token_brute_force(model, tokenizer, stride):
    """stride < window, token by token: one forward pass per scored token.

    seq = [prefix] + tokens. Targets seq[1..n] are taken in chunks of ``stride``; the chunk
    holding target i ends at e(i) = min(ceil(i / stride) * stride, n), and its forward pass
    reads seq[max(0, e(i) - window) : e(i)]. Causal attention makes the prediction for seq[i]
    in that pass equal to a pass over seq[max(0, e(i) - window) : i] alone. With stride 1,
    e(i) = i: every token sees exactly the `window` tokens before it (a full sliding window).
    """
    window = 8
    text = TEXTS[1]
    seq = [prefix_token_id(tokenizer)] + tokens_of(tokenizer, text)
    n = len(seq) - 1
    reference = 0.0
    for i in range(1, n + 1):
        e = min(math.ceil(i / stride) * stride, n)
        start = max(0, e - window)
        logp = logits_of(model, seq[start:i])[-1].log_softmax(-1)
        reference -= logp[seq[i]].item()
    result = perplexity(model, tokenizer, [text], window=window, stride=stride)
    assert result.tokens == n
    assert close(result.nll, reference)


def test_every_token_scored_once():
    seq = list(range(23))
    for window, stride in [(8, 8), (8, 3), (5, 1), (30, 30)]:
        windows = rolling_windows(seq, window, stride)
        targets = [t for _, ts in windows for t in ts]
        assert targets == seq[1:]
        for inp, ts in windows:
            assert len(inp) <= window and len(ts) <= stride
            assert inp[-1] + 1 == ts[-1]  # the last input token predicts the last target


def test_counts_and_derived_metrics(model, tokenizer):
    result = perplexity(model, tokenizer, TEXTS, window=32, stride=16)
    assert result.words == sum(count_words(t) for t in TEXTS) == 24 + 1
    assert result.bytes == sum(len(t.encode("utf-8")) for t in TEXTS)
    assert close(result.bits_per_byte, result.nll / (result.bytes * math.log(2)))
    assert close(result.word_perplexity, math.exp(result.nll / result.words))
    assert close(result.nll, sum(nll for nll, _ in result.per_text), rel=1e-12)
    unbatched = perplexity(model, tokenizer, TEXTS, window=32, stride=16, batch_size=1)
    assert close(unbatched.nll, result.nll, rel=1e-5)


def test_stride_must_fit_window(model, tokenizer):
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, tokenizer, TEXTS, window=8, stride=9)
