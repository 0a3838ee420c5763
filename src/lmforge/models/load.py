"""Loading and saving models and tokenizers in the Hugging Face layout (safetensors only).

A model source is a preset (random weights), a local model folder, or an lmforge run directory
(whose ``model/`` subfolder is used). Nothing is fetched from a hub: paths must exist locally.
"""

from __future__ import annotations

import json
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


def resolve_dir(path: str | Path, role: str = "model") -> Path:
    """A folder the Hugging Face loaders can read: ``path`` itself, or a run's artifact folder."""
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


def build_model(cfg: ModelConfig, tokenizer, seed: int = 0) -> torch.nn.Module:
    """A causal LM from a preset (random init, seeded) or a local folder, in fp32."""
    from transformers import AutoModelForCausalLM

    if cfg.preset:
        from lmforge.models.presets import preset_config

        config = preset_config(
            cfg.preset,
            len(tokenizer),
            cfg.overrides,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        return model
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
    model = AutoModelForCausalLM.from_pretrained(
        str(folder),
        dtype=torch.float32,
        use_safetensors=True,
        local_files_only=True,
        trust_remote_code=cfg.trust_remote_code,
    )
    if cfg.overrides:
        raise ConfigError("model.overrides applies to presets only; edit the folder's config")
    return model


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
    model = build_model(
        ModelConfig(path=str(base_dir), trust_remote_code=cfg.trust_remote_code), tokenizer
    )
    if adapter_dir is not None:
        from lmforge.models.adapters import load_adapter

        model, notes = load_adapter(model, adapter_dir, torch.device(device), dequantized)
        for note in notes:
            print(f"lmforge: {note}")
    model.to(device).eval()
    return model, tokenizer


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
