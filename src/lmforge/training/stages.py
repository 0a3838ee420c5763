"""Which model head, data encoder and objective each training stage uses.

One loop trains every stage; a stage differs by what this module picks for it::

    plan = plan_stage(cfg, tokenizer)        # before any data or weights are loaded
    train, val = load_stage_data(plan.encoder, cfg.data, tokenizer, ...)
    model = build_model(cfg.model, tokenizer, head=plan.head, config_updates=plan.model_config)
    train_loop(model, ..., LoopOptions(objective=plan.objective, ...))

| stage / objective | head | units | loss |
| --- | --- | --- | --- |
| pt, clm | causal LM | blocks of documents | next token |
| pt, mlm | masked LM | blocks of documents | original token at ~15% masked positions |
| pt, plm | XLNet LM | one document piece per row | tokens predicted in a random order |
| pt, contrastive | bare model | [anchor, positive(, negative)] | in-batch InfoNCE |
| sft | causal LM | conversations | assistant tokens |
| cls, sequence | sequence classifier | one text | its class |
| cls, token | token classifier | words | one tag per word |
| rm | scalar score (1 class) | [chosen, rejected] | Bradley-Terry on the two scores |
| dpo | causal LM | [chosen, rejected] | preference.loss on answer log-probs |
| kto | causal LM | [answer, another row's answer] | KTO (the second piece: the KL estimate) |
| grpo | causal LM | [prompt, reference] -> G answers | clipped surrogate x advantage + KL |
| ppo | causal LM + value head | [prompt, reference] -> 1 answer | clipped surrogate (GAE) + value |
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch

from lmforge.data.readers import Rejects, iter_records
from lmforge.data.schema import RowError
from lmforge.errors import ConfigError
from lmforge.models.load import label_config, model_type
from lmforge.training.data import Encoder, as_encoder
from lmforge.training.encoders import (
    LabelFields,
    PairFields,
    PairSettings,
    contrastive_pieces,
    kto_pieces,
    masked_lm_pieces,
    preference_pieces,
    rl_prompt_pieces,
    row_labels,
    sequence_label_pieces,
    sorted_labels,
    token_label_pieces,
)
from lmforge.training.objectives.base import Objective, hf_model
from lmforge.training.objectives.causal import CausalLMLoss
from lmforge.training.objectives.contrastive import ContrastiveLoss
from lmforge.training.objectives.heads import (
    PackedHeadLoss,
    PaddedHFLoss,
    packed_head,
    pooled_position,
)
from lmforge.training.objectives.masked import Masker

REWARD_LABEL = "reward"
_ENCODERS = {"bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert"}


@dataclass
class StagePlan:
    name: str  # "pt/clm", "pt/mlm", "sft", "cls/sequence", ...
    head: str  # models.load.HEADS key
    peft_task: str | None  # PEFT task type of a LoRA adapter (None: PEFT's generic model)
    encoder: Encoder
    objective: Callable[[torch.nn.Module], Objective]
    model_config: dict = field(default_factory=dict)  # num_labels, id2label, ...
    labels: list[str] | None = None
    chat: bool = False  # conversations through the chat template (EOS check)
    # without varlen attention: padded rows with a mask (True) or the causal row layouts
    attention_mask: bool = True
    pack_rows: bool = False  # sft on models without varlen: rows of data.max_length
    # the loss depends on how a step is split into micro-batches (in-batch negatives)
    batch_size_matters: bool = False
    # (model, run folder, write) -> a file it saved: called after training, before the model
    # is saved (PPO: its value head comes off the model into a file of its own)
    finish: Callable[[torch.nn.Module, object, bool], object] | None = None


def plan_stage(cfg, tokenizer) -> StagePlan:
    """The plan for ``cfg`` (a ``TrainRecipe``); config errors are raised here, before work."""
    if cfg.stage == "sft":
        return StagePlan(
            "sft",
            "causal-lm",
            "CAUSAL_LM",
            as_encoder("sft"),
            CausalLMLoss,
            chat=True,
            attention_mask=False,
            pack_rows=True,
        )
    if cfg.stage == "cls":
        return _classification(cfg)
    if cfg.stage in ("rm", "dpo"):
        return _preference(cfg)
    if cfg.stage == "kto":
        return _kto(cfg)
    if cfg.stage in ("grpo", "ppo"):
        return _rollouts(cfg, tokenizer)
    kind = pt_objective(cfg.objective.type, model_type(cfg.model))
    if kind == "clm":
        return StagePlan(
            "pt/clm", "causal-lm", "CAUSAL_LM", as_encoder("pt"), CausalLMLoss, attention_mask=False
        )
    if kind == "mlm":
        return _masked_lm(cfg, tokenizer)
    if kind == "plm":
        from lmforge.training.objectives.permutation import plan_permutation_lm

        return plan_permutation_lm(cfg, tokenizer)
    return _contrastive(cfg)


def pt_objective(requested: str, model_type_name: str) -> str:
    if requested != "auto":
        if requested == "clm" and model_type_name in _ENCODERS:
            raise ConfigError(
                f"objective.type=clm needs a decoder; {model_type_name} is a bidirectional "
                "encoder: use objective.type=mlm (or contrastive)"
            )
        return requested
    if model_type_name in _ENCODERS:
        return "mlm"
    return "plm" if model_type_name == "xlnet" else "clm"


def head_objective(model: torch.nn.Module, head: str, **kwargs) -> Objective:
    """The packed head loss where the architecture has one (see ``objectives.heads``), else
    the model's own forward on padded rows."""
    if packed_head(hf_model(model), head) is not None:
        return PackedHeadLoss(model, head, **kwargs)
    return PaddedHFLoss(model, head, **kwargs)


