"""Preference objectives: a reward model (stage ``rm``), direct preference optimisation and its
relatives (stage ``dpo``), and KTO on unpaired answers labelled good or bad (stage ``kto``,
:class:`KTOLoss`).

A unit is ``[chosen, rejected]``: the same prompt followed by each answer, two pieces of one
packed forward (see ``training.encoders.preference_pieces``). The loss is summed over pairs and
the loop divides by the pairs of the optimizer step.

**Reward model** (Bradley-Terry, as in InstructGPT): ``r`` is the model's scalar head on the
pooled position of each piece (the last token for decoders, ``[CLS]`` for encoders, see
``objectives.heads``) and the loss is ``-log σ(r_chosen - r_rejected - margin)``; ``margin`` is
the row's own (``preference.margin_field``, carried in the pieces' ``weight``) or 0.

**DPO family.** ``π`` and ``ref`` are the summed log-probabilities of an answer's tokens under the
policy and the reference (the policy as the stage started: the PEFT adapter disabled, or a
frozen copy for full and frozen-layer fine-tuning), ``|y|`` the answer's length, and
``h = (π_c - ref_c) - (π_r - ref_r)``:

| loss | per pair | paper |
| --- | --- | --- |
| sigmoid | ``-(1-ε) log σ(βh) - ε log σ(-βh)`` | DPO, Rafailov et al. 2023 (ε: cDPO) |
| robust | ``(-(1-ε) log σ(βh) + ε log σ(-βh)) / (1-2ε)`` | rDPO, Chowdhury et al. 2024 |
| hinge | ``max(0, 1 - βh)`` | SLiC-HF, Zhao et al. 2023 |
| ipo | ``(h̄ - 1/(2β))²`` with per-token averages ``h̄`` | IPO, Azar et al. 2023 |
| simpo | ``-log σ(β(π_c/|y_c| - π_r/|y_r|) - γ)`` (no reference) | SimPO, Meng et al. 2024 |
| orpo | ``-π_c/|y_c| - λ log σ(log odds_c - log odds_r)`` (no reference) | ORPO, Hong et al. 2024 |

``sft_weight`` adds ``w · (-π_c/|y_c|)`` to any of them (RPO, Pang et al. 2024; LLaMA-Factory's
``pref_ftx``, TRL's ``rpo_alpha``): DPO's margin can grow while both answers become less likely,
and the chosen answers' NLL holds them up.

The DPO-family rows are the definitions TRL's ``DPOTrainer`` and ``CPOTrainer`` implement
(``benchmarks/dpo_throughput.py`` matches TRL's sigmoid losses step by step within 1.2e-4).
ORPO's odds use per-token average log-probabilities (``log odds = p̄ - log(1 - exp(p̄))``) as
in the paper; its NLL term here is each chosen answer's mean token NLL, averaged over pairs,
where TRL's ``ORPOTrainer`` takes one token-weighted cross-entropy over the batch.

Logged per window and per evaluation: ``reward_chosen``/``reward_rejected`` (``β(π - ref)``;
``β·π/|y|`` without a reference; the scalar rewards for ``rm``), ``reward_margin``,
``logp_margin`` (``π_c - π_r``: the chosen-minus-rejected log-probability margin),
``logp_accuracy`` (the share of pairs whose chosen answer is the more likely one) and
``reward_accuracy`` (the share of pairs whose chosen reward is the higher one; an evaluation's
``eval_accuracy`` is the same figure).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.serve.generate import eval_mode
from lmforge.training.collate import Unit
from lmforge.training.objectives.base import Tallied, kept, output
from lmforge.training.objectives.heads import packed_head
from lmforge.training.objectives.logprobs import piece_ids, sequence_logprobs, target_logprobs

DPO_LOSSES = ("sigmoid", "robust", "hinge", "ipo", "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo")
_AVERAGED = ("ipo", "simpo", "orpo")  # per-token average log-probabilities


class _Pairs(Tallied):
    """What reward models and DPO share: one pair per unit, summed statistics for the logs."""

    perplexity = False
    eval_predictions = True  # pair accuracy: is the chosen answer's reward the higher one?

    def weight(self, unit: Unit) -> int:
        return 1  # one pair

    def _record(self, chosen: torch.Tensor, rejected: torch.Tensor, **more: torch.Tensor):
        self._add(
            reward_chosen=chosen,
            reward_rejected=rejected,
            reward_margin=chosen - rejected,
            reward_accuracy=(chosen > rejected).float(),
            **more,
        )

    def _result(self, loss, chosen, rejected, return_predictions: bool):
        scores = torch.stack([rejected, chosen], dim=1)  # class 1: the chosen answer
        gold = torch.ones(len(chosen), dtype=torch.long, device=chosen.device)
        return output(loss, scores, gold, return_predictions)


def _split_pairs(values: torch.Tensor, unit_sizes: list[int] | None) -> tuple:
    if unit_sizes is None or any(n != 2 for n in unit_sizes):
        raise RuntimeError(f"pairwise objectives need [chosen, rejected] units, got {unit_sizes}")
    return values[0::2], values[1::2]


class RewardLoss(_Pairs):
    """Bradley-Terry loss of a scalar head (see the module doc)."""

    name = "reward"

    def __init__(self, model: torch.nn.Module, margins: bool = False):
        super().__init__(model)
        self.margins = margins  # pieces carry their pair's margin as weight
        self.head_fn = packed_head(self.hf, "sequence-classification")
        if self.head_fn is None:
            raise ConfigError(
                f"stage rm has no packed reward head for model type "
                f"'{self.hf.config.model_type}' (decoders with a score head and BERT-style "
                "encoders have one)"
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        targets: torch.Tensor,
        unit_sizes: list[int] | None = None,
        return_predictions: bool = False,
        weights: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple:
        keep, _ = kept(targets)  # one position per piece: the pooled one
        hf = self.hf
        hidden = hf.base_model(
            input_ids=input_ids, position_ids=position_ids, use_cache=False, **kwargs
        ).last_hidden_state[keep]
        rewards = self.head_fn(hf, hidden).float().squeeze(-1)
        chosen, rejected = _split_pairs(rewards, unit_sizes)
        margin = 0.0
        if weights is not None:  # each piece's weight holds its pair's margin
            margin = _split_pairs(weights[keep].float(), unit_sizes)[0]
        elif self.margins:  # the batch holds weights only when one is not 1: all margins are
            margin = 1.0
        loss = -F.logsigmoid(chosen - rejected - margin).sum()
        self._record(chosen, rejected)
        return self._result(loss, chosen, rejected, return_predictions)


class Reference:
    """The policy as the stage started, for its log-probabilities (no gradient): the PEFT
    adapter switched off, or a frozen copy of the model for full and frozen-layer training. The
    copy is held in a list so that it is neither a registered submodule (DDP, FSDP and the
    optimizer never see it) nor saved with the model."""

    def __init__(self, model: torch.nn.Module, hf: torch.nn.Module):
        self.model, self.hf = model, hf
        self._frozen: list[torch.nn.Module] = []
        if not hasattr(model, "disable_adapter"):
            frozen = copy.deepcopy(hf).eval()
            frozen.requires_grad_(False)
            self._frozen.append(frozen)

    @torch.no_grad()
    def logprobs(self, *args, **kwargs) -> torch.Tensor:
        """Summed answer log-probabilities per piece (see ``sequence_logprobs``)."""
        return self._call(sequence_logprobs, *args, **kwargs)[0]

    @torch.no_grad()
    def token_logprobs(self, *args, **kwargs) -> torch.Tensor:
        """The log-probability of every target token (see ``target_logprobs``)."""
        return self._call(target_logprobs, *args, **kwargs)

    def _call(self, fn, *args, **kwargs):
        if self._frozen:
            return fn(self._frozen[0], self._frozen[0], *args, **kwargs)
        # eval mode: the base's own dropout (if any) must not make the reference random
        with self.model.disable_adapter(), eval_mode(self.model):
            return fn(self.model, self.hf, *args, **kwargs)


class DPOLoss(_Pairs):
    """The DPO family on packed pairs (see the module doc for each ``loss``)."""

    name = "dpo"

    def __init__(
        self,
        model: torch.nn.Module,
        loss: str = "sigmoid",
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        simpo_gamma: float = 0.5,
        orpo_lambda: float = 0.1,
        sft_weight: float = 0.0,
    ):
        super().__init__(model)
        if loss not in DPO_LOSSES:
            raise ConfigError(f"preference.loss={loss}: expected one of {', '.join(DPO_LOSSES)}")
        self.loss_type = loss
        self.name = f"dpo/{loss}"
        self.beta = beta
        self.label_smoothing = label_smoothing
        self.simpo_gamma = simpo_gamma
        self.orpo_lambda = orpo_lambda
        self.sft_weight = sft_weight
        self.reference_free = loss in REFERENCE_FREE
        self.reference = None if self.reference_free else Reference(model, self.hf)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        targets: torch.Tensor,
        unit_sizes: list[int] | None = None,
        return_predictions: bool = False,
        **kwargs,
    ) -> tuple:
        n = len(unit_sizes or [])
        pieces = 2 * n
        args = (input_ids, position_ids, targets, pieces)
        logp, length = sequence_logprobs(self.model, self.hf, *args, **kwargs)
        ref = None if self.reference is None else self.reference.logprobs(*args, **kwargs)
        loss, chosen, rejected = self._loss(logp, length, ref, unit_sizes)
        pi_c, pi_r = _split_pairs(logp, unit_sizes)
        self._record(chosen, rejected, logp_margin=pi_c - pi_r, logp_accuracy=(pi_c > pi_r).float())
        return self._result(loss, chosen, rejected, return_predictions)

    def _loss(self, logp, length, ref, unit_sizes):
        """(summed loss, chosen rewards, rejected rewards)."""
        beta, eps, kind = self.beta, self.label_smoothing, self.loss_type
        length = length.clamp(min=1)
        if kind in _AVERAGED:
            logp_avg = logp / length
            pi_c, pi_r = _split_pairs(logp_avg, unit_sizes)
        else:
            pi_c, pi_r = _split_pairs(logp, unit_sizes)
        if self.reference_free:
            ref_c = ref_r = torch.zeros_like(pi_c)
        else:
            ref_used = ref / length if kind in _AVERAGED else ref
            ref_c, ref_r = _split_pairs(ref_used, unit_sizes)
        h = (pi_c - ref_c) - (pi_r - ref_r)
        if kind == "sigmoid":
            losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
        elif kind == "robust":
            losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (
                1 - 2 * eps
            )
        elif kind == "hinge":
            losses = torch.relu(1 - beta * h)
        elif kind == "ipo":
            losses = (h - 1 / (2 * beta)) ** 2
        elif kind == "simpo":
            z = beta * h - self.simpo_gamma
            losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
        else:  # orpo: log odds of the average token probability, log(p / (1 - p))
            log_odds = (pi_c - pi_r) - (_log1mexp(pi_c) - _log1mexp(pi_r))
            losses = -pi_c - self.orpo_lambda * F.logsigmoid(log_odds)
        if self.sft_weight:  # RPO: the chosen answer's mean token NLL as well
            chosen_logp, chosen_len = _split_pairs(logp, unit_sizes)[0], length[0::2]
            losses = losses - self.sft_weight * chosen_logp / chosen_len
        return losses.sum(), beta * (pi_c - ref_c).detach(), beta * (pi_r - ref_r).detach()


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate at both ends (Mächler 2012)."""
    x = x.clamp(max=-1e-6)
    return torch.where(x > -0.693, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


class KTOLoss(_Pairs):
    """Kahneman-Tversky optimisation (Ethayarajh et al. 2024) on unpaired examples.

    A unit is ``[answer, mismatched answer]`` (``training.encoders.kto_pieces``); the first
    piece's weight is +1 for a desirable answer and -1 for an undesirable one. With
    ``r = π - ref`` of the answer and ``z = max(0, mean(π - ref))`` over the micro-batch's
    mismatched answers (a detached estimate of the KL between policy and reference), the loss
    is ``λ_D (1 - σ(β(r - z)))`` for desirable answers and ``λ_U (1 - σ(β(z - r)))`` for the
    others, as TRL's ``KTOTrainer`` computes it (TRL averages ``z`` over all processes; here it
    is per micro-batch). Logged: ``reward_desirable``/``reward_undesirable`` (``β r``) and ``kl``.
    """

    name = "kto"
    eval_predictions = False

    def __init__(
        self,
        model: torch.nn.Module,
        beta: float = 0.1,
        desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0,
    ):
        super().__init__(model)
        self.beta = beta
        self.desirable_weight = desirable_weight
        self.undesirable_weight = undesirable_weight
        self.reference = Reference(model, self.hf)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        targets: torch.Tensor,
        unit_sizes: list[int] | None = None,
        return_predictions: bool = False,
        weights: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple:
        args = (input_ids, position_ids, targets, 2 * len(unit_sizes or []))
        logp, _ = sequence_logprobs(self.model, self.hf, *args, **kwargs)
        ratio = logp - self.reference.logprobs(*args, **kwargs)
        own, mismatched = _split_pairs(ratio, unit_sizes)
        kl = mismatched.detach().mean().clamp(min=0)
        desirable = torch.ones_like(own, dtype=torch.bool)
        if weights is not None:  # -1 on the pieces of undesirable answers
            keep, _ = kept(targets)
            owner = piece_ids(targets, kwargs.get("cu_seq_lens_q"), kwargs.get("attention_mask"))
            label = torch.zeros_like(ratio).scatter(0, owner[keep], weights[keep].float())
            desirable = _split_pairs(label, unit_sizes)[0] > 0
        losses = torch.where(
            desirable,
            self.desirable_weight * (1 - torch.sigmoid(self.beta * (own - kl))),
            self.undesirable_weight * (1 - torch.sigmoid(self.beta * (kl - own))),
        )
        rewards = self.beta * own.detach()
        self._add(
            reward_desirable=rewards[desirable],
            reward_undesirable=rewards[~desirable],
            kl=kl[None],
        )
        return losses.sum(), len(own)
