"""Classification metrics from a confusion matrix: accuracy, per-class and averaged P/R/F1.

Written out rather than taken from scikit-learn because training computes them at every
evaluation, and the core install does not carry scikit-learn; a test checks them against
``sklearn.metrics`` on the same predictions.

``matrix[g][p]`` counts items of gold class ``g`` predicted as ``p``. A class with no
predictions has precision 0 and one with no gold items recall 0 (scikit-learn's
``zero_division=0``); macro averages weigh every class with gold items equally, micro
averages pool the counts (for single-label classification micro F1 equals accuracy).
"""

from __future__ import annotations

from collections.abc import Sequence


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _f1(p: float, r: float) -> float:
    return _ratio(2 * p * r, p + r)


def confusion_matrix(gold: Sequence[int], pred: Sequence[int], n_classes: int) -> list[list[int]]:
    matrix = [[0] * n_classes for _ in range(n_classes)]
    for g, p in zip(gold, pred, strict=True):
        matrix[g][p] += 1
    return matrix


def classification_metrics(
    matrix: Sequence[Sequence[int]], names: Sequence[str], prefix: str = ""
) -> dict:
    """``{prefix}accuracy``, ``macro_f1``, ``micro_f1``, ``macro_precision``, ``macro_recall``,
    ``per_class`` ({name: precision, recall, f1, support}) and ``confusion`` (the matrix)."""
    k = len(names)
    total = sum(sum(row) for row in matrix)
    tp = [matrix[i][i] for i in range(k)]
    predicted = [sum(matrix[g][p] for g in range(k)) for p in range(k)]
    support = [sum(matrix[g]) for g in range(k)]
    per_class = {}
    for i, name in enumerate(names):
        p, r = _ratio(tp[i], predicted[i]), _ratio(tp[i], support[i])
        per_class[name] = {
            "precision": p,
            "recall": r,
            "f1": _f1(p, r),
            "support": support[i],
        }
    present = [per_class[n] for i, n in enumerate(names) if support[i] or predicted[i]]
    micro_p = _ratio(sum(tp), sum(predicted))
    micro_r = _ratio(sum(tp), sum(support))

    def macro(key: str) -> float:
        return sum(c[key] for c in present) / len(present) if present else 0.0

    return {
        f"{prefix}accuracy": _ratio(sum(tp), total),
        f"{prefix}macro_precision": macro("precision"),
        f"{prefix}macro_recall": macro("recall"),
        f"{prefix}macro_f1": macro("f1"),
        f"{prefix}micro_f1": _f1(micro_p, micro_r),
        f"{prefix}per_class": per_class,
        f"{prefix}confusion": [list(row) for row in matrix],
    }
