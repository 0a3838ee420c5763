"""Every ``adapter.type``: what trains, how it is saved, loaded for inference and merged.

==========  ================================================  ==============  ============
type        trains                                            rows            saved as
==========  ================================================  ==============  ============
full        every weight                                      packed          full model
freeze      the last ``train_layers`` decoder layers and the   packed          full model
            ``train_modules`` (e.g. lm_head, norm)
lora        PEFT LoRA (optionally DoRA, rsLoRA)               packed          adapter
qlora       LoRA on a 4-bit NF4 base (``models.quantize``)    packed          adapter
ia3         PEFT IA3 scaling vectors                          packed          adapter
prefix      PEFT prefix tuning (key/value prefixes per layer) padded          adapter
prompt      PEFT prompt tuning (virtual input embeddings)     padded          adapter
p-tuning    PEFT P-tuning (virtual embeddings from an MLP)    padded          adapter
==========  ================================================  ==============  ============

LoRA, QLoRA and IA3 merge into the base (``lmforge export merge``; a QLoRA base is dequantised
to fp32 first); prefix, prompt and P-tuning add virtual tokens that are no weight of the base, so
they cannot be merged and are served with the adapter. The prompt-learning types prepend
``num_virtual_tokens`` positions to every row, so they train on padded rows (one example per
row) instead of packed ones, and their loss goes through the PEFT model's forward
(``training.objectives.prompt``).

Adapters are saved in PEFT's layout plus ``lmforge_adapter.json`` (the type and, for QLoRA, how
the base was quantised, so inference and merging rebuild the same 4-bit base).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from lmforge.config.training import PROMPT_LEARNING, AdapterConfig
from lmforge.errors import ConfigError
from lmforge.models.quantize import (
    QuantSpec,
    dequantize_base,
    is_4bit,
    plan,
    quantize_base,
    require_backend,
)

ADAPTER_INFO = "lmforge_adapter.json"
PEFT_TYPES = ("lora", "qlora", "ia3", *PROMPT_LEARNING)  # saved as a PEFT adapter
MERGEABLE = ("lora", "qlora", "ia3")
TRAINING_STAGES_FOR_PROMPTS = ("sft",)  # virtual tokens learn a task; a pt block has many docs
# PEFT's peft_type -> adapter.type (for adapters saved without lmforge_adapter.json)
_FROM_PEFT = {
    "LORA": "lora",
    "IA3": "ia3",
    "PREFIX_TUNING": "prefix",
    "PROMPT_TUNING": "prompt",
    "P_TUNING": "p-tuning",
}


# ------------------------------------------------------------------------------ checks
def check_config(cfg: AdapterConfig, stage: str, packing: bool) -> list[str]:
    """Checks that need no model (raise ConfigError / MissingDependency); returns notes to print.

    Called before any data is read.
    """
    notes = []
    if cfg.type in PROMPT_LEARNING:
        if stage not in TRAINING_STAGES_FOR_PROMPTS:
            raise ConfigError(
                f"adapter.type={cfg.type} learns virtual tokens for a task: use it with stage "
                f"{'/'.join(TRAINING_STAGES_FOR_PROMPTS)}, not {stage}"
            )
        if packing:
            notes.append(
                f"adapter.type={cfg.type} prepends {cfg.num_virtual_tokens} virtual tokens to "
                "every row: training on padded rows, train.packing is not used"
            )
    if cfg.type == "qlora":
        require_backend(cfg.quant_backend)
    return notes


def check_fits(model: torch.nn.Module, cfg: AdapterConfig) -> None:
    """Checks against the built model (before anything is written): layers, module names,
    something to quantise. Raises ConfigError saying what exists."""
    if cfg.type == "freeze":
        _, layers = decoder_layers(model)
        if cfg.train_layers > len(layers):
            raise ConfigError(
                f"adapter.train_layers={cfg.train_layers} but the model has {len(layers)} "
                "decoder layers"
            )
        for pattern in cfg.train_modules:
            _matching_modules(model, pattern, "adapter.train_modules")
    if cfg.type in ("lora", "qlora"):
        lora_targets(model, cfg)
    if cfg.type == "ia3":
        ia3_targets(model, cfg)
    _modules_to_save(model, cfg)
    if cfg.type == "qlora":
        will, skipped = plan(model, quant_spec(cfg))
        if not will:
            why = f" ({skipped[0][1]})" if skipped else " (it has no nn.Linear layer)"
            raise ConfigError(
                f"adapter.type=qlora: nothing in {type(model).__name__} can be quantised to 4 "
                f"bits with {cfg.quant_backend}{why}; use adapter.type=lora"
            )


# ------------------------------------------------------------------------------ targets
# classification heads: new, so trained in full (PEFT's modules_to_save), never adapted
_CLASSIFIER_NAMES = ("classifier", "score")


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Leaf names of Linear layers (what LoRA can target), excluding the output head and the
    classification heads."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        in_classifier = any(part in _CLASSIFIER_NAMES for part in name.split("."))
        if isinstance(module, torch.nn.Linear) and module is not head and not in_classifier:
            names.add(leaf)
    return sorted(names)


def _has_module(model: torch.nn.Module, target: str) -> bool:
    return any(n == target or n.endswith("." + target) for n, _ in model.named_modules())


def lora_targets(model: torch.nn.Module, cfg: AdapterConfig) -> list[str]:
    """The module names LoRA adapts (all-linear or null: every Linear but the head); an unknown
    name is a ConfigError listing the linear layers there are."""
    available = linear_module_names(model)
    if cfg.target_modules in (None, "all-linear"):
        return available
    missing = [t for t in cfg.target_modules if not _has_module(model, t)]
    if missing:
        raise ConfigError(
            f"adapter.target_modules {missing} not found in the model; "
            f"linear modules here: {', '.join(available)} (or use all-linear)"
        )
    return list(cfg.target_modules)


def ia3_targets(model: torch.nn.Module, cfg: AdapterConfig) -> tuple[list[str], list[str]]:
    """(target modules, feed-forward modules) for IA3: the configured ones, else PEFT's choice
    for the architecture (llama: k_proj, v_proj, down_proj with down_proj feed-forward)."""
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
    )
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if cfg.target_modules is None:
        if model_type not in TARGETS:
            raise ConfigError(
                f"PEFT has no IA3 defaults for model type {model_type}: set "
                f"adapter.target_modules (linear modules here: "
                f"{', '.join(linear_module_names(model))})"
            )
        targets = list(TARGETS[model_type])
    elif cfg.target_modules == "all-linear":
        targets = linear_module_names(model)
    else:
        targets = lora_targets(model, cfg)  # same check: every name must exist
    if cfg.feedforward_modules is not None:
        feedforward = list(cfg.feedforward_modules)
    else:
        known = set(FEEDFORWARD.get(model_type, []))
        feedforward = [t for t in targets if t in known]
    return targets, feedforward


def _matching_modules(model: torch.nn.Module, pattern: str, key: str) -> list[torch.nn.Module]:
    """Modules whose full name is ``pattern``, ends with ``.pattern``, or fully matches it as a
    regular expression; none is a ConfigError naming modules that exist."""
    return [model.get_submodule(n) for n in _matching_names(model, pattern, key)]


def _matching_names(model: torch.nn.Module, pattern: str, key: str) -> list[str]:
    """The full names :func:`_matching_modules` selects."""
    try:
        regex = re.compile(pattern)
    except re.error:
        regex = None
    found = [
        n
        for n, _ in model.named_modules()
        if n and (n == pattern or n.endswith("." + pattern) or (regex and regex.fullmatch(n)))
    ]
    if not found:
        outer = [n for n, _ in model.named_modules() if n and not re.search(r"\.\d+(\.|$)", n)]
        raise ConfigError(
            f"{key}: '{pattern}' matches no module; names here include {', '.join(outer[:12])} "
            "and per-layer ones like model.layers.0.self_attn.q_proj (a regex must match the "
            "whole name)"
        )
    return found


def decoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """(name, list) of the model's stack of ``num_hidden_layers`` transformer blocks."""
    config = getattr(model, "config", None)
    n = getattr(config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return name, module
    raise ConfigError(
        f"adapter.train_layers: no list of {n} decoder layers found in {type(model).__name__}; "
        "use adapter.train_modules to name what trains"
    )


# ------------------------------------------------------------------------------ apply
class Applied(NamedTuple):
    model: torch.nn.Module  # ready to train: the PEFT model, or the model with frozen parts
    notes: list[str]  # what was done, for the user (layers quantised, modules trained)
    metrics: dict  # facts for the run manifest (QLoRA: the quantisation report)


@dataclass(frozen=True)
class Task:
    """What the adapter is wrapped for: PEFT's task type (CAUSAL_LM, SEQ_CLS, TOKEN_CLS,
    FEATURE_EXTRACTION; None: its generic model), which decides the head PEFT trains and saves
    in full (a new classifier) and how the adapter reloads; and tokens just added to the
    vocabulary, whose embedding (and output) rows train too (PEFT trainable tokens)."""

    peft_type: str | None = "CAUSAL_LM"
    new_token_ids: tuple[int, ...] = ()

    @property
    def classifies(self) -> bool:
        return self.peft_type in ("SEQ_CLS", "TOKEN_CLS")


def apply_adapter(
    model: torch.nn.Module,
    cfg: AdapterConfig,
    tokenizer,
    device: torch.device,
    task: Task | None = None,
) -> Applied:
    """``model`` made ready to train as ``cfg.type`` says.

    ``tokenizer`` is read for prompt tuning's text init; ``device`` (where training runs) only
    decides QLoRA's ``auto`` compute dtype. Seed torch first: LoRA's A and prompt
    embeddings are drawn at random.
    """
    return _APPLY[cfg.type](model, cfg, tokenizer, device, task or Task())


def _full(model, cfg, tokenizer, device, task):
    return Applied(model, [], {})


def _freeze(model, cfg, tokenizer, device, task):
    model.requires_grad_(False)
    if task.classifies:  # the new classification head always trains
        for name, module in model.named_children():
            if name in _CLASSIFIER_NAMES:
                module.requires_grad_(True)
    name, layers = decoder_layers(model)
    first = len(layers) - cfg.train_layers
    for layer in list(layers)[first:]:
        layer.requires_grad_(True)
    for pattern in cfg.train_modules:
        for module in _matching_modules(model, pattern, "adapter.train_modules"):
            module.requires_grad_(True)
    trained = f"{name}.{first}-{len(layers) - 1}" if cfg.train_layers else "no decoder layer"
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    note = f"freeze: training {trained}" + (
        f" and {', '.join(cfg.train_modules)}" if cfg.train_modules else ""
    )
    if tied and any(p in ("lm_head", "embed_tokens") for p in cfg.train_modules):
        note += " (the head is tied to the input embedding: both train)"
    return Applied(model, [note], {})


def _modules_to_save(model: torch.nn.Module, cfg: AdapterConfig) -> list[str] | None:
    """Full names of the ``modules_to_save`` entries (matched like ``train_modules``): PEFT
    takes any module whose name merely ends with an entry, so ``norm`` would also catch every
    ``input_layernorm``; full names make its match exact."""
    key = "adapter.modules_to_save"
    names = {n for p in cfg.modules_to_save for n in _matching_names(model, p, key)}
    return sorted(names) or None


def _lora_config(model, cfg: AdapterConfig, task: Task):
    from peft import LoraConfig

    from lmforge.models.vocab import trainable_token_indices

    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=lora_targets(model, cfg),
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
        modules_to_save=_modules_to_save(model, cfg),
        task_type=task.peft_type,
        trainable_token_indices=(
            trainable_token_indices(model, task.new_token_ids) if task.new_token_ids else None
        ),
    )


