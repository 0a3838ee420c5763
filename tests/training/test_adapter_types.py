"""Every ``adapter.type`` end to end through ``lmforge train`` on the tiny model.

For each type: a few steps on one repeated batch make the loss go down; exactly the intended
parameters train (the checkpoint's tensors are the trainable ones, they moved, and everything
else in the saved result equals the fresh model); the result reloads through
``load_for_inference`` and gives the logits of the trained model rebuilt from its checkpoint.
Then merging (LoRA/DoRA, IA3, QLoRA on both 4-bit backends) and refusing to merge (prompt
learning), and resuming a killed run of a non-LoRA type.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.config.groups import GenerationConfig, ModelConfig
from lmforge.config.recipes import TrainRecipe
from lmforge.models.adapters import apply_adapter, check_fits
from lmforge.models.load import build_model, load_for_inference
from lmforge.models.quantize import is_4bit
from lmforge.recipes.train import run
from lmforge.serve.generate import generate
from lmforge.training.distributed import Strategy

STEPS = 8
# (overrides, learning rate, which parameter names must be the trainable ones)
TYPES: dict[str, tuple[list[str], float, object]] = {
    "full": ([], 3e-3, lambda n: True),
    "freeze": (
        ["adapter.train_layers=1", "adapter.train_modules=[norm]"],
        3e-3,
        lambda n: n.startswith("model.layers.1.") or n == "model.norm.weight",
    ),
    "lora": (  # DoRA + rsLoRA, a name list, and one module trained in full beside the adapter
        [
            "adapter.rank=4",
            "adapter.use_dora=true",
            "adapter.use_rslora=true",
            "adapter.target_modules=[q_proj,v_proj,down_proj]",
            "adapter.modules_to_save=[norm]",  # the final norm only, not every *layernorm
        ],
        1e-2,
        lambda n: "lora_" in n or n == "base_model.model.model.norm.modules_to_save.default.weight",
    ),
    "qlora": (["adapter.rank=4"], 1e-2, lambda n: "lora_" in n),
    "qlora-torchao": (
        ["adapter.rank=4", "adapter.quant_backend=torchao"],
        1e-2,
        lambda n: "lora_" in n,
    ),
    "ia3": ([], 5e-2, lambda n: "ia3_" in n),
    "prefix": (["adapter.num_virtual_tokens=4"], 3e-2, lambda n: "prompt_encoder" in n),
    "prompt": (["adapter.num_virtual_tokens=4"], 1e-1, lambda n: "prompt_encoder" in n),
    "p-tuning": (
        ["adapter.num_virtual_tokens=4", "adapter.encoder_hidden_size=32"],
        1e-2,
        lambda n: "prompt_encoder" in n,
    ),
}


def adapter_type(key: str) -> str:
    return key.split("-torchao")[0]


def _rows(demo_data, folder: Path, n: int = 8) -> Path:
    """``n`` distinct tasks: with batch_size n every step sees the same batch."""
    lines = demo_data["tasks"].read_text(encoding="utf-8").splitlines()[::7][:n]
    path = folder / "tasks.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _config(key: str, data: Path, tokenizer_dir: Path, out: Path, extra=()) -> TrainRecipe:
    overrides, lr, _ = TYPES[key]
    return load_config(
        TrainRecipe,
        None,
        [
            "stage=sft",
            "model.preset=tiny-llama",
            f"model.tokenizer={tokenizer_dir}",
            f"data.train=[{data}]",
            "data.max_length=64",
            f"adapter.type={adapter_type(key)}",
            *overrides,
            "train.batch_size=8",
            f"train.max_steps={STEPS}",
            f"train.lr={lr}",
            "train.warmup_steps=0",
            "train.schedule=constant",
            "train.log_every=1",
            "track.progress=false",
            "track.tensorboard=off",
            f"output_dir={out}",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def trained(demo_data, tokenizer_dir, tmp_path_factory):
    """``trained(key)`` -> run directory, training each type once for the whole module."""
    runs: dict[str, Path] = {}
    data = _rows(demo_data, tmp_path_factory.mktemp("rows"))

    def get(key: str) -> Path:
        if key not in runs:
            out = tmp_path_factory.mktemp(key) / "run"
            run(_config(key, data, tokenizer_dir, out))
            runs[key] = out
        return runs[key]

    return get


def _fresh(key: str, tokenizer) -> torch.nn.Module:
    """The model exactly as the train recipe builds it before the first step."""
    cfg = load_config(
        TrainRecipe,
        None,
        [
            "model.preset=tiny-llama",
            "model.tokenizer=unused",
            "data.train=[unused]",
            f"adapter.type={adapter_type(key)}",
            *TYPES[key][0],
        ],
    )
    model = build_model(cfg.model, tokenizer, seed=0)
    check_fits(model, cfg.adapter)
    torch.manual_seed(0)
    return apply_adapter(model, cfg.adapter, tokenizer, torch.device("cpu")).model


def _dense(param: torch.Tensor) -> torch.Tensor:
    """A parameter's values as a plain float tensor (4-bit weights dequantised)."""
    if type(param).__name__ == "Params4bit":
        import bitsandbytes as bnb

        return bnb.functional.dequantize_4bit(param.data, param.quant_state)
    if type(param).__name__ == "NF4Tensor":
        return param.get_original_weight()
    return param.detach()


