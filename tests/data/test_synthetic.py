"""Tests for lmforge.data.synthetic: determinism, answer correctness, balance and I/O."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

import pytest

from lmforge.data.synthetic import (
    TASKS,
    make_corpus,
    make_tasks,
    number_to_chinese,
    number_to_english,
    write_demo_data,
)

BINARY_TASKS = ("en_parity", "en_sentiment", "zh_sentiment", "zh_parity")
CJK = re.compile(r"[\u4e00-\u9fff]")


def _by_task(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        out[rec["task"]].append(rec)
    return out


def _number_in(instruction: str) -> int:
    numbers = re.findall(r"\d+", instruction)
    assert len(numbers) == 1, instruction
    return int(numbers[0])


@pytest.fixture(scope="module")
def tasks() -> list[dict]:
    return make_tasks(400, seed=0)


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    return make_corpus(600, seed=0)


def test_task_names() -> None:
    assert set(TASKS) == {
        "en_parity",
        "en_number_words",
        "en_sentiment",
        "zh_numerals",
        "zh_sentiment",
        "zh_parity",
    }


def test_determinism() -> None:
    assert make_corpus(200, seed=3) == make_corpus(200, seed=3)
    assert make_tasks(50, seed=3) == make_tasks(50, seed=3)
    assert make_corpus(200, seed=3) != make_corpus(200, seed=4)
    assert make_tasks(50, seed=3) != make_tasks(50, seed=4)


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (7, "seven"),
        (13, "thirteen"),
        (19, "nineteen"),
        (20, "twenty"),
        (40, "forty"),
        (42, "forty-two"),
        (99, "ninety-nine"),
    ],
)
def test_number_to_english(n: int, words: str) -> None:
    assert number_to_english(n) == words


@pytest.mark.parametrize(
    ("n", "numeral"),
    [(0, "零"), (5, "五"), (10, "十"), (12, "十二"), (20, "二十"), (47, "四十七"), (99, "九十九")],
)
def test_number_to_chinese(n: int, numeral: str) -> None:
    assert number_to_chinese(n) == numeral


@pytest.mark.parametrize("fn", [number_to_english, number_to_chinese])
def test_number_range_checked(fn) -> None:
    with pytest.raises(ValueError):
        fn(100)
    with pytest.raises(ValueError):
        fn(-1)


def test_record_schema(tasks: list[dict]) -> None:
    assert len(tasks) == 400 * len(TASKS)
    assert len({r["id"] for r in tasks}) == len(tasks)
    for rec in tasks:
        assert set(rec) == {"id", "instruction", "input", "output", "task", "lang"}
        assert rec["input"] == ""
        assert rec["lang"] == rec["task"][:2]
        assert rec["id"].startswith(rec["task"] + "-")
        assert 1 <= len(rec["output"].split("-")) <= 3 and " " not in rec["output"]


def test_all_tasks_present_and_templates_vary(tasks: list[dict]) -> None:
    by_task = _by_task(tasks)
    assert set(by_task) == set(TASKS)
    for task, recs in by_task.items():
        assert len(recs) == 400
        # Several phrasings: strip the variable part and count distinct templates.
        shapes = {re.sub(r"\d+", "N", r["instruction"])[:12] for r in recs}
        assert len(shapes) >= 3, task


def test_no_duplicate_instructions(tasks: list[dict]) -> None:
    for task, recs in _by_task(tasks).items():
        instructions = [r["instruction"] for r in recs]
        assert len(set(instructions)) == len(instructions), task


def test_number_tasks_sample_without_replacement() -> None:
    by_task = _by_task(make_tasks(100, seed=1))
    for task in ("en_parity", "zh_parity", "en_number_words", "zh_numerals"):
        numbers = [_number_in(r["instruction"]) for r in by_task[task]]
        assert len(set(numbers)) == len(numbers) == 100, task
    # More than the 0..99 space: every number appears, each 4 times (once per template).
    by_task = _by_task(make_tasks(400, seed=1))
    counts = Counter(_number_in(r["instruction"]) for r in by_task["en_number_words"])
    assert set(counts) == set(range(100)) and set(counts.values()) == {4}


def test_more_than_space_allows_repeats() -> None:
    by_task = _by_task(make_tasks(500, seed=0))
    assert len(by_task["zh_numerals"]) == 500
    assert len({r["instruction"] for r in by_task["zh_numerals"]}) == 400


def test_number_answers_correct(tasks: list[dict]) -> None:
    by_task = _by_task(tasks)
    for rec in by_task["en_number_words"]:
        assert rec["output"] == number_to_english(_number_in(rec["instruction"]))
    for rec in by_task["zh_numerals"]:
        assert rec["output"] == number_to_chinese(_number_in(rec["instruction"]))
    known = {r["output"] for r in by_task["en_number_words"] if _number_in(r["instruction"]) == 42}
    assert known == {"forty-two"}


def test_parity_labels_correct(tasks: list[dict]) -> None:
    by_task = _by_task(tasks)
    for rec in by_task["en_parity"]:
        n = _number_in(rec["instruction"])
        assert 0 <= n <= 999
        assert rec["output"] == ("even" if n % 2 == 0 else "odd")
    for rec in by_task["zh_parity"]:
        n = _number_in(rec["instruction"])
        assert 0 <= n <= 999
        assert rec["output"] == ("偶数" if n % 2 == 0 else "奇数")


def test_sentiment_labels_follow_word_lists(tasks: list[dict]) -> None:
    by_task = _by_task(tasks)
    for rec in by_task["en_sentiment"]:
        assert rec["output"] in {"positive", "negative"}
        assert "review" in rec["instruction"].lower()
    for rec in by_task["zh_sentiment"]:
        assert rec["output"] in {"正面", "负面"}
        assert "评论" in rec["instruction"]
    # Spot-check a few unambiguous words.
    for rec in by_task["en_sentiment"]:
        text = rec["instruction"]
        if re.search(r"\b(delicious|wonderful|friendly|clean)\b", text):
            assert rec["output"] == "positive", text
        if re.search(r"\b(awful|rude|dirty|boring)\b", text):
            assert rec["output"] == "negative", text
    for rec in by_task["zh_sentiment"]:
        text = rec["instruction"]
        if any(w in text for w in ("好吃", "热情", "干净", "精彩")):
            assert rec["output"] == "正面", text
        if any(w in text for w in ("难吃", "粗鲁", "肮脏", "无聊")):
            assert rec["output"] == "负面", text


@pytest.mark.parametrize("n", [400, 101])
def test_label_balance(n: int) -> None:
    by_task = _by_task(make_tasks(n, seed=5))
    for task in BINARY_TASKS:
        counts = Counter(r["output"] for r in by_task[task])
        assert len(counts) == 2, task
        for c in counts.values():
            assert 0.4 <= c / n <= 0.6, (task, counts)


def test_corpus_schema_and_languages(corpus: list[dict]) -> None:
    assert len(corpus) == 600
    assert [d["id"] for d in corpus[:2]] == ["doc-000001", "doc-000002"]
    assert len({d["id"] for d in corpus}) == len(corpus)
    with_cjk = 0
    for doc in corpus:
        assert set(doc) == {"id", "text", "lang"}
        text = doc["text"]
        n_cjk = len(CJK.findall(text))
        if doc["lang"] == "zh":
            with_cjk += 1
            assert n_cjk > 0.5 * len(text), text
            assert " " not in text and not re.search(r"[A-Za-z]", text), text
            assert text.endswith(("。", "！", "？")), text
        else:
            assert doc["lang"] == "en"
            assert n_cjk == 0, text
            assert text.isascii(), text
    frac = with_cjk / len(corpus)
    assert 0.45 <= frac <= 0.55
    assert sum(d["lang"] == "zh" for d in corpus) == 300


def test_corpus_sentence_counts_and_variety(corpus: list[dict]) -> None:
    for doc in corpus:
        if doc["lang"] == "en":
            n = len(re.findall(r"[.!?](?=\s|$)", doc["text"]))
        else:
            n = len(re.findall(r"[。！？]", doc["text"]))
        assert 3 <= n <= 10, doc
    texts = [d["text"] for d in corpus]
    assert len(set(texts)) == len(texts)
    sentences = [
        s for d in corpus if d["lang"] == "en" for s in re.split(r"(?<=[.!?]) ", d["text"])
    ]
    assert len(set(sentences)) > 0.6 * len(sentences)


def test_corpus_carries_task_knowledge() -> None:
    text = "\n".join(d["text"] for d in make_corpus(3000, seed=0))
    assert re.search(r"\b42 is written forty-two\b|\bIn words, 42 is forty-two\b", text)
    assert re.search(r"\d+ is an (even|odd) number because it ends in \d\.", text)
    assert "写作四十二" in text
    assert re.search(r"\d+是(奇数|偶数)。", text)
    for word in ("delicious", "rude", "好吃", "难吃"):
        assert word in text
    for n in range(100):  # every spelling appears somewhere
        assert number_to_english(n) in text.lower()
        assert f"{n}写作{number_to_chinese(n)}" in text or f"{number_to_chinese(n)}就是{n}" in text


def test_write_demo_data_roundtrip(tmp_path) -> None:
    out_dir = tmp_path / "nested" / "demo"
    paths = write_demo_data(out_dir, n_docs=50, n_per_task=20, seed=7)
    assert set(paths) == {"corpus", "tasks"}
    assert paths["corpus"] == out_dir / "corpus.jsonl"
    assert paths["tasks"] == out_dir / "tasks.jsonl"
    for key, expected in (
        ("corpus", make_corpus(50, seed=7)),
        ("tasks", make_tasks(20, seed=7)),
    ):
        raw = paths[key].read_text(encoding="utf-8")
        lines = raw.splitlines()
        assert raw.endswith("\n") and len(lines) == len(expected)
        assert [json.loads(line) for line in lines] == expected
    # Chinese is written as UTF-8 text, not \\u escapes.
    assert "\\u" not in paths["tasks"].read_text(encoding="utf-8")
    assert re.search(CJK, paths["tasks"].read_text(encoding="utf-8"))
