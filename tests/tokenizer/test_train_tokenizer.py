"""Tokenizer training: the three algorithms reload with plain transformers, round-trip English and
Chinese, and carry a chat template that ends assistant turns with EOS; the recipe's rejects."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lmforge.cli import main
from lmforge.config.groups import TokenizerConfig
from lmforge.data.synthetic import make_corpus
from lmforge.errors import ConfigError
from lmforge.tokenizer.templates import check_eos_template
from lmforge.tokenizer.train import train_tokenizer

TYPES = ("byte_bpe", "unigram", "wordpiece")
# ChatML whose turns all end with the literal '<|im_end|>': right only when eos is '<|im_end|>'
LITERAL_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    return make_corpus(300, seed=0)


@pytest.fixture(scope="module")
def samples(corpus) -> dict[str, str]:
    """Text the tokenizers have seen characters of, plus digits, runs of spaces and punctuation."""
    en = next(d["text"] for d in corpus if d["lang"] == "en")
    zh = next(d["text"] for d in corpus if d["lang"] == "zh")
    return {"en": en, "zh": zh, "mixed": "Hello  world, 42 is forty-two.   数字42写作四十二。"}


@pytest.fixture(scope="module")
def folders(corpus, tmp_path_factory) -> dict[str, Path]:
    out = {}
    for typ in TYPES:
        cfg = TokenizerConfig(type=typ, vocab_size=800)
        tok = train_tokenizer((d["text"] for d in corpus), cfg)
        folder = tmp_path_factory.mktemp(typ)
        tok.save_pretrained(str(folder))
        out[typ] = folder
    return out


def _round_trip(folder: Path, text: str) -> tuple[str, list[int], object]:
    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return tok.decode(ids), ids, tok


@pytest.mark.parametrize("typ", TYPES)
def test_reloads_with_auto_tokenizer(folders, typ) -> None:
    tok = AutoTokenizer.from_pretrained(str(folders[typ]))
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|pad|>"
    assert tok.eos_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert 700 <= len(tok) <= 800
    # special tokens are single tokens, never split
    for special in ("<|im_start|>", "<|im_end|>", "<|pad|>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1, special


@pytest.mark.parametrize("lang", ["en", "zh", "mixed"])
def test_byte_bpe_round_trip_is_exact(folders, samples, lang) -> None:
    decoded, _, _ = _round_trip(folders["byte_bpe"], samples[lang])
    assert decoded == samples[lang]


def test_byte_bpe_covers_unseen_characters(folders) -> None:
    text = "龘 naïve ☃ 𝄞"  # none of these are in the corpus: byte fallback, no unknown token
    decoded, _, _ = _round_trip(folders["byte_bpe"], text)
    assert decoded == text


@pytest.mark.parametrize("lang", ["en", "zh", "mixed"])
def test_unigram_round_trip_is_exact_after_nfkc(folders, samples, lang) -> None:
    decoded, ids, tok = _round_trip(folders["unigram"], samples[lang])
    assert tok.unk_token_id not in ids
    assert decoded == unicodedata.normalize("NFKC", samples[lang])


@pytest.mark.parametrize("lang", ["en", "zh", "mixed"])
def test_wordpiece_round_trip_ignoring_spaces(folders, samples, lang) -> None:
    decoded, ids, tok = _round_trip(folders["wordpiece"], samples[lang])
    assert tok.unk_token_id not in ids
    assert decoded.replace(" ", "") == samples[lang].replace(" ", "")


def test_wordpiece_isolates_chinese_characters(folders) -> None:
    tok = AutoTokenizer.from_pretrained(str(folders["wordpiece"]))
    # unspaced Chinese must not become one giant unknown word: one token per character here
    assert tok.tokenize("四十二") == ["四", "十", "二"]


@pytest.mark.parametrize("typ", TYPES)
def test_chat_template_ends_assistant_turns_with_eos(folders, typ) -> None:
    tok = AutoTokenizer.from_pretrained(str(folders[typ]))
    check_eos_template(tok)  # raises ConfigError otherwise
    conversation = [
        {"role": "user", "content": "Is 7 odd?"},
        {"role": "assistant", "content": "odd"},
    ]
    rendered = tok.apply_chat_template(conversation, tokenize=False)
    assert "odd" + tok.eos_token in rendered


def test_template_without_eos_is_refused(corpus) -> None:
    cfg = TokenizerConfig(
        type="byte_bpe", vocab_size=400, eos_token="<|endoftext|>", chat_template=LITERAL_CHATML
    )
    tok = train_tokenizer((d["text"] for d in corpus[:50]), cfg)
    with pytest.raises(ConfigError, match="EOS token '<\\|endoftext\\|>'"):
        check_eos_template(tok)
    # the same template is right when eos is the token it ends turns with
    tok.eos_token = "<|im_end|>"
    check_eos_template(tok)


def test_recipe_refuses_template_without_eos(demo_data, tmp_path, capsys) -> None:
    code = main(
        [
            "tokenizer",
            f"data.files=[{demo_data['corpus']}]",
            "data.max_docs=50",
            "tokenizer.vocab_size=300",
            "tokenizer.eos_token=<|endoftext|>",
            f"tokenizer.chat_template={json.dumps(LITERAL_CHATML)}",
            f"output_dir={tmp_path / 'run'}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "does not end assistant turns with the EOS token" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "tokenizer").exists()


def test_recipe_writes_rejects_and_counts_add_up(tmp_path, capsys) -> None:
    docs = make_corpus(40, seed=1)
    lines = [json.dumps(d, ensure_ascii=False) for d in docs]
    lines.insert(3, '{"text": "unterminated')  # line 4: malformed JSON
    lines.insert(10, json.dumps({"body": "no text field"}))  # line 11: missing field
    lines.insert(20, json.dumps({"text": "   "}))  # line 21: empty text
    data = tmp_path / "corpus.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "tok"

    code = main(
        ["tokenizer", f"data.files=[{data}]", "tokenizer.vocab_size=300", f"output_dir={out}"]
    )
    assert code == 0, capsys.readouterr().err

    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"].split(":")[0]) for r in rejects] == [
        (4, "malformed JSON"),
        (11, "missing field 'text'"),
        (21, "empty text"),
    ]
    assert all(r["file"] == str(data) for r in rejects)
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["read"] == len(lines) == counts["used"] + counts["rejected"]
    assert counts["used"] == 40 and counts["rejected"] == 3
    assert AutoTokenizer.from_pretrained(str(out / "tokenizer")).eos_token == "<|im_end|>"
