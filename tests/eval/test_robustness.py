from __future__ import annotations

import re

import pytest

from lmforge.data.augment_eda import Words, load_lexicons
from lmforge.errors import ConfigError, DataError
from lmforge.eval import robustness
from lmforge.eval.robustness import (
    PERTURBATIONS,
    Perturbed,
    casing,
    item_seed,
    perturb,
    robustness_report,
    synonyms,
    typos,
    whitespace,
    zh_char_noise,
)
from lmforge.text.segment import is_cjk_text

EN = "Tom has 12 apples and buys 3.5 kg of good, fast oranges. What is the total? Answer: A"
ZH = "小明有12个苹果，又买了三十个。他现在一共有几个苹果？这个问题很简单，请说明原因。"
SEEDS = range(12)


def _numbers(text: str, zh: bool = True) -> list[str]:
    """Digit runs (with decimal points) and Chinese numerals, in order."""
    zh_numerals = "|[〇零一二三四五六七八九十百千万亿两]" if zh else ""
    return re.findall(r"\d+(?:\.\d+)?" + zh_numerals, text)


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_deterministic_per_seed_and_rate_zero_is_identity(name):
    for text in (EN, ZH):
        assert perturb(text, name, 0.3, seed=7) == perturb(text, name, 0.3, seed=7)
        assert perturb(text, name, 0.0, seed=7) == Perturbed(text, 0)
    assert perturb("", name, 1.0, seed=1) == Perturbed("", 0)
    if name not in ("upper", "lower"):  # the full variants do not depend on the seed
        text = EN if name != "zh_char_noise" else ZH
        assert len({perturb(text, name, 0.3, seed=s).text for s in SEEDS}) > 1


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_edits_are_reported_and_numbers_survive(name):
    for text in (EN, ZH):
        for seed in SEEDS:
            out = perturb(text, name, 0.5, seed)
            assert (out.edits > 0) == (out.text != text)
            # lexicon words may hold a numeral character (十分 "very"): digits only there
            zh = name != "synonyms"
            assert _numbers(out.text, zh) == _numbers(text, zh), (name, out.text)


def test_languages_in_the_registry():
    assert set(PERTURBATIONS) == {
        "typos", "casing", "upper", "lower", "whitespace", "synonyms", "zh_char_noise"
    }  # fmt: skip
    assert PERTURBATIONS["typos"].langs == {"en"}
    assert PERTURBATIONS["zh_char_noise"].langs == {"zh"}
    assert PERTURBATIONS["whitespace"].langs == {"en", "zh"}
    mixed = "用Python写一个函数，返回列表的长度。"
    assert perturb(mixed, "typos", 1.0, 0, lang="zh-CN") == Perturbed(mixed, 0)
    assert perturb(mixed, "typos", 1.0, 0).edits == 1  # lang=None: whatever it can touch
    assert perturb(EN, "zh_char_noise", 1.0, 0, lang="en") == Perturbed(EN, 0)
    assert perturb(EN, "typos", 1.0, 0, lang="EN_us").edits > 0


def test_typos_touch_latin_words_only():
    text = "The quick brown fox drinks H2O from 0x1F cups, x = 42 and A or B."
    out = typos(text, rate=1.0, seed=3)
    before, after = text.split(), out.text.split()
    assert len(before) == len(after)
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert len(changed) == out.edits == 8  # The quick brown fox drinks from cups, and
    for a, b in changed:
        assert abs(len(a) - len(b)) <= 1 and re.fullmatch(r"[A-Za-z]+,?", b)
    for kept in ("H2O", "0x1F", "x", "42", "A", "B."):
        assert kept in after
    assert typos(ZH, 1.0, 0) == Perturbed(ZH, 0)
    assert typos("12 + 30 = 42", 1.0, 0) == Perturbed("12 + 30 = 42", 0)


def test_typos_rate_is_a_share_of_words():
    text = " ".join(["apple"] * 20)
    out = typos(text, rate=0.25, seed=0)
    assert out.edits == 5
    assert sum(w != "apple" for w in out.text.split()) == 5