def _masked_lm(cfg, tokenizer) -> StagePlan:
    if tokenizer.mask_token_id is None:
        raise ConfigError(
            "objective.type=mlm needs a tokenizer with a mask token (BERT's [MASK]): train one "
            "with lmforge tokenizer tokenizer.mask_token='[MASK]', or use an encoder's tokenizer"
        )
    o = cfg.objective
    masker = Masker(
        mask_id=tokenizer.mask_token_id,
        vocab_size=len(tokenizer),
        special_ids=tokenizer.all_special_ids,
        mask_prob=o.mask_prob,
        mask_token_frac=o.mask_token_frac,
        random_token_frac=o.random_token_frac,
        seed=cfg.train.seed,
    )

    def make(model: torch.nn.Module) -> Objective:
        objective = head_objective(model, "masked-lm")
        objective.preparer = masker
        return objective

    encoder = Encoder("mlm", masked_lm_pieces, settings={"specials": True}, needs_targets=False)
    return StagePlan("pt/mlm", "masked-lm", None, encoder, make)


def _contrastive(cfg) -> StagePlan:
    o = cfg.objective
    fields = PairFields(positive=o.positive_field, negative=o.negative_field)
    encoder = Encoder(
        "contrastive",
        partial(contrastive_pieces, fields=fields),
        settings={"positive": o.positive_field, "negative": o.negative_field},
        needs_targets=False,
    )

    def make(model: torch.nn.Module) -> Objective:
        if not _has_dropout(hf_model(model)):
            print(
                "lmforge: warning: the model has no dropout; unsupervised SimCSE rows (no "
                f"'{o.positive_field}') learn nothing without it (set e.g. "
                "model.overrides={attention_dropout: 0.1} on a preset)",
                file=sys.stderr,
            )
        return ContrastiveLoss(model, o.temperature, o.pooling)

    return StagePlan(
        "pt/contrastive", "base", "FEATURE_EXTRACTION", encoder, make, batch_size_matters=True
    )


def _preference(cfg) -> StagePlan:
    """rm: a one-class score head on each answer; dpo: the causal LM's answer log-probs. Both
    see a pair as one unit of two pieces in one packed forward (padded rows without varlen)."""
    from lmforge.training.objectives.preference import DPOLoss, RewardLoss

    p = cfg.preference
    reward = cfg.stage == "rm"
    pair = PairSettings(
        reward=reward,
        pool=pooled_position(model_type(cfg.model)),
        margin_field=p.margin_field if reward else None,
    )
    settings = {"reward": reward, "pool": pair.pool, "margin_field": pair.margin_field}
    encoder = Encoder(
        f"preference-{cfg.stage}", partial(preference_pieces, pair=pair), settings=settings
    )
    if reward:
        return StagePlan(
            "rm",
            "sequence-classification",
            "SEQ_CLS",
            encoder,
            partial(RewardLoss, margins=bool(p.margin_field)),
            # one "class": the scalar reward (saved beside an adapter, so that it reloads)
            model_config=label_config([REWARD_LABEL]),
            labels=[REWARD_LABEL],
            chat=True,
        )
    if p.margin_field:
        raise ConfigError("preference.margin_field is read by stage rm, not dpo")

    def make(model: torch.nn.Module) -> Objective:
        return DPOLoss(
            model,
            loss=p.loss,
            beta=p.beta,
            label_smoothing=p.label_smoothing,
            simpo_gamma=p.simpo_gamma,
            orpo_lambda=p.orpo_lambda,
            sft_weight=p.sft_weight,
        )

    return StagePlan(f"dpo/{p.loss}", "causal-lm", "CAUSAL_LM", encoder, make, chat=True)


