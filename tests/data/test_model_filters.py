"""perplexity_filter and classifier_filter: scores, drops with reasons, batching, pickling."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import pytest
import torch

from lmforge.config import load_config
from lmforge.config.recipes import TrainRecipe
from lmforge.data.blocks import REGISTRY, ShardContext, run_block
from lmforge.data.document import Document
from lmforge.data.model_filters import ClassifierFilter, PerplexityFilter, truncate_tokens
from lmforge.data.synthetic import make_corpus
from lmforge.errors import ConfigError
from lmforge.recipes.train import run as train


@pytest.fixture(scope="module")
def lm_run(tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny llama pretrained for a few steps on the English half of the synthetic corpus."""
    out = tmp_path_factory.mktemp("ppl-lm")
    corpus = out / "english.jsonl"
    rows = [r for r in make_corpus(600, seed=0) if r["lang"] == "en"]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    overrides = [
        "stage=pt",
        "model.preset=tiny-llama",
        f"model.tokenizer={tokenizer_dir}",
        f"data.train=[{corpus}]",
        "data.max_length=64",
        "train.batch_size=8",
        "train.max_steps=100",
        "train.lr=3e-3",
        "track.progress=false",
        "track.tensorboard=off",
        f"output_dir={out / 'run'}",
    ]
    train(load_config(TrainRecipe, None, overrides))
    return out / "run"


def shuffled_chars(text: str, seed: int) -> str:
    chars = list(text)
    random.Random(seed).shuffle(chars)
    return "".join(chars)


def docs_in_and_garbage(n: int = 6) -> tuple[list[Document], list[Document]]:
    """Held-out English corpus documents (another seed) and the same with shuffled characters."""
    rows = [r for r in make_corpus(4 * n, seed=11) if r["lang"] == "en"][:n]
    good = [Document(id=f"in{i}", text=r["text"]) for i, r in enumerate(rows)]
    bad = [Document(id=f"junk{i}", text=shuffled_chars(r["text"], i)) for i, r in enumerate(rows)]
    return good, bad


def run(block, docs, seed=0):
    ctx = ShardContext(shard=0, seed=seed)
    out = list(run_block(block, docs, ctx))
    return out, ctx


def test_in_domain_scores_lower_than_garbage_and_garbage_is_dropped(lm_run):
    good, bad = docs_in_and_garbage()
    block = REGISTRY["perplexity_filter"]({"model": str(lm_run), "device": "cpu"})
    block.setup()
    good_ppl = block.score([d.text for d in good])
    bad_ppl = block.score([d.text for d in bad])
    assert max(good_ppl) < min(bad_ppl), (good_ppl, bad_ppl)
    threshold = (max(good_ppl) + min(bad_ppl)) / 2
    block = PerplexityFilter(
        {"model": str(lm_run), "device": "cpu", "max_perplexity": threshold, "batch_size": 4}
    )
    docs = [d for pair in zip(good, bad, strict=True) for d in pair]
    kept, ctx = run(block, docs)
    assert [d.id for d in kept] == [d.id for d in good]
    assert ctx.stats.dropped == {"high_perplexity": len(bad)}
    assert [e["id"] for e in ctx.exclusions] == [d.id for d in bad]
    for entry, ppl in zip(ctx.exclusions, bad_ppl, strict=True):
        assert entry["detail"]["perplexity"] == pytest.approx(ppl, rel=1e-3)
    for doc, ppl in zip(kept, good_ppl, strict=True):  # batch size does not change a score
        assert doc.metadata["perplexity"] == pytest.approx(ppl, rel=1e-3)


def test_min_perplexity_drops_too_predictable_text(lm_run):
    good, _ = docs_in_and_garbage(3)
    block = PerplexityFilter({"model": str(lm_run), "device": "cpu"})
    ppl = block.score([d.text for d in good])
    low, mid, _ = sorted(ppl)
    block = PerplexityFilter(
        {"model": str(lm_run), "device": "cpu", "min_perplexity": (low + mid) / 2}
    )
    kept, ctx = run(block, good)
    assert [d.id for d in kept] == [d.id for d, p in zip(good, ppl, strict=True) if p != low]
    assert ctx.stats.dropped == {"low_perplexity": 1}
    assert ctx.exclusions[0]["detail"]["perplexity"] == pytest.approx(low, rel=1e-3)


def test_perplexity_filter_pickles_without_its_model(lm_run):
    block = PerplexityFilter({"model": str(lm_run), "device": "cpu", "max_tokens": 16})
    block.setup()
    text = make_corpus(1, seed=5)[0]["text"]
    before = block.score([text])
    clone = pickle.loads(pickle.dumps(block))
    assert not hasattr(clone, "_model")
    assert clone.score([text]) == pytest.approx(before)