def test_casing_variants():
    out = casing(EN, rate=1.0, seed=2)
    assert out.text != EN and out.text.lower() == EN.lower()
    assert out.text.split()[-1] == "A"  # single letters (option labels) are kept
    assert casing(EN, 1.0, 0, mode="upper").text == EN.upper()
    assert casing("Drink H2O", 1.0, 0, mode="lower") == Perturbed("drink H2O", 1)
    assert perturb(EN, "upper", 0.5, 9) == perturb(EN, "upper", 0.5, 1)
    assert casing(ZH, 1.0, 0) == Perturbed(ZH, 0)
    with pytest.raises(ConfigError, match="random, upper, lower"):
        casing(EN, 0.5, 0, mode="title")


def test_whitespace_english_keeps_words_whole():
    for seed in SEEDS:
        out = whitespace(EN, rate=0.5, seed=seed)
        assert out.text != EN and out.text.split() == EN.split()
    out = whitespace("one two", rate=1.0, seed=0)
    assert out.edits == 3  # leading, the gap, trailing
    assert out.text[0].isspace() and out.text[-1].isspace() and out.text.split() == ["one", "two"]
    assert whitespace("   ", 1.0, 0) == Perturbed("   ", 0)


def test_whitespace_chinese_spaces_inside_cjk_runs_but_not_numbers():
    out = whitespace(ZH, rate=1.0, seed=0)
    assert "".join(out.text.split()) == ZH
    assert re.search(r"[\u4e00-\u9fff]\s+[\u4e00-\u9fff]", out.text)
    assert "12" in out.text and "三十" in out.text  # never between two numerals


def test_synonyms_use_the_shipped_lexicons():
    lexicon = load_lexicons(())
    text = "The quick student wrote a good answer to a hard question."
    for seed in SEEDS:
        out = synonyms(text, rate=0.5, seed=seed)
        before, after = Words(text, cjk=False).words, Words(out.text, cjk=False).words
        pairs = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
        assert len(pairs) == out.edits > 0
        for a, b in pairs:
            assert b.lower() in lexicon[a.lower()]
    out = synonyms(ZH, rate=0.5, seed=1)
    assert out.edits > 0 and is_cjk_text(out.text)
    assert synonyms("Xyzzy 42 plugh.", 1.0, 0) == Perturbed("Xyzzy 42 plugh.", 0)


def test_zh_char_noise_keeps_chinese_and_protects_numbers():
    if robustness.zhconv is None:
        pytest.skip("zhconv (lmforge[data]) is not installed")
    allowed = set(ZH) | set("".join(robustness._HOMOPHONE.values())) | set(robustness._WIDTH)
    allowed |= set(robustness.zhconv.convert(ZH, "zh-hant"))
    seen = set()
    for seed in SEEDS:
        out = zh_char_noise(ZH, rate=0.3, seed=seed)
        assert out.edits > 0 and is_cjk_text(out.text)
        assert set(out.text) <= allowed
        seen |= set(out.text) - set(ZH)
    assert seen & set("這個問題說") and seen & set(",?")  # traditional and half-width seen
    assert zh_char_noise(EN, 1.0, 0) == Perturbed(EN, 0)
    assert zh_char_noise("价格是3.5元，共1,000个", 1.0, 0).text.count("3.5") == 1


def test_zh_char_noise_without_zhconv(monkeypatch):
    monkeypatch.setattr(robustness, "zhconv", None)
    plain = set(ZH) | set("".join(robustness._HOMOPHONE.values())) | set(robustness._WIDTH)
    for seed in SEEDS:
        assert set(zh_char_noise(ZH, rate=0.5, seed=seed).text) <= plain


@pytest.mark.parametrize("rate", [-0.1, 1.5, True, "0.1", None])
def test_bad_rate(rate):
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        perturb(EN, "typos", rate)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        robustness_report([], lambda p, items: [], rate=rate)


def test_unknown_perturbation_names_the_choices():
    with pytest.raises(ConfigError, match="unknown perturbation 'tpyos'.*typos, casing"):
        perturb(EN, "tpyos")
    with pytest.raises(ConfigError, match="zh_char_noise"):
        robustness_report([], lambda p, items: [], names=["typos", "nope"])
    with pytest.raises(ConfigError, match="no perturbation given"):
        robustness_report([], lambda p, items: [], names=[])


