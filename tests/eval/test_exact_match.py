from __future__ import annotations

import pytest

from lmforge.eval.exact_match import exact_match, normalize_answer


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("  The Answer!\n", "the answer"),
        ("odd.", "odd"),
        ("sixty-two", "sixty-two"),
        ("3.5", "3.5"),
        ("正面。", "正面"),
        ("「奇数」！", "奇数"),
        ("Hello,\t  World?", "hello, world"),
        ("...", ""),
    ],
)
def test_normalize_answer(raw, normal):
    assert normalize_answer(raw) == normal


def test_exact_match_scores_per_item():
    result = exact_match(
        ["Odd.", "even", " 正面 ", "sixty two"], ["odd", "odd", "正面", "sixty-two"]
    )
    assert result["per_item"] == [True, False, True, False]
    assert (result["correct"], result["total"], result["accuracy"]) == (2, 4, 0.5)


def test_exact_match_edge_cases():
    assert exact_match([], [])["accuracy"] == 0.0
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        exact_match(["a", "b"], ["a"])
