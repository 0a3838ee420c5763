"""Classification as an evaluation kind: a stage ``cls`` model (or any saved
``...ForSequenceClassification`` / ``...ForTokenClassification``) labels a file of rows, and the
report has accuracy, precision / recall / F1 (macro and micro), per class and the confusion
matrix (``eval.classification``), plus entity-level F1 for BIO tags (``eval.text_metrics``).

Rows are the ones stage ``cls`` trains on: ``{"text", "label"}`` for sequences, ``{"tokens": [...],
"tags": [...]}`` for tokens (field names configurable). The model runs through transformers' own
padded forward (its own pooling: ``[CLS]`` for encoders, the last real token for decoders), a
code path independent of the packed training forward; a token's prediction is its word's first
sub-token's, as in training. Class names are the model's ``id2label``; a row whose gold label is
not among them is rejected with the reason.
"""

from __future__ import annotations

import re

import torch

from lmforge.data.readers import Rejects, iter_records
from lmforge.data.schema import RowError, to_text
from lmforge.eval.classification import classification_metrics
from lmforge.serve.generate import eval_mode
from lmforge.training.encoders import label_name

_BIO = re.compile(r"^(B|I|E|S)-.+|^O$")


def class_names(model) -> list[str]:
    id2label = getattr(model.config, "id2label", None) or {}
    return [id2label[i] for i in sorted(id2label, key=int)]


def task_of(model) -> str:
    name = type(model.get_base_model() if hasattr(model, "get_base_model") else model).__name__
    if name.endswith("ForTokenClassification"):
        return "token"
    if name.endswith("ForSequenceClassification"):
        return "sequence"
    raise RowError(f"classification needs a classifier; {name} has no classification head")


def read_rows(files: list, cfg, names: list[str], task: str, rejects: Rejects) -> list[tuple]:
    """``(item id, text or words, gold class ids)`` of every usable row."""
    index = {n: i for i, n in enumerate(names)}
    rows = []
    for record in iter_records(files, rejects):
        row = record.row
        try:
            if not isinstance(row, dict):
                raise RowError("a classification row must be a JSON object")
            if task == "token":
                words, tags = row.get(cfg.tokens_field), row.get(cfg.tags_field)
                if (
                    not isinstance(words, list)
                    or not words
                    or not all(isinstance(w, str) for w in words)
                ):
                    raise RowError(f"field '{cfg.tokens_field}' must be a non-empty word list")
                if not isinstance(tags, list) or len(tags) != len(words):
                    raise RowError(f"field '{cfg.tags_field}' must hold one tag per word")
                gold, content = [label_name(t) for t in tags], words
            else:
                if cfg.label_field not in row:
                    raise RowError(f"missing field '{cfg.label_field}'")
                gold, content = [label_name(row[cfg.label_field])], to_text(row, cfg.text_field)
            unknown = sorted({g for g in gold if g not in index})
            if unknown:
                raise RowError(
                    f"label(s) {', '.join(unknown)} not among the model's {len(names)} classes"
                )
        except RowError as exc:
            rejects.add_record(record, str(exc))
            continue
        item_id = str(row.get("id", record.where))
        rows.append((item_id, content, [index[g] for g in gold]))
    return rows


@torch.no_grad()
def predict(model, tokenizer, rows: list[tuple], task: str, max_length: int, batch_size: int):
    """The predicted class ids of every row (one per word for token tasks)."""
    device = next(model.parameters()).device
    out = []
    with eval_mode(model):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            contents = [content for _, content, _ in chunk]
            enc = tokenizer(
                contents,
                is_split_into_words=task == "token",
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            logits = model(**{k: v.to(device) for k, v in enc.items()}).logits.float()
            if task == "sequence":
                out.extend([[int(p)] for p in logits.argmax(-1).tolist()])
                continue
            for r, (_, words, _) in enumerate(chunk):
                first: dict[int, int] = {}
                for pos, word in enumerate(enc.word_ids(r)):
                    if word is not None and word not in first:
                        first[word] = pos
                best = logits[r].argmax(-1).tolist()
                # a word cut off by max_length has no prediction: class -1 counts as wrong
                out.append([best[first[w]] if w in first else -1 for w in range(len(words))])
    return out


def evaluate_rows(model, tokenizer, rows, task, names, max_length, batch_size):
    """``(metrics, items)`` for ``rows`` from :func:`read_rows`."""
    from lmforge.eval.text_metrics import entity_f1

    predicted = predict(model, tokenizer, rows, task, max_length, batch_size)
    k = len(names)
    matrix = [[0] * k for _ in range(k)]
    items, truncated = [], 0
    for (item_id, content, gold), pred in zip(rows, predicted, strict=True):
        for g, p in zip(gold, pred, strict=True):
            if p < 0:
                truncated += 1
                p = (g + 1) % k  # any wrong class: the word was never seen
            matrix[g][p] += 1
        shown = content if task == "sequence" else " ".join(content)
        pred_names = [names[p] if p >= 0 else None for p in pred]
        gold_names = [names[g] for g in gold]
        items.append(
            {
                "eval": "classification",
                "id": item_id,
                "prompt": shown,
                "reference": gold_names[0] if task == "sequence" else gold_names,
                "prediction": pred_names[0] if task == "sequence" else pred_names,
                "correct": gold_names == pred_names,
            }
        )
    metrics = {"task": task, "total": len(rows), **classification_metrics(matrix, names)}
    if task == "token":
        metrics["words_cut_off"] = truncated
        if all(_BIO.match(n) for n in names):  # entity spans: CoNLL F1
            gold = [i["reference"] for i in items]
            pred = [[p or "O" for p in i["prediction"]] for i in items]
            metrics["entity"] = entity_f1(gold, pred)
    return metrics, items
