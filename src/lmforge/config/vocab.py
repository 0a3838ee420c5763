"""The config of ``lmforge tokenizer extend``: add domain terms to a model's vocabulary."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmforge.config.base import RecipeConfig
from lmforge.config.groups import ModelConfig


class VocabExtendRecipe(RecipeConfig):
    output_dir: str = Field(
        "runs/vocab", description="run directory: model/ (weights + tokenizer), report.json"
    )
    model: ModelConfig = Field(
        default_factory=ModelConfig,
        description="model.path: the model to extend (its tokenizer unless model.tokenizer); "
        "model.tokenizer alone: extend a tokenizer without a model",
    )
    terms: list[str] = Field(
        default_factory=list, description="terms to add, e.g. [EBITDA, 市盈率]"
    )
    terms_file: str | None = Field(
        None, description="text file with one term per line (# starts a comment), added to terms"
    )
    init: Literal["mean", "random"] = Field(
        "mean",
        description="new embedding rows: mean of the term's old sub-token rows; random: the "
        "model's initializer_range (a baseline)",
    )
    seed: int = Field(0, description="seed for init=random")

    @model_validator(mode="after")
    def _source_and_terms(self):
        if self.model.preset:
            raise ValueError(
                "model.preset builds its vocabulary from the tokenizer: extend the tokenizer "
                "alone (model.tokenizer) and build the preset on the result"
            )
        if not (self.model.path or self.model.tokenizer):
            raise ValueError("set model.path (a model to extend) or model.tokenizer")
        if self.model.adapter:
            raise ValueError("model.adapter: merge the adapter first (lmforge export merge)")
        if not (self.terms or self.terms_file):
            raise ValueError("give the terms to add: terms: [...] or terms_file")
        return self
