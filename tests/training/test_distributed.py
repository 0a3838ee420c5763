"""Two CPU processes with gloo follow the single-process trajectory of the same global batch.

DDP (LoRA, started with ``lmforge train ... launcher.nproc=2``) and FSDP2 (full fine-tuning,
started with ``python -m torch.distributed.run`` as the README documents) each train 6 steps of
2 examples per process, and are compared with one process taking 4 examples per step: the
logged losses and gradient norms per step (and the eval loss) within rel 1e-4, the saved
weights within 1e-4 (AdamW turns summation-order noise in a near-zero gradient into a step of
up to lr), the checkpoints in the same format. The data has 18 units, so the last step of each
epoch holds 2 units, one micro-batch: rank 1 then runs a weight-0 padding pass (the path that
keeps ranks in step). A single process then resumes the FSDP2 run's step-3 checkpoint and ends
where the straight run ends.

Process start-up (imports) dominates: about 15 s per two-process launch on two cores.
DeepSpeed is not installed here: its absence is a clear exit-2 error; the two-process DeepSpeed
comparison runs only where deepspeed and two GPUs exist.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.config.recipes import TrainRecipe
from lmforge.errors import ConfigError
from lmforge.recipes.train import run
from lmforge.training.distributed import Strategy

STEPS = 6
LOSS_RTOL = 1e-4
WEIGHT_ATOL = 1e-4
HAVE_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


def _overrides(data: Path, tokenizer_dir: Path, out: Path, batch_size: int) -> list[str]:
    return [
        "stage=sft",
        "model.preset=tiny-llama",
        f"model.tokenizer={tokenizer_dir}",
        f"data.train=[{data}]",
        "data.max_length=64",
        f"train.batch_size={batch_size}",
        f"train.max_steps={STEPS}",
        "train.lr=3e-3",
        "train.log_every=1",
        "train.save_every=3",
        "track.progress=false",
        "track.tensorboard=off",
        f"output_dir={out}",
    ]


@pytest.fixture(scope="module")
def data(demo_data, tmp_path_factory) -> Path:
    """24 SFT rows of which 18 are usable within 64 tokens: 5 steps of 4 per epoch, the last 2."""
    lines = demo_data["tasks"].read_text(encoding="utf-8").splitlines()[::20][:24]
    path = tmp_path_factory.mktemp("dist-data") / "tasks.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    (file,) = sorted((out / "model").glob("*.safetensors"))
    return load_file(str(file))


def _torchrun(args: list[str]) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", "-m", "lmforge.cli", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _assert_same_trajectory(single: Path, parallel: Path) -> None:
    one, two = _metrics(single), _metrics(parallel)
    assert [r["step"] for r in two] == [r["step"] for r in one]
    for a, b in zip(one, two, strict=True):
        key = "loss" if "loss" in a else "eval_loss"
        assert b[key] == pytest.approx(a[key], rel=LOSS_RTOL), (a, b)
        # AdamW would hide a gradient off by a constant factor; the logged norm does not
        assert b.get("grad_norm", 0) == pytest.approx(a.get("grad_norm", 0), rel=LOSS_RTOL)
        assert b.get("tokens") == a.get("tokens") and b.get("eval_tokens") == a.get("eval_tokens")
    w1, w2 = _weights(single), _weights(parallel)
    assert w1.keys() == w2.keys()  # the same format: a tied head is saved once in both
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], atol=WEIGHT_ATOL, rtol=0, msg=name)


def test_ddp_lora_via_launcher_follows_one_process(
    data, tokenizer_dir, tmp_path, monkeypatch, capsys
):
    lora = ["adapter.type=lora", "adapter.rank=4", "data.val_ratio=0.2", "train.eval_every=3"]
    run(load_config(TrainRecipe, None, _overrides(data, tokenizer_dir, tmp_path / "one", 4) + lora))

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = _overrides(data, tokenizer_dir, tmp_path / "ddp", 2) + lora + ["launcher.nproc=2"]
    assert main(["train", *args]) == 0
    assert "launching 2 processes" in capsys.readouterr().out

    _assert_same_trajectory(tmp_path / "one", tmp_path / "ddp")
    assert any("eval_loss" in r for r in _metrics(tmp_path / "ddp"))
    manifest = json.loads((tmp_path / "ddp" / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["config"]["launcher"]["nproc"] == 2
    rng = torch.load(tmp_path / "ddp" / "checkpoints" / "step-000006" / "rng.pt")
    assert len(rng["ranks"]) == 2  # each rank's generators, for dropout on resume


def test_fsdp_full_via_torchrun_follows_one_process_and_resumes_in_one(
    data, tokenizer_dir, tmp_path
):
    run(load_config(TrainRecipe, None, _overrides(data, tokenizer_dir, tmp_path / "one", 4)))
    fsdp = tmp_path / "fsdp"
    _torchrun(_overrides(data, tokenizer_dir, fsdp, 2) + ["distributed.strategy=fsdp"])

    _assert_same_trajectory(tmp_path / "one", fsdp)
    manifest = json.loads((fsdp / "manifest.json").read_text())
    assert manifest["counts"]["train_units"] % 4 == 2  # the padding pass was exercised
    # the checkpoint has the single-process format: full tensors, optimizer state by index
    ckpt_one = tmp_path / "one" / "checkpoints" / "step-000006"
    ckpt_fsdp = fsdp / "checkpoints" / "step-000006"
    w1 = load_file(str(ckpt_one / "trainable.safetensors"))
    w2 = load_file(str(ckpt_fsdp / "trainable.safetensors"))
    assert {k: v.shape for k, v in w1.items()} == {k: v.shape for k, v in w2.items()}
    o1, o2 = torch.load(ckpt_one / "optimizer.pt"), torch.load(ckpt_fsdp / "optimizer.pt")
    assert o1["param_groups"] == o2["param_groups"]
    assert o1["state"].keys() == o2["state"].keys()
    for i, state in o1["state"].items():
        torch.testing.assert_close(o2["state"][i]["step"], state["step"])
        assert o2["state"][i]["exp_avg"].shape == state["exp_avg"].shape

    # one process (batch 4) resumes the two-process run (batch 2 each) at step 3
    resumed = tmp_path / "resumed"
    shutil.copytree(fsdp / "checkpoints" / "step-000003", resumed / "checkpoints" / "step-000003")
    run(load_config(TrainRecipe, None, _overrides(data, tokenizer_dir, resumed, 4)))
    assert [r["step"] for r in _metrics(resumed)] == [4, 5, 6]
    for a, b in zip(_metrics(tmp_path / "one")[3:], _metrics(resumed), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=LOSS_RTOL)
    for name, tensor in _weights(tmp_path / "one").items():
        torch.testing.assert_close(_weights(resumed)[name], tensor, atol=WEIGHT_ATOL, rtol=0)


@pytest.mark.skipif(HAVE_DEEPSPEED, reason="deepspeed is installed here")
def test_deepspeed_without_the_package_is_a_user_error(data, tokenizer_dir, tmp_path, capsys):
    zero = tmp_path / "zero2.json"
    zero.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    args = _overrides(data, tokenizer_dir, tmp_path / "ds", 2)
    args += ["distributed.strategy=deepspeed", f"distributed.deepspeed={zero}"]
    for extra in ([], ["launcher.nproc=2"]):  # refused before any process is started
        assert main(["train", *args, *extra]) == 2
        err = capsys.readouterr().err
        assert "distributed.strategy=deepspeed needs the 'deepspeed' package" in err, err
        assert "pip install 'lmforge[deepspeed]'" in err and "Traceback" not in err
    assert not (tmp_path / "ds").exists()

    with pytest.raises(ConfigError, match="needs distributed.deepspeed"):
        load_config(TrainRecipe, None, args[:-1])


@pytest.mark.skipif(
    not HAVE_DEEPSPEED or torch.cuda.device_count() < 2,
    reason="needs deepspeed and two GPUs (never the case in lmforge's CI)",
)
def test_deepspeed_zero2_follows_one_process(data, tokenizer_dir, tmp_path):
    run(load_config(TrainRecipe, None, _overrides(data, tokenizer_dir, tmp_path / "one", 4)))
    zero = tmp_path / "zero2.json"
    zero.write_text(json.dumps({"zero_optimization": {"stage": 2}, "bf16": {"enabled": False}}))
    args = _overrides(data, tokenizer_dir, tmp_path / "ds", 2)
    _torchrun(args + ["distributed.strategy=deepspeed", f"distributed.deepspeed={zero}"])
    _assert_same_trajectory(tmp_path / "one", tmp_path / "ds")


def test_each_rank_takes_every_world_th_micro_batch_padded_to_equal_counts():
    starts = range(0, 10, 2)  # 5 micro-batches over 2 ranks
    assert Strategy(0, 2).share(starts) == [(0, 1.0), (4, 1.0), (8, 1.0)]
    assert Strategy(1, 2).share(starts) == [(2, 1.0), (6, 1.0), (0, 0.0)]
    assert Strategy(2, 4).share(range(0, 2, 2)) == [(0, 0.0)]  # nothing of its own: one pass
    assert Strategy().share(starts) == [(s, 1.0) for s in starts]
