"""Data versions: ``diff_runs`` between two prepare outputs and the DVC stages."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_report import KEPT, make_run

from lmforge.data.versions import diff_runs, distribution_shift, format_diff, write_dvc_yaml
from lmforge.errors import UserError
from lmforge.recipes import data as data_recipe


def _edited() -> list[dict]:
    """KEPT with d1 rewritten, d2's metadata changed (not a change), d7 moved to train, d8
    removed and d9 added."""
    rows = copy.deepcopy([r for r in KEPT if r["id"] != "d8"])
    by_id = {r["id"]: r for r in rows}
    by_id["d1"]["text"] = "the cat sat on the red mat"
    by_id["d2"]["metadata"]["lang_score"] = 0.99
    by_id["d7"]["metadata"]["split"] = "train"
    d9 = {
        "id": "d9",
        "text": "wind in the trees",
        "label": "pos",
        "metadata": dict(KEPT[0]["metadata"]),
    }
    return rows + [d9]


def _js(p: list[float], q: list[float]) -> float:
    m = [(x + y) / 2 for x, y in zip(p, q, strict=True)]
    kl = lambda a, b: sum(x * math.log2(x / y) for x, y in zip(a, b, strict=True) if x)  # noqa: E731
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def test_diff_documents_splits_and_shifts(tmp_path):
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", kept=_edited())
    d = diff_runs(a, b)
    assert d["documents"] == {
        "added": 1,
        "removed": 1,
        "changed": 1,
        "unchanged": 6,
        "moved_split": 1,
        "examples": {"added": ["d9"], "removed": ["d8"], "changed": ["d1"], "moved_split": ["d7"]},
    }
    assert d["a"]["docs"] == 8 and d["b"]["docs"] == 8
    assert d["splits"]["counts"] == {"train": [5, 7], "test": [3, 1]}
    assert d["splits"]["tv"] == 0.25
    langs = d["languages"]
    assert langs["counts"] == {"en": [6, 7], "zh": [2, 1]}
    assert langs["tv"] == 0.125
    assert langs["js"] == pytest.approx(_js([0.75, 0.25], [0.875, 0.125]), abs=1e-6)
    assert d["length_chars"]["a"]["max"] == 27 and d["length_chars"]["b"]["min"] == 9
    assert d["shards"] == {
        "added": [],
        "removed": [],
        "changed": ["data/test/part-00000.jsonl", "data/train/part-00000.jsonl"],
        "unchanged": 0,
    }
    text = format_diff(d)
    assert (
        "documents: +1 added, -1 removed, 1 changed, 6 unchanged, 1 moved to another split" in text
    )
    assert "  changed: d1\n" in text
    assert "languages: TV 0.1250, JS " in text
    assert "  en                75.00% ->  87.50%  (6 -> 7)" in text
    assert "shards: 2 changed, 0 added, 0 removed, 0 unchanged" in text


def test_diff_identical_and_data_folders(tmp_path):
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b")
    d = diff_runs(a, b / "data")  # a data folder inside a run: shards still compared
    assert (d["documents"]["unchanged"], d["documents"]["changed"]) == (8, 0)
    assert (
        d["shards"]["unchanged"] == 2
        and d["languages"]["tv"] == 0.0
        and d["languages"]["js"] == 0.0
    )
    bare = tmp_path / "copy"
    shutil.copytree(b / "data", bare)
    d = diff_runs(a, bare)
    assert d["shards"] is None and d["documents"]["unchanged"] == 8
    assert "shards: not compared" in format_diff(d)


def test_distribution_shift_disjoint():
    shift = distribution_shift({"en": 3}, {"zh": 5})
    assert (shift["tv"], shift["js"]) == (1.0, 1.0)  # JS stays finite where KL would not
    assert distribution_shift({}, {"en": 1})["tv"] is None


def test_diff_user_errors(tmp_path):
    with pytest.raises(UserError, match="is not a folder"):
        diff_runs(tmp_path / "nope", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a prepare run folder"):
        diff_runs(tmp_path / "empty", tmp_path / "empty")
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok/manifest.json").write_text(json.dumps({"stage": "tokenizer"}))
    with pytest.raises(UserError, match="'tokenizer' run"):
        diff_runs(tmp_path / "tok", tmp_path / "tok")


def test_cli_verbs(tmp_path, capsys):
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b", kept=_edited())
    assert data_recipe.diff([str(a), str(b), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["documents"]["added"] == 1
    assert data_recipe.diff([str(a), str(b)]) == 0
    assert "1 changed" in capsys.readouterr().out
    with pytest.raises(UserError, match="the following arguments are required: b"):
        data_recipe.diff([str(a)])
    assert data_recipe.report([str(a)]) == 0
    assert (a / "report/report.md").is_file()


# ----------------------------------------------------------------------------- DVC
def _project(root: Path) -> list[Path]:
    """Two pipeline files with inputs, an eval set and a model name that is not a file."""
    for f in ("raw/web.jsonl", "raw/notes.txt", "evals/test.jsonl"):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text('{"text": "hello world"}\n')
    (root / "raw/hf").mkdir()
    web = {
        "output_dir": "runs/web",
        "inputs": [{"files": ["raw/web.jsonl", "raw/hf#train"], "source": "web"}],
        "blocks": [
            "normalize",
            {"decontaminate": {"eval_files": ["evals/test.jsonl"], "n": 13}},
            {"model_filter": {"model": "some-hub-name"}},
        ],
    }
    notes = {"output_dir": "runs/notes", "inputs": [{"files": ["raw/notes.txt"]}], "blocks": []}
    (root / "pipelines").mkdir()
    paths = [root / "pipelines/web.yaml", root / "pipelines/notes.v2.yaml"]
    for path, spec in zip(paths, (web, notes), strict=True):
        path.write_text(yaml.safe_dump(spec))
    return paths


def test_dvc_yaml_stages(tmp_path):
    pipelines = _project(tmp_path)
    out = write_dvc_yaml(pipelines, tmp_path / "dvc.yaml")
    stages = yaml.safe_load(out.read_text())["stages"]
    assert stages == {
        "prepare-web": {
            "cmd": "lmforge prepare pipelines/web.yaml",
            "deps": ["pipelines/web.yaml", "raw/web.jsonl", "raw/hf", "evals/test.jsonl"],
            "outs": ["runs/web/data", "runs/web/exclusions", "runs/web/rejects.jsonl"],
            "metrics": [{"runs/web/stats.json": {"cache": False}}],
        },
        "prepare-notes-v2": {
            "cmd": "lmforge prepare pipelines/notes.v2.yaml",
            "deps": ["pipelines/notes.v2.yaml", "raw/notes.txt"],
            "outs": ["runs/notes/data", "runs/notes/exclusions", "runs/notes/rejects.jsonl"],
            "metrics": [{"runs/notes/stats.json": {"cache": False}}],
        },
    }
    # a dvc.yaml in a subfolder: the pipeline path is given from here, the rest from there
    sub = write_dvc_yaml([pipelines[1]], tmp_path / "pipelines/dvc.yaml")
    stage = yaml.safe_load(sub.read_text())["stages"]["prepare-notes-v2"]
    assert stage["cmd"] == "lmforge prepare notes.v2.yaml"
    assert stage["deps"] == ["notes.v2.yaml", "raw/notes.txt"]


def test_dvc_bad_pipelines(tmp_path):
    with pytest.raises(UserError, match="pipeline file not found"):
        write_dvc_yaml([tmp_path / "missing.yaml"], tmp_path / "dvc.yaml")
    (tmp_path / "p.yaml").write_text("blocks: [normalize]\n")
    with pytest.raises(UserError, match="needs `output_dir:`"):
        write_dvc_yaml([tmp_path / "p.yaml"], tmp_path / "dvc.yaml")
    (tmp_path / "q.yaml").write_text(
        "output_dir: r\ninputs: [{files: [a]}]\nblocks: [{a: 1, b: 2}]\n"
    )
    with pytest.raises(UserError, match="blocks\\[0\\]"):
        write_dvc_yaml([tmp_path / "q.yaml"], tmp_path / "dvc.yaml")


@pytest.mark.skipif(importlib.util.find_spec("dvc") is None, reason="dvc is not installed")
def test_dvc_repro(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    pipeline = root / "prepare.yaml"
    (root / "raw.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    pipeline.write_text(
        yaml.safe_dump({"output_dir": "runs/p", "inputs": [{"files": ["raw.jsonl"]}]})
    )
    env = {  # the real `lmforge prepare`, from this environment
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site"),
        "HOME": str(tmp_path),
    }

    def dvc(*args: str) -> str:
        cmd = [sys.executable, "-m", "dvc", *args]
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    dvc("init", "--no-scm", "-q")
    write_dvc_yaml([pipeline], root / "dvc.yaml")
    assert dvc("stage", "list").split()[:2] == ["prepare-prepare", "Outputs"]
    assert "changed deps" in dvc("status")  # DVC parsed deps and outs; nothing built yet
    dvc("repro", "-q")
    assert (root / "runs/p/data/part-00000.jsonl").read_text().count("\n") == 2
    metrics = json.loads(dvc("metrics", "show", "--json"))
    totals = metrics[""]["data"]["runs/p/stats.json"]["data"]["totals"]
    assert totals == {"read": 2, "rejected": 0, "kept": 2, "dropped": 0, "added": 0}
    assert "up to date" in dvc("status")
    (root / "raw.jsonl").write_text('{"text": "one"}\n')
    status = dvc("status")
    assert "modified:" in status and "raw.jsonl" in status
