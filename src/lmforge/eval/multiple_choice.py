"""Multiple choice by log-likelihood: each choice is scored as the continuation of the prompt and
the most likely one is the answer, as lm-evaluation-harness's ``multiple_choice`` tasks do.

A row is ``{"question" (or "prompt"), "choices": [...], "answer"}`` with ``answer`` the index of
the right choice or the right choice itself; ``id`` is kept when present. The prompt is
``template`` filled with the question (default ``"Question: {question}\\nAnswer:"``), each choice
the continuation ``delimiter + choice`` (default ``" "``). Reported: ``acc`` (the argmax of the
summed log-likelihoods) and ``acc_norm`` (of the log-likelihoods divided by each choice's length
in characters, lm-eval's definition), overall and per ``task`` when rows carry one; per item:
every choice's log-likelihood, the predicted and the right choice (``prediction``,
``reference``; ``answer`` is the right one's index) and both correctness flags.
"""

from __future__ import annotations

from collections import defaultdict

from lmforge.data.readers import Rejects, iter_records
from lmforge.data.schema import RowError
from lmforge.eval.likelihood import loglikelihoods
from lmforge.tokenizer.templates import render


def parse_row(row: dict) -> tuple[str, list[str], int]:
    """``(question, choices, index of the answer)``; :class:`RowError` says what is wrong."""
    if not isinstance(row, dict):
        raise RowError("a multiple-choice row must be a JSON object")
    question = row.get("question", row.get("prompt"))
    if not isinstance(question, str) or not question.strip():
        raise RowError("no 'question' (or 'prompt') text")
    choices = row.get("choices")
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) and c for c in choices)
    ):
        raise RowError("'choices' must list at least two non-empty strings")
    answer = row.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, int | str):
        raise RowError("'answer' must be a choice's index or the choice itself")
    if isinstance(answer, str):
        if answer not in choices:
            raise RowError(f"answer {answer!r} is not one of the choices")
        answer = choices.index(answer)
    if not 0 <= answer < len(choices):
        raise RowError(f"answer index {answer} outside the {len(choices)} choices")
    return question, choices, answer


def prompt_of(question: str, cfg, tokenizer) -> str:
    """The context a question's choices continue: ``cfg.template`` filled in, or with
    ``cfg.chat`` that text as a user turn through the chat template, generation prompt added."""
    text = cfg.template.format(question=question)
    if not cfg.chat:
        return text
    return render(tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True)


def evaluate_rows(model, tokenizer, rows: list[tuple[str, dict]], cfg) -> tuple[dict, list]:
    """``(metrics, items)`` for ``(item id, row)`` pairs already checked by :func:`parse_row`;
    ``cfg``: ``template``, ``delimiter``, ``chat``, ``max_length``, ``batch_size``
    (``config.groups.MultipleChoiceConfig``). Under ``chat`` the choices follow the assistant
    turn's start with no delimiter, as lm-eval's ``apply_chat_template`` does."""
    parsed = [(item_id, row, *parse_row(row)) for item_id, row in rows]
    delimiter = "" if cfg.chat else cfg.delimiter
    prompts = [prompt_of(question, cfg, tokenizer) for _, _, question, _, _ in parsed]
    requests = [
        (prompt, delimiter + choice)
        for prompt, (_, _, _, choices, _) in zip(prompts, parsed, strict=True)
        for choice in choices
    ]
    scores = iter(loglikelihoods(model, tokenizer, requests, cfg.max_length, cfg.batch_size))
    items, by_task = [], defaultdict(list)
    for prompt, (item_id, row, _, choices, answer) in zip(prompts, parsed, strict=True):
        lls = [next(scores)[0] for _ in choices]
        pred = max(range(len(choices)), key=lls.__getitem__)
        normed = [ll / len(c) for ll, c in zip(lls, choices, strict=True)]
        pred_norm = max(range(len(choices)), key=normed.__getitem__)
        item = {
            "eval": "multiple_choice",
            "id": item_id,
            "task": row.get("task"),
            "prompt": prompt,
            "choices": choices,
            "answer": answer,
            "reference": choices[answer],
            "loglikelihoods": lls,
            "prediction": choices[pred],
            "correct": pred == answer,
            "correct_norm": pred_norm == answer,
        }
        items.append(item)
        if isinstance(item["task"], str):
            by_task[item["task"]].append(item)
    n = len(items)
    metrics = {
        "acc": sum(i["correct"] for i in items) / n,
        "acc_norm": sum(i["correct_norm"] for i in items) / n,
        "total": n,
    }
    if by_task:
        metrics["by_task"] = {
            t: {"acc": sum(i["correct"] for i in v) / len(v), "total": len(v)}
            for t, v in sorted(by_task.items())
        }
    return metrics, items


def read_rows(files: list, rejects: Rejects) -> list[tuple[str, dict]]:
    """``(item id, row)`` of every usable row; the others go to ``rejects`` with the reason."""
    rows = []
    for record in iter_records(files, rejects):
        try:
            parse_row(record.row)
        except RowError as exc:
            rejects.add_record(record, str(exc))
            continue
        row = record.row
        rows.append((str(row.get("id", f"{record.source}:{record.line}")), row))
    return rows