def _lora(model, cfg, tokenizer, device, task):
    from peft import get_peft_model

    return Applied(get_peft_model(model, _lora_config(model, cfg, task)), [], {})


def quant_spec(cfg: AdapterConfig) -> QuantSpec:
    return QuantSpec(cfg.quant_backend, cfg.quant_block_size, cfg.double_quant, cfg.compute_dtype)


def _qlora(model, cfg, tokenizer, device, task):
    from peft import get_peft_model

    # names read before the layers change class
    config = _lora_config(model, cfg, task)
    report = quantize_base(model, quant_spec(cfg), device)
    peft_model = get_peft_model(model, config)
    return Applied(peft_model, [report.summary()], {"quantization": report.to_dict()})


def _ia3(model, cfg, tokenizer, device, task):
    from peft import IA3Config, get_peft_model

    targets, feedforward = ia3_targets(model, cfg)
    config = IA3Config(
        target_modules=targets,
        feedforward_modules=feedforward,
        modules_to_save=_modules_to_save(model, cfg),
        task_type=task.peft_type,
    )
    note = f"ia3: scaling {', '.join(targets)} (feed-forward: {', '.join(feedforward) or 'none'})"
    return Applied(get_peft_model(model, config), [note], {})


def _prompt_learning(model, cfg, tokenizer, device, task):
    from peft import (
        PrefixTuningConfig,
        PromptEncoderConfig,
        PromptTuningConfig,
        PromptTuningInit,
        get_peft_model,
    )

    common = {"task_type": "CAUSAL_LM", "num_virtual_tokens": cfg.num_virtual_tokens}
    if cfg.type == "prefix":
        config = PrefixTuningConfig(**common)
    elif cfg.type == "p-tuning":
        hidden = cfg.encoder_hidden_size or model.config.hidden_size
        config = PromptEncoderConfig(
            **common, encoder_hidden_size=hidden, encoder_reparameterization_type="MLP"
        )
    elif cfg.prompt_init_text:
        # PEFT reads the tokenizer from its folder (tokenizer.name_or_path: where it was loaded)
        config = PromptTuningConfig(
            **common,
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=cfg.prompt_init_text,
            tokenizer_name_or_path=str(tokenizer.name_or_path),
        )
    else:
        config = PromptTuningConfig(**common, prompt_tuning_init=PromptTuningInit.RANDOM)
    return Applied(get_peft_model(model, config), [], {})


