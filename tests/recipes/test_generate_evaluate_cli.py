"""``lmforge generate``, ``evaluate`` and ``chat`` end to end on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.cli import main


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def tasks(demo_data, tmp_path_factory) -> Path:
    """Eight instruction rows (alpaca), a malformed line, a row without an answer, a long one."""
    rows = demo_data["tasks"].read_text(encoding="utf-8").splitlines()[:8]
    long_row = json.dumps({"instruction": "word " * 600, "output": "x"})
    path = tmp_path_factory.mktemp("eval") / "tasks.jsonl"
    path.write_text(
        "\n".join([*rows[:4], "{not json", json.dumps({"instruction": "hi"}), long_row, *rows[4:]])
        + "\n",
        encoding="utf-8",
    )
    return path


def test_generate_writes_outputs_and_rejects(tiny_model_dir, tmp_path, tasks):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": "Is 7 odd?"}\n{"prompt": 3}\n\n'
        '{"instruction": "Spell 12.", "output": "twelve"}\n{broken\n'
        '{"messages": [{"role": "user", "content": "hi"}, '
        '{"role": "assistant", "content": "hello"}]}\n',
        encoding="utf-8",
    )
    out = tmp_path / "gen"
    code = main(
        [
            "generate",
            f"model.path={tiny_model_dir}",
            f"prompts={prompts}",
            f"output_dir={out}",
            "generation.max_new_tokens=5",
            "generation.batch_size=2",
        ]
    )
    assert code == 0
    rows = read_jsonl(out / "outputs.jsonl")
    assert [r["source_line"] for r in rows] == [1, 4, 6]
    assert [r.get("reference") for r in rows] == [None, "twelve", "hello"]
    assert rows[0]["prompt"] == "Is 7 odd?" and rows[0]["id"] == "prompts.jsonl:1"
    assert all(0 < r["new_tokens"] <= 5 and r["finish_reason"] in ("stop", "length") for r in rows)
    rejects = read_jsonl(out / "rejects.jsonl")
    assert sorted(r["line"] for r in rejects) == [2, 5]
    assert any("malformed JSON" in r["reason"] for r in rejects)
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["read"] == counts["used"] + counts["rejected"] == 5
    assert {i["role"] for i in manifest["inputs"]} == {"model", "prompts"}


def test_generate_txt_prompts_to_custom_output(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello there\n\nwhat is 2 + 2?\n", encoding="utf-8")
    target = tmp_path / "elsewhere" / "out.jsonl"
    code = main(
        [
            "generate",
            f"model.path={tiny_model_dir}",
            f"prompts={prompts}",
            f"output={target}",
            f"output_dir={tmp_path / 'run'}",
            "generation.max_new_tokens=3",
            "generation.chat=false",
        ]
    )
    assert code == 0
    assert [r["prompt"] for r in read_jsonl(target)] == ["hello there", "what is 2 + 2?"]


def test_generate_missing_prompts_file_is_a_user_error(tiny_model_dir, tmp_path, capsys):
    code = main(
        [
            "generate",
            f"model.path={tiny_model_dir}",
            f"prompts={tmp_path / 'nope.txt'}",
            f"output_dir={tmp_path / 'run'}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "prompts file not found" in err and "nope.txt" in err
    assert "Traceback" not in err


def test_evaluate_perplexity_and_exact_match(tiny_model_dir, demo_data, tasks, tmp_path):
    corpus = tmp_path / "heldout.jsonl"
    corpus.write_text(
        "\n".join(demo_data["corpus"].read_text(encoding="utf-8").splitlines()[:6])
        + '\n{"text": ""}\n',
        encoding="utf-8",
    )
    book = tmp_path / "book.txt"
    book.write_text(
        "First line of one document.\nSecond line of the same document.\n", encoding="utf-8"
    )
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            f"model.path={tiny_model_dir}",
            f"output_dir={out}",
            f"perplexity.files=[{corpus},{book}]",
            "perplexity.window=32",
            f"exact_match.files=[{tasks}]",
            "exact_match.max_length=200",
            "exact_match.max_examples=6",
            "generation.max_new_tokens=4",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    ppl = metrics["perplexity"]
    assert set(ppl["files"]) == {str(corpus), str(book)}
    assert ppl["tokens"] == sum(f["tokens"] for f in ppl["files"].values())
    assert ppl["files"][str(book)]["words"] == 12  # the whole .txt file is one document
    assert 1 < ppl["token_perplexity"] < 5000 and ppl["bits_per_byte"] > 0
    em = metrics["exact_match"]
    assert em["total"] == 6 and 0 <= em["accuracy"] <= 1 and em["by_task"]

    items = read_jsonl(out / "items.jsonl")
    ppl_items = [i for i in items if i["eval"] == "perplexity"]
    em_items = [i for i in items if i["eval"] == "exact_match"]
    assert len(ppl_items) == 7 and sum(i["tokens"] for i in ppl_items) == ppl["tokens"]
    assert len(em_items) == 6
    assert {"id", "prompt", "prediction", "reference", "correct"} <= set(em_items[0])
    assert sum(i["correct"] for i in em_items) == em["correct"]

    reasons = {
        (Path(r["file"]).name, r["line"]): r["reason"] for r in read_jsonl(out / "rejects.jsonl")
    }
    assert reasons.keys() == {
        ("heldout.jsonl", 7),
        ("tasks.jsonl", 5),
        ("tasks.jsonl", 6),
        ("tasks.jsonl", 7),
    }
    assert "empty text" in reasons["heldout.jsonl", 7]
    assert "malformed JSON" in reasons["tasks.jsonl", 5]
    assert "output" in reasons["tasks.jsonl", 6]
    assert "prompt too long" in reasons["tasks.jsonl", 7]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["exact_match"]["accuracy"] == em["accuracy"]
    c = manifest["counts"]["exact_match"]
    assert c["read"] == c["used"] + c["rejected"] + c["skipped"] == 11
    assert c["rejected"] == 3


def test_chat_through_a_pipe(tiny_model_dir):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmforge",
            "chat",
            f"model.path={tiny_model_dir}",
            "generation.max_new_tokens=4",
            "device=cpu",
        ],
        input="hello\n/reset\nhi again\n/exit\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("model> ") == 2
    assert "(conversation cleared)" in proc.stdout
