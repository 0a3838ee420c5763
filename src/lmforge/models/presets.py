"""Named architectures built with random weights: how tests and the demo get a model offline.

Sizes are chosen for a 2-core CPU: ``tiny-*`` trains in seconds (tests, demo), ``small-llama``
(~14M parameters with an 8k vocabulary) is the benchmark model.
"""

from __future__ import annotations

from typing import Any

from lmforge.errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    "tiny-llama": {
        "family": "llama",
        "hidden_size": 128,
        "intermediate_size": 352,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
    },
    "small-llama": {
        "family": "llama",
        "hidden_size": 384,
        "intermediate_size": 1024,
        "num_hidden_layers": 6,
        "num_attention_heads": 6,
        "num_key_value_heads": 6,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
    },
    "tiny-bert": {
        "family": "bert",
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 512,
    },
    # permutation LM (objective.type=plm): XLNet's two-stream relative attention
    "tiny-xlnet": {
        "family": "xlnet",
        "d_model": 128,
        "d_inner": 352,
        "n_layer": 2,
        "n_head": 4,
    },
}


_CONFIGS = {"llama": "LlamaConfig", "bert": "BertConfig", "xlnet": "XLNetConfig"}


def preset_config(name: str, vocab_size: int, overrides: dict | None = None, **token_ids):
    """A transformers config for preset ``name`` with the tokenizer's vocab size and ids."""
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"model.preset '{name}' is unknown{hint} (known: {', '.join(PRESETS)})")
    fields = {**PRESETS[name], **(overrides or {})}
    family = fields.pop("family")
    ids = {k: v for k, v in token_ids.items() if v is not None}
    import transformers

    cls = getattr(transformers, _CONFIGS[family])
    try:
        return cls(vocab_size=vocab_size, **fields, **ids)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.overrides: {exc}") from None