def _batch(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Two right-padded rows and their attention mask."""
    texts = ["The number 42 is written forty-two.", "Translate: good morning"]
    rows = [tokenizer(t)["input_ids"] for t in texts]
    longest = max(map(len, rows))
    ids = torch.full((2, longest), tokenizer.pad_token_id)
    mask = torch.zeros((2, longest), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    return ids, mask


def _logits(model, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids, attention_mask=mask).logits[:, -ids.shape[1] :]


@pytest.mark.parametrize("key", list(TYPES))
def test_adapter_type_trains_saves_and_reloads(key, trained, tokenizer) -> None:
    out = trained(key)
    kind = adapter_type(key)
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == STEPS
    assert losses[-1] < losses[0] - 0.05, [round(x, 3) for x in losses]

    manifest = json.loads((out / "manifest.json").read_text())
    metrics = manifest["metrics"]
    groups = metrics["params_by_group"]
    assert sum(g["trainable"] for g in groups.values()) == metrics["params_trainable"]
    assert sum(g["total"] for g in groups.values()) == metrics["params_total"]
    if kind not in ("full", "freeze"):
        assert groups["adapter"]["trainable"] > 0

    # exactly the intended tensors train, and every one of them moved
    model = _fresh(key, tokenizer)
    before = {n: _dense(p).clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    intended = TYPES[key][2]
    assert trainable and trainable == {n for n in before if intended(n)}
    assert metrics["params_trainable"] == sum(model.get_parameter(n).numel() for n in trainable)
    weights = load_file(str(out / "checkpoints" / f"step-{STEPS:06d}" / "trainable.safetensors"))
    assert set(weights) == trainable
    moved = [n for n in trainable if not torch.equal(weights[n], before[n])]
    assert sorted(moved) == sorted(trainable)
    Strategy().load_trainable(model, weights)  # the trained model, rebuilt from its checkpoint

    # the saved result: a full model or an adapter (+ lmforge's note of its type)
    saved = out / "model"
    if kind in ("full", "freeze"):
        assert (saved / "model.safetensors").is_file()
        assert not (saved / "adapter_config.json").exists()
    else:
        assert json.loads((saved / "lmforge_adapter.json").read_text())["type"] == kind
        assert not (saved / "model.safetensors").exists()

    loaded, tok = load_for_inference(ModelConfig(path=str(out)))
    reloaded = dict(loaded.named_parameters())
    assert set(reloaded) <= set(before)
    for name, param in reloaded.items():
        if name not in trainable:
            assert torch.equal(_dense(param), before[name]), name  # frozen ones never moved
        elif kind != "p-tuning":
            assert torch.equal(param.detach(), weights[name]), name
    if kind == "p-tuning":  # PEFT saves the encoder's output as the virtual token embeddings
        assert {n for n in set(before) - set(reloaded)} == {n for n in trainable if "mlp_head" in n}
    else:
        assert set(reloaded) == set(before)
    ids, mask = _batch(tok)
    torch.testing.assert_close(
        _logits(loaded, ids, mask), _logits(model, ids, mask), atol=1e-5, rtol=0
    )
    # generation (what generate/evaluate do) runs on every type
    (result,) = generate(loaded, tok, ["hello"], GenerationConfig(max_new_tokens=3))
    assert 1 <= result["new_tokens"] <= 3


def _unmerged_vs_merged(trained, key: str, tmp_path: Path) -> tuple[float, float]:
    """(max |logit| difference between the merged model and the adapter on its own base, the
    same against the adapter on the original fp32 base)."""
    out = trained(key)
    merged_dir = tmp_path / "merged"
    assert main(["export", "merge", f"adapter={out}", f"output_dir={merged_dir}"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir / "model"))
    assert not any(is_4bit(p) for p in merged.parameters())
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    unmerged, tok = load_for_inference(ModelConfig(path=str(out)))
    ids, mask = _batch(tok)
    merged_logits = _logits(merged, ids, mask)
    diff = (merged_logits - _logits(unmerged, ids, mask)).abs().max().item()
    if adapter_type(key) != "qlora":
        return diff, diff
    from peft import PeftModel

    fp32_base = AutoModelForCausalLM.from_pretrained(str(out / "base"))
    on_fp32 = PeftModel.from_pretrained(fp32_base, str(out / "model"))
    return diff, (merged_logits - _logits(on_fp32, ids, mask)).abs().max().item()


@pytest.mark.parametrize("key", ["lora", "ia3", "qlora", "qlora-torchao"])
def test_merge_gives_the_adapters_outputs(key, trained, tmp_path, capsys) -> None:
    diff, versus_fp32 = _unmerged_vs_merged(trained, key, tmp_path)
    line = f"{key}: merged vs unmerged max |logit diff| {diff:.2e}"
    if versus_fp32 != diff:
        line += f" (vs the adapter on the unquantised fp32 base: {versus_fp32:.2e})"
    with capsys.disabled():  # the figure docs/finetuning.md quotes
        print(f"\n{line}")
    assert diff < 1e-4
    if adapter_type(key) == "qlora":  # merged into the dequantised base, not the original one
        assert versus_fp32 > 100 * diff


@pytest.mark.parametrize("key", ["prefix", "prompt", "p-tuning"])
def test_prompt_learning_adapters_refuse_to_merge(key, trained, tmp_path, capsys) -> None:
    out = trained(key)
    code = main(["export", "merge", f"adapter={out}", f"output_dir={tmp_path / 'merged'}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"a {key} adapter cannot be merged" in err and "Serve it with the adapter" in err
    assert not (tmp_path / "merged").exists()


class Killed(Exception):
    pass


def _kill_after(step: int):
    def on_step(done: int) -> None:
        if done == step:
            raise Killed(f"killed after step {done}")

    return on_step


def _saved_weights(out: Path) -> dict[str, torch.Tensor]:
    (file,) = sorted((out / "model").glob("*.safetensors"))
    return load_file(str(file))


@pytest.mark.parametrize("key", ["freeze", "qlora", "prompt"])
def test_killed_run_of_a_non_lora_type_resumes_exactly(
    key, demo_data, tokenizer_dir, tmp_path, capsys
) -> None:
    data = _rows(demo_data, tmp_path, n=12)  # 3 steps per epoch of batch 4, shuffled
    extra = ["train.batch_size=4", "train.save_every=2", "train.shuffle=true"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(_config(key, data, tokenizer_dir, straight, extra))
    with pytest.raises(Killed):
        run(_config(key, data, tokenizer_dir, resumed, extra), on_step=_kill_after(5))
    capsys.readouterr()
    seen: list[int] = []
    run(_config(key, data, tokenizer_dir, resumed, extra), on_step=seen.append)
    assert seen == [5, 6, 7, 8] and "resuming from" in capsys.readouterr().out
    a, b = _saved_weights(straight), _saved_weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
