"""Data versions: what changed between two prepare outputs, and DVC stages for prepare pipelines.

    lmforge data diff runs/web-v1 runs/web-v2          # documents added / removed / changed ...
    lmforge data dvc configs/prepare.yaml -o dvc.yaml  # then: dvc repro

:func:`diff_runs` compares documents by ``id``; a document "changed" when the hash of its row
without ``id`` and ``metadata`` differs (:meth:`Document.fingerprint`), so a new language score
is not a change but a rewritten text is. Memory: an id -> hash entry and a length per document.

:func:`write_dvc_yaml` leaves versioning to DVC (caching, remotes, ``dvc repro`` deciding what
to re-run); it only writes the stages, so ``dvc.yaml`` stays in step with the pipeline files.
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from lmforge.data.readers import Rejects, split_selector
from lmforge.data.report import (
    NONE,
    RowStats,
    check_run_dir,
    iter_rows,
    length_summary,
    load_stats,
    row_split,
    shard_files,
)
from lmforge.errors import UserError

EXAMPLES = 5  # example ids listed per kind of change
DISTRIBUTIONS = ("languages", "labels", "sources", "splits")


# ----------------------------------------------------------------------------- diff
def resolve_data(path: str | Path) -> tuple[Path, Path | None]:
    """``(data folder, run folder or None)`` for a prepare run folder or a data folder."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(
            f"{p} is not a folder: pass a `lmforge prepare` run folder or its data/ folder"
        )
    if (p / "stats.json").is_file() or (p / "manifest.json").is_file():
        run = check_run_dir(p)
        return run / "data", run
    if shard_files(p):
        parent = p.parent
        return p, parent if p.name == "data" and (parent / "stats.json").is_file() else None
    raise UserError(
        f"{p} is neither a prepare run folder (stats.json + data/) nor a data folder with part-* "
        "shards: pass the output_dir of `lmforge prepare` or its data/ folder"
    )


class _Side:
    """One side of a diff: id -> row hash, id -> split, and the row distributions."""

    def __init__(self, path: str | Path) -> None:
        self.data, self.run = resolve_data(path)
        self.path = str(path)
        self.hashes: dict[str, str] = {}
        self.splits: dict[str, str] = {}
        self.repeated_ids = 0
        self.stats = RowStats()
        bad = Rejects()
        for folder_split, shard in shard_files(self.data):
            for row in iter_rows(shard, bad):
                self._add(row, sys.intern(row_split(row, folder_split)))
        self.unreadable = len(bad)

    def _add(self, row: dict, split: str) -> None:
        doc = self.stats.add(row, split)
        if doc.id in self.hashes:
            self.repeated_ids += 1
        self.hashes[doc.id] = doc.fingerprint()
        self.splits[doc.id] = split

    def shards(self) -> dict[str, str]:
        """stats.json shard path -> sha256 (empty without a run folder)."""
        if self.run is None:
            return {}
        shards = load_stats(self.run).get("shards") or {}
        return {k: str(v.get("sha256", "")).removeprefix("sha256:") for k, v in shards.items()}


def diff_runs(a: str | Path, b: str | Path) -> dict:
    """Compare two prepare outputs (run folders or data folders); JSON-ready.

    Keys: ``documents`` (added / removed / changed / unchanged / moved_split counts with
    example ids), ``splits`` (rows per split, a and b), ``length_chars`` (summaries), one entry
    per distribution in :data:`DISTRIBUTIONS` (counts, total-variation distance and
    Jensen-Shannon divergence in bits) and ``shards`` (fingerprint changes from stats.json).
    """
    old, new = _Side(a), _Side(b)
    both = old.hashes.keys() & new.hashes.keys()
    changed = sorted(i for i in both if old.hashes[i] != new.hashes[i])
    moved = sorted(i for i in both if old.splits[i] != new.splits[i])
    added = sorted(new.hashes.keys() - old.hashes.keys())
    removed = sorted(old.hashes.keys() - new.hashes.keys())
    sa, sb = old.stats.summary(), new.stats.summary()
    out: dict[str, Any] = {
        "a": {
            "path": old.path,
            "docs": len(old.hashes),
            "repeated_ids": old.repeated_ids,
            "unreadable": old.unreadable,
        },
        "b": {
            "path": new.path,
            "docs": len(new.hashes),
            "repeated_ids": new.repeated_ids,
            "unreadable": new.unreadable,
        },
        "documents": {
            "added": len(added),
            "removed": len(removed),
            "changed": len(changed),
            "unchanged": len(both) - len(changed),
            "moved_split": len(moved),
            "examples": {
                "added": added[:EXAMPLES],
                "removed": removed[:EXAMPLES],
                "changed": changed[:EXAMPLES],
                "moved_split": moved[:EXAMPLES],
            },
        },
        "length_chars": {
            "a": length_summary(old.stats.lengths),
            "b": length_summary(new.stats.lengths),
        },
    }
    for name in DISTRIBUTIONS:
        out[name] = distribution_shift(sa[name], sb[name])
    out["shards"] = shard_changes(old.shards(), new.shards()) if old.run and new.run else None
    return out


