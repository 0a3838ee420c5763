"""lmforge inside lm-evaluation-harness, checked against code that is not lmforge's: the total
negative log-likelihood of WikiText-2's validation text (disjoint windows, stride = window) from
lmforge's perplexity equals the one lm-eval's own ``hf`` backend (``HFLM``) computes on the
saved model folder, and lmforge's ``LM`` adapter gives the same number; loglikelihood pairs and
greedy generation agree too. A project-written text stands in when ../shared/data is absent
(never under CI=true)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from lmforge.config.groups import ModelConfig  # noqa: E402
from lmforge.eval.harness import LmforgeLM  # noqa: E402
from lmforge.eval.perplexity import perplexity  # noqa: E402
from lmforge.models.load import build_model, save_pretrained  # noqa: E402

WINDOW = 256
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"  # as conftest's


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory):
    """A tiny Llama whose random weights are far from uniform (a uniform model would hide a
    target shifted by one), saved as a plain transformers folder."""
    cfg = ModelConfig(preset="tiny-llama", tokenizer="unused", overrides={"initializer_range": 0.3})
    model = build_model(cfg, tokenizer, seed=4)
    return save_pretrained(model, tokenizer, tmp_path_factory.mktemp("harness") / "model")


@pytest.fixture(scope="module")
def offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def hf_lm(model_dir, offline):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(model_dir), max_length=WINDOW, batch_size=8, device="cpu")


@pytest.fixture(scope="module")
def our_lm(model_dir):
    return LmforgeLM(path=str(model_dir), max_length=WINDOW, batch_size=8, device="cpu")


def valid_text(demo_data) -> tuple[str, str]:
    """WikiText-2's validation text, or the project's synthetic corpus when it is absent."""
    path = SHARED_DATA / "wikitext-2" / "valid.txt"
    if path.is_file():
        return "wikitext-2/valid.txt", path.read_text(encoding="utf-8")
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {path} is missing")
    import json

    docs = [json.loads(x)["text"] for x in demo_data["corpus"].read_text("utf-8").splitlines()]
    return "the project's synthetic corpus", "\n\n".join(docs)


def _rolling(text: str) -> list[Instance]:
    return [Instance("loglikelihood_rolling", {}, (text,), 0)]


def test_total_nll_equals_lm_eval_hf_backend(model_dir, hf_lm, our_lm, tokenizer, demo_data):
    from lmforge.models.load import load_for_inference

    name, text = valid_text(demo_data)
    model, tok = load_for_inference(ModelConfig(path=str(model_dir)), "cpu")
    ours = perplexity(model, tok, [text], window=WINDOW, batch_size=8)
    assert ours.tokens > 100_000, (name, ours.tokens)  # the whole file, many windows
    theirs = -hf_lm.loglikelihood_rolling(_rolling(text), disable_tqdm=True)[0]
    adapter = -our_lm.loglikelihood_rolling(_rolling(text))[0]
    print(
        f"{name}: {ours.tokens} tokens, nll lmforge {ours.nll:.4f}, lm-eval hf {theirs:.4f}, "
        f"adapter {adapter:.4f}"
    )
    assert ours.nll == pytest.approx(theirs, rel=1e-5)  # the issue asks for 1e-3
    assert adapter == pytest.approx(ours.nll, rel=1e-6)


def test_loglikelihood_pairs_equal_lm_eval_hf_backend(hf_lm, our_lm):
    pairs = [
        ("The capital of France is", " Paris"),
        ("Question: is 7 odd or even?\nAnswer:", " odd"),
        ("这家餐厅的菜", "很好吃。"),
        ("", "An empty context is the prefix token."),
        ("trailing spaces move  ", "to the continuation"),
    ]
    requests = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
    theirs = hf_lm.loglikelihood(requests, disable_tqdm=True)
    ours = our_lm.loglikelihood(requests)
    for (lp_t, greedy_t), (lp_o, greedy_o) in zip(theirs, ours, strict=True):
        assert lp_o == pytest.approx(lp_t, rel=1e-4, abs=1e-4)
        assert greedy_o == greedy_t


def test_generate_until_equals_lm_eval_hf_backend(hf_lm, our_lm):
    args = [
        ("Once upon a time", {"until": ["\n"], "max_gen_toks": 12, "do_sample": False}),
        ("数字3是", {"until": ["。"], "max_gen_toks": 8, "do_sample": False}),
    ]
    requests = [Instance("generate_until", {}, a, i) for i, a in enumerate(args)]
    assert our_lm.generate_until(requests) == hf_lm.generate_until(requests, disable_tqdm=True)
