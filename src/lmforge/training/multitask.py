"""Multi-task SFT: task names on rows, per-task prompt prefixes and counts, eval loss per task.

A row's task is its ``data.task_field`` value (``task`` by default; rows of a ``data.dataset``
entry without one take the dataset's name, see ``training.datasets``). Conversations are made
ready here before encoding (:func:`prepare_conversation`): ``data.default_system`` is added where a
conversation has no system turn, ``data.task_prefix[task]`` goes before the first user message,
and ``{{key}}`` placeholders are filled from ``data.placeholders``.

Per-task validation: validation records are ordered by task before encoding
(:func:`group_by_task`), and the split's counts hold the used rows per task (``counts["tasks"]``,
only when some row has a task), so the units of each task are one contiguous slice
(:func:`task_ranges`), in the cache and out of it alike. :func:`task_evaluator` gives the training
loop an evaluation that reports ``eval_loss/<task>`` (and ``eval_ppl/``, ``eval_tokens/``) next to
the overall ``eval_loss``; ``train.eval_batches`` caps each task's micro-batches.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from lmforge.config.groups import DataConfig
from lmforge.data.readers import Record
from lmforge.data.schema import RowError, to_messages, tools_of

UNTAGGED = "untagged"  # the group of rows without a task, when others have one
# LLaMA-Factory's identity.json placeholders: a row still holding one is rejected, because a
# model trained on it would answer "I am {{name}}"
IDENTITY_PLACEHOLDERS = ("name", "author")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def task_of(row: Any, field: str) -> str | None:
    value = row.get(field) if isinstance(row, dict) else None
    return value if isinstance(value, str) and value.strip() else None


def fill_placeholders(text: str, values: dict[str, str]) -> str:
    """``{{key}}`` -> ``values[key]``; raises RowError on an unfilled identity placeholder."""
    if "{{" not in text:
        return text
    text = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)
    left = [k for k in _PLACEHOLDER.findall(text) if k in IDENTITY_PLACEHOLDERS]
    if left:
        raise RowError(
            f"unfilled placeholder {{{{{left[0]}}}}}: set data.placeholders.{left[0]} "
            "(LLaMA-Factory identity data)"
        )
    return text


def prepare_conversation(row: Any, cfg: DataConfig) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools) of one row, ready to encode; raises RowError with the reason."""
    return finish_conversation(to_messages(row, cfg.format), row, cfg), tools_of(row)


def finish_conversation(messages: list[dict], row: Any, cfg: DataConfig) -> list[dict]:
    """``messages`` (in place) with ``data.default_system``, the task prefix of the row's task
    and ``data.placeholders`` applied; raises RowError on an unfilled identity placeholder."""
    if cfg.default_system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": cfg.default_system})
    prefix = cfg.task_prefix.get(task_of(row, cfg.task_field) or "")
    if prefix:
        first = next((m for m in messages if m["role"] == "user"), None)
        if first is not None:
            first["content"] = prefix + first["content"]
    for message in messages:
        message["content"] = fill_placeholders(message["content"], cfg.placeholders)
    return messages


def count_task(counts: dict, task: str | None) -> None:
    """One more used row of ``task`` in ``counts["tasks"]`` (created on the first tagged row)."""
    if task is not None:
        tasks = counts.setdefault("tasks", {})
        tasks[task] = tasks.get(task, 0) + 1


def group_by_task(records: Iterable[Record], field: str) -> list[Record]:
    """The records in task order (untagged first, then by name), stable within a task. Holds the
    split in memory: meant for validation sets."""
    return sorted(records, key=lambda r: task_of(r.row, field) or "")


def task_ranges(counts: dict) -> dict[str, tuple[int, int]]:
    """``{task: (first unit, end)}`` of a split encoded from :func:`group_by_task` order; empty
    when the split has fewer than two tasks."""
    tasks = counts.get("tasks") or {}
    untagged = counts.get("used", 0) - sum(tasks.values())
    groups = ([(UNTAGGED, untagged)] if untagged > 0 else []) + sorted(tasks.items())
    if len(groups) < 2:
        return {}
    out, start = {}, 0
    for task, n in groups:
        out[task] = (start, start + n)
        start += n
    return out


class _Span(Sequence):
    """Units ``start:end`` of a sequence, without copying them (cached units stay mapped)."""

    def __init__(self, units: Sequence, start: int, end: int) -> None:
        self.units, self.start, self.end = units, start, end

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, index):
        if isinstance(index, slice):
            lo, hi, step = index.indices(len(self))
            return self.units[self.start + lo : self.start + hi : step]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self.units[self.start + index % len(self)]


def task_evaluator(counts: dict) -> Callable | None:
    """For ``LoopOptions.evaluate``: ``evaluate_loss`` per task of validation units encoded in
    :func:`group_by_task` order, with ``counts`` their split's counts. Returns the overall
    ``eval_loss``/``eval_ppl``/``eval_tokens`` (every task's target tokens together) plus the same
    three per task as ``eval_loss/<task>`` ...; None when there are fewer than two tasks.
    ``train.eval_batches`` caps each task's micro-batches, so a capped overall loss still covers
    every task."""
    ranges = task_ranges(counts)
    if not ranges:
        return None

    def evaluate(objective, units, cfg, opts, autocast_dtype, layout, spec=None) -> dict:
        from lmforge.training.forward import evaluate_loss

        if len(units) != max(end for _, end in ranges.values()):
            raise ValueError("validation units do not match the counts their tasks came from")
        out, loss_sum, tokens = {}, 0.0, 0
        for task, (start, end) in ranges.items():
            span = _Span(units, start, end)
            result = evaluate_loss(objective, span, cfg, opts, autocast_dtype, layout, spec)
            out.update({f"{key}/{task}": value for key, value in result.items()})
            loss_sum += result["eval_loss"] * result["eval_tokens"]
            tokens += result["eval_tokens"]
        mean = loss_sum / max(1, tokens)
        overall = {"eval_loss": mean, "eval_ppl": math.exp(min(mean, 50.0)), "eval_tokens": tokens}
        return {**overall, **out}

    return evaluate
