"""Tests for the ``langid`` block: offline fastText lid.176.ftz plus the CJK script check."""

from __future__ import annotations

import pickle

import pytest

from lmforge.data.blocks import REGISTRY, ShardContext, run_block
from lmforge.data.document import Document
from lmforge.data.langid import LanguageId, identify, normalise_code, script_language

SENTENCES = {
    "en": "The committee will publish its final report on the river project next spring.",
    "zh": "今天上午，市政府召开新闻发布会，介绍了今年城市绿化工作的进展。",
    "zh-hant": "這款手機採用了新的電池技術，續航時間比上一代提高了三成。",
    "ja": "この本は先週図書館で借りたもので、まだ半分しか読んでいません。",
    "ko": "이 책은 지난주에 도서관에서 빌린 것인데 아직 절반밖에 못 읽었어요.",
    "fr": "Elle a ouvert la fenêtre pour écouter la pluie tomber sur le toit.",
    "de": "Sie öffnete das Fenster und hörte dem Regen auf dem Dach zu.",
    "es": "Abrió la ventana y escuchó la lluvia caer sobre el tejado.",
    "ru": "Она открыла окно и слушала, как дождь стучит по крыше.",
    "ar": "فتحت النافذة واستمعت إلى صوت المطر على السطح.",
}


@pytest.mark.parametrize("expected", sorted(SENTENCES))
def test_identify_sentences(expected):
    lang, score = identify(SENTENCES[expected])
    assert lang == normalise_code(expected)
    assert 0.65 <= score <= 1.0


def test_script_check_fixes_fasttext_collision_on_chinese():
    # lid.176.ftz alone says "es" (0.56) for this sentence; Han-only text cannot be Spanish
    assert identify("我们周末打算去郊外爬山，顺便看看秋天的红叶。") == ("zh", 1.0)
    assert script_language("彼は長い間迷ったが、結局本当のことを話すことにした。")[0] == "ja"
    assert script_language("Hello 世界") is None


def test_no_letters_is_undetermined():
    assert identify("12345 !!! ...") == ("und", 0.0)


def test_normalise_code():
    assert [normalise_code(c) for c in ("zh-Hant", "zh_TW", "ZH", " en-US ")] == [
        "zh",
        "zh",
        "zh",
        "en",
    ]


def _docs() -> list[Document]:
    docs = [Document(id=lang, text=text) for lang, text in sorted(SENTENCES.items())]
    docs.append(Document(id="code", text="x = foo(bar) + 1"))  # en at ~0.42
    docs.append(Document(id="digits", text="2024-01-01 12:00"))
    return docs


def test_keep_none_annotates_only():
    ctx = ShardContext(shard=0, seed=0)
    assert REGISTRY["langid"] is LanguageId
    out = list(run_block(LanguageId(), _docs(), ctx))
    assert len(out) == 12
    assert ctx.stats.to_dict() == {"seen": 12, "kept": 12, "changed": 0, "added": 0, "dropped": {}}
    langs = {d.id: d.metadata["lang"] for d in out}
    assert langs["zh-hant"] == "zh" and langs["ja"] == "ja" and langs["digits"] == "und"
    assert all(isinstance(d.metadata["lang_score"], float) for d in out)


def test_keep_min_score_and_per_language_threshold():
    block = LanguageId({"keep": ["en", "zh-Hant", "ja"]})
    assert block.params.keep == ["en", "ja", "zh"]
    ctx = ShardContext(shard=0, seed=0)
    kept = [d.id for d in run_block(block, _docs(), ctx)]
    assert kept == ["en", "ja", "zh", "zh-hant"]
    assert ctx.stats.dropped == {"lang_not_kept": 7, "lang_low_score": 1}
    low = next(e for e in ctx.exclusions if e["reason"] == "lang_low_score")
    assert (
        low["id"] == "code" and low["detail"]["lang"] == "en" and low["detail"]["threshold"] == 0.65
    )

    lenient = LanguageId({"keep": ["en"], "thresholds": {"EN": 0.3}})
    ctx = ShardContext(shard=0, seed=0)
    assert [d.id for d in run_block(lenient, _docs(), ctx)] == ["en", "code"]


def test_params_validated_and_block_picklable():
    with pytest.raises(ValueError):
        LanguageId({"thresholds": {"en": 1.5}})
    with pytest.raises(ValueError):
        LanguageId({"min_score": -0.1})
    block = pickle.loads(pickle.dumps(LanguageId({"keep": ["zh"]})))
    block.setup()
    assert block.params.keep == ["zh"]