def _kto(cfg) -> StagePlan:
    from lmforge.training.objectives.preference import KTOLoss

    p = cfg.preference
    if p.margin_field:
        raise ConfigError("preference.margin_field is read by stage rm, not kto")
    encoder = Encoder("kto", kto_pieces)

    def make(model: torch.nn.Module) -> Objective:
        return KTOLoss(model, p.beta, p.desirable_weight, p.undesirable_weight)

    return StagePlan("kto", "causal-lm", "CAUSAL_LM", encoder, make, chat=True)


def _rollouts(cfg, tokenizer) -> StagePlan:
    """Stages grpo and ppo: units are prompts; the objective's rollout phase turns them into
    scored answers. PPO's value head is saved beside the model (``finish``)."""
    rl = cfg.rl
    needs_reference = any(r.type == "exact_match" for r in rl.rewards)
    encoder = Encoder(
        "rl-prompts",
        partial(rl_prompt_pieces, needs_reference=needs_reference),
        settings={"needs_reference": needs_reference},
        needs_targets=False,
    )
    if cfg.stage == "grpo":
        from lmforge.rl.grpo import GRPOLoss as loss

        finish = None
    else:
        from lmforge.rl.ppo import PPOLoss as loss
        from lmforge.rl.ppo import detach_value_head as finish

        if rl.mini_batches > cfg.train.batch_size * cfg.train.grad_accum:
            raise ConfigError(
                f"rl.mini_batches={rl.mini_batches} splits each rollout of "
                f"{cfg.train.batch_size * cfg.train.grad_accum} answers (train.batch_size x "
                "train.grad_accum) into more parts than it has: lower it"
            )

    def make(model: torch.nn.Module) -> Objective:
        return loss(model, tokenizer, rl, seed=cfg.train.seed)

    return StagePlan(cfg.stage, "causal-lm", "CAUSAL_LM", encoder, make, chat=True, finish=finish)


def _has_dropout(model: torch.nn.Module) -> bool:
    return any(
        (isinstance(m, torch.nn.Dropout) and m.p > 0)
        or float(getattr(m, "attention_dropout", 0) or 0) > 0
        for m in model.modules()
    )


def label_counts(files: list[str], fields: LabelFields) -> Counter:
    """How often each label name occurs in the training files (unreadable rows skipped here:
    encoding rejects them with the reason)."""
    counts: Counter = Counter()
    for record in iter_records(files, Rejects()):
        try:
            counts.update(row_labels(record.row, fields))
        except RowError:
            continue
    return counts


def _classification(cfg) -> StagePlan:
    c = cfg.cls
    scan = LabelFields(task=c.task, label=c.label_field, tokens=c.tokens_field, tags=c.tags_field)
    counts = label_counts(cfg.data.train, scan)
    names = list(c.labels) if c.labels else sorted_labels(counts)
    if len(names) < 2:
        raise ConfigError(
            f"stage cls needs at least two classes; the training data has {names or 'none'} "
            f"under '{c.tags_field if c.task == 'token' else c.label_field}' "
            "(set cls.label_field, or cls.labels)"
        )
    if isinstance(c.class_weights, list) and len(c.class_weights) != len(names):
        raise ConfigError(
            f"cls.class_weights has {len(c.class_weights)} weights for {len(names)} classes "
            f"({', '.join(names)})"
        )
    weights = class_weights(c.class_weights, names, counts)
    pool = pooled_position(model_type(cfg.model))
    fields = LabelFields(
        task=c.task,
        label=c.label_field,
        tokens=c.tokens_field,
        tags=c.tags_field,
        names=names,
        pool=pool,
    )
    pieces = sequence_label_pieces if c.task == "sequence" else token_label_pieces
    encoder = Encoder(
        f"cls-{c.task}",
        partial(pieces, fields=fields),
        settings={"labels": names, "pool": pool, **c.model_dump(include=_FIELD_KEYS)},
    )
    head = f"{c.task}-classification"

    def make(model: torch.nn.Module) -> Objective:
        return head_objective(
            model,
            head,
            class_weights=weights,
            label_smoothing=c.label_smoothing,
            class_names=names,
        )

    return StagePlan(
        f"cls/{c.task}",
        head,
        "SEQ_CLS" if c.task == "sequence" else "TOKEN_CLS",
        encoder,
        make,
        model_config=label_config(names),
        labels=names,
    )


_FIELD_KEYS = {"task", "label_field", "tokens_field", "tags_field"}


def class_weights(setting, names: list[str], counts: Counter) -> list[float] | None:
    """None (unweighted), the given list, or balanced: ``n / (classes × count)`` per class (a
    class absent from the training data gets 1)."""
    if setting == "none":
        return None
    if isinstance(setting, list):
        return [float(w) for w in setting]
    total = sum(counts[n] for n in names)
    return [total / (len(names) * counts[n]) if counts[n] else 1.0 for n in names]
