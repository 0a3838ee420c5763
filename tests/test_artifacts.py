"""Atomic writes, content fingerprints, run manifests and lineage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lmforge import artifacts
from lmforge.artifacts import (
    Run,
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    fingerprint,
    format_lineage,
    lineage,
    recorded,
)
from lmforge.cli import main


def test_atomic_write_leaves_only_the_file(tmp_path) -> None:
    target = tmp_path / "sub" / "out.json"
    atomic_write_json(target, {"a": 1, "text": "中文"})
    atomic_write_text(target, "second\n")  # replacing works the same way
    assert target.read_text() == "second\n"
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_failed_atomic_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifacts.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_dir_replaces_on_success(tmp_path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_text("old")
    with atomic_dir(target) as tmp:
        assert tmp != target and tmp.parent == target.parent
        (tmp / "new.bin").write_text("new")
        assert (target / "old.bin").exists()  # nothing visible until the block ends
    assert [p.name for p in target.iterdir()] == ["new.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp or old folders left


def test_atomic_dir_keeps_the_old_folder_when_the_block_raises(tmp_path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights.bin").write_text("good")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_text("half")
        raise RuntimeError("killed while writing")
    assert (target / "weights.bin").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]

    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "fresh"):
        raise RuntimeError("first write fails")
    assert not (tmp_path / "fresh").exists()


def test_fingerprint_follows_content(tmp_path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("hello")
    b.write_text("hello")
    assert fingerprint(a) == fingerprint(b)  # content, not name or time
    before = fingerprint(a)
    a.write_text("hello!")
    assert fingerprint(a) != before

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "w.bin").write_bytes(b"\x00\x01")
    first = fingerprint(folder)
    (folder / "manifest.json").write_text("{}")  # the run's own manifest is not content
    (folder / ".w.bin.tmp-1234").write_text("junk")  # neither are leftover temp files
    assert fingerprint(folder) == first
    (folder / "w.bin").write_bytes(b"\x00\x02")
    assert fingerprint(folder) != first
    (folder / "w.bin").write_bytes(b"\x00\x01")
    (folder / "extra.bin").write_bytes(b"")
    assert fingerprint(folder) != first


def _make_run(stage: str, out: Path, inputs: dict, output_name: str) -> Path:
    run = Run.start(stage, {"stage": stage}, out, inputs=inputs)
    with recorded(run):
        produced = out / output_name
        produced.mkdir()
        (produced / "data.bin").write_text(stage)
        run.add_output(produced, output_name)
    return produced


@pytest.fixture
def chain(tmp_path) -> dict[str, Path]:
    """raw corpus -> tokenizer run -> pt run -> sft run (+ raw tasks, + the tokenizer again)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    corpus, tasks = raw / "corpus.jsonl", raw / "tasks.jsonl"
    corpus.write_text('{"text": "hello"}\n')
    tasks.write_text('{"instruction": "hi", "output": "hello"}\n')
    tok = _make_run("tokenizer", tmp_path / "tok", {"corpus": [corpus]}, "tokenizer")
    pt = _make_run("pt", tmp_path / "pt", {"train_data": [corpus], "tokenizer": tok}, "model")
    sft = _make_run(
        "sft",
        tmp_path / "sft",
        {"train_data": [tasks], "base_model": pt, "tokenizer": tok},
        "model",
    )
    return {"corpus": corpus, "tasks": tasks, "tok": tok, "pt": pt, "sft": sft}


def test_lineage_walks_back_to_raw_files(chain) -> None:
    nodes = lineage(chain["sft"])
    shape = [
        (
            n["depth"],
            n["kind"],
            n["role"],
            n.get("stage") or Path(n["path"]).name,
            n.get("seen", False),
        )
        for n in nodes
    ]
    assert shape == [
        (0, "run", None, "sft", False),
        (1, "file", "train_data", "tasks.jsonl", False),
        (1, "run", "base_model", "pt", False),
        (2, "file", "train_data", "corpus.jsonl", False),
        (2, "run", "tokenizer", "tokenizer", False),
        (3, "file", "corpus", "corpus.jsonl", False),
        (1, "run", "tokenizer", "tokenizer", True),  # reached twice, expanded once
    ]
    files = [n for n in nodes if n["kind"] == "file"]
    for node in files:
        assert node["fingerprint"] == fingerprint(node["path"])
    assert all(n["status"] == "completed" for n in nodes if n["kind"] == "run")


def test_lineage_cli(chain, capsys) -> None:
    assert main(["lineage", str(chain["sft"])]) == 0
    out = capsys.readouterr().out
    assert out.strip() == format_lineage(lineage(chain["sft"]))
    assert str(chain["tasks"].resolve()) in out and "[tokenizer]" in out and "(see above)" in out
    assert main(["lineage", str(chain["corpus"])]) == 2  # a raw file has no manifest
    assert "no lmforge manifest" in capsys.readouterr().err


def test_finished_run_is_reused_only_while_inputs_match(chain, tmp_path) -> None:
    again = Run.start(
        "tokenizer", {"stage": "tokenizer"}, tmp_path / "tok", inputs={"corpus": [chain["corpus"]]}
    )
    assert again.finished_before() is not None
    chain["corpus"].write_text('{"text": "changed"}\n')
    changed = Run.start(
        "tokenizer", {"stage": "tokenizer"}, tmp_path / "tok", inputs={"corpus": [chain["corpus"]]}
    )
    assert changed.finished_before() is None


def test_failed_run_manifest_says_failed(tmp_path) -> None:
    run = Run.start("pt", {}, tmp_path / "run")
    with pytest.raises(ValueError), recorded(run):
        raise ValueError("boom")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["metrics"]["error"] == "ValueError: boom"
    assert not any(name.startswith(".") for name in os.listdir(tmp_path / "run"))
