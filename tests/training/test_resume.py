"""A run killed mid-epoch and resumed ends with exactly the weights of an uninterrupted run.

8 optimizer steps over 2 epochs of 4 steps, shuffled; a checkpoint every 3 steps; the first
attempt dies after step 5, so steps 4-5 are lost and redone, and the resumed run crosses the
epoch boundary (step 4 -> 5) again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.config import load_config
from lmforge.config.recipes import TrainRecipe
from lmforge.recipes.train import run


class Killed(Exception):
    """Stands in for a crash or a kill between two optimizer steps."""


def _kill_after(step: int):
    def on_step(done: int) -> None:
        if done == step:
            raise Killed(f"killed after step {done}")

    return on_step


def _recorder(seen: list[int]):
    return seen.append


def _pt_data(tokenizer, demo_data, folder: Path) -> Path:
    """Documents totalling 13-15 blocks of 32 tokens: 4 steps of 4 blocks per epoch."""
    lines, total = [], 0
    for line in demo_data["corpus"].read_text(encoding="utf-8").splitlines():
        n = len(tokenizer(json.loads(line)["text"])["input_ids"]) + 1
        if total + n > 15 * 32:
            continue
        lines.append(line)
        total += n
        if total > 13 * 32:
            break
    path = folder / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _sft_data(demo_data, folder: Path) -> Path:
    lines = demo_data["tasks"].read_text(encoding="utf-8").splitlines()[::20][:16]
    path = folder / "tasks.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _config(stage: str, data: Path, tokenizer_dir: Path, out: Path) -> TrainRecipe:
    common = [
        f"stage={stage}",
        "model.preset=tiny-llama",
        f"model.tokenizer={tokenizer_dir}",
        f"data.train=[{data}]",
        "train.epochs=2",
        "train.batch_size=4",
        "train.lr=3e-3",
        "train.save_every=3",
        "train.log_every=1",
        "train.shuffle=true",
        "train.seed=3",
        "track.progress=false",
        "track.tensorboard=off",
        f"output_dir={out}",
    ]
    if stage == "pt":
        extra = ["data.max_length=32"]
    else:  # dropout on: the resumed run must also restore the RNG
        extra = ["data.max_length=64", "adapter.type=lora", "adapter.rank=4", "adapter.dropout=0.1"]
    return load_config(TrainRecipe, None, common + extra)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    (file,) = sorted((out / "model").glob("*.safetensors"))
    return load_file(str(file))


@pytest.mark.parametrize("stage", ["pt", "sft"], ids=["pt-full", "sft-lora"])
def test_killed_and_resumed_run_matches_uninterrupted(
    stage, tokenizer, tokenizer_dir, demo_data, tmp_path, capsys
):
    data = (
        _pt_data(tokenizer, demo_data, tmp_path)
        if stage == "pt"
        else _sft_data(demo_data, tmp_path)
    )
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"

    run(_config(stage, data, tokenizer_dir, straight))
    manifest = json.loads((straight / "manifest.json").read_text())
    assert manifest["counts"]["train_units"] in range(13, 17)  # 4 steps per epoch of 4 units
    assert manifest["metrics"]["steps"] == 8

    with pytest.raises(Killed):
        run(_config(stage, data, tokenizer_dir, resumed), on_step=_kill_after(5))
    killed = json.loads((resumed / "manifest.json").read_text())
    assert killed["status"] == "failed" and "Killed" in killed["metrics"]["error"]
    assert [p.name for p in sorted((resumed / "checkpoints").iterdir())] == ["step-000003"]
    assert [r["step"] for r in _metrics(resumed)] == [1, 2, 3, 4, 5]
    capsys.readouterr()

    seen: list[int] = []
    run(_config(stage, data, tokenizer_dir, resumed), on_step=_recorder(seen))
    assert seen == [4, 5, 6, 7, 8]  # it resumed, rather than starting over
    assert "resuming from" in capsys.readouterr().out
    assert json.loads((resumed / "manifest.json").read_text())["status"] == "completed"

    rows = _metrics(resumed)
    assert [r["step"] for r in rows] == list(range(1, 9))  # steps 4-5 logged once, not twice
    for got, want in zip(rows, _metrics(straight), strict=True):
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-6), got["step"]
    assert rows[-1]["epoch"] > 1  # the epoch boundary was crossed

    final, reference = _weights(resumed), _weights(straight)
    assert final.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(final[name], tensor, atol=1e-6, rtol=0, msg=name)
