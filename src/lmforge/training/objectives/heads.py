"""Losses that put a head on the hidden states of the target positions only.

Masked LM, token classification and sequence classification are one computation: run the
model's body over the packed row, keep the hidden states of the positions that have a target,
apply the model's own head there, and take the cross-entropy against the targets. What
differs is the head and where the targets sit:

- masked LM: the masked positions, target = the original token (the MLM head);
- token classification: the first sub-token of each word, target = its tag (dropout + the
  classifier);
- sequence classification: one position per example, target = the class. It is the position
  the architecture pools: the first token (``[CLS]``) for BERT-style encoders, the last token
  for decoders (``score`` on the last token, as transformers' ``...ForSequenceClassification``
  does).

Because each head is the model's own module applied as transformers applies it, a model
trained here is a plain ``AutoModelFor...`` that gives the same logits in any other tool; a test
checks the packed logits against transformers' own padded forward. Architectures without an
entry in :data:`_HEADS` train through :class:`PaddedHFLoss` (one padded row per example and the
model's own forward), which is always correct but pays for padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.training.collate import IGNORE
from lmforge.training.objectives.base import Objective, kept, output

Head = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]  # (hf model, (N, H)) -> (N, C)

_BERT_LIKE = {"bert", "roberta", "xlm-roberta", "camembert", "electra"}


def _bert_sequence_head(hf, h):  # BertForSequenceClassification: pooler(CLS) -> dropout -> linear
    base = hf.base_model
    pooled = base.pooler(h[:, None]) if getattr(base, "pooler", None) is not None else h
    return hf.classifier(hf.dropout(pooled))


def _roberta_sequence_head(hf, h):  # RobertaClassificationHead reads features[:, 0]
    return hf.classifier(h[:, None])


def _dropout_classifier(hf, h):  # ...ForTokenClassification of BERT-style encoders
    return hf.classifier(hf.dropout(h))


def _decoder_sequence_head(hf, h):  # ...ForSequenceClassification of decoders: score(last)
    return hf.score(h)


def _decoder_token_head(hf, h):
    return hf.score(hf.dropout(h))


_HEADS: dict[tuple[str, str], Head] = {
    ("bert", "sequence-classification"): _bert_sequence_head,
    ("roberta", "sequence-classification"): _roberta_sequence_head,
    ("bert", "token-classification"): _dropout_classifier,
    ("roberta", "token-classification"): _dropout_classifier,
    ("bert", "masked-lm"): lambda hf, h: hf.cls(h),
    ("roberta", "masked-lm"): lambda hf, h: hf.lm_head(h),
    ("decoder", "sequence-classification"): _decoder_sequence_head,
    ("decoder", "token-classification"): _decoder_token_head,
}


def _family(hf) -> str:
    model_type = getattr(hf.config, "model_type", "")
    if model_type in _BERT_LIKE:
        return "roberta" if model_type != "bert" and hasattr(hf, "roberta") else "bert"
    if hasattr(hf, "score") and hasattr(hf, "model"):  # GenericForSequenceClassification & co.
        return "decoder"
    return model_type


def packed_head(hf: torch.nn.Module, head: str) -> Head | None:
    """The head function for ``hf`` (a transformers model with ``head``), None if unknown."""
    return _HEADS.get((_family(hf), head))


def pooled_position(model_type: str) -> str:
    """Where sequence classification reads its example: ``first`` ([CLS]) or ``last``."""
    return "first" if model_type in _BERT_LIKE else "last"


class _ClassLoss(Objective):
    """Cross-entropy with optional class weights and label smoothing (summed over targets)."""

    def __init__(
        self,
        model: torch.nn.Module,
        head: str,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        class_names: Sequence[str] | None = None,
    ):
        super().__init__(model)
        self.name = head
        self.head_kind = head
        self.label_smoothing = label_smoothing
        self.class_names = list(class_names) if class_names is not None else None
        self.eval_predictions = True  # classification accuracy, masked-token accuracy
        self.perplexity = head == "masked-lm"
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)

    def _loss(self, logits: torch.Tensor, wanted: torch.Tensor, return_predictions: bool):
        loss = F.cross_entropy(
            logits.float(),
            wanted,
            weight=self.class_weights,
            label_smoothing=self.label_smoothing,
            reduction="sum",
        )
        return output(loss, logits, wanted, return_predictions)


class PackedHeadLoss(_ClassLoss):
    """The body over a packed row, the model's head on the target positions (see module doc)."""

    def __init__(self, model: torch.nn.Module, head: str, **kwargs):
        super().__init__(model, head, **kwargs)
        self.head_fn = packed_head(self.hf, head)
        if self.head_fn is None:
            raise ConfigError(
                f"no packed {head} head for model type '{self.hf.config.model_type}'; "
                "set train.packing=false (padded rows through the model's own forward)"
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        targets: torch.Tensor,
        unit_sizes: list[int] | None = None,
        return_predictions: bool = False,
        **kwargs,
    ) -> tuple:
        keep, wanted = kept(targets)
        hf = self.hf
        hidden = hf.base_model(
            input_ids=input_ids, position_ids=position_ids, use_cache=False, **kwargs
        ).last_hidden_state[keep]
        return self._loss(self.head_fn(hf, hidden), wanted, return_predictions)


class PaddedHFLoss(_ClassLoss):
    """Padded rows (one per example, ``attention_mask`` given) through the model's own forward.

    Sequence classification: the model pools where it always does, and each row's target is the
    one non-ignored entry of the row. Token classification and masked LM: the logits of the
    target positions.
    """

    padded_rows = True

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        targets: torch.Tensor,
        unit_sizes: list[int] | None = None,
        return_predictions: bool = False,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple:
        if attention_mask is None:
            raise RuntimeError("PaddedHFLoss needs padded rows with an attention_mask")
        keep, wanted = kept(targets)
        logits = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).logits
        if self.head_kind == "sequence-classification":
            has = keep.any(dim=1)
            logits = logits[has]
            wanted = targets[has].masked_fill(targets[has] == IGNORE, -1).max(dim=1).values
        else:
            logits = logits[keep]
        return self._loss(logits, wanted, return_predictions)
