"""Tests for the heuristic quality filters and ``garbled``, in English and in Chinese.

Samples live in ``tests/data/quality_samples`` (written for lmforge); the Chinese thresholds
were chosen from them (``benchmarks/quality_zh_thresholds.py``).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from lmforge.data.blocks import REGISTRY, Block, ShardContext, run_block
from lmforge.data.document import Document
from lmforge.data.garbled import Garbled
from lmforge.data.quality import (
    C4Quality,
    FineWebQuality,
    GopherQuality,
    GopherRepetition,
    gopher_quality_measure,
    gopher_repetition_measure,
    is_chinese,
    stop_words,
)

SAMPLES = Path(__file__).parent / "quality_samples"


def read_samples(name: str) -> list[Document]:
    docs = []
    for chunk in (SAMPLES / name).read_text(encoding="utf-8").split("### ")[1:]:
        head, _, body = chunk.partition("\n")
        docs.append(Document(id=head.strip(), text=body.strip()))
    return docs


def default_chain() -> list[Block]:
    return [Garbled(), GopherQuality(), GopherRepetition(), FineWebQuality(), C4Quality()]


def run_chain(docs: list[Document], blocks: list[Block]) -> tuple[list[Document], dict]:
    """Run blocks one after another; returns kept docs and {doc id: (block, reason)}."""
    dropped: dict[str, tuple[str, str]] = {}
    for block in blocks:
        ctx = ShardContext(shard=0, seed=0)
        docs = list(run_block(block, docs, ctx))
        stats = ctx.stats
        assert stats.seen == stats.kept + stats.dropped_total
        dropped.update({e["id"]: (e["block"], e["reason"]) for e in ctx.exclusions})
    return docs, dropped


def test_blocks_registered_and_picklable():
    for name, cls in [
        ("gopher_quality", GopherQuality),
        ("gopher_repetition", GopherRepetition),
        ("fineweb_quality", FineWebQuality),
        ("c4_quality", C4Quality),
        ("garbled", Garbled),
    ]:
        assert REGISTRY[name] is cls
        assert type(pickle.loads(pickle.dumps(cls()))) is cls


@pytest.mark.parametrize("name", ["zh_good.txt", "en_good.txt"])
def test_default_filters_keep_all_good_prose(name):
    docs = read_samples(name)
    kept, dropped = run_chain(docs, default_chain())
    assert dropped == {}
    assert len(kept) == len(docs) == {"zh_good.txt": 33, "en_good.txt": 5}[name]


def test_default_filters_drop_all_chinese_junk_with_the_first_reason():
    docs = read_samples("zh_bad.txt")
    gbk = read_samples("zh_good.txt")[0].text.encode("utf-8").decode("gbk", errors="ignore")
    docs.append(Document(id="gbk-mojibake", text=gbk))
    kept, dropped = run_chain(docs, default_chain())
    assert kept == []
    assert dropped == {
        "spam-movie-keywords": ("gopher_quality", "too_few_stop_words"),
        "spam-seo-decoration": ("gopher_quality", "too_few_stop_words"),
        "nav-menu": ("gopher_quality", "too_few_words"),
        "boilerplate-footer": ("garbled", "boilerplate"),
        "repeated-lines": ("gopher_quality", "too_few_words"),
        "product-list": ("gopher_quality", "too_few_alpha_words"),
        "tags-cloud": ("gopher_quality", "too_few_words"),
        "hash-tags": ("gopher_quality", "too_few_words"),
        "ellipsis-teasers": ("gopher_quality", "too_few_words"),
        "login-wall": ("garbled", "boilerplate"),
        "numbers-table": ("gopher_quality", "too_few_alpha_words"),
        "short-fragment": ("garbled", "boilerplate"),
        "spam-repeated-phrase": ("gopher_quality", "too_few_words"),
        "cookie-notice": ("garbled", "boilerplate"),
        "gbk-mojibake": ("garbled", "mojibake"),
    }


def test_default_filters_drop_english_junk():
    kept, dropped = run_chain(read_samples("en_bad.txt"), default_chain())
    assert kept == []
    assert dropped == {
        "nav-menu": ("gopher_quality", "too_few_words"),
        "keyword-spam": ("gopher_quality", "too_few_stop_words"),
        "repeated-lines": ("garbled", "boilerplate"),
        "footer": ("garbled", "boilerplate"),
        "lorem": ("gopher_quality", "too_few_words"),
    }


def test_repeated_good_text_dropped_by_repetition_only():
    good = read_samples("zh_good.txt")[4].text
    doc = Document(id="rep", text="\n\n".join([good] * 4))
    kept, dropped = run_chain([doc], default_chain())
    assert dropped == {"rep": ("gopher_repetition", "dup_paragraphs")}
    ctx = ShardContext(shard=0, seed=0)
    list(run_block(GopherRepetition(), [Document(id="rep", text=doc.text)], ctx))
    detail = ctx.exclusions[0]["detail"]
    assert detail == {"dup_para_ratio": 0.75, "threshold": 0.3, "lang": "zh"}


def test_chinese_detection_and_english_rules_on_chinese_text():
    zh = read_samples("zh_good.txt")[0]
    assert is_chinese(zh)
    assert not is_chinese(Document(id="en", text="plain English text"))
    assert is_chinese(Document(id="x", text="whatever", metadata={"lang": "zh-Hant"}))
    assert not is_chinese(Document(id="ja", text="この本は先週図書館で借りたものです。"))
    # labelled English, the Chinese prose is split on spaces and punctuation only: few "words"
    zh.metadata["lang"] = "en"
    reason, detail = GopherQuality().check(zh)
    assert (reason, detail["lang"]) == ("too_few_words", "en")


def test_gopher_quality_measures_exact():
    text = "The cat and the dog.\n- one item\n- two items...\n#tag #tag"
    m = gopher_quality_measure(text, False, stop_words("en"))
    assert m["words"] == 11
    assert m["stop_words"] == 2  # the, and
    assert m["bullet_lines_ratio"] == 0.5
    assert m["ellipsis_lines_ratio"] == 0.25
    # tokens: 11 words + "." + "-" + "-" + "..." + "#" + "#" = 17
    assert m["hash_ratio"] == pytest.approx(2 / 17)
    assert m["ellipsis_ratio"] == pytest.approx(1 / 17)
    assert m["mean_word_length"] == pytest.approx(36 / 11)


def test_gopher_repetition_measures_exact():
    text = "a b c\na b c\nd e f"
    m = gopher_repetition_measure(text, False, [2], [2])
    assert m["dup_line_ratio"] == pytest.approx(1 / 3)
    assert m["dup_line_char_ratio"] == pytest.approx(5 / 17)
    assert m["top_2gram_ratio"] == pytest.approx(2 * 3 / 17)  # "a b" twice
    # "ab" at word 3 was seen: counted, then the scan jumps 2 words ("bc" is not counted)
    assert m["dup_2gram_ratio"] == pytest.approx(2 / 17)


def test_zh_overrides_keep_other_chinese_defaults():
    block = GopherQuality({"min_words": 20, "zh": {"min_words": 10}})
    assert block.params.min_words == 20
    assert block.params.zh.min_words == 10
    assert block.params.zh.min_stop_words == 6
    assert block.params.zh.min_alpha_words_ratio == 0.7
    with pytest.raises(ValueError):
        GopherQuality({"zh": {"min_wordz": 10}})


def test_c4_removes_lines_and_counts_changed():
    text = (
        "Menu\n"
        "Our town held its annual fair on Saturday. It was sunny.\n"
        "Please enable JavaScript to view this page.\n"
        "This site uses cookies to improve your experience.\n"
        "Thousands of people came to see the animals. Children rode the ponies.\n"
        "The baker sold out of pies by noon!\n"
        "Next year the fair will last two days."
    )
    docs = [
        Document(id="page", text=text),
        Document(id="code", text=text + "\nfunction f() { return 1; } is here."),
        Document(id="lorem", text=text + "\nLorem ipsum dolor sit amet, consectetur."),
        Document(id="short", text="One sentence only here."),
    ]
    ctx = ShardContext(shard=0, seed=0)
    out = list(run_block(C4Quality(), docs, ctx))
    assert [d.id for d in out] == ["page"]
    assert out[0].text == (
        "Our town held its annual fair on Saturday. It was sunny.\n"
        "Thousands of people came to see the animals. Children rode the ponies.\n"
        "The baker sold out of pies by noon!\n"
        "Next year the fair will last two days."
    )
    assert ctx.stats.changed == 1
    assert ctx.stats.dropped == {"curly_bracket": 1, "lorem_ipsum": 1, "too_few_sentences": 1}
    # the excluded document is written as it came in, not half-cleaned
    excluded = {e["id"]: e for e in ctx.exclusions}
    assert excluded["code"]["document"]["text"].startswith("Menu\n")


def test_c4_chinese_terminal_punctuation_and_messages():
    turn = "第一句话在这里。第二句话也在这里！\n没有标点的一行\n第三句话说完了。"
    doc = Document(
        id="chat",
        messages=[{"role": "user", "content": turn}, {"role": "assistant", "content": "好的。"}],
    )
    ctx = ShardContext(shard=0, seed=0)
    out = list(run_block(C4Quality(), [doc], ctx))
    assert out[0].messages[0]["content"] == "第一句话在这里。第二句话也在这里！\n第三句话说完了。"
    assert out[0].messages[1]["content"] == ""  # fewer than 3 words: C4 removes the line
    assert ctx.stats.changed == 1


def test_garbled_rules():
    prose = read_samples("en_good.txt")[0].text
    cases = {
        "fffd": prose.replace("e", "\ufffd"),
        "latin": prose.replace("e", "Ã©"),
        "private": prose.replace("e", "\ue000").replace("t", "\ue001"),
        "boiler": "Click here to continue\nAll rights reserved\n" + prose.split("\n")[0],
        "custom": prose + "\nBUY NOW\nBUY NOW TODAY",
        "ok": prose,
    }
    docs = [Document(id=k, text=v) for k, v in cases.items()]
    ctx = ShardContext(shard=0, seed=0)
    out = list(run_block(Garbled({"patterns": [r"^buy now\b"]}), docs, ctx))
    assert [d.id for d in out] == ["ok"]
    reasons = {e["id"]: e["reason"] for e in ctx.exclusions}
    assert reasons == {
        "fffd": "replacement_char",
        "latin": "mojibake",
        "private": "symbols",
        "boiler": "boilerplate",
        "custom": "boilerplate",
    }
    boiler = next(e for e in ctx.exclusions if e["id"] == "boiler")
    assert boiler["detail"] == {"boilerplate_line_ratio": 0.6667, "threshold": 0.3}
    with pytest.raises(ValueError, match="not a valid regex"):
        Garbled({"patterns": ["(unclosed"]})
    # shipped patterns off: only the custom one counts
    ctx = ShardContext(shard=0, seed=0)
    docs = [Document(id="boiler", text=cases["boiler"])]
    assert len(list(run_block(Garbled({"default_patterns": False}), docs, ctx))) == 1
