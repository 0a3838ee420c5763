"""augment_eda, back_translate and generate_augment: what is rewritten, ids and metadata of the
copies, determinism, counts (seen + added == kept), and the model plumbing on tiny models."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import pytest
import torch

from lmforge.data.augment import BackTranslate, GenerateAugment, fill, text_slots
from lmforge.data.augment_eda import AugmentEda, Words, load_lexicons, read_lexicon
from lmforge.data.blocks import REGISTRY, ShardContext, run_block
from lmforge.data.document import Document
from lmforge.errors import DataError
from lmforge.text.segment import words

EN = "The food was good, and the staff were very friendly.\nWe will come back soon!"
ZH = "这家餐厅的菜很好吃，服务员非常热情。我们下次还会再来。"


def run(block, docs, seed=0):
    ctx = ShardContext(shard=0, seed=seed)
    out = list(run_block(block, docs, ctx))
    return out, ctx


def rows(docs):
    return [d.to_row() for d in docs]


def is_subsequence(short: list[str], long: list[str]) -> bool:
    it = iter(long)
    return all(any(x == y for y in it) for x in short)


# ----------------------------------------------------------------------------- EDA
def test_words_keep_gaps_and_round_trip():
    for text, cjk in [(EN, False), (ZH, True), ("  Hi -- there!\n\n", False)]:
        w = Words(text, cjk)
        assert w.text() == text and w.words == words(text, cjk=cjk)
    w = Words("Hello, big world.", False)
    w.insert(1, "very")
    assert w.text() == "Hello, very big world."
    w.insert(4, "indeed")
    assert w.text() == "Hello, very big world indeed."
    w.delete(3)
    assert w.text() == "Hello, very big indeed."
    w.delete(0)
    assert w.text() == "very big indeed."
    w = Words("这家餐厅很好", True)
    w.insert(0, "那")
    assert w.text() == "那这家餐厅很好"


def test_each_operation_does_what_the_paper_says():
    lexicon = load_lexicons((), True)
    docs = [Document(id="en", text=EN), Document(id="zh", text=ZH)]
    out, ctx = run(AugmentEda({"num_aug": 4}), docs)
    assert [d.id for d in out] == ["en", *(f"en#eda{k}" for k in range(4))] + [
        "zh",
        *(f"zh#eda{k}" for k in range(4)),
    ]
    assert ctx.stats.to_dict() == {"seen": 2, "kept": 10, "changed": 0, "added": 8, "dropped": {}}
    assert out[0].text == EN and out[0].metadata == {}  # the original is untouched
    for copy in out:
        if "#" not in copy.id:
            continue
        source = EN if copy.id.startswith("en") else ZH
        cjk = copy.id.startswith("zh")
        info = copy.metadata["augmented"]
        assert info["method"] == "eda" and info["from"] == copy.id.split("#")[0]
        (op,) = info["ops"]
        old, new = words(source, cjk=cjk), words(copy.text, cjk=cjk)
        if op["op"] == "sr":
            changed = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
            assert len(changed) == op["n"] >= 1
            assert all(b.lower() in lexicon[a.lower()] for a, b in changed)
        elif op["op"] == "ri":
            assert len(new) == len(old) + op["n"] and is_subsequence(old, new)
        elif op["op"] == "rs":
            assert Counter(new) == Counter(old) and new != old
        else:
            assert len(new) == len(old) - op["n"] and is_subsequence(new, old)
    # pinned output: catches any change to the seeding or to the operations
    assert out[1].text == EN.replace("\nWe", "\nnice We")  # ri
    assert out[4].text == EN.replace("very", "really")  # sr
    assert out[8].text == ZH.replace("非常", "极其")  # sr


def test_eda_is_deterministic_per_document_and_seed():
    docs = lambda: [Document(id=str(i), text=EN) for i in range(3)]  # noqa: E731
    a, _ = run(AugmentEda({"num_aug": 3}), docs())
    b, _ = run(AugmentEda({"num_aug": 3}), docs())
    c, _ = run(AugmentEda({"num_aug": 3}), docs(), seed=1)
    alone, _ = run(AugmentEda({"num_aug": 3}), docs()[2:])
    assert rows(a) == rows(b) and rows(a) != rows(c)
    assert rows(alone) == rows(a)[-4:]  # a document's copies do not depend on its neighbours
    assert len({d.text for d in a if d.id.startswith("0#")}) == 3


def test_eda_rewrites_user_turns_and_prompts_only():
    chat = Document(
        id="chat",
        messages=[
            {"role": "system", "content": "Be very friendly."},
            {"role": "user", "content": "Is the hotel quiet and clean?"},
            {"role": "assistant", "content": "Yes, the hotel is quiet and clean."},
        ],
        fields={"label": "yes"},
    )
    pair = Document(
        id="pair",
        fields={"prompt": "Write a happy story.", "chosen": "A happy dog.", "rejected": "No."},
    )
    out, ctx = run(AugmentEda({"num_aug": 4}), [chat, pair])
    # copy 0 (random deletion, p=0.1 per word) deleted nothing in these short texts: not added
    assert [d.id for d in out] == [
        "chat",
        "chat#eda1",
        "chat#eda2",
        "chat#eda3",
        "pair",
        "pair#eda1",
        "pair#eda2",
        "pair#eda3",
    ]
    assert out[1].messages[1]["content"] == "Is the lodge quiet and clean?"
    assert out[7].fields["prompt"] == "story a happy Write."
    for copy in out:
        if copy.id.startswith("chat#"):
            assert copy.messages[0] == chat.messages[0] and copy.messages[2] == chat.messages[2]
            assert copy.messages[1]["content"] != chat.messages[1]["content"]
            assert copy.fields == {"label": "yes"}
        elif copy.id.startswith("pair#"):
            assert copy.fields["chosen"] == "A happy dog." and copy.fields["rejected"] == "No."
            assert copy.fields["prompt"] != "Write a happy story."
    assert chat.messages[1]["content"] == "Is the hotel quiet and clean?"  # deep copies


def test_eda_skips_other_splits_and_augmented_documents():
    docs = [
        Document(id="t", text=EN, metadata={"split": "train"}),
        Document(id="v", text=EN, metadata={"split": "test"}),
        Document(id="a", text=EN, metadata={"augmented": {"method": "eda", "from": "x"}}),
    ]
    block = REGISTRY["augment_eda"](AugmentEda.Params(num_aug=2, splits=["train"]))
    out, ctx = run(block, docs)
    assert [d.id for d in out] == ["t", "t#eda0", "t#eda1", "v", "a"]
    assert out[1].metadata["split"] == "train" and ctx.stats.added == 2


def test_short_texts_get_no_duplicate_copies():
    out, ctx = run(AugmentEda({"num_aug": 8, "alpha_sr": 0, "alpha_ri": 0}), [Document("s", "hi")])
    assert [d.id for d in out] == ["s"] and ctx.stats.added == 0  # one word: nothing to do


def test_user_lexicon(tmp_path):
    path = tmp_path / "syn.tsv"
    path.write_text("# mine\ncolour\tcolor\n", encoding="utf-8")
    assert read_lexicon(path.read_text(), "x") == {"colour": {"color"}, "color": {"colour"}}
    block = AugmentEda(
        {
            "num_aug": 1,
            "alpha_ri": 0,
            "alpha_rs": 0,
            "alpha_rd": 0,
            "lexicons": [str(path)],
            "builtin_lexicons": False,
        }
    )
    out, _ = run(block, [Document("d", "Colour is nice")])
    assert out[1].text == "Color is nice"  # "nice" is in the built-in lexicon only
    path.write_text("lonely\n", encoding="utf-8")
    with pytest.raises(DataError, match="two or more"):
        load_lexicons((str(path),), False)


def test_eda_params_are_validated_and_block_pickles():
    with pytest.raises(ValueError, match="at least one"):
        AugmentEda({"alpha_sr": 0, "alpha_ri": 0, "alpha_rs": 0, "alpha_rd": 0})
    block = AugmentEda({"num_aug": 2})
    block.setup()
    clone = pickle.loads(pickle.dumps(block))
    assert not hasattr(clone, "_lexicon")
    assert rows(run(clone, [Document("d", EN)])[0]) == rows(run(block, [Document("d", EN)])[0])


# ----------------------------------------------------------------------------- back_translate
CALLS: list[tuple[str, str, int]] = []


def fake_translate(texts: list[str], src: str, tgt: str) -> list[str]:
    """'Translates' by reversing characters; coming back to English, 'good' becomes 'fine'."""
    CALLS.append((src, tgt, len(texts)))
    out = [t[::-1] for t in texts]
    return [t.replace("good", "fine") for t in out] if tgt == "en" else out


def test_back_translate_with_a_function():
    CALLS.clear()
    docs = [
        Document(id="a", text="The food was good."),
        Document(id="b", text="这家餐厅很好。", metadata={"lang": "zh"}),  # not source_lang
        Document(
            id="c",
            messages=[
                {"role": "user", "content": "Is it good?"},
                {"role": "assistant", "content": "good"},
            ],
        ),
        Document(id="d", text="Nothing changes here."),  # identical back translation: no copy
    ]
    block = REGISTRY["back_translate"](
        {"function": f"{__name__}:fake_translate", "pivot_lang": "de", "batch_size": 3}
    )
    out, ctx = run(block, docs)
    assert [d.id for d in out] == ["a", "a#bt0", "b", "c", "c#bt0", "d"]
    assert out[1].text == "The food was fine."
    assert out[1].metadata["augmented"] == {
        "method": "back_translation",
        "pivot": "de",
        "pivot_texts": [".doog saw doof ehT"],
        "from": "a",
    }
    assert (
        out[4].messages[0]["content"] == "Is it fine?" and out[4].messages[1]["content"] == "good"
    )
    assert ctx.stats.added == 2
    assert CALLS == [("en", "de", 2), ("de", "en", 2), ("en", "de", 1), ("de", "en", 1)]


def test_back_translate_validation():
    with pytest.raises(ValueError, match="exactly one"):
        BackTranslate({})
    with pytest.raises(ValueError, match="differ"):
        BackTranslate({"function": f"{__name__}:fake_translate", "pivot_lang": "en"})
    with pytest.raises(ValueError, match="{text}"):
        BackTranslate({"function": f"{__name__}:fake_translate", "prompt": "Translate!"})
    assert fill("To {lang}: {text}", "a {b}", "zh") == "To Chinese: a {b}"


@pytest.fixture(scope="module")
def causal_dir(tokenizer, tmp_path_factory) -> Path:
    """A random tiny llama whose greedy output is not empty (the default init's argmax is a
    special token, which decodes to nothing)."""
    from lmforge.config.groups import ModelConfig
    from lmforge.models.load import build_model, save_pretrained

    cfg = ModelConfig(preset="tiny-llama", tokenizer="unused", overrides={"initializer_range": 0.3})
    model = build_model(cfg, tokenizer, seed=2)
    return save_pretrained(model, tokenizer, tmp_path_factory.mktemp("causal") / "model")


@pytest.fixture(scope="module")
def marian_dir(tokenizer, tmp_path_factory) -> Path:
    """A randomly initialised two-layer Marian translation model with the project's tokenizer."""
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        forced_eos_token_id=None,
    )
    torch.manual_seed(0)
    model = MarianMTModel(config).eval()
    folder = tmp_path_factory.mktemp("marian")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def bt_docs() -> list[Document]:
    return [
        Document(id="a", text="The food was good."),
        Document(id="b", text="We will come back soon."),
        Document(id="c", text="The hotel is quiet."),
    ]


