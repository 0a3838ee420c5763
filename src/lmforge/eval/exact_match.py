"""Exact-match accuracy after a light normalisation that works for English and Chinese answers."""

from __future__ import annotations

import re
import string

# ASCII punctuation plus the full-width / CJK marks a Chinese answer tends to end with.
_PUNCT = string.punctuation + "。，、！？；：“”‘’（）《》「」『』【】…—～·"


def normalize_answer(text: str) -> str:
    """Lowercase, collapse whitespace, strip surrounding whitespace and punctuation.

    ``"  The Answer!\\n" -> "the answer"``, ``"正面。" -> "正面"``; punctuation inside the answer
    (``"sixty-two"``, ``"3.5"``) is kept.
    """
    text = re.sub(r"\s+", " ", text.lower()).strip()
    return text.strip(_PUNCT + " ")


def exact_match(predictions: list[str], references: list[str]) -> dict:
    """``{"accuracy", "correct", "total", "per_item": [bool, ...]}`` (accuracy 0.0 when empty)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    per_item = [
        normalize_answer(p) == normalize_answer(r)
        for p, r in zip(predictions, references, strict=True)
    ]
    correct = sum(per_item)
    total = len(per_item)
    return {
        "accuracy": correct / total if total else 0.0,
        "correct": correct,
        "total": total,
        "per_item": per_item,
    }
