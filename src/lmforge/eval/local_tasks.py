"""Small evaluation tasks written by the project, in English and Chinese, for lm-evaluation-
harness and for ``lmforge evaluate``'s own multiple choice, so both can be run fully offline and
compared on the same items.

The items come from the project's generator (``data.synthetic.make_tasks``, seed 2027; the demo
and the tests use other seeds, though in a task space this small single questions can recur)
and are written, with one lm-eval task YAML each, into a folder (:func:`write_tasks`;
``lmforge evaluate`` writes it into its run as ``harness_tasks/``). Pass that folder to lm-eval as ``--include_path`` to run the same tasks
with any other model.

| task | language | type | items |
| --- | --- | --- | --- |
| ``lmforge_parity_en`` | en | multiple choice: odd / even | 60 |
| ``lmforge_parity_zh`` | zh | multiple choice: 奇数 / 偶数 | 60 |
| ``lmforge_sentiment_en`` | en | multiple choice: positive / negative | 60 |
| ``lmforge_sentiment_zh`` | zh | multiple choice: 正面 / 负面 | 60 |
| ``lmforge_numerals_zh`` | zh | generation, exact match: the Chinese numeral of a number | 60 |

A multiple-choice row is ``{"id", "question", "choices", "answer"}`` (``answer``: the index of
the right choice); the prompt is ``PROMPT`` filled with the question and each choice is scored
as the continuation ``" " + choice`` (lm-eval's default target delimiter).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from lmforge.data.synthetic import make_tasks

PROMPT = "Question: {question}\nAnswer:"
SEED = 2027
N_ITEMS = 60
CHOICES = {
    "en_parity": ["odd", "even"],
    "zh_parity": ["奇数", "偶数"],
    "en_sentiment": ["positive", "negative"],
    "zh_sentiment": ["正面", "负面"],
}
GENERATION = ("zh_numerals",)
TASKS = {f"lmforge_{t[3:]}_{t[:2]}": t for t in (*CHOICES, *GENERATION)}


def task_rows(task: str, n: int = N_ITEMS, seed: int = SEED) -> list[dict]:
    """The rows of one of :data:`TASKS` (by its lm-eval name)."""
    source = TASKS[task]
    rows = [r for r in make_tasks(n, seed=seed) if r["task"] == source][:n]
    if source in CHOICES:
        choices = CHOICES[source]
        return [
            {
                "id": r["id"],
                "question": r["instruction"],
                "choices": choices,
                "answer": choices.index(r["output"]),
            }
            for r in rows
        ]
    return [{"id": r["id"], "question": r["instruction"], "answer": r["output"]} for r in rows]


def task_config(task: str, data_file: Path) -> dict:
    """The lm-eval task config of ``task`` reading ``data_file`` (an absolute path)."""
    common = {
        "task": task,
        "tag": ["lmforge"],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "doc_to_text": PROMPT.replace("{question}", "{{question}}"),
        "metadata": {"version": 1.0},
    }
    if TASKS[task] in CHOICES:
        return {
            **common,
            "output_type": "multiple_choice",
            "doc_to_choice": "choices",
            "doc_to_target": "answer",
            "metric_list": [
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
            ],
        }
    return {
        **common,
        "output_type": "generate_until",
        "doc_to_target": "answer",
        "target_delimiter": " ",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 16, "do_sample": False},
        "filter_list": [
            {
                "name": "strip",
                "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}],
            }
        ],
        "metric_list": [
            {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True},
        ],
    }


def write_tasks(folder: Path) -> Path:
    """Every task's data (``<task>.jsonl``) and config (``<task>.yaml``) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for task in TASKS:
        data = folder / f"{task}.jsonl"
        data.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in task_rows(task)),
            encoding="utf-8",
        )
        config = task_config(task, data.resolve())
        (folder / f"{task}.yaml").write_text(
            yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8"
        )
    return folder