# ---------------------------------------------------------------------------- the driver
ZH_ITEM = "小明有三个苹果，又买了两个，一共有几个？"
ITEMS = [
    {"id": "en1", "prompt": "What is 12 plus 30? Answer quickly.", "reference": "42"},
    {"id": "en2", "prompt": "Is the big house old?", "reference": "yes", "lang": "en"},
    {"id": "zh1", "prompt": ZH_ITEM, "reference": "5", "lang": "zh"},
    {"id": "x", "prompt": "42", "reference": "42"},  # nothing any perturbation can change
]


class Recorder:
    """1 for a prompt seen among the clean prompts, else 0; records each call."""

    def __init__(self, clean_scores=(1, 1, 1, 1)):
        self.calls: list[list[str]] = []
        self.clean = {it["prompt"]: s for it, s in zip(ITEMS, clean_scores, strict=True)}

    def __call__(self, prompts, items):
        self.calls.append(list(prompts))
        return [self.clean.get(p, 0) for p in prompts]


def test_report_drops_and_flips():
    score = Recorder(clean_scores=[1, 1, 1, 0])
    report = robustness_report(ITEMS, score, names=["typos", "zh_char_noise"], rate=0.5, seed=0)
    assert report["items"] == 4 and report["clean_accuracy"] == 0.75
    typo = report["perturbations"]["typos"]
    assert (typo["changed"], typo["unchanged"]) == (2, 2)  # zh1 (lang) and x are not changed
    assert typo["all"] == {"clean": 0.75, "perturbed": 0.25, "drop": 0.5}
    assert typo["changed_only"] == {"clean": 1.0, "perturbed": 0.0, "drop": 1.0}
    assert typo["flips"] == {"down": 2, "up": 0}
    rows = {r["id"]: r for r in typo["rows"]}
    assert rows["zh1"]["prompt"] == ITEMS[2]["prompt"] and not rows["zh1"]["changed"]
    assert rows["en1"]["changed"] and rows["en1"]["edits"] > 0
    assert (rows["en1"]["clean_score"], rows["en1"]["perturbed_score"]) == (1.0, 0.0)
    assert (rows["x"]["clean_score"], rows["x"]["perturbed_score"]) == (0.0, 0.0)
    noise = report["perturbations"]["zh_char_noise"]
    assert (noise["changed"], noise["flips"]["down"]) == (1, 1)
    assert noise["all"]["drop"] == pytest.approx(0.25)
    # clean once, then each suite once, on the changed prompts only
    assert [len(c) for c in score.calls] == [4, 2, 1]
    assert score.calls[1] == [rows["en1"]["prompt"], rows["en2"]["prompt"]]


def test_report_keyword_scorer_and_nothing_changed():
    def has_answer(prompts, items):  # a model that reads the numbers only: immune to this noise
        return [1.0 if re.search(r"12|三", p) else 0.0 for p in prompts]

    report = robustness_report(ITEMS, has_answer, rate=1.0, seed=5)
    for name, result in report["perturbations"].items():
        assert result["all"]["drop"] == 0 and result["flips"] == {"down": 0, "up": 0}, name
    unchanged = robustness_report(ITEMS[3:], has_answer, names=["typos"])["perturbations"]
    assert unchanged["typos"]["changed"] == 0
    assert unchanged["typos"]["changed_only"] == {"clean": None, "perturbed": None, "drop": None}


def test_report_is_seeded_per_item():
    first = robustness_report(ITEMS, Recorder(), names=["typos"], seed=3)
    again = robustness_report(ITEMS[::-1], Recorder(), names=["typos"], seed=3)
    prompts = {r["id"]: r["prompt"] for r in first["perturbations"]["typos"]["rows"]}
    assert prompts == {r["id"]: r["prompt"] for r in again["perturbations"]["typos"]["rows"]}
    assert item_seed(3, "typos", "en1") != item_seed(4, "typos", "en1")


def test_report_bad_items_and_scores():
    with pytest.raises(DataError, match="lacks reference"):
        robustness_report([{"id": 1, "prompt": "hi"}], Recorder())
    with pytest.raises(DataError, match="distinct ids"):
        robustness_report([ITEMS[0], dict(ITEMS[0])], Recorder())
    with pytest.raises(DataError, match="prompt must be a string"):
        robustness_report([{"id": 1, "prompt": None, "reference": ""}], Recorder())
    with pytest.raises(ValueError, match="returned 1 scores for 4 clean prompts"):
        robustness_report(ITEMS, lambda prompts, items: [1.0])
