"""The tokenised-data cache: a second load (in this process or another) hits and gives the same
units, counts and rejects as encoding afresh; anything the units depend on misses; a crashed or
damaged entry is never read; pretraining shards stream and map back to the same blocks; and a
train run with the cache has the same losses as one without."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmforge.config.groups import DataConfig
from lmforge.data.readers import Rejects, iter_records
from lmforge.errors import DataError
from lmforge.models.load import load_tokenizer
from lmforge.training.cache import META, TokenizedUnits, cache_root, entry_folder
from lmforge.training.collate import micro_batch, unit_targets
from lmforge.training.data import cache_key_parts, encode_pt, load_stage_data

BAD_ROWS = ['{"text": "no closing brace"', '{"title": "no text field"}', "[1, 2]"]


def _as_lists(units) -> list:
    return [[(list(p.ids), list(p.targets)) for p in unit] for unit in units]


def _data(tmp_path: Path, demo_data, stage: str, n: int = 40, name: str = "data.jsonl") -> Path:
    source = demo_data["corpus" if stage == "pt" else "tasks"]
    good = source.read_text(encoding="utf-8").splitlines()[:n]
    lines = good[:10] + BAD_ROWS[:1] + good[10:20] + BAD_ROWS[1:] + good[20:]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _load(stage: str, tokenizer, cache_dir: Path, seed: int = 0, **data):
    cfg = DataConfig(cache_dir=str(cache_dir), **data)
    rejects = Rejects()
    train, val = load_stage_data(stage, cfg, tokenizer, rejects, seed)
    return train, val, rejects


def _same(a, b) -> None:
    """Two load_stage_data results agree on units (ids, targets, piece boundaries), counts and
    rejects."""
    (train_a, val_a, rej_a), (train_b, val_b, rej_b) = a, b
    assert _as_lists(train_a.units) == _as_lists(train_b.units)
    assert _as_lists(val_a.units) == _as_lists(val_b.units)
    assert train_a.counts == train_b.counts and val_a.counts == val_b.counts
    assert rej_a.items == rej_b.items


@pytest.mark.parametrize(
    ("stage", "settings"),
    [
        ("pt", {"max_length": 32, "val_ratio": 0.1}),
        ("sft", {"max_length": 64, "max_examples": 25}),
    ],
)
def test_second_load_hits_with_the_same_units_counts_and_rejects(
    stage, settings, tokenizer, demo_data, tmp_path
) -> None:
    data = _data(tmp_path, demo_data, stage)
    cache = tmp_path / "cache"
    fresh = _load(stage, tokenizer, cache, train=[str(data)], cache=False, **settings)
    first = _load(stage, tokenizer, cache, train=[str(data)], **settings)
    second = _load(stage, tokenizer, cache, train=[str(data)], **settings)
    assert fresh[0].cache == {"enabled": False}
    assert first[0].cache["hit"] is False and second[0].cache["hit"] is True
    assert first[0].cache["path"] == second[0].cache["path"]
    assert Path(second[0].cache["path"]).parent == cache / "tokenized"
    assert isinstance(second[0].units, TokenizedUnits)
    _same(fresh, first)
    _same(fresh, second)
    assert [r["line"] for r in second[2].items] == [11, 22, 23]  # file order, with reasons
    assert all(r["file"] == str(data) for r in second[2].items)
    counts = second[0].counts
    assert counts["read"] == counts["used"] + counts["rejected"] and counts["rejected"] == 3
    if stage == "pt":
        assert len(second[1].units) > 0  # val_ratio held documents out
    else:
        assert counts["unused_over_max_examples"] == 40 - 25 and len(second[0].units) == 25
    # rejects.jsonl has the same bytes
    fresh[2].write(tmp_path / "a.jsonl")
    second[2].write(tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_what_the_units_depend_on_misses(tokenizer, tokenizer_dir, demo_data, tmp_path) -> None:
    data = _data(tmp_path, demo_data, "sft")
    cache = tmp_path / "cache"
    base = {"train": [str(data)], "max_length": 64}
    path = _load("sft", tokenizer, cache, **base)[0].cache["path"]

    def hit(tok=tokenizer, seed=0, **changes) -> bool:
        train = _load("sft", tok, cache, seed=seed, **{**base, **changes})[0]
        assert (train.cache["path"] == path) == train.cache["hit"]
        return train.cache["hit"]

    assert hit()
    assert hit(max_examples=5)  # applied after the cache: same entry
    assert hit(seed=7)  # the seed only matters when val_ratio carves a split
    assert not hit(max_length=48)
    assert not hit(val_ratio=0.2)
    assert not hit(format="alpaca")

    added = load_tokenizer(tokenizer_dir)
    added.add_tokens(["<|new-token|>"])
    assert not hit(tok=added)
    templated = load_tokenizer(tokenizer_dir)
    templated.chat_template = templated.chat_template.replace("<|im_start|>", "<|im_start|> ")
    assert templated.chat_template != tokenizer.chat_template
    assert not hit(tok=templated)
    assert hit(tok=load_tokenizer(tokenizer_dir))  # a fresh load of the same files: same key

    with data.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"instruction": "Say hi.", "output": "hi"}) + "\n")
    assert not hit()

    moved = tmp_path / "elsewhere.jsonl"  # same content, new path: hit, rejects name the new path
    moved.write_bytes(data.read_bytes())
    train, _, rejects = _load("sft", tokenizer, cache, **{**base, "train": [str(moved)]})
    assert train.cache["hit"]
    assert rejects.items and all(r["file"] == str(moved) for r in rejects.items)


_CHILD = """
import json, sys
from lmforge.config.groups import DataConfig
from lmforge.data.readers import Rejects
from lmforge.models.load import load_tokenizer
from lmforge.training.data import load_stage_data

