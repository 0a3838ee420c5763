"""LLaMA-Factory dataset folders: ``dataset_info.json`` maps dataset names to files and formatting.

Select one dataset with ``folder#name`` or ``folder/dataset_info.json#name`` (a folder with a
single dataset needs no name). Each row is mapped once into the rows :mod:`lmforge.data.schema`
understands:

- ``formatting: alpaca`` (default) -> ``instruction``/``input``/``output`` plus ``system`` and
  ``history`` (a list of ``[user, assistant]`` pairs) when mapped; a dataset whose ``columns`` map
  only ``prompt`` (no ``response``) is pretraining text -> ``{"text": ...}``.
- ``formatting: sharegpt`` -> ``messages`` with ``role``/``content``, using the dataset's ``tags``
  (``role_tag``, ``content_tag``, ``user_tag``, ``assistant_tag``, ``observation_tag``,
  ``function_tag``, ``system_tag``); function calls become role ``tool_call`` and observations
  role ``tool`` (``to_messages`` turns them into assistant tool calls and tool results).
- ``ranking: true`` -> the prompt (as above, without the answer) plus ``chosen`` and ``rejected``
  answer strings.
- ``kto_tag`` -> ``label`` (bool); ``tools`` is kept as ``tools``; a row's own ``id`` and ``task``
  (strings; not LLaMA-Factory columns) are kept, for lineage and per-task training.

A row that cannot be mapped goes to the rejects with its file, line and the reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmforge.data.readers import Record, Rejects, iter_records, split_selector
from lmforge.data.schema import RowError
from lmforge.errors import DataError

INFO = "dataset_info.json"
KEPT = ("id", "task")  # row keys carried over when they hold strings
DEFAULT_COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "history": None,
    "messages": "conversations",
    "system": None,
    "tools": None,
    "chosen": None,
    "rejected": None,
    "kto_tag": None,
}
DEFAULT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
_ROLE_OF_TAG = {
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "tool",
    "function_tag": "tool_call",
    "system_tag": "system",
}


def load_info(path: str | Path) -> tuple[Path, dict]:
    """(folder, parsed dataset_info.json) for a folder or a dataset_info.json path."""
    path = Path(path)
    folder = path.parent if path.name == INFO else path
    info_path = folder / INFO
    if not info_path.is_file():
        raise DataError(f"{folder}: no {INFO} (not a LLaMA-Factory dataset folder)")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{info_path}: not valid JSON ({exc})") from None
    if not isinstance(info, dict) or not all(isinstance(v, dict) for v in info.values()):
        raise DataError(f"{info_path}: expected an object mapping dataset names to settings")
    return folder, info


def dataset_entry(path: str | Path) -> tuple[Path, str, dict]:
    """(folder, dataset name, its settings) for ``folder#name``."""
    base, name = split_selector(path)
    folder, info = load_info(base)
    if name is None:
        if len(info) != 1:
            raise DataError(
                f"{folder}: {len(info)} datasets in {INFO}; pick one with '{folder}#NAME' "
                f"(one of: {', '.join(info)})"
            )
        name = next(iter(info))
    if name not in info:
        raise DataError(f"{folder}: no dataset '{name}' in {INFO} (have: {', '.join(info)})")
    return folder, name, info[name]


def dataset_files(folder: Path, name: str, entry: dict) -> list[Path]:
    file_name = entry.get("file_name")
    if not isinstance(file_name, str):
        remote = [k for k in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url") if k in entry]
        how = f" (it uses {remote[0]}; lmforge reads local files only)" if remote else ""
        raise DataError(f"{folder}#{name}: no local 'file_name'{how}")
    path = folder / file_name
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"{path}: empty dataset folder")
        return files
    if not path.exists():
        raise DataError(f"{folder}#{name}: file not found: {path}")
    return [path]


def iter_llamafactory(path: str | Path, rejects: Rejects) -> Iterator[Record]:
    """Records of one LLaMA-Factory dataset, already mapped to lmforge rows."""
    folder, name, entry = dataset_entry(path)
    mapper = RowMapper(entry, f"{folder}#{name}")
    for record in iter_records(dataset_files(folder, name, entry), rejects):
        try:
            yield Record(record.source, record.line, mapper(record.row))
        except RowError as exc:
            rejects.add_record(record, f"llamafactory {name}: {exc}")


