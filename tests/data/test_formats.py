"""Readers and writers for every input format: round trips, rejects with file/line/reason, and
LLaMA-Factory folders (built here, and the real demo folder in ../shared when present)."""

from __future__ import annotations

import gzip
import json

import pytest

from lmforge.data.llamafactory import dataset_entry
from lmforge.data.readers import Rejects, file_kind, iter_records
from lmforge.data.schema import RowError, to_messages
from lmforge.data.writers import write_jsonl, write_parquet, write_sharded
from lmforge.errors import DataError

ROWS = [
    {"instruction": f"q{i}", "input": "", "output": f"answer {i} — ünïcødé 中文"} for i in range(7)
]


def read(paths, **kw):
    rejects = Rejects()
    records = list(iter_records(paths, rejects, **kw))
    return records, rejects


def assert_reject(item, path, line, reason_part):
    assert item["file"] == str(path) and item["line"] == line, item
    assert reason_part in item["reason"], item


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "parquet"])
def test_sharded_round_trip(tmp_path, fmt):
    paths = write_sharded(ROWS, tmp_path / "out", fmt, rows_per_shard=3)
    assert [p.name for p in paths] == [f"part-0000{i}.{fmt}" for i in range(3)]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files
    records, rejects = read(paths)
    assert [r.row for r in records] == ROWS and len(rejects) == 0
    assert [r.line for r in records] == [1, 2, 3, 1, 2, 3, 1]
    assert all(file_kind(p) == fmt for p in paths)


def test_writer_helpers_and_empty(tmp_path):
    assert write_jsonl([], tmp_path / "none") == []
    gz = write_jsonl(ROWS, tmp_path / "gz", compress=True)
    assert gz[0].name == "part-00000.jsonl.gz" and len(gz) == 1
    pq = write_parquet(ROWS, tmp_path / "pq", rows_per_shard=10)
    assert [r.row for r in read(pq)[0]] == ROWS
    with pytest.raises(DataError.__mro__[1]):  # UserError
        write_sharded(ROWS, tmp_path / "x", "csv")