def distribution_shift(a: dict[str, int], b: dict[str, int]) -> dict:
    """Counts of both sides, total-variation distance (0..1) and Jensen-Shannon divergence (bits,
    0..1). JS rather than KL: a category present on one side only makes KL infinite."""
    keys = sorted(a.keys() | b.keys(), key=lambda k: (-(a.get(k, 0) + b.get(k, 0)), k))
    na, nb = sum(a.values()), sum(b.values())
    out = {"counts": {k: [a.get(k, 0), b.get(k, 0)] for k in keys}, "tv": None, "js": None}
    if not na or not nb:
        return out
    p = [a.get(k, 0) / na for k in keys]
    q = [b.get(k, 0) / nb for k in keys]
    m = [(x + y) / 2 for x, y in zip(p, q, strict=True)]
    out["tv"] = round(0.5 * sum(abs(x - y) for x, y in zip(p, q, strict=True)), 6)
    out["js"] = round(0.5 * _kl(p, m) + 0.5 * _kl(q, m), 6)
    return out


def _kl(p: list[float], q: list[float]) -> float:
    return sum(x * math.log2(x / y) for x, y in zip(p, q, strict=True) if x > 0)


def shard_changes(a: dict[str, str], b: dict[str, str]) -> dict:
    return {
        "added": sorted(b.keys() - a.keys()),
        "removed": sorted(a.keys() - b.keys()),
        "changed": sorted(k for k in a.keys() & b.keys() if a[k] != b[k]),
        "unchanged": sum(1 for k in a.keys() & b.keys() if a[k] == b[k]),
    }


def format_diff(d: dict) -> str:
    """The diff for a terminal: one block per aspect, most telling figures first."""
    docs = d["documents"]
    lines = [
        f"a: {d['a']['path']} ({d['a']['docs']} docs)",
        f"b: {d['b']['path']} ({d['b']['docs']} docs)",
        f"documents: +{docs['added']} added, -{docs['removed']} removed, "
        f"{docs['changed']} changed, "
        f"{docs['unchanged']} unchanged, {docs['moved_split']} moved to another split",
    ]
    for kind, ids in docs["examples"].items():
        if ids:
            lines.append(f"  {kind}: {', '.join(ids)}{' ...' if docs[kind] > len(ids) else ''}")
    for side in ("a", "b"):
        if d[side]["repeated_ids"] or d[side]["unreadable"]:
            lines.append(
                f"warning: {side} has {d[side]['repeated_ids']} repeated ids and "
                f"{d[side]['unreadable']} unreadable rows"
            )
    la, lb = d["length_chars"]["a"], d["length_chars"]["b"]
    if la.get("count") and lb.get("count"):
        figures = ", ".join(
            f"{k} {_num(la[k])} -> {_num(lb[k])}" for k in ("mean", "p5", "p50", "p95")
        )
        lines.append(f"length (chars): {figures}")
    for name in DISTRIBUTIONS:
        lines += _format_shift(name, d[name])
    shards = d["shards"]
    if shards is None:
        lines.append("shards: not compared (a data folder has no stats.json)")
    else:
        lines.append(
            f"shards: {len(shards['changed'])} changed, {len(shards['added'])} added, "
            f"{len(shards['removed'])} removed, {shards['unchanged']} unchanged"
        )
        lines += [f"  changed: {s}" for s in shards["changed"]]
    return "\n".join(lines) + "\n"


def _num(value: float) -> str:
    return f"{value:.6g}"


