"""Readers for jsonl, json arrays and plain text, with a rejects file for rows that cannot be used.

Malformed input is never fatal and never silent: a bad JSON line, a wrong encoding or an unusable
row goes to the rejects file with file, line and reason, and the counts add up
(``read = used + rejected``). A missing file is a user error.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import DataError

TEXT_SUFFIXES = {".txt", ".text", ".md"}
JSON_SUFFIXES = {".jsonl", ".json", ".ndjson"}


@dataclass
class Record:
    """One raw row and where it came from (1-based line number, or array index + 1 for .json)."""

    source: str
    line: int
    row: Any

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass
class Rejects:
    """Collects unusable rows with the reason; ``write`` saves them as JSONL."""

    items: list[dict] = field(default_factory=list)

    def add(self, source: str, line: int, reason: str, row: Any = None) -> None:
        shown = row if not isinstance(row, str) else row[:500]
        self.items.append({"file": source, "line": line, "reason": reason, "row": shown})

    def add_record(self, record: Record, reason: str) -> None:
        self.add(record.source, record.line, reason, record.row)

    def __len__(self) -> int:
        return len(self.items)

    def by_reason(self) -> dict[str, int]:
        return dict(Counter(_reason_kind(i["reason"]) for i in self.items))

    def write(self, path: str | Path) -> Path:
        from lmforge.artifacts import atomic_write_text

        text = "".join(json.dumps(i, ensure_ascii=False, default=str) + "\n" for i in self.items)
        return atomic_write_text(path, text)


def _reason_kind(reason: str) -> str:
    """Group reasons by their first clause so counts stay readable."""
    return reason.split(":")[0].split("(")[0].strip()


def check_files(files: Iterable[str | Path], role: str = "data file") -> list[Path]:
    paths = [Path(f) for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{role} not found: {', '.join(missing)} (check the path in the config)")
    return paths


def iter_records(files: Iterable[str | Path], rejects: Rejects) -> Iterator[Record]:
    """Yield every row of every file; undecodable or unparsable lines go to ``rejects``."""
    for path in check_files(files):
        suffix = path.suffix.lower()
        if suffix in JSON_SUFFIXES and suffix != ".json":
            yield from _iter_jsonl(path, rejects)
        elif suffix == ".json":
            yield from _iter_json(path, rejects)
        elif suffix in TEXT_SUFFIXES or suffix == "":
            yield from _iter_text(path, rejects)
        else:
            raise DataError(f"{path}: unsupported file type '{suffix}' (use .jsonl, .json or .txt)")


def _iter_jsonl(path: Path, rejects: Rejects) -> Iterator[Record]:
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                rejects.add(str(path), number, f"not UTF-8: {exc.reason}", raw[:200].hex())
                continue
            if not line.strip():
                continue
            try:
                yield Record(str(path), number, json.loads(line))
            except json.JSONDecodeError as exc:
                rejects.add(str(path), number, f"malformed JSON: {exc.msg}", line.rstrip("\n"))


def _iter_json(path: Path, rejects: Rejects) -> Iterator[Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        if "Extra data" in exc.msg:  # a .json file that holds JSON lines
            yield from _iter_jsonl(path, rejects)
            return
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of rows")
    for index, row in enumerate(data, start=1):
        yield Record(str(path), index, row)


def _iter_text(path: Path, rejects: Rejects) -> Iterator[Record]:
    """One document per non-empty line."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                rejects.add(str(path), number, f"not UTF-8: {exc.reason}", raw[:200].hex())
                continue
            if line.strip():
                yield Record(str(path), number, line)
