"""Session-scoped fixtures: data, a tokenizer and a tiny model built once and shared.

Everything is generated inside the project; nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(relative: str) -> Path:
    """A path in ../shared/data; skip when absent, except under CI=true where it must exist."""
    path = SHARED_DATA / relative
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {path} is missing")
        pytest.skip(f"{path} not present (only beside the project checkout)")
    return path


@pytest.fixture(scope="session", autouse=True)
def _cache_in_tmp(tmp_path_factory):
    """The tokenised-data cache (``LMFORGE_CACHE``) goes to a session temp folder, never ~/.cache;
    subprocesses inherit it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMFORGE_CACHE", str(tmp_path_factory.mktemp("lmforge-cache")))
        yield


@pytest.fixture(scope="session")
def shared():
    """``shared("llamafactory-demo/x.json")`` -> path in ../shared/data (skips when absent)."""
    return shared_data


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> dict[str, Path]:
    """corpus.jsonl (600 docs, en+zh) and tasks.jsonl (60 per task) from the synthetic generator."""
    from lmforge.data.synthetic import write_demo_data

    return write_demo_data(tmp_path_factory.mktemp("data"), n_docs=600, n_per_task=60, seed=0)


@pytest.fixture(scope="session")
def tokenizer_dir(demo_data, tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer run (vocab 1000) trained on the synthetic corpus."""
    from lmforge.config import load_config
    from lmforge.config.recipes import TokenizerRecipe
    from lmforge.recipes.tokenizer import run

    out = tmp_path_factory.mktemp("tok")
    cfg = load_config(
        TokenizerRecipe,
        None,
        [f"data.files=[{demo_data['corpus']}]", "tokenizer.vocab_size=1000", f"output_dir={out}"],
    )
    run(cfg)
    return out / "tokenizer"


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from lmforge.models.load import load_tokenizer

    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer, tmp_path_factory) -> Path:
    """A tiny-llama (hidden 128, 2 layers) with random weights saved in the HF layout."""
    from lmforge.config.groups import ModelConfig
    from lmforge.models.load import build_model, save_pretrained

    model = build_model(ModelConfig(preset="tiny-llama", tokenizer="unused"), tokenizer, seed=0)
    return save_pretrained(model, tokenizer, tmp_path_factory.mktemp("tiny") / "model")