tokenizer_dir, data, cache = sys.argv[1:]
cfg = DataConfig(train=[data], max_length=32, cache_dir=cache)
train, _ = load_stage_data("pt", cfg, load_tokenizer(tokenizer_dir), Rejects(), 0)
print(json.dumps(train.cache))
"""


def test_a_cache_written_by_another_process_is_reused(
    tokenizer, tokenizer_dir, demo_data, tmp_path
) -> None:
    data = _data(tmp_path, demo_data, "pt")
    cache = tmp_path / "cache"
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tokenizer_dir), str(data), str(cache)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    written = json.loads(child.stdout.strip().splitlines()[-1])
    assert written["hit"] is False
    here = _load("pt", tokenizer, cache, train=[str(data)], max_length=32)
    assert here[0].cache == {**written, "hit": True}
    _same(_load("pt", tokenizer, cache, train=[str(data)], max_length=32, cache=False), here)


def test_a_crashed_or_damaged_entry_is_never_read(tokenizer, demo_data, tmp_path) -> None:
    data = _data(tmp_path, demo_data, "pt")
    cache = tmp_path / "cache"
    cfg = DataConfig(train=[str(data)], max_length=32, cache_dir=str(cache))
    folder = entry_folder(cache_root(cfg.cache_dir), cache_key_parts("pt", cfg, tokenizer, 0))
    # a writer killed half-way leaves its temp folder, with a meta.json even
    crashed = folder.with_name(f".{folder.name}.tmp-deadbeef")
    crashed.mkdir(parents=True)
    (crashed / META).write_text('{"format": 1, "splits": {}}')
    (crashed / "train-00000.ids.npy").write_bytes(b"\x93NUMPY half")
    first = _load("pt", tokenizer, cache, train=[str(data)], max_length=32)
    assert first[0].cache == {"enabled": True, "hit": False, "path": str(folder)}
    assert crashed.is_dir()  # left alone (it might be another process still writing)
    assert sorted(p.name for p in (cache / "tokenized").iterdir()) == [crashed.name, folder.name]

    (folder / "train-00000.targets.npy").unlink()  # damaged by hand: rewritten, not read
    second = _load("pt", tokenizer, cache, train=[str(data)], max_length=32)
    assert second[0].cache["hit"] is False and (folder / "train-00000.targets.npy").is_file()
    _same(first, second)
    assert _load("pt", tokenizer, cache, train=[str(data)], max_length=32)[0].cache["hit"]


def test_a_racing_writer_keeps_the_first_entry(tokenizer, demo_data, tmp_path) -> None:
    from lmforge.training import cache as cache_mod

    data = _data(tmp_path, demo_data, "sft")
    train, _, _ = _load("sft", tokenizer, tmp_path / "cache", train=[str(data)], max_length=64)
    folder = Path(train.cache["path"])
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    def encode(sink_for, rejects):  # a loser that finishes second, with different content
        for split in ("train", "validation"):
            sink_for(split).close()
        return {"train": {}, "validation": {}}

    cache_mod._write(folder, [str(data)], 1000, encode, about={})
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # its temp folder is gone


def test_pretraining_shards_map_back_to_the_same_blocks(tokenizer, demo_data, tmp_path) -> None:
    data = _data(tmp_path, demo_data, "pt", n=120)
    cfg = DataConfig(train=[str(data)], max_length=48, cache_dir=str(tmp_path / "c"))
    cached, _ = load_stage_data(
        "pt", cfg.model_copy(update={"cache_shard_tokens": 200}), tokenizer, Rejects(), 0
    )
    in_memory = encode_pt(list(iter_records([data], Rejects())), cfg, tokenizer, Rejects())
    units = cached.units
    assert _as_lists(units) == _as_lists(in_memory.units)
    assert sum(len(u) > 1 for u in in_memory.units) > 5  # blocks holding several pieces

    meta = json.loads((Path(cached.cache["path"]) / META).read_text())
    shards = meta["splits"]["train"]["shards"]
    assert len(shards) >= 10 and sum(s["units"] for s in shards) == len(units)
    assert all(200 <= s["tokens"] < 200 + 48 for s in shards[:-1])  # whole blocks per shard
    assert meta["splits"]["train"]["counts"] == cached.counts

    # the lazy sequence behaves like the list it replaces
    assert _as_lists(units[-3:]) == _as_lists(in_memory.units[-3:])
    assert _as_lists([units[-1]]) == _as_lists([in_memory.units[-1]])
    with pytest.raises(IndexError):
        units[len(units)]
    head = units.head(7)
    assert len(head) == 7 and _as_lists(head) == _as_lists(in_memory.units[:7])
    assert head.target_tokens() == sum(unit_targets(u) for u in in_memory.units[:7])
    assert units.target_tokens() == sum(unit_targets(u) for u in in_memory.units)
    assert _as_lists(pickle.loads(pickle.dumps(units))) == _as_lists(units)
    for a, b in zip(
        micro_batch(units[:4], 0, None).values(),
        micro_batch(in_memory.units[:4], 0, None).values(),
        strict=True,
    ):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_no_usable_rows_is_an_error_on_a_hit_too(tokenizer, tmp_path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(BAD_ROWS) + "\n")
    for _ in range(2):
        rejects = Rejects()
        with pytest.raises(DataError, match="no usable training rows"):
            load_stage_data("pt", DataConfig(train=[str(data)]), tokenizer, rejects, 0)
        assert len(rejects) == 3
    assert (Path(os.environ["LMFORGE_CACHE"]) / "tokenized").is_dir()  # conftest's temp cache


def test_train_recipe_has_the_same_losses_with_the_cache(
    tokenizer_dir, demo_data, tmp_path
) -> None:
    from lmforge.config import load_config
    from lmforge.config.recipes import TrainRecipe
    from lmforge.recipes.train import run

    data = _data(tmp_path, demo_data, "pt", n=150)
    manifests, losses = [], []
    for name, cache in (("off", "false"), ("miss", "true"), ("hit", "true")):
        out = tmp_path / name
        overrides = [
            "stage=pt",
            "model.preset=tiny-llama",
            f"model.tokenizer={tokenizer_dir}",
            f"data.train=[{data}]",
            "data.max_length=32",
            "data.val_ratio=0.1",
            f"data.cache={cache}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "train.batch_size=4",
            "train.max_steps=3",
            "train.log_every=1",
            f"output_dir={out}",
            "track.progress=false",
            "track.tensorboard=off",
        ]
        run(load_config(TrainRecipe, None, overrides))
        manifests.append(json.loads((out / "manifest.json").read_text()))
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        timing = {"tokens_per_s", "elapsed", "mfu"}
        losses.append([{k: v for k, v in r.items() if k not in timing} for r in rows])
        assert (out / "rejects.jsonl").read_text().count("\n") == 3
    assert [m["counts"]["data_cache"].get("hit") for m in manifests] == [None, False, True]
    assert losses[0] == losses[1] == losses[2]  # loss, grad_norm, eval_loss: bit for bit
    assert [r["step"] for r in losses[0]] == [1, 2, 3, 3] and "eval_loss" in losses[0][-1]
    assert manifests[0]["metrics"]["train_loss"] == manifests[2]["metrics"]["train_loss"]
    for key in ("train", "validation", "train_units", "validation_units"):
        assert manifests[0]["counts"][key] == manifests[2]["counts"][key]
