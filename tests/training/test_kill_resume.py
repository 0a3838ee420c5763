"""Exact resume under real kills: ``lmforge train`` killed with SIGKILL at random points and run
again ends with the weights and logged losses of an uninterrupted run, bit for bit.

The run: SFT with a LoRA adapter (dropout on, so the RNG states matter) on 16 examples, 4 steps
per epoch, 12 steps (3 epochs, shuffled), a checkpoint after every step, the last 2 kept. The
uninterrupted reference and the final resumed run run in this process; the three killed runs
are separate ``python -m lmforge.cli train`` processes, so the weights also match across
processes. Everything on CPU with one thread (deterministic, and kind to a shared two-core
machine). About 25-35 s on an idle two-core machine, mostly process start-up (imports).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.config.recipes import TrainRecipe
from lmforge.recipes.train import run

STEPS = 12
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _overrides(data: Path, tokenizer_dir: Path, out: Path) -> list[str]:
    return [
        "stage=sft",
        "model.preset=tiny-llama",
        f"model.tokenizer={tokenizer_dir}",
        f"data.train=[{data}]",
        "data.max_length=64",
        "adapter.type=lora",
        "adapter.rank=4",
        "adapter.dropout=0.1",
        "train.batch_size=4",
        f"train.max_steps={STEPS}",
        "train.lr=3e-3",
        "train.seed=3",
        "train.save_every=1",
        "train.keep_last=2",
        "train.log_every=1",
        "track.progress=false",
        "track.tensorboard=off",
        f"output_dir={out}",
    ]


@pytest.fixture(scope="module")
def setup(demo_data, tokenizer_dir, tmp_path_factory) -> dict:
    """16 SFT examples, and the uninterrupted run on them (in this process)."""
    folder = tmp_path_factory.mktemp("kill-resume")
    lines = demo_data["tasks"].read_text(encoding="utf-8").splitlines()[::20][:16]
    data = folder / "tasks.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    straight = folder / "straight"
    run(load_config(TrainRecipe, None, _overrides(data, tokenizer_dir, straight)))
    return {"data": data, "tokenizer_dir": tokenizer_dir, "straight": straight}


def _weights(out: Path) -> dict[str, torch.Tensor]:
    (file,) = sorted((out / "model").glob("*.safetensors"))
    return load_file(str(file))


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(out: Path, straight: Path) -> None:
    """Bit-identical trained weights and the same logged losses, step by step."""
    final, reference = _weights(out), _weights(straight)
    assert final.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(final[name], tensor), name
    timing = {"tokens_per_s", "elapsed", "mfu"}  # the only fields allowed to differ
    got = [{k: v for k, v in r.items() if k not in timing} for r in _metrics(out)]
    want = [{k: v for k, v in r.items() if k not in timing} for r in _metrics(straight)]
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert got == want


# --------------------------------------------------------------------------- SIGKILL
def _command(setup: dict, out: Path) -> tuple[list[str], dict]:
    cmd = [sys.executable, "-m", "lmforge.cli", "train"]
    cmd += _overrides(setup["data"], setup["tokenizer_dir"], out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return cmd, env


def _newest_step(root: Path) -> int:
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return 0
    return max((int(m.group(1)) for n in names if (m := _STEP_DIR.match(n))), default=0)


def _kill_after_checkpoint(cmd, env, out: Path, step: int, delay: float, log: Path) -> None:
    """Start ``cmd``; SIGKILL it ``delay`` seconds after checkpoint ``step`` appears."""
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    try:
        while _newest_step(out / "checkpoints") < step:
            assert proc.poll() is None, f"exited {proc.returncode} early:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no checkpoint {step} in 120 s"
            time.sleep(0.002)
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"it finished before the kill:\n{log.read_text()}"


def test_sigkilled_at_random_points_then_resumed_matches_uninterrupted(setup, tmp_path, capsys):
    out, log = tmp_path / "killed", tmp_path / "log.txt"
    cmd, env = _command(setup, out)
    rng = random.Random(1234)
    kills = []
    for _ in range(3):
        # at least one more checkpoint each time, and 3+ steps to spare before the end
        step = min(_newest_step(out / "checkpoints") + rng.randint(1, 3), STEPS - 3)
        delay = rng.uniform(0.0, 0.06)  # lands inside a step, a save or a metrics write
        _kill_after_checkpoint(cmd, env, out, step, delay, log)
        kills.append((step, _newest_step(out / "checkpoints")))
    assert all(newest < STEPS for _, newest in kills), kills
    capsys.readouterr()

    # the same command once more, to the end (in this process: a fourth start-up costs ~8 s)
    assert main(cmd[cmd.index("train") :]) == 0
    assert "lmforge: resuming from" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["status"] == "completed"
    _assert_same_run(out, setup["straight"])
    # keep_last=2, and nothing left over from the saves that were killed
    assert sorted(os.listdir(out / "checkpoints")) == ["step-000011", "step-000012"]


# --------------------------------------------------------------------------- corrupt checkpoints
class Killed(Exception):
    """Stands in for a kill after an optimizer step (in-process, fast)."""


def _stop_after(step: int):
    def on_step(done: int) -> None:
        if done == step:
            raise Killed(f"killed after step {done}")

    return on_step


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # flip the last bytes (tensor data): a well-formed file that only the checksum catches
        path.write_bytes(data[:-4] + bytes(b ^ 0xFF for b in data[-4:]))


@pytest.mark.parametrize(
    ("name", "how"), [("trainable.safetensors", "flip"), ("optimizer.pt", "truncate")]
)
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(setup, tmp_path, capsys, name, how):
    out = tmp_path / "run"
    cfg = load_config(TrainRecipe, None, _overrides(setup["data"], setup["tokenizer_dir"], out))
    with pytest.raises(Killed):
        run(cfg, on_step=_stop_after(7))
    latest, previous = out / "checkpoints" / "step-000007", out / "checkpoints" / "step-000006"
    _damage(latest / name, how)
    capsys.readouterr()

    run(cfg)

    captured = capsys.readouterr()
    assert (
        f"lmforge: warning: checkpoint {latest} is corrupt ({name} does not match its checksum); "
        f"falling back to {previous}"
    ) in captured.err
    assert f"lmforge: resuming from {previous} (step 6 of {STEPS})" in captured.out
    _assert_same_run(out, setup["straight"])


def test_explicit_corrupt_checkpoint_exits_2_without_traceback(setup, tmp_path, capsys):
    bad = tmp_path / "step-000012"
    shutil.copytree(setup["straight"] / "checkpoints" / "step-000012", bad)
    _damage(bad / "optimizer.pt", "truncate")
    args = _overrides(setup["data"], setup["tokenizer_dir"], tmp_path / "run")
    capsys.readouterr()

    code = main(["train", *args, f"train.resume={bad}"])

    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    message = err[err.index("lmforge: error: ") :]
    assert message.count("\n") == 1  # one line
    assert f"checkpoint {bad} is corrupt (optimizer.pt does not match its checksum)" in message
    assert "train.resume=never" in message
