"""Readers for every input format, with a rejects file for rows that cannot be used.

Formats (by suffix): jsonl (plain, .gz, .zst), JSON arrays (plain, .gz), parquet, csv/tsv, plain
text (a document per line or per paragraph), folders of ``part-*`` shards (what ``lmforge
prepare`` writes), ``Dataset.save_to_disk`` folders and LLaMA-Factory folders (see
:mod:`lmforge.data.llamafactory`; select a dataset with ``folder#name``).

Malformed input is never fatal and never silent: a bad JSON line, a wrong encoding or an unusable
row goes to the rejects file with file, line and reason, and the counts add up
(``read = used + rejected``). A missing file is a user error.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lmforge.errors import DataError, MissingDependency

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
        return dict(Counter(reason_kind(i["reason"]) for i in self.items))

    def write(self, path: str | Path) -> Path:
        from lmforge.artifacts import atomic_write_text

        text = "".join(json.dumps(i, ensure_ascii=False, default=str) + "\n" for i in self.items)
        return atomic_write_text(path, text)


def reason_kind(reason: str) -> str:
    """Group reasons by their first clause so counts stay readable."""
    return reason.split(":")[0].split("(")[0].strip()


def split_selector(path: str | Path) -> tuple[Path, str | None]:
    """``folder#name`` or ``folder/dataset_info.json#name`` -> (path, dataset name)."""
    text = str(path)
    if "#" in text and not Path(text).exists():
        base, _, name = text.rpartition("#")
        return Path(base), name or None
    return Path(text), None


def check_files(files: Iterable[str | Path], role: str = "data file") -> list[Path]:
    """The paths as given; each must be a file, a dataset folder, or ``folder#dataset``."""
    paths = [Path(f) for f in files]
    missing = [str(p) for p in paths if not split_selector(p)[0].exists()]
    if missing:
        raise DataError(f"{role} not found: {', '.join(missing)} (check the path in the config)")
    return paths


def file_kind(path: str | Path) -> str:
    """What reader a path needs: jsonl, jsonl.gz, jsonl.zst, json, json.gz, parquet, csv, text,
    hf_disk (a ``Dataset.save_to_disk`` folder) or llamafactory (a ``dataset_info.json`` registry).
    """
    base, name = split_selector(path)
    if name is not None or base.name == "dataset_info.json":
        return "llamafactory"
    if base.is_dir():
        if (base / "state.json").is_file() or (base / "dataset_dict.json").is_file():
            return "hf_disk"
        if (base / "dataset_info.json").is_file():
            return "llamafactory"
        if shard_files(base):
            return "shards"
        raise DataError(
            f"{base}: a folder must hold part-*.jsonl/.parquet shards (lmforge prepare output), "
            "be a Dataset.save_to_disk folder (state.json) or a LLaMA-Factory folder "
            "(dataset_info.json)"
        )
    suffixes = [s.lower() for s in base.suffixes[-2:]]
    last = suffixes[-1] if suffixes else ""
    if last in (".gz", ".zst", ".zstd"):
        inner = suffixes[0] if len(suffixes) == 2 else ""
        codec = "gz" if last == ".gz" else "zst"
        if inner in (".jsonl", ".ndjson"):
            return f"jsonl.{codec}"
        if inner == ".json":
            return f"json.{codec}"
        raise DataError(
            f"{base}: unsupported compressed file (use .jsonl.gz, .jsonl.zst or .json.gz)"
        )
    if last in (".jsonl", ".ndjson"):
        return "jsonl"
    if last == ".json":
        return "json"
    if last == ".parquet":
        return "parquet"
    if last in (".csv", ".tsv"):
        return "csv"
    if last in TEXT_SUFFIXES or last == "":
        return "text"
    raise DataError(
        f"{base}: unsupported file type '{last}' (use .jsonl[.gz|.zst], .json, .parquet, .csv, "
        ".txt, a save_to_disk folder or a LLaMA-Factory folder)"
    )


def shard_files(folder: Path) -> list[Path]:
    """``part-*`` shards (jsonl, jsonl.gz, jsonl.zst, parquet) of a folder, in name order."""
    return sorted(
        p
        for p in folder.glob("part-*")
        if p.is_file() and p.name.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet"))
    )


def iter_records(
    files: Iterable[str | Path], rejects: Rejects, text_mode: str = "line"
) -> Iterator[Record]:
    """Yield every row of every file; undecodable or unparsable rows go to ``rejects``.

    ``text_mode`` for plain text: ``"line"`` (a document per non-empty line) or ``"paragraph"``
    (a document per blank-line-separated paragraph).
    """
    if text_mode not in ("line", "paragraph"):
        raise DataError(f"text_mode must be 'line' or 'paragraph', not {text_mode!r}")
    paths = []
    for path in check_files(files):
        # a folder of shards (prepare's data/ or data/<split>/) reads as its shards in order
        paths.extend(shard_files(path) if file_kind(path) == "shards" else [path])
    for path in paths:
        kind = file_kind(path)
        if kind == "jsonl":
            yield from _iter_jsonl(path, rejects)
        elif kind in ("jsonl.gz", "jsonl.zst"):
            yield from _iter_jsonl(path, rejects, codec=kind.split(".")[1])
        elif kind == "json":
            yield from _iter_json(path, rejects)
        elif kind in ("json.gz", "json.zst"):
            yield from _iter_json(path, rejects, codec=kind.split(".")[1])
        elif kind == "parquet":
            yield from _iter_parquet(path, rejects)
        elif kind == "csv":
            yield from _iter_csv(path, rejects)
        elif kind == "hf_disk":
            yield from _iter_hf_disk(path, rejects)
        elif kind == "llamafactory":
            from lmforge.data.llamafactory import iter_llamafactory

            yield from iter_llamafactory(path, rejects)
        elif text_mode == "paragraph":
            yield from _iter_paragraphs(path, rejects)
        else:
            yield from _iter_text(path, rejects)


