"""Generation metrics that work for Chinese and English: BLEU and chrF (sacrebleu), ROUGE-1/2/L
(rouge-score with a CJK-aware tokenizer), entity-level F1 for tagged sequences (seqeval).

- **BLEU** is sacrebleu's corpus BLEU. ``tokenize="auto"`` picks sacrebleu's ``zh`` tokenizer
  (every CJK character a token, other text as ``13a``) when a reference holds CJK characters, and
  ``13a`` (the WMT default) otherwise; the tokenizer used is reported, as a BLEU score means
  nothing without it. Per-item scores are sentence BLEU with sacrebleu's ``exp`` smoothing.
- **chrF** is character n-gram F-score (β = 2), language-neutral; sacrebleu's corpus chrF.
- **ROUGE**: rouge-score's default tokenizer keeps only ``[a-z0-9]`` and so scores any Chinese
  text 0; :class:`CJKTokenizer` makes each CJK character a token and keeps Latin words and
  numbers whole (lower-cased), so mixed text is scored on both. Reported: the mean F-measure of
  ROUGE-1, ROUGE-2 and ROUGE-L over items (rouge-score's per-pair scores, averaged as its
  ``BootstrapAggregator`` mid value would be without resampling). No stemming: a stemmer for one
  language is wrong for the other.
- **Entity F1** (``entity_f1``): spans from BIO/IOB2 tags (``B-PER I-PER O``), an entity counted
  right only when its type and both ends match (CoNLL's definition), micro-averaged P/R/F1 and
  per type, through seqeval.

METEOR is not offered: its implementations (nltk's, Hugging Face evaluate's) need WordNet data
downloaded at run time, which offline machines cannot do, and it has no Chinese resources.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from lmforge.errors import MissingDependency

# CJK Unified Ideographs (+ extension A, compatibility), kana, hangul, CJK punctuation and
# full-width forms: the characters that are words of their own for these metrics
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\u3000-\u303f\uff00-\uffef"
_CJK_CHAR = re.compile(f"[{_CJK}]")
# one CJK character, or a run of other letters and digits
_TOKEN = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+", re.UNICODE)


def has_cjk(text: str) -> bool:
    return _CJK_CHAR.search(text) is not None


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise MissingDependency(module.replace("_", "-"), "eval", "these metrics") from None


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")


def bleu_tokenizer(references: Sequence[str], tokenize: str = "auto") -> str:
    """sacrebleu's tokenizer name: ``zh`` when ``auto`` and a reference holds CJK text."""
    if tokenize != "auto":
        return tokenize
    return "zh" if any(has_cjk(r) for r in references) else "13a"


def bleu(predictions: Sequence[str], references: Sequence[str], tokenize: str = "auto") -> dict:
    """``{"bleu", "tokenize", "per_item"}``: corpus BLEU (0-100) and sentence BLEU per item."""
    _check(predictions, references)
    sacrebleu = _require("sacrebleu")
    name = bleu_tokenizer(references, tokenize)
    corpus = sacrebleu.corpus_bleu(list(predictions), [list(references)], tokenize=name)
    per_item = [
        sacrebleu.sentence_bleu(p, [r], tokenize=name).score
        for p, r in zip(predictions, references, strict=True)
    ]
    return {"bleu": corpus.score, "tokenize": name, "per_item": per_item}


def chrf(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """``{"chrf", "per_item"}``: corpus chrF (0-100) and sentence chrF per item."""
    _check(predictions, references)
    sacrebleu = _require("sacrebleu")
    corpus = sacrebleu.corpus_chrf(list(predictions), [list(references)])
    per_item = [
        sacrebleu.sentence_chrf(p, [r]).score for p, r in zip(predictions, references, strict=True)
    ]
    return {"chrf": corpus.score, "per_item": per_item}


class CJKTokenizer:
    """rouge-score tokenizer: each CJK character one token, Latin words and numbers whole,
    lower-cased, punctuation dropped; full-width letters and digits are read as their ASCII
    forms first (NFKC)."""

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """``{"rouge1", "rouge2", "rougeL", "per_item"}``: mean F-measures (0-1) and each item's."""
    _check(predictions, references)
    _require("rouge_score")
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=CJKTokenizer())
    per_item = []
    for p, r in zip(predictions, references, strict=True):
        scores = scorer.score(r, p)  # rouge-score's order: (target, prediction)
        per_item.append({k: scores[k].fmeasure for k in ROUGE_TYPES})
    means = {k: sum(item[k] for item in per_item) / len(per_item) for k in ROUGE_TYPES}
    return {**means, "per_item": per_item}


def entity_f1(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
    """CoNLL entity-level ``{"precision", "recall", "f1", "per_type"}`` from BIO tag sequences
    (one list of tags per sentence); the two sides must have the same lengths."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(predicted)} predicted sentences for {len(gold)} gold ones")
    for i, (g, p) in enumerate(zip(gold, predicted, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(p)} predicted tags for {len(g)} gold tags")
    _require("seqeval")
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    gold, predicted = [list(s) for s in gold], [list(s) for s in predicted]
    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    per_type = {
        name: {k: report[name][k] for k in ("precision", "recall", "f1-score", "support")}
        for name in report
        if not name.endswith(" avg")
    }
    return {
        "precision": precision_score(gold, predicted, zero_division=0),
        "recall": recall_score(gold, predicted, zero_division=0),
        "f1": f1_score(gold, predicted, zero_division=0),
        "per_type": per_type,
    }