@pytest.mark.parametrize("kind", ["marian", "lmforge_causal"])
def test_back_translate_with_tiny_models(kind, marian_dir, causal_dir):
    folder = marian_dir if kind == "marian" else causal_dir
    params = {"model": str(folder), "device": "cpu", "max_new_tokens": 6, "batch_size": 2}
    first, ctx = run(BackTranslate(params), bt_docs())
    again, _ = run(BackTranslate(params), bt_docs())
    assert rows(first) == rows(again)  # greedy decoding: the same garbage every time
    copies = [d for d in first if "#" in d.id]
    assert [d.id for d in copies] == ["a#bt0", "b#bt0", "c#bt0"]
    assert ctx.stats.added == 3 and len(first) == 6
    for copy in copies:
        info = copy.metadata["augmented"]
        assert info["method"] == "back_translation" and info["pivot"] == "zh"
        assert copy.text.strip() and len(info["pivot_texts"]) == 1


def test_causal_translator_uses_the_prompt(causal_dir):
    from lmforge.config.groups import GenerationConfig, ModelConfig
    from lmforge.models.load import load_for_inference
    from lmforge.serve.generate import generate

    block = BackTranslate({"model": str(causal_dir), "device": "cpu", "max_new_tokens": 5})
    pivot, back = block.translate(["The food was good."])
    assert pivot[0] and back[0]
    model, tok = load_for_inference(ModelConfig(path=str(causal_dir)))
    gen = GenerationConfig(max_new_tokens=5, temperature=0, chat=False)
    [direct] = generate(model, tok, ["Translate to Chinese: The food was good.\n"], gen)
    assert pivot == [direct["text"].strip()]
    [direct_back] = generate(model, tok, [f"Translate to English: {pivot[0]}\n"], gen)
    assert back == [direct_back["text"].strip()]


