"""The train recipe end to end on CPU: pretraining learns, the saved model is plain Hugging Face,
LoRA adapters point at a base that exists, user errors exit 2 without a traceback, and bad rows go
to rejects.jsonl with counts that add up."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.config.groups import ModelConfig
from lmforge.config.recipes import TrainRecipe
from lmforge.models.load import load_for_inference
from lmforge.recipes.train import run

QUIET = ["track.progress=false", "track.tensorboard=off"]


def _train(overrides: list[str]):
    return run(load_config(TrainRecipe, None, overrides + QUIET))


@pytest.fixture(scope="module")
def pt_run(demo_data, tokenizer_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pt")
    _train(
        [
            "stage=pt",
            "model.preset=tiny-llama",
            f"model.tokenizer={tokenizer_dir}",
            f"data.train=[{demo_data['corpus']}]",
            "data.max_length=64",
            "train.batch_size=8",
            "train.max_steps=24",
            "train.lr=3e-3",
            "train.log_every=4",
            f"output_dir={out}",
        ]
    )
    return out


@pytest.fixture(scope="module")
def sft_run(pt_run, demo_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft")
    _train(
        [
            "stage=sft",
            f"model.path={pt_run}",
            f"data.train=[{demo_data['tasks']}]",
            "data.max_length=64",
            "adapter.type=lora",
            "adapter.rank=4",
            "train.batch_size=8",
            "train.max_steps=2",
            f"output_dir={out}",
        ]
    )
    return out


def test_pretraining_loss_goes_down(pt_run) -> None:
    rows = [json.loads(x) for x in (pt_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 12, 16, 20, 24]
    assert rows[0]["loss"] > rows[-1]["loss"] + 0.5, [round(r["loss"], 3) for r in rows]
    manifest = json.loads((pt_run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["stage"] == "pt"
    assert manifest["metrics"]["train_loss"] == pytest.approx(rows[-1]["loss"])


def test_saved_model_is_plain_hugging_face(pt_run, tokenizer) -> None:
    plain = AutoModelForCausalLM.from_pretrained(str(pt_run / "model")).eval()
    # the saved weights are the trained weights (the final checkpoint holds every parameter)
    trained = load_file(str(pt_run / "checkpoints" / "step-000024" / "trainable.safetensors"))
    params = dict(plain.named_parameters())
    assert trained.keys() == params.keys()
    for name, tensor in trained.items():
        assert torch.equal(params[name].detach(), tensor), name

    loaded, tok = load_for_inference(ModelConfig(path=str(pt_run)))
    ids = tok("The number 42 is written forty-two.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, loaded(ids).logits, atol=1e-6, rtol=0)
    assert tok.eos_token == tokenizer.eos_token and len(tok) == len(tokenizer)


def test_lora_run_saves_an_adapter_on_an_existing_base(sft_run, pt_run) -> None:
    model_dir = sft_run / "model"
    adapter_cfg = json.loads((model_dir / "adapter_config.json").read_text())
    base = Path(adapter_cfg["base_model_name_or_path"])
    assert base == (pt_run / "model").resolve()
    assert (base / "config.json").is_file() and list(base.glob("*.safetensors"))
    assert (model_dir / "adapter_model.safetensors").is_file()
    assert not (model_dir / "model.safetensors").exists()  # the adapter only, not a full copy

    model, _ = load_for_inference(ModelConfig(path=str(sft_run)))
    assert type(model).__name__.startswith("Peft")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # trained away from zero init


# --------------------------------------------------------------------------- user errors
def _cli_error(capsys, argv: list[str]) -> str:
    code = main(argv + QUIET)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert "lmforge: error: " in err  # after any progress bar transformers printed
    return err[err.index("lmforge: error: ") :]


def _sft_args(tokenizer_dir, data, out) -> list[str]:
    return [
        "train",
        "stage=sft",
        "model.preset=tiny-llama",
        f"model.tokenizer={tokenizer_dir}",
        f"data.train=[{data}]",
        "data.max_length=64",
        "train.max_steps=1",
        f"output_dir={out}",
    ]


def test_missing_data_file(capsys, tokenizer_dir, tmp_path) -> None:
    err = _cli_error(capsys, _sft_args(tokenizer_dir, tmp_path / "nope.jsonl", tmp_path / "run"))
    assert "nope.jsonl" in err and "not found" in err


def test_unknown_lora_target_module(capsys, tokenizer_dir, demo_data, tmp_path) -> None:
    args = _sft_args(tokenizer_dir, demo_data["tasks"], tmp_path / "run")
    err = _cli_error(capsys, args + ["adapter.type=lora", "adapter.target_modules=[nonexistent]"])
    assert "nonexistent" in err and "q_proj" in err  # names what is there to choose from
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed"


def test_chat_template_without_eos_is_refused_for_sft(
    capsys, tokenizer_dir, demo_data, tmp_path
) -> None:
    bad = tmp_path / "bad-tokenizer"
    shutil.copytree(tokenizer_dir, bad)
    (bad / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    err = _cli_error(capsys, _sft_args(bad, demo_data["tasks"], tmp_path / "run"))
    assert "does not end assistant turns with the EOS token" in err
    assert not (tmp_path / "run" / "model").exists()


# --------------------------------------------------------------------------- rejected rows
def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _rejects(out: Path) -> list[tuple[str, int, str]]:
    rows = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    return [(Path(r["file"]).name, r["line"], r["reason"]) for r in rows]


def test_pt_rejects_and_counts(tokenizer_dir, demo_data, tmp_path) -> None:
    good = demo_data["corpus"].read_text(encoding="utf-8").splitlines()[:20]
    lines = [
        *good[:5],
        '{"text": "no closing brace"',
        *good[5:10],
        '{"text": "  "}',
        *good[10:15],
        '{"title": "no text field"}',
        *good[15:],
    ]
    data = _write_lines(tmp_path / "corpus.jsonl", lines)
    out = tmp_path / "run"
    _train(
        [
            "stage=pt",
            "model.preset=tiny-llama",
            f"model.tokenizer={tokenizer_dir}",
            f"data.train=[{data}]",
            "data.max_length=32",
            "train.max_steps=1",
            f"output_dir={out}",
        ]
    )
    rejects = _rejects(out)
    assert [(f, line) for f, line, _ in rejects] == [
        ("corpus.jsonl", 6),
        ("corpus.jsonl", 12),
        ("corpus.jsonl", 18),
    ]
    reasons = [reason for _, _, reason in rejects]
    assert reasons[0].startswith("malformed JSON")
    assert reasons[1] == "empty text"
    assert reasons[2] == "missing field 'text'"
    counts = json.loads((out / "manifest.json").read_text())["counts"]["train"]
    assert counts == {"read": 23, "used": 20, "rejected": 3, "truncated": 0}
    assert counts["read"] == counts["used"] + counts["rejected"]


def test_sft_rejects_and_counts(tokenizer_dir, demo_data, tmp_path) -> None:
    good = demo_data["tasks"].read_text(encoding="utf-8").splitlines()[:12]
    long_prompt = {"instruction": "Please read this. " * 40, "output": "ok"}
    long_answer = {"instruction": "Count.", "output": " ".join(["forty-two"] * 40)}
    lines = [
        *good[:3],
        json.dumps(long_prompt),
        *good[3:6],
        "not json at all",
        json.dumps({"instruction": "No answer here"}),
        *good[6:9],
        json.dumps(long_answer),
        *good[9:],
    ]
    data = _write_lines(tmp_path / "tasks.jsonl", lines)
    out = tmp_path / "run"
    _train(_sft_args(tokenizer_dir, data, out)[1:])  # without the "train" command
    rejects = sorted(_rejects(out), key=lambda r: r[1])
    assert [line for _, line, _ in rejects] == [4, 8, 9]
    assert all(f == "tasks.jsonl" for f, _, _ in rejects)
    assert rejects[0][2].startswith("prompt longer than max_length")
    assert rejects[1][2].startswith("malformed JSON")
    assert rejects[2][2] == "missing field 'output'"
    counts = json.loads((out / "manifest.json").read_text())["counts"]["train"]
    tasks = counts.pop("tasks")  # the demo rows name their task; the added ones do not
    assert counts == {"read": 16, "used": 13, "rejected": 3, "truncated": 1}
    assert sum(tasks.values()) == 13 - 1  # every used row but the long answer has a task


@pytest.mark.parametrize("stage", ["pt", "sft"])
def test_batch_layouts_and_checkpointing_learn_the_same(
    stage, demo_data, tokenizer_dir, tmp_path, monkeypatch
):
    """varlen rows (default), padded rows (packing=false), activation checkpointing and compiled
    layers are different ways to compute the same thing: the same losses at every step."""
    import torch._dynamo.utils
    import transformers.modeling_utils

    recomputed = []  # each call is one checkpointed layer forward

    def counting_checkpoint(function, *args, **kwargs):
        recomputed.append(1)
        return torch.utils.checkpoint.checkpoint(function, *args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counting_checkpoint)
    torch._dynamo.utils.counters.clear()
    data = demo_data["corpus"] if stage == "pt" else demo_data["tasks"]
    losses, padding = {}, {}
    for name, extra in [
        ("varlen", []),
        ("padded", ["train.packing=false"]),
        ("checkpointed", ["train.activation_checkpointing=true"]),
        *([("compiled", ["train.compile=true"])] if stage == "sft" else []),
    ]:
        out = tmp_path / name
        recomputed.clear()
        _train(
            [
                f"stage={stage}",
                "model.preset=tiny-llama",
                f"model.tokenizer={tokenizer_dir}",
                f"data.train=[{data}]",
                "data.max_length=48",
                "data.max_examples=64",
                "train.batch_size=4",
                "train.max_steps=6",
                "train.lr=3e-3",
                "train.log_every=1",
                f"output_dir={out}",
                *extra,
            ]
        )
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in rows if "loss" in r]
        manifest = json.loads((out / "manifest.json").read_text())
        padding[name] = manifest["metrics"]["padding_fraction"]
        if name == "checkpointed":  # the option did take effect (and only there)
            assert recomputed
        else:
            assert not recomputed
    if stage == "sft":  # the padded layout really padded; compiled layers really compiled
        assert padding["varlen"] == 0 and padding["padded"] > 0.1
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert len(losses["varlen"]) == 6
    assert losses["varlen"][-1] < losses["varlen"][0]
    for name in losses:
        assert losses[name] == pytest.approx(losses["varlen"], rel=1e-4), name


def test_throughput_and_mfu_are_logged(pt_run) -> None:
    rows = [json.loads(x) for x in (pt_run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 2 for r in train_rows)
    metrics = json.loads((pt_run / "manifest.json").read_text())["metrics"]
    assert metrics["matmul_peak_gflops"] > 0 and 0 < metrics["mfu"] < 2
