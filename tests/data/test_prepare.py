"""``lmforge prepare``: counts reconcile, nothing is lost, resume and executors change nothing."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lmforge.cli import main
from lmforge.config import RECIPE_CONFIGS, load_config
from lmforge.data.readers import Rejects, iter_records
from lmforge.recipes.prepare import run as prepare

EN = [
    "The committee met on Tuesday to review the budget for the coming year and its priorities.",
    "Rivers carry sediment from the mountains to the sea, shaping valleys over many centuries.",
    "A good recipe lists the ingredients first and then explains each step in a clear order.",
    "Engineers tested the bridge with heavy trucks before opening it to the public last spring.",
]
ZH = [
    "今天上午，市图书馆举办了一场关于古代诗歌的讲座，吸引了许多市民前来聆听。",
    "这条河流发源于西部山区，向东流经三个省份，最终汇入大海。",
]


def _corpus(folder: Path, n: int = 120) -> list[Path]:
    rows = []
    for i in range(n):
        base = (EN + ZH)[i % len(EN + ZH)]
        rows.append({"text": f"{base} Item {i}.", "label": ["a", "b", "c"][i % 3]})
    rows[7] = {"text": "tiny", "label": "a"}  # dropped by the length filter
    rows[9] = {"text": rows[3]["text"], "label": "a"}  # kept: only a filter runs
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines.insert(5, "{not json")
    lines.insert(11, json.dumps({"text": 42}))
    lines.insert(20, json.dumps({"label": "no text"}))
    a = folder / "a.jsonl"
    a.write_text("\n".join(lines) + "\n", encoding="utf-8")
    b = folder / "notes.txt"
    b.write_text("First paragraph of notes.\nStill the first.\n\nSecond one here.\n\n\n", "utf-8")
    return [a, b]


def _config(tmp: Path, out: str, **extra) -> dict:
    a, b = _corpus(tmp) if not (tmp / "a.jsonl").exists() else (tmp / "a.jsonl", tmp / "notes.txt")
    data = {
        "output_dir": str(tmp / out),
        "inputs": [
            {"files": [str(a)], "source": "web"},
            {"files": [str(b)], "text_mode": "paragraph"},
        ],
        "shard_size": 16,
        "blocks": [{"length_filter": {"min_chars": 10}}, {"require_fields": {"fields": ["label"]}}],
        "report": False,
    }
    data.update(extra)
    return data


def _write(tmp: Path, data: dict, name: str = "pipeline.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def _files(run_dir: Path) -> dict[str, bytes]:
    """Every data file of a finished run (manifest excluded: it holds timestamps)."""
    found = {}
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir).as_posix()
        if path.is_file() and rel != "manifest.json" and not rel.startswith("work/"):
            found[rel] = path.read_bytes()
    return found


def test_counts_reconcile_and_nothing_is_lost(tmp_path):
    cfg = load_config(RECIPE_CONFIGS["prepare"], _write(tmp_path, _config(tmp_path, "out")))
    prepare(cfg)
    out = tmp_path / "out"
    stats = json.loads((out / "stats.json").read_text())
    t = stats["totals"]
    assert t["read"] == 123 + 2  # 123 jsonl lines, 2 paragraphs
    assert t["rejected"] == 3
    assert t["read"] + t["added"] == t["kept"] + t["dropped"] + t["rejected"]
    for block in stats["blocks"]:
        assert block["seen"] + block["added"] == block["kept"] + sum(block["dropped"].values())
    assert stats["blocks"][0]["dropped"] == {"too_short": 1}
    assert stats["blocks"][1]["dropped"] == {"missing_field": 2}  # the two paragraphs

    kept = list(iter_records([out / "data"], Rejects()))
    excluded = [json.loads(x) for p in (out / "exclusions").glob("*") for x in p.open()]
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").open()]
    assert len(kept) == t["kept"] and len(excluded) == t["dropped"] and len(rejects) == 3
    assert {r["line"] for r in rejects} == {6, 12, 21}
    assert all(r["file"].endswith("a.jsonl") for r in rejects)
    # every excluded document is kept whole, with the block and the reason
    short = next(e for e in excluded if e["reason"] == "too_short")
    assert short["block"] == "length_filter" and short["document"]["text"] == "tiny"
    assert short["detail"] == {"chars": 4, "min_chars": 10}
    # ids are unique and say where the document came from
    ids = [r.row["id"] for r in kept] + [e["id"] for e in excluded]
    assert len(ids) == len(set(ids)) == t["kept"] + t["dropped"]
    assert kept[0].row["id"] == "web/a.jsonl:1" and kept[0].row["metadata"]["source"] == "web"
    assert kept[0].row["label"] == "a"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["counts"]["kept"] == t["kept"]
    assert {o["role"] for o in manifest["outputs"]} >= {"data", "rejects", "stats", "exclusions"}
    assert not (out / "work").exists()
    # same config and inputs: reused, not recomputed
    before = _files(out)
    prepare(cfg)
    assert _files(out) == before


def test_workers_do_not_change_the_output(tmp_path):
    one = load_config(RECIPE_CONFIGS["prepare"], _write(tmp_path, _config(tmp_path, "one")))
    prepare(one)
    two = _config(tmp_path, "two", executor={"kind": "local", "workers": 2})
    prepare(load_config(RECIPE_CONFIGS["prepare"], _write(tmp_path, two, "two.yaml")))
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None and os.environ.get("CI") != "true",
    reason="ray is not installed (pip install 'lmforge[ray]')",
)
def test_ray_executor_gives_the_local_output(tmp_path):
    local = load_config(RECIPE_CONFIGS["prepare"], _write(tmp_path, _config(tmp_path, "local")))
    prepare(local)
    ray_cfg = _config(tmp_path, "ray", executor={"kind": "ray", "workers": 2})
    prepare(load_config(RECIPE_CONFIGS["prepare"], _write(tmp_path, ray_cfg, "ray.yaml")))
    assert _files(tmp_path / "local") == _files(tmp_path / "ray")


def _many_shards(tmp: Path, out: str) -> Path:
    blocks = [
        {"length_filter": {"min_chars": 10}},
        "exact_dedup",
        {"require_fields": {"fields": ["label"]}},
    ]
    data = _config(tmp, out, shard_size=1, blocks=blocks)
    return _write(tmp, data, f"{out}.yaml")


@pytest.mark.parametrize("kill_after", [20, 150])  # shards done: in stage 1, in stage 2
def test_kill_and_rerun_gives_byte_identical_output(tmp_path, kill_after):
    """SIGKILL a real ``lmforge prepare`` mid-run, rerun it, compare with an uninterrupted run."""
    prepare(load_config(RECIPE_CONFIGS["prepare"], _many_shards(tmp_path, "whole")))
    whole = _files(tmp_path / "whole")
    assert json.loads(whole["stats.json"])["blocks"][1]["dropped"] == {"exact_duplicate": 1}
    config = _many_shards(tmp_path, "killed")
    cmd = [sys.executable, "-m", "lmforge", "prepare", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tmp_path / "killed" / "work"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if len(list(work.glob("*/s*/done-*.json"))) >= kill_after:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed; use more shards"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(work.glob("*/s*/done-*.json")))
    assert kill_after <= done < 3 * 123
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert _files(tmp_path / "killed") == whole  # no leftover temporary files either


def test_bad_pipeline_is_a_clear_user_error(tmp_path, capsys):
    data = _config(tmp_path, "bad", blocks=[{"length_filter": {"min_char": 3}}])
    assert main(["prepare", str(_write(tmp_path, data))]) == 2
    err = capsys.readouterr().err
    assert "blocks[0] (length_filter): min_char" in err and "min_chars" in err
    data = _config(tmp_path, "bad", blocks=["lenght_filter"])
    assert main(["prepare", str(_write(tmp_path, data))]) == 2
    assert "did you mean 'length_filter'" in capsys.readouterr().err
    data = _config(tmp_path, "bad", inputs=[{"files": [str(tmp_path / "missing.jsonl")]}])
    assert main(["prepare", str(_write(tmp_path, data))]) == 2
    assert "input not found" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