# ----------------------------------------------------------------------------- generate_augment
def test_generate_augment_samples_are_seeded_per_document(tiny_model_dir):
    params = {"model": str(tiny_model_dir), "device": "cpu", "num_samples": 2, "max_new_tokens": 6}
    docs = lambda: [  # noqa: E731
        Document(id="a", text="The food was good."),
        Document(
            id="b",
            messages=[
                {"role": "user", "content": "Is 42 even?"},
                {"role": "assistant", "content": "even"},
            ],
        ),
    ]
    out, ctx = run(REGISTRY["generate_augment"](params), docs())
    again, _ = run(GenerateAugment(params), docs())
    alone, _ = run(GenerateAugment(params), docs()[1:])
    assert [d.id for d in out] == ["a", "a#gen0", "a#gen1", "b", "b#gen0", "b#gen1"]
    assert ctx.stats.added == 4
    assert rows(out) == rows(again) and rows(alone) == rows(out)[3:]
    assert out[1].text != out[2].text  # two samples, not one sample twice
    assert out[4].messages[1] == {"role": "assistant", "content": "even"}
    info = out[1].metadata["augmented"]
    assert info["method"] == "generate" and info["from"] == "a" and info["sample"] == 0
    # the copy is exactly what lmforge's generate gives for the prompt and the recorded seed
    from lmforge.config.groups import GenerationConfig, ModelConfig
    from lmforge.models.load import load_for_inference
    from lmforge.serve.generate import generate

    model, tok = load_for_inference(ModelConfig(path=str(tiny_model_dir)))
    gen = GenerationConfig(
        max_new_tokens=6, temperature=0.8, top_p=0.95, chat=False, batch_size=2, seed=info["seed"]
    )
    direct = generate(model, tok, ["Paraphrase: The food was good.\n"] * 2, gen)
    assert [out[1].text, out[2].text] == [r["text"].strip() for r in direct]


def test_text_slots_skip_blank_and_assistant_text():
    doc = Document(
        id="x", messages=[{"role": "user", "content": "  "}, {"role": "assistant", "content": "hi"}]
    )
    assert text_slots(doc) == []
    out, ctx = run(AugmentEda({}), [doc])
    assert [d.id for d in out] == ["x"] and ctx.stats.added == 0