def test_truncate_tokens_keeps_the_first_tokens(tokenizer):
    text = make_corpus(1, seed=1)[0]["text"]
    cut = truncate_tokens(tokenizer, text, 10)
    assert text.startswith(cut) and len(cut) < len(text)
    assert len(tokenizer(cut, add_special_tokens=False)["input_ids"]) == 10


def test_perplexity_bounds_are_validated():
    with pytest.raises(ValueError, match="min_perplexity"):
        PerplexityFilter({"model": "x", "min_perplexity": 50, "max_perplexity": 10})


# ----------------------------------------------------------------------------- classifier_filter
def length_score(texts: list[str]) -> list[float]:
    """A test scorer: 1.0 for texts of 20+ characters, else the length / 20."""
    return [min(len(t) / 20, 1.0) for t in texts]


def label_scores(texts: list[str]) -> list[dict]:
    return [{"good": float("good" in t), "bad": float("good" not in t)} for t in texts]


def test_classifier_function_scores_and_drops():
    docs = [Document(id=str(i), text="x" * n) for i, n in enumerate([5, 25, 10, 40])]
    block = REGISTRY["classifier_filter"](
        {"function": f"{__name__}:length_score", "min_score": 0.6, "batch_size": 3}
    )
    kept, ctx = run(block, docs)
    assert [d.id for d in kept] == ["1", "3"]
    assert [d.metadata["quality_score"] for d in docs] == [0.25, 1.0, 0.5, 1.0]
    assert ctx.stats.dropped == {"low_score": 2}
    assert ctx.exclusions[0]["detail"] == {"quality_score": 0.25}


def test_classifier_function_with_labels_and_max_score():
    docs = [Document(id="a", text="good text"), Document(id="b", text="meh")]
    block = ClassifierFilter(
        {
            "function": f"{__name__}:label_scores",
            "label": "bad",
            "max_score": 0.5,
            "score_key": "badness",
        }
    )
    kept, ctx = run(block, docs)
    assert [d.id for d in kept] == ["a"]
    assert docs[1].metadata["badness"] == 1.0 and ctx.stats.dropped == {"high_score": 1}


def test_classifier_config_errors():
    with pytest.raises(ValueError, match="exactly one"):
        ClassifierFilter({})
    with pytest.raises(ConfigError, match="package.module:function"):
        ClassifierFilter({"function": "no_colon"})
    with pytest.raises(ConfigError, match="has no attribute"):
        ClassifierFilter({"function": f"{__name__}:missing"})


@pytest.fixture(scope="module")
def bert_dir(tokenizer, tmp_path_factory) -> Path:
    """A randomly initialised 3-class BERT classifier saved with the project's tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
        id2label={0: "low", 1: "mid", 2: "high"},
        label2id={"low": 0, "mid": 1, "high": 2},
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    folder = tmp_path_factory.mktemp("clf")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def reference_probs(folder: Path, texts: list[str]) -> torch.Tensor:
    """Class probabilities computed one text at a time, without padding."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    rows = []
    with torch.no_grad():
        for text in texts:
            enc = tok(text, truncation=True, max_length=64, return_tensors="pt")
            rows.append(model(**enc).logits[0].softmax(-1))
    return torch.stack(rows)


def test_classifier_model_scores_are_label_probabilities(bert_dir):
    texts = [r["text"] for r in make_corpus(5, seed=2)]
    docs = [Document(id=str(i), text=t) for i, t in enumerate(texts)]
    probs = reference_probs(bert_dir, texts)[:, 2]  # "high"
    threshold = float(probs.median())
    block = ClassifierFilter(
        {
            "model": str(bert_dir),
            "label": "high",
            "min_score": threshold,
            "device": "cpu",
            "batch_size": 2,
        }
    )
    kept, ctx = run(block, docs)
    scores = [d.metadata["quality_score"] for d in docs]
    assert scores == pytest.approx(probs.tolist(), abs=1e-5)  # padding in batches changes nothing
    assert [d.id for d in kept] == [str(i) for i, p in enumerate(probs) if p >= threshold]
    assert ctx.stats.dropped == {"low_score": 5 - len(kept)}


def test_classifier_model_needs_a_label_beyond_two_classes(bert_dir):
    block = ClassifierFilter({"model": str(bert_dir), "device": "cpu"})
    with pytest.raises(ConfigError, match="set label"):
        block.setup()
    with pytest.raises(ConfigError, match="not a class"):
        ClassifierFilter({"model": str(bert_dir), "label": "top", "device": "cpu"}).setup()