def _open_binary(path: Path, codec: str | None) -> IO[bytes]:
    if codec is None:
        return open(path, "rb")
    if codec == "gz":
        return gzip.open(path, "rb")
    try:
        import zstandard
    except ImportError:
        raise MissingDependency("zstandard", "data", f"reading {path.name}") from None
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")))


_CORRUPT = (OSError, EOFError, ValueError)  # gzip.BadGzipFile is an OSError; zstd a ZstdError


def _iter_jsonl(path: Path, rejects: Rejects, codec: str | None = None) -> Iterator[Record]:
    number = 0
    with _open_binary(path, codec) as fh:
        lines = iter(fh)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                break
            except _CORRUPT as exc:  # truncated or corrupt compressed stream: stop this file
                rejects.add(str(path), number + 1, f"corrupt {codec} data: {exc}")
                break
            number += 1
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


def _iter_json(path: Path, rejects: Rejects, codec: str | None = None) -> Iterator[Record]:
    try:
        with _open_binary(path, codec) as fh:
            text = fh.read().decode("utf-8")
        data = json.loads(text)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        if "Extra data" in exc.msg:  # a .json file that holds JSON lines
            yield from _iter_jsonl(path, rejects, codec)
            return
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except _CORRUPT as exc:
        raise DataError(f"{path}: corrupt {codec} data ({exc})") from None
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


def _iter_paragraphs(path: Path, rejects: Rejects) -> Iterator[Record]:
    """One document per blank-line-separated paragraph; ``line`` is its first line.

    A paragraph with an undecodable line is rejected whole (reason names the bad line)."""
    start, lines, bad = 0, [], None

    def flush() -> Iterator[Record]:
        if bad is not None:
            rejects.add(str(path), start, f"not UTF-8: line {bad[0]} ({bad[1]})", "\n".join(lines))
        elif lines:
            yield Record(str(path), start, "\n".join(lines))

    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                if bad is None:
                    bad = (number, exc.reason)
            if line.strip():
                if not lines:
                    start = number
                lines.append(line)
            else:
                yield from flush()
                start, lines, bad = 0, [], None
        yield from flush()


def _need_pyarrow(purpose: str):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise MissingDependency("pyarrow", "data", purpose) from None


def _iter_parquet(path: Path, rejects: Rejects) -> Iterator[Record]:
    """Rows in file order, ``line`` = row number (1-based). An unreadable file is one reject."""
    _need_pyarrow(f"reading {path.name}")
    import pyarrow as pa
    import pyarrow.parquet as pq

    number = 0
    try:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                number += 1
                yield Record(str(path), number, row)
    except (pa.ArrowException, OSError) as exc:
        rejects.add(str(path), number + 1, f"unreadable parquet: {exc}")


def _iter_csv(path: Path, rejects: Rejects) -> Iterator[Record]:
    """A header row then one row per record; ``line`` is the physical line the row starts on.

    Rows with the wrong number of fields or bytes that are not UTF-8 go to ``rejects``."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            rejects.add(str(path), 1, f"malformed CSV header: {exc}")
            return
        if any(_has_surrogates(h) for h in header):
            raise DataError(f"{path}: the CSV header is not UTF-8")
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                rejects.add(str(path), start, f"malformed CSV: {exc}")
                continue
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            shown = ",".join(f.encode("utf-8", "replace").decode() for f in fields)
            if any(_has_surrogates(f) for f in fields):
                rejects.add(str(path), start, "not UTF-8: invalid bytes in the row", shown)
            elif len(fields) != len(header):
                rejects.add(
                    str(path),
                    start,
                    f"wrong number of fields: {len(fields)}, the header has {len(header)}",
                    shown,
                )
            else:
                yield Record(str(path), start, dict(zip(header, fields, strict=True)))


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _iter_hf_disk(path: Path, rejects: Rejects) -> Iterator[Record]:
    """A folder written by ``Dataset.save_to_disk`` (state.json + arrow files); a
    ``DatasetDict`` folder yields its splits in the order of dataset_dict.json.
    ``line`` is the row number within the dataset (1-based). Read with pyarrow directly."""
    _need_pyarrow(f"reading the dataset folder {path}")
    import pyarrow as pa

    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        for split in splits:
            yield from _iter_hf_disk(path / split, rejects)
        return
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    number = 0
    for entry in state.get("_data_files", []):
        arrow = path / entry["filename"]
        try:
            with pa.memory_map(str(arrow), "r") as source:
                reader = pa.ipc.open_stream(source)
                for batch in reader:
                    for row in batch.to_pylist():
                        number += 1
                        yield Record(str(path), number, row)
        except (pa.ArrowException, OSError) as exc:
            rejects.add(str(path), number + 1, f"unreadable arrow file {arrow.name}: {exc}")
