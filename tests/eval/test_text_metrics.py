"""BLEU, chrF, ROUGE and entity F1 on small cases whose values are computed by hand, in Chinese
and English; Chinese ROUGE is non-zero where rouge-score's own tokenizer gives 0."""

from __future__ import annotations

import math

import pytest

from lmforge.eval.text_metrics import CJKTokenizer, bleu, chrf, entity_f1, has_cjk, rouge


def test_chinese_bleu_is_the_hand_computed_value() -> None:
    # characters 我 非 常 喜 欢 小 猫 / 狗: n-gram precisions 6/7, 5/6, 4/5, 3/4, no brevity penalty
    out = bleu(["我非常喜欢小猫"], ["我非常喜欢小狗"])
    assert out["tokenize"] == "zh"
    expected = 100 * (6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25
    assert out["bleu"] == pytest.approx(expected, abs=1e-9)
    assert out["per_item"][0] == pytest.approx(expected, abs=1e-9)
    # as one "word" under the WMT tokenizer the same pair shares nothing
    assert bleu(["我非常喜欢小猫"], ["我非常喜欢小狗"], tokenize="13a")["bleu"] == 0.0


def test_english_bleu_with_a_brevity_penalty() -> None:
    # hypothesis 5 words, reference 6: precisions 5/5, 3/4, 2/3, 1/2 ... see below
    hyp, ref = "the cat sat on mat", "the cat sat on the mat"
    out = bleu([hyp], [ref])
    assert out["tokenize"] == "13a"
    # 1-grams 5/5; 2-grams the-cat cat-sat sat-on on-mat: 3/4; 3-grams 2/3; 4-grams 1/2
    bp = math.exp(1 - 6 / 5)
    assert out["bleu"] == pytest.approx(100 * bp * (1 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25, abs=1e-9)


def test_chrf_is_high_for_a_close_chinese_answer_and_zero_for_a_wrong_one() -> None:
    out = chrf(["我非常喜欢小猫", "晴天"], ["我非常喜欢小狗", "下雨"])
    assert 50 < out["per_item"][0] < 100
    assert out["per_item"][1] == 0.0


def test_chinese_rouge_is_the_hand_computed_value() -> None:
    from rouge_score import rouge_scorer

    pred, ref = "我喜欢猫", "我喜欢狗"
    default = rouge_scorer.RougeScorer(["rouge1"]).score(ref, pred)["rouge1"].fmeasure
    assert default == 0.0  # why lmforge brings its own tokenizer
    out = rouge([pred], [ref])
    assert out["rouge1"] == pytest.approx(3 / 4)  # 我 喜 欢 shared, of 4 each
    assert out["rouge2"] == pytest.approx(2 / 3)  # 我喜 喜欢 shared, of 3 bigrams each
    assert out["rougeL"] == pytest.approx(3 / 4)  # LCS 我喜欢


def test_mixed_rouge_and_the_tokenizer() -> None:
    assert CJKTokenizer().tokenize("GPU训练, 2 cards!") == ["gpu", "训", "练", "2", "cards"]
    # pred tokens: the model 很 好 (4); ref: the model 很 好 用 (5); LCS 4
    out = rouge(["The model 很好"], ["the model 很好用"])
    p, r = 4 / 4, 4 / 5
    assert out["rouge1"] == pytest.approx(2 * p * r / (p + r))
    assert out["rougeL"] == pytest.approx(2 * p * r / (p + r))
    assert has_cjk("a 字") and not has_cjk("plain")


def test_entity_f1_counts_whole_spans() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
    out = entity_f1(gold, pred)
    # gold: PER, LOC, ORG; predicted: PER, ORG, LOC(wrong place): 2 right of 3 and 3
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 / 3)
    assert out["per_type"]["PER"]["f1-score"] == 1.0
    assert out["per_type"]["LOC"]["f1-score"] == 0.0
    half = entity_f1([["B-PER", "I-PER"]], [["B-PER", "O"]])  # a wrong end: not counted
    assert half["f1"] == 0.0


def test_bad_inputs_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        bleu(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        rouge([], [])
    with pytest.raises(ValueError, match="sentence 0: 1 predicted tags for 2 gold"):
        entity_f1([["O", "O"]], [["O"]])