def _format_shift(name: str, shift: dict) -> list[str]:
    counts = shift["counts"]
    if not counts or set(counts) == {NONE}:
        return []
    if shift["tv"] is None:
        return [f"{name}: one side is empty"]
    total_a = sum(c[0] for c in counts.values()) or 1
    total_b = sum(c[1] for c in counts.values()) or 1
    head = f"{name}: TV {shift['tv']:.4f}, JS {shift['js']:.3g} bits"
    rows = [
        f"  {k:<16} {a / total_a:7.2%} -> {b / total_b:7.2%}  ({a} -> {b})"
        for k, (a, b) in list(counts.items())[:10]
    ]
    return [head] + rows


# ----------------------------------------------------------------------------- DVC
def write_dvc_yaml(pipelines: list[str | Path], out: str | Path = "dvc.yaml") -> Path:
    """Write a ``dvc.yaml`` with one stage per ``lmforge prepare`` pipeline file; returns it.

    DVC runs each ``cmd`` in the dvc.yaml's folder, so paths in the stages are relative to that
    folder, and relative paths inside the pipeline files (inputs, eval files, output_dir) are
    read from there too, as ``lmforge prepare`` run in that folder reads them. Deps: the pipeline
    file, its input files and the files its blocks read (``eval_files``, ``files``, models);
    outs: ``data``, ``exclusions``, ``rejects.jsonl``; metrics: ``stats.json`` (not cached).
    """
    import yaml

    out = Path(out)
    root = out.parent.resolve()
    stages: dict[str, dict] = {}
    for pipeline in pipelines:
        name = _stage_name(Path(pipeline), stages)
        stages[name] = _stage(Path(pipeline), root)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({"stages": stages}, sort_keys=False, allow_unicode=True)
    header = "# written by `lmforge data dvc`; run `dvc repro` to (re)build what changed\n"
    out.write_text(header + text, encoding="utf-8")
    return out


def _stage_name(pipeline: Path, taken: dict) -> str:
    base = "prepare-" + re.sub(r"[^A-Za-z0-9_-]+", "-", pipeline.stem).strip("-")
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


def _stage(pipeline: Path, root: Path) -> dict:
    spec = _read_pipeline(pipeline)
    run = _rel(spec["output_dir"], root)
    file = _rel(pipeline.resolve(), root)
    deps = [file] + [_rel(f, root) for f in _pipeline_inputs(spec, pipeline, root)]
    return {
        "cmd": f"lmforge prepare {file}",
        "deps": list(dict.fromkeys(deps)),
        "outs": [f"{run}/data", f"{run}/exclusions", f"{run}/rejects.jsonl"],
        "metrics": [{f"{run}/stats.json": {"cache": False}}],
    }


def _read_pipeline(path: Path) -> dict:
    from lmforge.config.base import read_yaml

    if not path.is_file():
        raise UserError(f"pipeline file not found: {path}")
    spec = read_yaml(path)
    if not isinstance(spec, dict) or not spec.get("inputs") or not spec.get("output_dir"):
        raise UserError(
            f"{path} is not a `lmforge prepare` pipeline: it needs `output_dir:` and "
            "`inputs: [{files: [...]}]`"
        )
    return spec


def _pipeline_inputs(spec: dict, pipeline: Path, root: Path) -> list[str]:
    """Input files and the files blocks read, as written in the pipeline (``folder#name`` ->
    folder). Block parameters named in ``Block.PATH_PARAMS`` count when they name a path that
    exists in ``root`` (a ``model`` may also be a name, not a file)."""
    from lmforge.config.prepare import block_specs
    from lmforge.data.blocks import Block

    found = []
    for group in spec["inputs"]:
        files = group.get("files") if isinstance(group, dict) else None
        if not isinstance(files, list):
            raise UserError(
                f"{pipeline}: each entry of `inputs` needs `files: [...]`, got {group!r}"
            )
        found += [str(split_selector(f)[0]) for f in files]
    try:
        blocks = block_specs(spec.get("blocks") or [])
    except ValueError as exc:
        raise UserError(f"{pipeline}: {exc}") from None
    for _, params in blocks:
        for key in Block.PATH_PARAMS:
            values = params.get(key)
            for value in values if isinstance(values, list) else [values]:
                if isinstance(value, str) and (root / value.split("#")[0]).exists():
                    found.append(value.split("#")[0])
    return found


def _rel(path: str | Path, root: Path) -> str:
    """``path`` (a relative one is taken from ``root``) relative to ``root``, POSIX style."""
    p = Path(path)
    p = (p if p.is_absolute() else root / p).resolve()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:  # outside the dvc.yaml folder: DVC accepts ../ paths
        return Path(os.path.relpath(p, root)).as_posix()