_APPLY: dict[str, Callable] = {
    "full": _full,
    "freeze": _freeze,
    "lora": _lora,
    "qlora": _qlora,
    "ia3": _ia3,
    "prefix": _prompt_learning,
    "prompt": _prompt_learning,
    "p-tuning": _prompt_learning,
}


def add_lora(model: torch.nn.Module, cfg: AdapterConfig, task: Task | None = None):
    """Wrap ``model`` with a PEFT LoRA adapter (``adapter.type=lora`` of :func:`apply_adapter`)."""
    return _lora(model, cfg, None, torch.device("cpu"), task or Task()).model


def is_prompt_learning(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a PEFT model whose active adapter adds virtual tokens."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def saves_adapter(adapter_type: str) -> bool:
    """Whether a run of this type saves a PEFT adapter (on a base) rather than a full model."""
    return adapter_type in PEFT_TYPES


def pads_rows(adapter_type: str) -> bool:
    """Whether this type trains on padded rows (one example each) instead of packed ones."""
    return adapter_type in PROMPT_LEARNING


# ------------------------------------------------------------------------------ saved adapters
def write_adapter_info(folder: Path, cfg: AdapterConfig) -> None:
    """``lmforge_adapter.json`` beside PEFT's files: the type, and a QLoRA base's quantisation."""
    info: dict = {"type": cfg.type}
    if cfg.type == "qlora":
        info["quantization"] = quant_spec(cfg).to_dict()
    (Path(folder) / ADAPTER_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")


def adapter_info(folder: Path) -> dict:
    """``{"type": ..., ["quantization": ...]}`` of a saved adapter; without lmforge's file the
    type is read from PEFT's ``peft_type``."""
    folder = Path(folder)
    if (folder / ADAPTER_INFO).is_file():
        return json.loads((folder / ADAPTER_INFO).read_text(encoding="utf-8"))
    peft_type = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    kind = _FROM_PEFT.get(str(peft_type.get("peft_type", "")).upper())
    return {"type": kind or str(peft_type.get("peft_type", "unknown")).lower()}


def load_adapter(
    base: torch.nn.Module, folder: Path, device: torch.device, dequantized: bool = False
) -> tuple[torch.nn.Module, list[str]]:
    """The PEFT model of the adapter in ``folder`` on ``base`` (an fp32 model), and notes.

    A QLoRA adapter gets the 4-bit base it was trained on (``base`` is quantised in place as
    recorded); ``dequantized`` then turns that base back into fp32 layers holding the same
    (rounded) values, which is what merging needs and what a CPU computes anyway.
    """
    from peft import PeftModel

    info = adapter_info(folder)
    notes = []
    if info["type"] == "qlora":
        spec = QuantSpec.from_dict(info.get("quantization", {}))
        report = quantize_base(base, spec, device)
        notes.append(report.summary())
        if dequantized:
            dequantize_base(base)
            notes.append("qlora: the 4-bit base was dequantised to fp32 (same values)")
    return PeftModel.from_pretrained(base, str(folder)), notes


def check_mergeable(folder: Path) -> str:
    """The adapter's type when it can be merged into its base; ConfigError otherwise."""
    kind = adapter_info(folder)["type"]
    if kind in PROMPT_LEARNING:
        raise ConfigError(
            f"a {kind} adapter cannot be merged: its virtual tokens are not weights of the base "
            "model. Serve it with the adapter instead (model.adapter=... in generate/evaluate)"
        )
    if kind not in MERGEABLE:
        raise ConfigError(f"lmforge does not know how to merge a {kind} adapter")
    return kind


def _check_in_place(model: torch.nn.Module) -> None:
    if is_prompt_learning(model):
        raise ConfigError("prefix/prompt/p-tuning adapters have nothing to merge into weights")
    if any(is_4bit(p) for p in model.parameters()):
        raise ConfigError(
            "merging into a 4-bit base would round the merged weights to 4 bits: merge a QLoRA "
            "adapter with lmforge export merge (the base is dequantised to fp32 first)"
        )


def merge_and_unload(model: torch.nn.Module) -> torch.nn.Module:
    """The plain transformers model with the adapter's update folded into its weights."""
    _check_in_place(model)
    return model.merge_and_unload()


def merge_in_place(model: torch.nn.Module) -> None:
    """Fold the adapter into the base weights, keeping the PEFT wrapper (undo: unmerge)."""
    _check_in_place(model)
    model.merge_adapter()


def unmerge_in_place(model: torch.nn.Module) -> None:
    """Take a merged adapter back out of the base weights (up to float rounding)."""
    _check_in_place(model)
    model.unmerge_adapter()
