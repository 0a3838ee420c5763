"""A run killed mid-epoch and resumed ends with exactly the weights of an uninterrupted run.

8 optimizer steps over 2 epochs of 4 steps, shuffled; a checkpoint every 3 steps; the first
attempt dies after step 5, so steps 4-5 are lost and redone, and the resumed run crosses the
epoch boundary (step 4 -> 5) again.

Below that, the checkpoint component on a two-layer toy model: checksums, keep-last-N, falling
back past a corrupt checkpoint, loading all or nothing, and metrics.jsonl cut short by a kill.
(Real processes killed with SIGKILL: test_kill_resume.py.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.config import load_config
from lmforge.config.recipes import TrainRecipe
from lmforge.errors import ConfigError, UserError
from lmforge.recipes.train import run
from lmforge.training.checkpoint import (
    CHECKSUMS,
    CorruptCheckpoint,
    check_data_position,
    checkpoint_dirs,
    load_checkpoint,
    restore,
    save_checkpoint,
)
from lmforge.training.loop import MetricsLog


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
    if stage in ("grpo", "ppo"):  # sampled answers: the resumed steps must draw the same ones
        extra += [
            "rl.group_size=2",
            "rl.max_new_tokens=4",
            "rl.rewards=[{type: regex, pattern: '[aeiou]'}]",  # varies on a random model
        ]
    if stage == "ppo":  # the adaptive KL coefficient is state the checkpoint must carry
        extra += ["rl.kl_target=0.01", "rl.kl_horizon=10", "rl.ppo_epochs=2", "rl.mini_batches=2"]
    return load_config(TrainRecipe, None, common + extra)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    (file,) = sorted((out / "model").glob("*.safetensors"))
    return load_file(str(file))


def _pair_data(folder: Path) -> Path:
    from lmforge.data.synthetic_pairs import make_pairs, write_pairs

    return write_pairs(folder / "pairs.jsonl", make_pairs(3, seed=2)[:16])


@pytest.mark.parametrize(
    "stage",
    ["pt", "sft", "dpo", "grpo", "ppo"],
    ids=["pt-full", "sft-lora", "dpo-lora", "grpo-lora", "ppo-lora"],
)
def test_killed_and_resumed_run_matches_uninterrupted(
    stage, tokenizer, tokenizer_dir, demo_data, tmp_path, capsys
):
    if stage == "pt":
        data = _pt_data(tokenizer, demo_data, tmp_path)
    elif stage == "dpo":
        data = _pair_data(tmp_path)
    else:
        data = _sft_data(demo_data, tmp_path)
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
        if stage in ("grpo", "ppo"):  # the same answers were sampled, so they scored the same
            assert got["reward"] == want["reward"], got["step"]
        if stage == "ppo":
            assert got["kl_coef"] == pytest.approx(want["kl_coef"], rel=1e-9), got["step"]
    assert rows[-1]["epoch"] > 1  # the epoch boundary was crossed

    final, reference = _weights(resumed), _weights(straight)
    if stage == "ppo":  # the value head was checkpointed and resumed too
        assert rows[-1]["kl_coef"] != rows[0]["kl_coef"]  # the controller moved it
        final.update(load_file(str(resumed / "value_head.safetensors")))
        reference.update(load_file(str(straight / "value_head.safetensors")))
        assert reference["weight"].abs().max() > 0  # trained away from its zero start
    assert final.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(final[name], tensor, atol=1e-6, rtol=0, msg=name)


# --------------------------------------------------------------------------- checkpoint component
def _toy(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Two linear layers and an AdamW that has taken one step (so it has state to save)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def _snapshot(model, optimizer) -> tuple[dict, dict]:
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    moments = {
        i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
        for i, s in optimizer.state_dict()["state"].items()
    }
    return weights, moments


def _assert_same(got: tuple[dict, dict], want: tuple[dict, dict]) -> None:
    (weights, moments), (want_weights, want_moments) = got, want
    assert weights.keys() == want_weights.keys()
    assert all(torch.equal(weights[n], want_weights[n]) for n in weights)
    assert moments.keys() == want_moments.keys()
    for i, state in moments.items():
        assert all(
            torch.equal(torch.as_tensor(v), torch.as_tensor(want_moments[i][k]))
            for k, v in state.items()
        )


def _save_steps(root: Path, steps, keep_last: int = 5) -> dict[int, tuple[dict, dict]]:
    """Checkpoints of ``_toy(step)`` at each step; returns what each one holds."""
    held = {}
    for step in steps:
        model, optimizer = _toy(step)
        save_checkpoint(
            root, step, model, optimizer, {"tokens": step, "steps_per_epoch": 4}, keep_last
        )
        held[step] = _snapshot(model, optimizer)
    return held


def test_checkpoint_has_checksums_and_data_position(tmp_path):
    folder = save_checkpoint(tmp_path, 6, *_toy(0), {"steps_per_epoch": 4}, keep_last=2)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [CHECKSUMS, "optimizer.pt", "rng.pt", "state.json", "trainable.safetensors"]
    )
    sums = json.loads((folder / CHECKSUMS).read_text())
    assert sorted(sums) == ["optimizer.pt", "rng.pt", "state.json", "trainable.safetensors"]
    assert all(len(v) == 64 for v in sums.values())  # sha256 hex
    state = json.loads((folder / "state.json").read_text())
    assert (state["step"], state["epoch"], state["position"]) == (6, 1, 2)

    check_data_position(dict(state), 6, 4, folder)  # the same order: fine
    with pytest.raises(ConfigError, match="the data or batch size changed"):
        check_data_position(dict(state), 6, 3, folder)


def test_keep_last_keeps_exactly_n_and_clears_leftovers_of_a_killed_save(tmp_path):
    leftover = tmp_path / ".step-000002.tmp-deadbeef"  # what SIGKILL inside atomic_dir leaves
    leftover.mkdir(parents=True)
    (leftover / "trainable.safetensors").write_bytes(b"half")
    _save_steps(tmp_path, range(1, 7), keep_last=3)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == [f"step-00000{i}" for i in (4, 5, 6)]
    assert sorted(os.listdir(tmp_path)) == ["step-000004", "step-000005", "step-000006"]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("flip trainable.safetensors", "trainable.safetensors does not match its checksum"),
        ("truncate optimizer.pt", "optimizer.pt does not match its checksum"),
        ("delete rng.pt", "rng.pt is missing"),
        ("delete checksums.json", "checksums.json unreadable"),
    ],
)
def test_auto_resume_falls_back_past_a_corrupt_checkpoint(tmp_path, capsys, damage, reason):
    held = _save_steps(tmp_path, [1, 2, 3])
    _damage(tmp_path / "step-000003", damage)
    model, optimizer = _toy(99)

    state, folder = restore("auto", tmp_path, model, optimizer)

    assert folder.name == "step-000002" and state["step"] == 2 and state["tokens"] == 2
    _assert_same(_snapshot(model, optimizer), held[2])
    err = capsys.readouterr().err
    assert err.startswith(f"lmforge: warning: checkpoint {tmp_path / 'step-000003'} is corrupt (")
    assert reason in err and err.rstrip().endswith(f"falling back to {tmp_path / 'step-000002'}")


def test_every_checkpoint_corrupt_is_an_error_naming_them(tmp_path, capsys):
    _save_steps(tmp_path, [1, 2])
    _damage(tmp_path / "step-000002", "flip trainable.safetensors")
    _damage(tmp_path / "step-000001", "truncate optimizer.pt")
    model, optimizer = _toy(99)
    before = _snapshot(model, optimizer)

    with pytest.raises(UserError) as caught:
        restore("auto", tmp_path, model, optimizer)

    message = str(caught.value)
    assert "step-000001" in message and "step-000002" in message
    assert "train.resume=never" in message
    assert "falling back to" in capsys.readouterr().err  # 2 -> 1 was tried first
    _assert_same(_snapshot(model, optimizer), before)  # nothing half-loaded


def test_an_explicit_corrupt_checkpoint_is_an_error_not_a_fallback(tmp_path):
    _save_steps(tmp_path, [1, 2])
    _damage(tmp_path / "step-000002", "truncate optimizer.pt")
    model, optimizer = _toy(99)
    before = _snapshot(model, optimizer)
    with pytest.raises(CorruptCheckpoint, match="optimizer.pt does not match its checksum"):
        restore(str(tmp_path / "step-000002"), tmp_path, model, optimizer)
    _assert_same(_snapshot(model, optimizer), before)
    assert restore("never", tmp_path, model, optimizer) is None


def test_a_checkpoint_of_another_model_changes_nothing(tmp_path):
    save_checkpoint(tmp_path, 1, *_toy(0), {}, keep_last=2)
    torch.manual_seed(0)
    other = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 3))  # last layer differs
    optimizer = torch.optim.AdamW(other.parameters(), lr=0.1)
    before = _snapshot(other, optimizer)
    with pytest.raises(UserError, match="does not match the model"):
        load_checkpoint(tmp_path / "step-000001", other, optimizer)
    _assert_same(_snapshot(other, optimizer), before)  # the first layer fits, yet was not copied


def test_metrics_log_drops_a_line_cut_short_by_a_kill(tmp_path):
    rows = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + '\n{"step": 4, "lo')
    MetricsLog.open(tmp_path, resume_step=3, tensorboard="off").log({"step": 4, "loss": 0.25})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]


def _damage(folder: Path, how: str) -> None:
    verb, name = how.split()
    path = folder / name
    if verb == "delete":
        path.unlink()
    elif verb == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # flip the last bytes (tensor data): still a well-formed file, only the checksum tells
        data = bytearray(path.read_bytes())
        data[-4:] = bytes(b ^ 0xFF for b in data[-4:])
        path.write_bytes(bytes(data))
