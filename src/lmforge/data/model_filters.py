"""Filters that score documents with a model: perplexity under a small causal LM, and a quality
classifier (a Hugging Face sequence-classification folder or any Python function).

    - perplexity_filter: {model: runs/pt-clean, max_perplexity: 200}
    - classifier_filter: {model: runs/quality-clf, label: high, min_score: 0.5}
    - classifier_filter: {function: "my_pkg.scores:fasttext_quality", min_score: 0.3}

Models are loaded in ``setup()`` (once per worker) and never pickled; documents are scored in
batches of ``batch_size`` (a forward pass per batch, not per document), so ``run`` is overridden
instead of ``check``. Scores are stored in the document's metadata (``perplexity``,
``quality_score``) whether the document is kept or dropped, so thresholds can be tuned from the
exclusion file and the output without scoring again.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pydantic import Field, model_validator

from lmforge.config.base import Group
from lmforge.data.blocks import Block, ShardContext, register
from lmforge.data.document import Document
from lmforge.errors import ConfigError, UserError


def import_callable(spec: str, key: str = "function") -> Callable:
    """The object named by ``"package.module:attribute"`` (a user's scoring or translating code)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{key} '{spec}' must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{key} '{spec}': cannot import {module_name} ({exc})") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{key} '{spec}': {module_name} has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{key} '{spec}' is not callable")
    return obj


def batches(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    """Consecutive lists of ``size`` documents (the last one shorter)."""
    batch: list[Document] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class ModelBlock(Block):
    """A block holding models loaded in ``setup()``: attributes starting with ``_`` are loaded
    state and are left out when the block is pickled (sent to a worker)."""

    def __init__(self, params: Group | dict | None = None):
        super().__init__(params)
        if getattr(self.params, "function", None):
            import_callable(self.params.function)  # a typo fails before any work starts

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


# ---------------------------------------------------------------------------- perplexity_filter
class PerplexityParams(Group):
    model: str = Field(
        ..., description="causal LM trained by lmforge: a model folder or a run directory"
    )
    tokenizer: str | None = Field(
        None, description="tokenizer folder or run (default: the model's)"
    )
    max_perplexity: float | None = Field(
        None, gt=0, description="drop documents scoring above this (per-token perplexity)"
    )
    min_perplexity: float | None = Field(
        None,
        gt=0,
        description="drop documents scoring below this: repeated or boilerplate text is too easy",
    )
    max_tokens: int = Field(
        512, gt=1, description="score only the first tokens of a long document (speed)"
    )
    batch_size: int = Field(16, gt=0, description="documents scored in one forward pass")
    device: str = Field("auto", description="auto: the first CUDA GPU if visible, else cpu")

    @model_validator(mode="after")
    def _bounds(self):
        lo, hi = self.min_perplexity, self.max_perplexity
        if lo is not None and hi is not None and lo >= hi:
            raise ValueError(f"min_perplexity ({lo}) must be below max_perplexity ({hi})")
        return self


@register("perplexity_filter")
class PerplexityFilter(ModelBlock):
    """Drop documents a reference LM finds too surprising (``high_perplexity``) or, optionally,
    too predictable (``low_perplexity``). ``metadata["perplexity"]`` is the per-token perplexity
    of ``doc.content`` (its first ``max_tokens`` tokens), computed like ``lmforge evaluate``
    (:func:`lmforge.eval.perplexity.perplexity`: the first token is scored after BOS/EOS).

    The usual recipe (CCNet, Wenzek et al. 2020) is a small LM trained on clean in-domain text:
    web boilerplate, garbled encodings and keyword spam score high under it.
    """

    Params = PerplexityParams

    def setup(self) -> None:
        from lmforge.config.groups import ModelConfig
        from lmforge.models.load import load_for_inference, resolve_device

        p = self.params
        cfg = ModelConfig(path=p.model, tokenizer=p.tokenizer)
        self._model, self._tokenizer = load_for_inference(cfg, resolve_device(p.device))

    def score(self, texts: list[str]) -> list[float | None]:
        """Per-token perplexity of each text (None when the text has no tokens)."""
        from lmforge.eval.perplexity import perplexity

        if not hasattr(self, "_model"):
            self.setup()
        window = self.params.max_tokens
        texts = [truncate_tokens(self._tokenizer, t, window) for t in texts]
        result = perplexity(self._model, self._tokenizer, texts, window, batch_size=len(texts))
        return [math.exp(nll / n) if n else None for nll, n in result.per_text]

    def run(self, docs: Iterable[Document], ctx: ShardContext) -> Iterator[Document]:
        p = self.params
        for batch in batches(docs, p.batch_size):
            for doc, ppl in zip(batch, self.score([d.content for d in batch]), strict=True):
                if ppl is None:  # nothing to score: another block's business
                    yield doc
                    continue
                doc.metadata["perplexity"] = round(ppl, 4)
                if p.max_perplexity is not None and ppl > p.max_perplexity:
                    ctx.drop(doc, "high_perplexity", {"perplexity": round(ppl, 4)})
                elif p.min_perplexity is not None and ppl < p.min_perplexity:
                    ctx.drop(doc, "low_perplexity", {"perplexity": round(ppl, 4)})
                else:
                    yield doc


def truncate_tokens(tokenizer, text: str, max_tokens: int) -> str:
    """``text`` cut after its first ``max_tokens`` tokens (at the character where they end)."""
    if len(text.encode("utf-8")) <= max_tokens:  # a token covers at least one byte
        return text
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    if len(offsets) <= max_tokens:
        return text
    return text[: offsets[max_tokens - 1][1]]


# ---------------------------------------------------------------------------- classifier_filter
class ClassifierParams(Group):
    model: str | None = Field(
        None,
        description="Hugging Face sequence-classification folder"
        " (AutoModelForSequenceClassification) or a run directory holding one",
    )
    function: str | None = Field(
        None,
        description="'package.module:callable' taking a list of texts, returning one score each"
        " (a float, or a {label: score} dict picked by `label`)",
    )
    label: str | int | None = Field(
        None,
        description="the class whose probability is the score (name or index); default: the"
        " single output of a regression head, or class 1 of a binary classifier",
    )
    min_score: float | None = Field(None, description="drop documents scoring below this")
    max_score: float | None = Field(
        None, description="drop documents scoring above this (e.g. a toxicity classifier)"
    )
    score_key: str = Field("quality_score", description="metadata key the score is stored under")
    max_length: int = Field(512, gt=0, description="tokens read per document (truncated)")
    batch_size: int = Field(32, gt=0, description="documents classified in one forward pass")
    device: str = Field("auto", description="auto: the first CUDA GPU if visible, else cpu")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.model is None) == (self.function is None):
            raise ValueError("set exactly one of model (a classifier folder) or function")
        return self


@register("classifier_filter")
class ClassifierFilter(ModelBlock):
    """Keep documents whose classifier score lies within ``[min_score, max_score]``.

    With ``model``, the score is the softmax probability of ``label`` (or the raw output of a
    one-output regression head). With ``function``, it is whatever the function returns, so any
    scorer (fastText, KenLM, an API client) plugs in without a wrapper class.
    Drops carry reason ``low_score`` / ``high_score`` with the score in the detail.
    """

    Params = ClassifierParams

    def setup(self) -> None:
        p = self.params
        if p.function:
            self._fn = import_callable(p.function)
            return
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from lmforge.models.load import resolve_device, resolve_dir

        folder = resolve_dir(p.model, "classifier_filter model")
        if not (folder / "config.json").is_file():
            raise UserError(f"{folder} has no config.json: not a Hugging Face model folder")
        self._tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            str(folder), local_files_only=True
        )
        self._model = model.to(resolve_device(p.device)).eval()
        self._column = class_index(model.config, p.label)

    def score(self, texts: list[str]) -> list[float]:
        """One score per text."""
        if not hasattr(self, "_fn") and not hasattr(self, "_model"):
            self.setup()
        if self.params.function:
            return self._scores_from_function(texts)
        return self._scores_from_model(texts)

    def _scores_from_function(self, texts: list[str]) -> list[float]:
        out = list(self._fn(texts))
        if len(out) != len(texts):
            raise UserError(
                f"{self.params.function} returned {len(out)} scores for {len(texts)} texts"
            )
        label = self.params.label
        if out and isinstance(out[0], dict):
            if label is None:
                raise ConfigError(f"{self.params.function} returns dicts: set label to pick one")
            return [float(s[label]) for s in out]
        return [float(s) for s in out]

    def _scores_from_model(self, texts: list[str]) -> list[float]:
        import torch

        model = self._model
        limit = getattr(model.config, "max_position_embeddings", None) or self.params.max_length
        enc = self._tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=min(self.params.max_length, limit),
            return_tensors="pt",
        )
        device = next(model.parameters()).device
        with torch.no_grad():
            logits = model(**{k: v.to(device) for k, v in enc.items()}).logits.float()
        if logits.shape[-1] == 1:  # regression head: the output is the score
            return logits[:, 0].tolist()
        return logits.softmax(-1)[:, self._column].tolist()

    def run(self, docs: Iterable[Document], ctx: ShardContext) -> Iterator[Document]:
        p = self.params
        for batch in batches(docs, p.batch_size):
            for doc, score in zip(batch, self.score([d.content for d in batch]), strict=True):
                doc.metadata[p.score_key] = round(score, 6)
                if p.min_score is not None and score < p.min_score:
                    ctx.drop(doc, "low_score", {p.score_key: round(score, 6)})
                elif p.max_score is not None and score > p.max_score:
                    ctx.drop(doc, "high_score", {p.score_key: round(score, 6)})
                else:
                    yield doc


def class_index(config: Any, label: str | int | None) -> int:
    """Column of ``label`` in the classifier's logits (names come from ``config.id2label``)."""
    num = config.num_labels
    if label is None:
        if num <= 2:
            return num - 1  # regression: 0; binary: class 1, "positive"/"high quality"
        raise ConfigError(
            f"the classifier has {num} classes ({', '.join(map(str, config.id2label.values()))}):"
            " set label to the one whose probability is the score"
        )
    if isinstance(label, int) or str(label).isdigit():
        index = int(label)
        if not 0 <= index < num:
            raise ConfigError(f"label {label} is out of range: the classifier has {num} classes")
        return index
    names = {str(name): int(i) for i, name in config.id2label.items()}
    if label not in names:
        raise ConfigError(f"label '{label}' is not a class of the classifier: {', '.join(names)}")
    return names[label]
