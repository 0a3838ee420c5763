"""Tests for the ``normalize`` block: Unicode, mojibake, controls, whitespace, t2s."""

from __future__ import annotations

import pickle

import pytest

from lmforge.data.blocks import REGISTRY, ShardContext, run_block
from lmforge.data.document import Document
from lmforge.data.normalize import Normalize, fix_mojibake, mojibake_chars


def norm(text: str, **params) -> str:
    return Normalize(params).normalize(text)


def test_nfc_composes_and_keeps_full_width_cjk_punctuation():
    assert norm("cafe\u0301") == "café"
    zh = "你好，世界（测试）！Ａ１"
    assert norm(zh) == zh


def test_nfkc_is_opt_in_and_rewrites_full_width_punctuation():
    assert norm("你好，世界（测试）！Ａ１", form="NFKC") == "你好,世界(测试)!A1"


def test_mojibake_repaired_only_where_bytes_are_utf8():
    assert fix_mojibake("cafÃ© au lait") == "café au lait"
    assert fix_mojibake("ä¸\xadæ–‡") == "中文"
    assert fix_mojibake("â€œquotedâ€\x9d") == "“quoted”"
    legit = "café naïve Größe Ærøskøbing ½ £5"
    assert fix_mojibake(legit) == legit
    assert norm("Ã©tÃ©", fix_mojibake=False) == "Ã©tÃ©"


def test_mojibake_chars_counts_latin_and_gbk_kinds_only():
    good = "今天上午，市政府召开新闻发布会，介绍了今年城市绿化工作的进展。"
    assert mojibake_chars(good) == 0
    assert mojibake_chars("這個軟體的記憶體不足。これは日本語です。오늘 아침") == 0
    gbk = good.encode("utf-8").decode("gbk", errors="ignore")
    assert mojibake_chars(gbk) >= 0.8 * len(gbk)
    assert mojibake_chars("x Ã© y") == 2


def test_controls_removed_but_newline_tab_and_zwj_kept():
    text = "\ufeffa\x00b\x07c\td\u200be\u00adf\n👩\u200d💻"
    assert norm(text) == "abc\tdef\n👩\u200d💻"


def test_whitespace_and_line_endings():
    text = "  title  \r\n\r\n\r\n\r\n\r\nfirst   line\u00a0\u00a0x   \rsecond\u2028third\n\n\n"
    assert norm(text) == "  title\n\n\nfirst line x\nsecond\nthird"
    assert norm("a\n\n\n\nb", max_blank_lines=0) == "a\nb"
    assert norm("a  b", collapse_spaces=False) == "a  b"
    # indentation and the ideographic space that indents Chinese paragraphs are kept
    assert norm("    code  here\n\u3000\u3000第一章") == "    code here\n\u3000\u3000第一章"


def test_normalize_is_idempotent():
    text = "ä¸\xadæ–‡  x\r\n\r\n\r\n\r\ny\u00a0 z\x01 "
    once = norm(text)
    assert norm(once) == once == "中文 x\n\n\ny z"


def test_t2s_characters_and_vocabulary():
    text = "這個軟體的記憶體不足，鬱鬱蔥蔥的森林。"
    assert norm(text, t2s=True) == "这个软体的记忆体不足，郁郁葱葱的森林。"
    assert norm(text, t2s=True, t2s_vocabulary=True) == "这个软件的内存不足，郁郁葱葱的森林。"
    assert norm(text) == text


def test_block_counts_changed_and_rewrites_every_text_piece():
    docs = [
        Document(id="a", text="clean text"),
        Document(id="b", text="dirty   text  "),
        Document(
            id="c",
            messages=[
                {"role": "user", "content": "hi\r\nthere"},
                {"role": "assistant", "content": "ok"},
            ],
        ),
        Document(id="d", text="x", fields={"chosen": "good  one", "rejected": "bad"}),
    ]
    assert REGISTRY["normalize"] is Normalize
    block = Normalize({})
    ctx = ShardContext(shard=0, seed=0)
    out = list(run_block(block, docs, ctx))
    assert [d.id for d in out] == ["a", "b", "c", "d"]
    assert ctx.stats.to_dict() == {"seen": 4, "kept": 4, "changed": 3, "added": 0, "dropped": {}}
    assert out[1].text == "dirty text"
    assert out[2].messages[0]["content"] == "hi\nthere"
    assert out[3].fields["chosen"] == "good one"


def test_params_validated_and_block_picklable():
    with pytest.raises(ValueError):
        Normalize({"form": "NFKD"})
    with pytest.raises(ValueError):
        Normalize({"no_such_option": True})
    block = pickle.loads(pickle.dumps(Normalize({"t2s": True})))
    assert block.normalize("臺灣") == "台湾"
