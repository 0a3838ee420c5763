"""The results of a study as a table: one row per trial with its parameters, objective value,
state and (for pruned or failed trials) why. Written as ``results.csv`` and ``results.md``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from lmforge.artifacts import atomic_write_text

STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}


def trial_rows(study, metric: str, sweep_dir: Path, interrupted: set[int]) -> list[dict[str, Any]]:
    """One dict per trial of ``study`` (oldest first), waiting (enqueued) trials left out.

    ``state``: complete, pruned, failed, or interrupted (running when the sweep was killed);
    ``reason``: the trial's ``reason`` user attribute; ``steps``/``seconds`` from its manifest.
    """
    rows = []
    for t in study.trials:
        if t.state.name == "WAITING":
            continue
        state = "interrupted" if t.number in interrupted else STATES[t.state.name]
        run_dir = sweep_dir / trial_dir_name(t.number)
        manifest = _manifest(run_dir)
        steps = manifest.get("metrics", {}).get("steps")
        if state == "pruned" and t.intermediate_values:
            steps = max(t.intermediate_values)
        rows.append(
            {
                "trial": t.number,
                "state": state,
                metric: t.value if t.state.name == "COMPLETE" else None,
                **{f"param:{k}": v for k, v in t.params.items()},
                "steps": steps,
                "seconds": manifest.get("seconds"),
                "reason": t.user_attrs.get("reason")
                or ("the sweep was killed while it ran" if state == "interrupted" else ""),
                "run_dir": str(run_dir),
            }
        )
    return rows


def trial_dir_name(number: int) -> str:
    return f"trial-{number:03d}"


def _manifest(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _columns(rows: list[dict]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    return columns


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_tables(rows: list[dict], folder: Path, best: int | None) -> tuple[Path, Path]:
    """``results.csv`` (every column) and ``results.md`` (best trial marked with *)."""
    columns = _columns(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = atomic_write_text(folder / "results.csv", buf.getvalue())
    shown = [c for c in columns if c != "run_dir"]
    header = [c.removeprefix("param:") for c in shown]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(shown)]
    for row in rows:
        cells = [_cell(row.get(c)).replace("|", "\\|") for c in shown]
        if row["trial"] == best:
            cells[0] += " *"
        lines.append("| " + " | ".join(cells) + " |")
    note = "\n\n\\* best trial\n" if best is not None else "\n"
    md_path = atomic_write_text(folder / "results.md", "\n".join(lines) + note)
    return csv_path, md_path