# --------------------------------------------------------------------------- readers + rejects
def test_jsonl_gz_bad_lines_and_truncation(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "one"}\n{bad\n\xff\xfe\n\n{"text": "two"}\n'))
    records, rejects = read([path])
    assert [r.row["text"] for r in records] == ["one", "two"] and [r.line for r in records] == [
        1,
        5,
    ]
    assert_reject(rejects.items[0], path, 2, "malformed JSON")
    assert_reject(rejects.items[1], path, 3, "not UTF-8")
    # a truncated gzip stream: the rows before the cut are kept, the cut is one reject
    cut = tmp_path / "cut.jsonl.gz"
    data = gzip.compress(b"".join(b'{"text": "row %d"}\n' % i for i in range(2000)))
    cut.write_bytes(data[: len(data) // 2])
    records, rejects = read([cut])
    assert len(records) > 0 and len(rejects) == 1
    assert "corrupt gz data" in rejects.items[0]["reason"]
    assert rejects.items[0]["line"] == len(records) + 1


def test_jsonl_zst(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    path = tmp_path / "a.jsonl.zst"
    raw = b'{"text": "one"}\nnot json\n{"text": "two"}\n'
    path.write_bytes(zstandard.ZstdCompressor().compress(raw))
    records, rejects = read([path])
    assert [(r.line, r.row["text"]) for r in records] == [(1, "one"), (3, "two")]
    assert len(rejects) == 1 and rejects.items[0]["line"] == 2
    assert len(records) + len(rejects) == 3


def test_json_array_and_gz(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(ROWS), encoding="utf-8")
    records, rejects = read([path])
    assert [r.row for r in records] == ROWS and [r.line for r in records] == list(range(1, 8))
    gz = tmp_path / "a.json.gz"
    gz.write_bytes(gzip.compress(json.dumps(ROWS).encode()))
    assert [r.row for r in read([gz])[0]] == ROWS
    # rows that are not usable are caught by the schema converter with a reason
    path.write_text(json.dumps([ROWS[0], 3, {"instruction": "x"}]), encoding="utf-8")
    records, rejects = read([path])
    used = []
    for r in records:
        try:
            used.append(to_messages(r.row))
        except RowError as exc:
            rejects.add_record(r, str(exc))
    assert len(used) == 1 and [i["line"] for i in rejects.items] == [2, 3]
    assert "missing field 'output'" in rejects.items[1]["reason"]


def test_csv(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(
        b"instruction,input,output\n"
        b'q1,,"multi\nline answer"\n'  # lines 2-3
        b"q2,x\n"  # line 4: too few fields
        b"q3,,\xff bad bytes\n"  # line 5: not UTF-8
        b"q4,,ok\n"
    )
    records, rejects = read([path])
    assert [(r.line, r.row["instruction"]) for r in records] == [(2, "q1"), (6, "q4")]
    assert records[0].row["output"] == "multi\nline answer"
    assert_reject(rejects.items[0], path, 4, "wrong number of fields")
    assert_reject(rejects.items[1], path, 5, "not UTF-8")
    assert len(records) + len(rejects) == 4
    assert to_messages(records[1].row)[-1]["content"] == "ok"


def test_text_lines_and_paragraphs(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"first para\nstill first\n\n\nsecond\n\nbad \xff here\nrest\n\nlast")
    records, rejects = read([path], text_mode="paragraph")
    assert [(r.line, r.row) for r in records] == [
        (1, "first para\nstill first"),
        (5, "second"),
        (10, "last"),
    ]
    assert_reject(rejects.items[0], path, 7, "not UTF-8: line 7")
    records, rejects = read([path])  # default: a document per line
    assert len(records) == 5 and len(rejects) == 1 and rejects.items[0]["line"] == 7
    with pytest.raises(DataError, match="text_mode"):
        read([path], text_mode="page")


def test_corrupt_parquet_is_a_reject(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    records, rejects = read([path])
    assert records == [] and len(rejects) == 1
    assert_reject(rejects.items[0], path, 1, "unreadable parquet")


def test_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"text": f"doc {i}", "n": i} for i in range(5)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    assert file_kind(tmp_path / "ds") == "hf_disk"
    records, rejects = read([tmp_path / "ds"])
    assert [r.row for r in records] == rows and len(rejects) == 0
    assert [r.line for r in records] == [1, 2, 3, 4, 5]
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(rows[:3]),
            "test": datasets.Dataset.from_list(rows[3:]),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert sorted(r.row["n"] for r in read([tmp_path / "dd"])[0]) == [0, 1, 2, 3, 4]


def test_missing_and_unsupported(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read([tmp_path / "nope.jsonl"])
    (tmp_path / "x.xlsx").write_bytes(b"")
    with pytest.raises(DataError, match="unsupported file type"):
        read([tmp_path / "x.xlsx"])


# --------------------------------------------------------------------------- LLaMA-Factory
def _lf_folder(tmp_path):
    folder = tmp_path / "lf"
    folder.mkdir()
    alpaca = [
        {
            "q": "What?",
            "ctx": "some input",
            "a": "This.",
            "sys": "Be brief.",
            "hist": [["hi", "hello"]],
        },
        {"q": "Bad", "ctx": "", "a": 5},  # response not a string -> reject
        {"q": "Plain", "a": "ok"},
    ]
    (folder / "alpaca.json").write_text(json.dumps(alpaca), encoding="utf-8")
    chat = [
        {"msgs": [{"r": "u", "c": "hey"}, {"r": "bot", "c": "hi there"}], "sys": "S",
         "label": True},
        {"msgs": [{"r": "alien", "c": "?"}]},  # unknown role -> reject
        {"msgs": [{"r": "u", "c": "call"}, {"r": "fn", "c": "{}"}, {"r": "obs", "c": "r"},
                  {"r": "bot", "c": "done"}], "label": False},
        {"msgs": [{"r": "u", "c": "a"}, {"r": "bot", "c": "b"}], "label": "yes"},  # kto not bool
    ]  # fmt: skip
    with open(folder / "chat.jsonl", "w", encoding="utf-8") as fh:
        for row in chat:
            fh.write(json.dumps(row) + "\n")
        fh.write("{truncated\n")  # malformed line -> reader reject
    pairs = [
        {"conversations": [{"from": "human", "value": "pick"}],
         "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}},
        {"conversations": [{"from": "human", "value": "pick"}],
         "chosen": {"from": "human", "value": "x"}, "rejected": {"from": "gpt", "value": "y"}},
    ]  # fmt: skip
    (folder / "pairs.json").write_text(json.dumps(pairs), encoding="utf-8")
    apairs = [{"instruction": "i", "chosen": "c", "rejected": "r"}]
    (folder / "apairs.json").write_text(json.dumps(apairs), encoding="utf-8")
    info = {
        "my_alpaca": {
            "file_name": "alpaca.json",
            "columns": {"prompt": "q", "query": "ctx", "response": "a", "system": "sys",
                        "history": "hist"},
        },
        "my_chat": {
            "file_name": "chat.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "msgs", "system": "sys", "kto_tag": "label"},
            "tags": {"role_tag": "r", "content_tag": "c", "user_tag": "u", "assistant_tag": "bot",
                     "function_tag": "fn", "observation_tag": "obs"},
        },
        "my_pairs": {"file_name": "pairs.json", "formatting": "sharegpt", "ranking": True,
                     "columns": {"messages": "conversations", "chosen": "chosen",
                                 "rejected": "rejected"}},
        "my_apairs": {"file_name": "apairs.json", "ranking": True,
                      "columns": {"prompt": "instruction", "chosen": "chosen",
                                  "rejected": "rejected"}},
        "remote": {"hf_hub_url": "someone/something"},
    }  # fmt: skip
    (folder / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


def test_llamafactory_alpaca(tmp_path):
    folder = _lf_folder(tmp_path)
    records, rejects = read([f"{folder}#my_alpaca"])
    assert [r.row for r in records] == [
        {"instruction": "What?", "input": "some input", "output": "This.", "system": "Be brief.",
         "history": [["hi", "hello"]]},
        {"instruction": "Plain", "output": "ok"},
    ]  # fmt: skip
    assert records[0].source == str(folder / "alpaca.json") and records[1].line == 3
    assert_reject(rejects.items[0], folder / "alpaca.json", 2, "llamafactory my_alpaca")
    assert [m["role"] for m in to_messages(records[0].row)] == [
        "system", "user", "assistant", "user", "assistant"
    ]  # fmt: skip
    assert to_messages(records[0].row)[3]["content"] == "What?\n\nsome input"


def test_llamafactory_sharegpt_tags_and_kto(tmp_path):
    folder = _lf_folder(tmp_path)
    records, rejects = read([folder / "dataset_info.json#my_chat"])
    assert records[0].row == {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "hey"},
            {"role": "assistant", "content": "hi there"},
        ],
        "label": True,
    }
    assert [m["role"] for m in records[1].row["messages"]] == [
        "user", "tool_call", "tool", "assistant"
    ]  # fmt: skip
    with pytest.raises(RowError, match="not a function call with a 'name'"):
        to_messages(records[1].row)  # its call is "{}"
    assert records[1].row["label"] is False and records[1].line == 3
    src = str(folder / "chat.jsonl")
    assert sorted((i["line"], i["reason"].split(":")[0]) for i in rejects.items) == [
        (2, "llamafactory my_chat"),
        (4, "llamafactory my_chat"),
        (5, "malformed JSON"),
    ]
    assert all(i["file"] == src for i in rejects.items)
    assert "kto_tag" in rejects.items[1]["reason"] or "kto_tag" in rejects.items[2]["reason"]
    assert len(records) + len(rejects) == 5  # counts reconcile
    assert to_messages(records[0].row)[-1]["content"] == "hi there"


def test_llamafactory_ranking(tmp_path):
    folder = _lf_folder(tmp_path)
    records, rejects = read([f"{folder}#my_pairs"])
    assert [r.row for r in records] == [
        {"messages": [{"role": "user", "content": "pick"}], "chosen": "good", "rejected": "bad"}
    ]
    assert_reject(rejects.items[0], folder / "pairs.json", 2, "expected the assistant")
    records, _ = read([f"{folder}#my_apairs"])
    assert records[0].row == {"instruction": "i", "chosen": "c", "rejected": "r"}


def test_llamafactory_selection_errors(tmp_path):
    folder = _lf_folder(tmp_path)
    with pytest.raises(DataError, match="pick one with"):
        read([folder])
    with pytest.raises(DataError, match="no dataset 'nope'"):
        read([f"{folder}#nope"])
    with pytest.raises(DataError, match="hf_hub_url"):
        read([f"{folder}#remote"])
    assert dataset_entry(f"{folder}#my_chat")[1] == "my_chat"


def _convert(records, rejects):
    used = 0
    for r in records:
        try:
            to_messages(r.row)
            used += 1
        except RowError as exc:
            assert str(exc)
            rejects.add_record(r, str(exc))
    return used


def test_real_llamafactory_demo(shared):
    folder = shared("llamafactory-demo")
    info = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))

    raw = json.loads((folder / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    records, rejects = read([f"{folder}#alpaca_en_demo"])
    assert len(records) + len(rejects) == len(raw) and len(rejects) == 0
    used = _convert(records, rejects)
    assert used + len(rejects) == len(raw) and used == len(raw)

    name = next(
        n for n, e in info.items() if e.get("formatting") == "sharegpt" and not e.get("ranking")
    )
    raw = json.loads((folder / info[name]["file_name"]).read_text(encoding="utf-8"))
    records, rejects = read([f"{folder}#{name}"])
    assert len(records) + len(rejects) == len(raw)
    assert all("messages" in r.row for r in records)
    used = _convert(records, rejects)
    assert used + len(rejects) == len(raw)
    # glaive's function calls and observations are tool calls and tool results, not rejects
    assert used == len(raw) and len(rejects) == 0
    converted = [to_messages(r.row) for r in records]
    assert sum(bool(m.get("tool_calls")) for c in converted for m in c) > 100
    assert sum(m["role"] == "tool" for c in converted for m in c) > 100

    raw_c4 = (folder / "c4_demo.jsonl").read_text(encoding="utf-8").splitlines()
    records, rejects = read([f"{folder}#c4_demo"])
    assert len(records) + len(rejects) == len([x for x in raw_c4 if x.strip()])
    assert all(set(r.row) == {"text"} for r in records)

    records, rejects = read([f"{folder}#dpo_en_demo"])
    assert len(records) == 300 and len(rejects) == 0
    assert all(isinstance(r.row["chosen"], str) and r.row["messages"] for r in records)


def test_missing_optional_package_names_the_extra(tmp_path, monkeypatch):
    from lmforge.errors import MissingDependency

    path = tmp_path / "a.jsonl.zst"
    path.write_bytes(b"")
    monkeypatch.setitem(__import__("sys").modules, "zstandard", None)
    with pytest.raises(MissingDependency, match=r"lmforge\[data\]"):
        read([path])
