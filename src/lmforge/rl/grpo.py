"""GRPO (Shao et al. 2024, DeepSeekMath): group-relative policy optimisation with programmatic
rewards and no value model.

It runs in the one training loop: the loop's units are prompts (``rl_prompt_pieces``: the
rendered prompt and the row's reference answer), and the objective's ``prepare`` hook, which
the loop calls once per optimizer step before the forward passes, is the *rollout phase*:

1. every prompt of the step is completed ``rl.group_size`` times by sampling from the current
   policy (eval mode, KV cache, SDPA attention; the random stream is seeded with
   ``(train.seed, step)`` and forked, so a resumed run and every process draw the same answers
   without disturbing the training RNG);
2. each answer gets the summed reward of ``rl.rewards`` (``rl.rewards`` module);
3. advantages are relative to the group: ``A = r - mean(group)``, divided by the group's
   standard deviation (``rl.scale_rewards``; a group whose answers all score the same teaches
   nothing and gets 0);
4. the step's units become one unit per prompt holding its answers as pieces (prompt + answer,
   the answer's tokens as targets), each piece carrying its advantage as its ``weight``.

The loss over the answer tokens is PPO's clipped surrogate ``-min(ρA, clip(ρ, 1±ε)A)`` with
``ρ = exp(log π - log π_old)`` (one optimisation pass per rollout, so ``ρ = 1`` and the gradient
is ``-A ∇log π``) plus ``β`` times the k3 estimate of the KL to the reference,
``exp(ref - log π) - (ref - log π) - 1``. The loop divides by the answer tokens of the whole
step (DAPO's token-level normalisation, TRL's ``loss_type="dapo"``), so gradient accumulation
and processes do not change the gradient.

Logged per window and evaluation: ``reward`` (mean), ``reward_std`` (within groups),
``exact_match`` (when an exact-match reward is configured), ``answer_tokens`` and ``kl``.
"""

from __future__ import annotations

import torch

from lmforge.rl.rewards import RewardScorer
from lmforge.rl.rollouts import prompts_and_references, sample_answers
from lmforge.training.collate import IGNORE, Piece, Unit, unit_targets
from lmforge.training.objectives.base import Tallied
from lmforge.training.objectives.logprobs import target_logprobs
from lmforge.training.objectives.preference import Reference


def group_advantages(rewards: torch.Tensor, scale: bool) -> torch.Tensor:
    """``(groups, G)`` rewards -> advantages relative to each group."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return torch.where(std > 0, centred / std.clamp(min=1e-6), torch.zeros_like(centred))


class GRPOLoss(Tallied):
    name = "grpo"
    perplexity = False

    def __init__(self, model: torch.nn.Module, tokenizer, rl, seed: int = 0):
        super().__init__(model)
        self.tokenizer = tokenizer
        self.rl = rl
        self.seed = seed
        self.reference = Reference(model, self.hf) if rl.beta > 0 else None
        self.preparer = self._rollouts
        self.scorer = RewardScorer(tokenizer, rl.rewards)

    def weight(self, unit: Unit) -> int:
        return unit_targets(unit)  # answer tokens (the advantage is the pieces' weight)

    def _rollouts(self, units: list[Unit], step: int) -> list[Unit]:
        training = self.training
        prompts, references = prompts_and_references(units, self.tokenizer)
        g = self.rl.group_size
        answers = sample_answers(
            self.model, self.tokenizer, prompts, g, self.rl, seed=self.seed * 1_000_003 + step
        )
        device = next(self.model.parameters()).device
        rewards, stats = self.scorer.score(prompts, answers, references, device)
        advantages = group_advantages(rewards, self.rl.scale_rewards)
        self._add(training, reward_std=rewards.std(dim=1, unbiased=False), **stats)
        out = []
        for i, prompt in enumerate(prompts):
            unit = []
            for a, adv in zip(answers[i], advantages[i].tolist(), strict=True):
                ids = prompt + a.ids
                labels = [IGNORE] * len(prompt) + a.ids
                unit.append(Piece.from_labels(ids, labels, adv))
            out.append(unit)
        return out

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
        keep = targets != IGNORE
        logp = target_logprobs(self.model, self.hf, input_ids, position_ids, targets, **kwargs)
        adv = weights[keep].float() if weights is not None else torch.ones_like(logp)
        ratio = torch.exp(logp - logp.detach())
        eps = self.rl.clip_epsilon
        surrogate = torch.min(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
        loss = -surrogate
        if self.reference is not None:
            ref = self.reference.token_logprobs(input_ids, position_ids, targets, **kwargs)
            delta = ref - logp
            kl = torch.exp(delta) - delta - 1
            loss = loss + self.rl.beta * kl
            self._add(kl=kl.detach())
        return loss.sum(), int(keep.sum())