class RowMapper:
    """Maps one raw row of a dataset to an lmforge row; raises RowError with the reason."""

    def __init__(self, entry: dict, label: str) -> None:
        formatting = entry.get("formatting", "alpaca")
        if formatting not in ("alpaca", "sharegpt"):
            raise DataError(f"{label}: formatting '{formatting}' (expected alpaca or sharegpt)")
        given = entry.get("columns") or {}
        unknown = sorted(set(given) - set(DEFAULT_COLUMNS) - {"images", "videos", "audios"})
        if unknown:
            raise DataError(f"{label}: unknown column keys {unknown}")
        self.formatting = formatting
        self.columns = {**DEFAULT_COLUMNS, **given}
        self.tags = {**DEFAULT_TAGS, **(entry.get("tags") or {})}
        self.ranking = bool(entry.get("ranking", False))
        self.text_only = (
            formatting == "alpaca" and "prompt" in given and "response" not in given
            and not self.ranking and not given.get("kto_tag")
        )  # fmt: skip
        self.role_of = {self.tags[k]: role for k, role in _ROLE_OF_TAG.items() if self.tags.get(k)}

    def _get(self, row: dict, key: str, required: bool = False) -> Any:
        column = self.columns.get(key)
        if not column:
            return None
        value = row.get(column)
        if value is None and required:
            raise RowError(f"missing column '{column}' ({key})")
        return value

    def _str(self, row: dict, key: str, required: bool = False) -> str | None:
        value = self._get(row, key, required)
        if value is not None and not isinstance(value, str):
            raise RowError(f"column '{self.columns[key]}' is {type(value).__name__}, not a string")
        return value

    def __call__(self, row: Any) -> dict:
        if not isinstance(row, dict):
            raise RowError(f"row is a {type(row).__name__}, expected an object")
        if self.text_only:
            return {"text": self._str(row, "prompt", required=True)}
        out = self._alpaca(row) if self.formatting == "alpaca" else self._sharegpt(row)
        tools = self._get(row, "tools")
        if tools not in (None, "", []):
            out["tools"] = tools
        out.update({k: row[k] for k in KEPT if isinstance(row.get(k), str) and k not in out})
        kto = self._get(row, "kto_tag")
        if self.columns.get("kto_tag"):
            if not isinstance(kto, bool):
                raise RowError(f"kto_tag column '{self.columns['kto_tag']}' must be true/false")
            out["label"] = kto
        return out

    def _alpaca(self, row: dict) -> dict:
        out = {"instruction": self._str(row, "prompt", required=True)}
        query = self._str(row, "query")
        if query:
            out["input"] = query
        system = self._str(row, "system")
        if system:
            out["system"] = system
        history = self._get(row, "history")
        if history:
            if not isinstance(history, list) or not all(
                isinstance(h, list | tuple) and len(h) == 2 and all(isinstance(x, str) for x in h)
                for h in history
            ):
                raise RowError("history must be a list of [user, assistant] string pairs")
            out["history"] = [list(h) for h in history]
        if self.ranking:
            out["chosen"] = self._str(row, "chosen", required=True)
            out["rejected"] = self._str(row, "rejected", required=True)
        else:
            out["output"] = self._str(row, "response", required=True)
        return out

    def _turn(self, turn: Any, where: str) -> dict:
        role_tag, content_tag = self.tags["role_tag"], self.tags["content_tag"]
        if not isinstance(turn, dict):
            raise RowError(f"{where} is a {type(turn).__name__}, expected an object")
        tag = turn.get(role_tag)
        if tag not in self.role_of:
            raise RowError(f"{where} has {role_tag}={tag!r}, not one of {sorted(self.role_of)}")
        content = turn.get(content_tag)
        if not isinstance(content, str):
            raise RowError(f"{where} has no string '{content_tag}'")
        return {"role": self.role_of[tag], "content": content}

    def _sharegpt(self, row: dict) -> dict:
        turns = self._get(row, "messages", required=True)
        if not isinstance(turns, list):
            raise RowError(f"column '{self.columns['messages']}' must be a list of turns")
        messages = [self._turn(t, f"turn {i}") for i, t in enumerate(turns)]
        system = self._str(row, "system")
        if system and not (messages and messages[0]["role"] == "system"):
            messages.insert(0, {"role": "system", "content": system})
        out: dict = {"messages": messages}
        if self.ranking:
            for key in ("chosen", "rejected"):
                value = self._get(row, key, required=True)
                if isinstance(value, str):
                    out[key] = value
                    continue
                message = self._turn(value, key)
                if message["role"] != "assistant":
                    raise RowError(f"{key} is a {message['role']} turn, expected the assistant")
                out[key] = message["content"]
        return out
