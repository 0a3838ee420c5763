"""The parts of ``adapter.type`` around training: bad combinations are config errors before any
work, the 4-bit plan and its report, parameter counts per group, FLOPs of virtual tokens,
in-place merge and unmerge, PEFT's per-architecture IA3 choice, prompt init from text."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.config.groups import ModelConfig
from lmforge.config.recipes import TrainRecipe
from lmforge.config.training import AdapterConfig
from lmforge.errors import ConfigError, MissingDependency
from lmforge.models.adapters import (
    apply_adapter,
    check_fits,
    ia3_targets,
    merge_in_place,
    unmerge_in_place,
)
from lmforge.models.load import build_model
from lmforge.models.params import parameter_report
from lmforge.models.quantize import QuantSpec, plan, require_backend, torchao_scaler_block
from lmforge.training.collate import Piece, collate
from lmforge.training.flops import FlopsProfile
from lmforge.training.objectives.prompt import padding_mask

CPU = torch.device("cpu")
MINIMAL = ["model.preset=tiny-llama", "model.tokenizer=runs/tok", "data.train=[train.jsonl]"]


def _config_error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(TrainRecipe, None, MINIMAL + overrides)
    return str(info.value)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["adapter.type=lora", "adapter.num_virtual_tokens=5"], "does not read"),
        (["adapter.type=full", "adapter.rank=4"], "adapter.rank (read: rank by lora/qlora)"),
        (["adapter.type=prompt", "adapter.encoder_hidden_size=8"], "encoder_hidden_size"),
        (["adapter.type=freeze"], "adapter.type=freeze trains nothing"),
        (
            ["adapter.type=qlora", "adapter.quant_backend=torchao", "adapter.use_dora=true"],
            "use adapter.quant_backend=bitsandbytes with adapter.use_dora",
        ),
        (
            ["adapter.type=qlora", "adapter.quant_backend=torchao", "adapter.double_quant=false"],
            "torchao NF4 always quantises the block scales",
        ),
        (
            [
                "adapter.type=ia3",
                "adapter.target_modules=[k_proj]",
                "adapter.feedforward_modules=[down_proj]",
            ],
            "must also be in adapter.target_modules",
        ),
        (["adapter.type=qlora", "adapter.quant_block_size=100"], "adapter.quant_block_size"),
    ],
)
def test_bad_combinations_are_config_errors(overrides, expected) -> None:
    assert expected in _config_error(overrides)


def test_a_resolved_config_with_every_key_still_validates() -> None:
    """torchrun children and manifests hold every key at its default: not an error."""
    full = AdapterConfig(type="prompt").model_dump()
    assert AdapterConfig.model_validate(full).type == "prompt"


# ----------------------------------------------------------------- errors before any work
def _cli(capsys, tokenizer_dir, demo_data, out, extra: list[str]) -> str:
    code = main(
        [
            "train",
            "model.preset=tiny-llama",
            f"model.tokenizer={tokenizer_dir}",
            f"data.train=[{demo_data['tasks']}]",
            "data.max_length=64",
            "train.max_steps=1",
            "track.progress=false",
            "track.tensorboard=off",
            f"output_dir={out}",
            *extra,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert not (out / "model").exists() and not (out / "base").exists()
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"
    return err


def test_prompt_learning_needs_stage_sft(capsys, tokenizer_dir, demo_data, tmp_path) -> None:
    err = _cli(capsys, tokenizer_dir, demo_data, tmp_path, ["stage=pt", "adapter.type=prefix"])
    assert "use it with stage sft, not pt" in err
    assert not (tmp_path / "rejects.jsonl").exists()  # refused before any data was read


def test_freeze_more_layers_than_the_model_has(capsys, tokenizer_dir, demo_data, tmp_path):
    extra = ["adapter.type=freeze", "adapter.train_layers=5"]
    err = _cli(capsys, tokenizer_dir, demo_data, tmp_path, extra)
    assert "adapter.train_layers=5 but the model has 2 decoder layers" in err


def test_freeze_unknown_module_lists_names(capsys, tokenizer_dir, demo_data, tmp_path) -> None:
    extra = ["adapter.type=freeze", "adapter.train_modules=[classifier]"]
    err = _cli(capsys, tokenizer_dir, demo_data, tmp_path, extra)
    assert "'classifier' matches no module" in err and "lm_head" in err and "model.norm" in err


def test_missing_4bit_package_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(MissingDependency) as info:
        require_backend("bitsandbytes")
    assert "pip install 'lmforge[qlora]'" in str(info.value)


# ----------------------------------------------------------------- 4-bit plan
def test_torchao_scale_groups_fit_every_tiny_llama_layer(tokenizer) -> None:
    assert [torchao_scaler_block(n) for n in (256, 1024, 128, 704)] == [256, 256, 128, 176]
    model = build_model(ModelConfig(preset="tiny-llama", tokenizer="x"), tokenizer)
    will, skipped = plan(model, QuantSpec(backend="torchao"))
    assert len(will) == 14 and not skipped  # 7 linear layers x 2, the tied head excluded


def test_qlora_with_nothing_quantisable_is_a_config_error(tokenizer) -> None:
    odd = {"hidden_size": 96, "intermediate_size": 200}  # no weight count divides by 4096
    model = build_model(ModelConfig(preset="tiny-llama", tokenizer="x", overrides=odd), tokenizer)
    cfg = AdapterConfig(type="qlora", quant_backend="torchao", quant_block_size=4096)
    with pytest.raises(ConfigError, match="nothing in LlamaForCausalLM can be quantised"):
        check_fits(model, cfg)
    _, skipped = plan(model, QuantSpec(backend="torchao", block_size=4096))
    assert skipped and "do not split into NF4 blocks of 4096" in skipped[0][1]


# ----------------------------------------------------------------- counts and FLOPs
def _tiny(tokenizer) -> torch.nn.Module:
    return build_model(ModelConfig(preset="tiny-llama", tokenizer="x"), tokenizer, seed=0)


def _with(tokenizer, **adapter) -> torch.nn.Module:
    torch.manual_seed(0)
    return apply_adapter(_tiny(tokenizer), AdapterConfig(**adapter), tokenizer, CPU).model


def test_parameter_report_groups_add_up_and_count_4bit_weights(tokenizer) -> None:
    full = parameter_report(_tiny(tokenizer))
    assert full["trainable"] == full["total"] == 497_280
    assert set(full["groups"]) == {"embeddings", "norm", "attention", "mlp"}  # head: tied
    lora = parameter_report(_with(tokenizer, type="lora", rank=4))
    qlora = parameter_report(_with(tokenizer, type="qlora", rank=4))
    assert lora == qlora  # a 4-bit weight counts as the weights it stands for
    assert lora["trainable"] == lora["groups"]["adapter"]["total"] == 18_688
    assert lora["total"] == full["total"] + lora["trainable"]


def test_flops_count_virtual_tokens(tokenizer) -> None:
    frozen = _tiny(tokenizer).requires_grad_(False)
    base = FlopsProfile.of(frozen)
    v, length, targets = 4, 50, 20
    prompt = FlopsProfile.of(_with(tokenizer, type="prompt", num_virtual_tokens=v))
    # prompt tuning: a 50-token row costs what 54 tokens would, the head still on 20 positions
    assert prompt.training_flops([length], targets) == base.training_flops([length + v], targets)
    prefix = FlopsProfile.of(_with(tokenizer, type="prefix", num_virtual_tokens=v))
    extra = 12 * base.n_layers * base.attention_width * length * v  # 50 queries x 4 more keys
    plain = base.training_flops([length], targets)
    assert prefix.training_flops([length], targets) == plain + extra
    ptuning = FlopsProfile.of(_with(tokenizer, type="p-tuning", num_virtual_tokens=v))
    assert ptuning.matmul_params == base.matmul_params  # its encoder MLP is not per token
    lora = FlopsProfile.of(_with(tokenizer, type="lora", rank=4))
    assert FlopsProfile.of(_with(tokenizer, type="qlora", rank=4)) == lora


def test_padding_mask_follows_collate() -> None:
    rows = [[Piece([5, 6, 7], [6, 7, -100])], [Piece([8], [-100])]]
    batch = collate(rows, pad_id=0)
    assert padding_mask(batch["position_ids"]).tolist() == [[1, 1, 1], [1, 0, 0]]


# ----------------------------------------------------------------- merging in place
@pytest.mark.parametrize("adapter", [{"type": "lora", "use_dora": True}, {"type": "ia3"}])
def test_merge_and_unmerge_in_place(adapter, tokenizer) -> None:
    model = _with(tokenizer, **adapter).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:  # move the adapter away from its identity init
                param.add_(0.05 * torch.randn_like(param))
    base_before = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    ids = torch.tensor([[5, 17, 42, 99, 250, 7]])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        merge_in_place(model)
        merged = model(input_ids=ids).logits
        changed = [n for n, p in model.named_parameters() if n in base_before]
        assert any(not torch.equal(model.get_parameter(n), base_before[n]) for n in changed)
        unmerge_in_place(model)
        unmerged = model(input_ids=ids).logits
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)
    torch.testing.assert_close(unmerged, adapted, atol=1e-5, rtol=0)
    for name, param in model.named_parameters():
        if name in base_before:
            torch.testing.assert_close(param, base_before[name], atol=1e-5, rtol=0)


def test_in_place_merge_refuses_a_4bit_base_and_prompts(tokenizer) -> None:
    with pytest.raises(ConfigError, match="lmforge export merge"):
        merge_in_place(_with(tokenizer, type="qlora", rank=4))
    with pytest.raises(ConfigError, match="nothing to merge"):
        merge_in_place(_with(tokenizer, type="prompt", num_virtual_tokens=2))


# ----------------------------------------------------------------- per-type details
def test_ia3_defaults_cover_llama_and_bert(tokenizer) -> None:
    assert ia3_targets(_tiny(tokenizer), AdapterConfig(type="ia3")) == (
        ["k_proj", "v_proj", "down_proj"],
        ["down_proj"],
    )
    bert = build_model(ModelConfig(preset="tiny-bert", tokenizer="x"), tokenizer)
    targets, feedforward = ia3_targets(bert, AdapterConfig(type="ia3"))
    assert targets == ["key", "value", "output.dense"] and feedforward == ["output.dense"]
    torch.manual_seed(0)
    model = apply_adapter(bert, AdapterConfig(type="ia3"), tokenizer, CPU).model
    scaled = {n.rsplit(".ia3_l", 1)[0].split("layer.0.")[-1] for n, _ in model.named_parameters()}
    assert {"attention.self.key", "attention.self.value", "output.dense"} <= scaled


def test_prompt_tuning_starts_from_the_init_text(tokenizer) -> None:
    text = "Answer the question."
    model = _with(tokenizer, type="prompt", num_virtual_tokens=6, prompt_init_text=text)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = (ids * 6)[:6]  # PEFT repeats or cuts the text to num_virtual_tokens
    words = model.get_input_embeddings().weight[torch.tensor(ids)]
    prompt = model.prompt_encoder["default"].embedding.weight
    torch.testing.assert_close(prompt, words)


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_perplexity_of_a_prompt_adapter_scores_the_real_tokens(kind, tokenizer) -> None:
    """eval.perplexity skips the virtual positions: its NLL is the training loss of the text."""
    from lmforge.eval.perplexity import perplexity, prefix_token_id
    from lmforge.training.objectives.prompt import prompt_learning_loss

    model = _with(tokenizer, type=kind, num_virtual_tokens=3).eval()
    texts = ["The number 42 is written forty-two.", "Good morning"]
    result = perplexity(model, tokenizer, texts, window=64, batch_size=2)  # padded together
    expected = 0.0
    for text in texts:
        seq = [prefix_token_id(tokenizer)] + tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([seq[:-1]])
        with torch.no_grad():
            loss, _ = prompt_learning_loss(
                model, ids, torch.arange(len(seq) - 1)[None], torch.tensor([seq[1:]])
            )
        expected += float(loss)
    assert result.nll == pytest.approx(expected, rel=1e-5)
