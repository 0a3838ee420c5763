"""PPO for language models (Schulman et al. 2017; RLHF as in Ziegler et al. 2019 and
InstructGPT, Ouyang et al. 2022): a value head, per-token KL-penalised rewards, GAE, clipped
policy and value losses, several optimisation passes per rollout.

It runs in the one training loop, like GRPO (``rl.grpo``): the units are prompts
(``rl_prompt_pieces``) and the objective's ``prepare`` hook is the rollout phase, run once per
loop step:

1. each prompt is completed once by sampling from the current policy (``rl.rollouts``, seeded by
   ``(train.seed, step)``);
2. the answer gets its score from ``rl.rewards`` (a reward model from a stage ``rm`` run, exact
   match, regex, length; ``rl.rewards`` module);
3. one forward without gradient (eval mode, the loop's layout and precision) gives every answer
   token's log-probability ``old``, the entropy of the policy there and the value head's ``V``;
   the reference (the policy as the stage started: adapter off, or a frozen copy) gives ``ref``;
4. per-token rewards are ``r_t = -c · (old_t - ref_t)``, plus the score on the last token
   (``c``: the KL coefficient, ``rl.beta``, adapted after every rollout toward ``rl.kl_target``
   by Ziegler et al.'s proportional controller when that is set);
5. GAE (``rl.gamma``, ``rl.gae_lambda``) turns rewards and values into advantages ``A`` and
   returns ``R = A + V``; advantages are whitened over the rollout (``rl.whiten_advantages``).

The units become one piece per answer (prompt + answer, the answer's tokens as targets) with
``old``, ``V``, ``A`` and ``R`` at every target position (``collate``'s ``token_values``), and
``passes`` makes ``rl.ppo_epochs`` passes over them, each split into ``rl.mini_batches``
optimizer steps in a seeded order. The loss per answer token is::

    ρ = exp(log π - old)
    policy = max(-A ρ, -A clip(ρ, 1 - ε, 1 + ε))                       (ε: rl.clip_epsilon)
    value  = ½ max((v - R)², (old V + clip(v - old V, ±rl.value_clip) - R)²)
    loss   = policy + rl.value_coef · value

summed over the step's answer tokens and divided by their number (the loop's normalisation).
The value head is one linear layer on the policy's last hidden state; it starts at zero, is
trained and checkpointed with the model, and is saved beside it as ``value_head.safetensors``
(the saved ``model/`` is a plain causal LM). By default (``rl.value_head: detached``) the value
loss trains the head alone: on the tiny parity task with a reward model's scores (values ~4-8,
value loss ~40), letting it reach the shared backbone (``shared``, as TRL's
``AutoModelForCausalLMWithValueHead`` and LLaMA-Factory's PPO do) swamped the policy gradient:
the policy's entropy rose from 0.3 to 6 nats and the summed KL to 27 in 60 steps, where the
detached head kept it at most 2.2 while the score rose 3.5 -> 8.5 (docs/alignment.md).

Logged per window and per evaluation: ``reward`` (the score), ``kl`` (summed ``old - ref`` per
answer), ``kl_coef``, ``entropy`` (per token), ``value`` and ``return`` (means), ``value_loss``,
``policy_loss``, ``clip_fraction`` (tokens whose clipped term was the larger, as TRL counts
it), ``value_clip_fraction``,
``approx_kl`` (``½(log π - old)²`` per token), ``answer_tokens`` and ``exact_match`` when an
exact-match reward is configured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.errors import ConfigError
from lmforge.rl.rewards import RewardScorer
from lmforge.rl.rollouts import prompts_and_references, sample_answers
from lmforge.serve.generate import eval_mode
from lmforge.training.collate import IGNORE, Piece, Unit, unit_targets
from lmforge.training.forward import batch_tensors, precision
from lmforge.training.objectives.base import Tallied, kept
from lmforge.training.objectives.causal import plain_head
from lmforge.training.objectives.logprobs import (
    target_hidden,
    token_logprobs,
    token_logprobs_entropy,
)
from lmforge.training.objectives.preference import Reference

VALUE_HEAD = "lmforge_value_head"  # attribute of the transformers model during stage ppo
VALUE_HEAD_FILE = "value_head.safetensors"
TOKEN_FIELDS = ("old_logp", "old_value", "advantage", "return")


def gae(
    rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over one answer: ``(advantages,
    returns)`` for per-token ``rewards`` and ``values``; the answer's end is terminal (V = 0)."""
    advantages = torch.zeros_like(rewards)
    running, next_value = 0.0, 0.0
    for t in range(len(rewards) - 1, -1, -1):
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
        next_value = values[t]
    return advantages, advantages + values


def whiten(x: torch.Tensor) -> torch.Tensor:
    """Mean 0, standard deviation 1 (unchanged below two values)."""
    if x.numel() < 2:
        return x - x.mean() if x.numel() else x
    return (x - x.mean()) / (x.std() + 1e-8)


@dataclass
class KLController:
    """The KL coefficient; with a ``target``, Ziegler et al.'s (2019) proportional controller:
    after a rollout of ``n`` answers whose mean summed KL is ``kl``, the coefficient is
    multiplied by ``1 + clip(kl / target - 1, ±0.2) · n / horizon``."""

    value: float
    target: float | None = None
    horizon: int = 10_000

    def update(self, kl: float, n: int) -> None:
        if self.target is None:
            return
        error = max(-0.2, min(0.2, kl / self.target - 1.0))
        self.value *= 1.0 + error * n / self.horizon


def epoch_passes(units: list, epochs: int, mini_batches: int, seed: int) -> list[list]:
    """``epochs`` passes over ``units``, each in its own seeded order and split into
    ``mini_batches`` parts (one optimizer step each)."""
    gen = torch.Generator().manual_seed(seed)
    size = math.ceil(len(units) / mini_batches)
    out = []
    for _ in range(epochs):
        order = torch.randperm(len(units), generator=gen).tolist()
        out += [[units[i] for i in order[j : j + size]] for j in range(0, len(units), size)]
    return out


def attach_value_head(hf: torch.nn.Module) -> torch.nn.Linear:
    """A zero-initialised ``hidden -> 1`` linear layer registered on the transformers model
    (so the optimizer, DDP and checkpoints see it), or the one already there."""
    head = getattr(hf, VALUE_HEAD, None)
    if head is None:
        weight = hf.get_output_embeddings().weight
        head = torch.nn.Linear(weight.shape[1], 1, device=weight.device, dtype=torch.float32)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        setattr(hf, VALUE_HEAD, head)
    return head


def detach_value_head(model: torch.nn.Module, run_dir: Path, write: bool = True) -> Path | None:
    """Take the value head off the model (so ``model/`` saves as a plain causal LM) and write
    it to ``run_dir/value_head.safetensors`` (rank 0: ``write``); None when there is none."""
    from safetensors.torch import save_file

    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(hf, VALUE_HEAD, None)
    if head is None:
        return None
    delattr(hf, VALUE_HEAD)
    path = Path(run_dir) / VALUE_HEAD_FILE
    if write:
        state = {k: v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()}
        save_file(state, str(path))
    return path


class PPOLoss(Tallied):
    name = "ppo"
    perplexity = False

    def __init__(self, model: torch.nn.Module, tokenizer, rl, seed: int = 0):
        super().__init__(model)
        if not plain_head(self.hf):
            raise ConfigError(
                f"stage ppo needs a plain linear output layer; model type "
                f"'{self.hf.config.model_type}' has another head"
            )
        self.tokenizer = tokenizer
        self.rl = rl
        self.seed = seed
        self.reference = Reference(model, self.hf)  # before the value head: not in the copy
        self.value_head = [attach_value_head(self.hf)]  # a list: registered on the model only
        self.kl = KLController(rl.beta, rl.kl_target, rl.kl_horizon)
        self.preparer = self._rollouts
        self.scorer = RewardScorer(tokenizer, rl.rewards)

    def weight(self, unit: Unit) -> int:
        return unit_targets(unit)  # answer tokens

    def loop_state(self) -> dict:
        return {"kl_coef": self.kl.value}

    def load_loop_state(self, state: dict) -> None:
        self.kl.value = float(state.get("kl_coef", self.kl.value))

    def passes(self, units: list[Unit], step: int) -> list[list[Unit]]:
        return epoch_passes(
            units, self.rl.ppo_epochs, self.rl.mini_batches, self.seed * 1_000_003 + step
        )

    def _rollouts(self, units: list[Unit], step: int) -> list[Unit]:
        training = self.training
        prompts, references = prompts_and_references(units, self.tokenizer)
        answers = sample_answers(
            self.model, self.tokenizer, prompts, 1, self.rl, seed=self.seed * 1_000_003 + step
        )
        device = next(self.model.parameters()).device
        scores, stats = self.scorer.score(prompts, answers, references, device)
        pieces = [
            Piece.from_labels(p + a.ids, [IGNORE] * len(p) + a.ids)
            for p, (a,) in zip(prompts, answers, strict=True)
        ]
        old, entropy, values, ref = self._score(pieces)
        coef = self.kl.value
        advantages, returns, kls = [], [], []
        for i, answer_values in enumerate(values):
            kl = old[i] - ref[i]
            rewards = -coef * kl
            rewards[-1] += scores[i, 0]
            adv, ret = gae(rewards, answer_values, self.rl.gamma, self.rl.gae_lambda)
            advantages.append(adv)
            returns.append(ret)
            kls.append(kl.sum())
        flat_adv = torch.cat(advantages)
        if self.rl.whiten_advantages:
            flat_adv = whiten(flat_adv)
        kl_sums = torch.stack(kls)
        self._add(
            training,
            **stats,
            kl=kl_sums,
            kl_coef=torch.tensor([coef]),
            entropy=torch.cat(entropy),
            value=torch.cat(values),
            **{"return": torch.cat(returns)},
        )
        if training:  # the coefficient of the next rollouts
            self.kl.update(float(kl_sums.mean()), len(pieces))
        out, start = [], 0
        for piece, ret, v, lp in zip(pieces, returns, values, old, strict=True):
            n = len(v)
            first = len(piece) - 1 - n  # the position that predicts the first answer token
            fields = {
                "old_logp": lp,
                "old_value": v,
                "advantage": flat_adv[start : start + n],
                "return": ret,
            }
            piece.values = {}
            for name, per_token in fields.items():
                column = [0.0] * len(piece)
                column[first : first + n] = per_token.tolist()
                piece.values[name] = column
            start += n
            out.append([piece])
        return out

    @torch.no_grad()
    def _score(self, pieces: list[Piece]) -> tuple[list[torch.Tensor], ...]:
        """Per answer: the policy's token log-probs, entropies and values, and the reference's
        token log-probs, from forwards in the loop's layout and precision (``bind``)."""
        device = next(self.model.parameters()).device
        head = self.hf.get_output_embeddings()
        columns: list[list[torch.Tensor]] = [[], [], [], []]
        step = self.batch_size
        with eval_mode(self.model), precision(device, self.autocast_dtype):
            for start in range(0, len(pieces), step):
                batch = self.layout.batch([[p] for p in pieces[start : start + step]])
                args, attention = batch_tensors(batch, device)
                hidden, wanted = target_hidden(self.hf, *args, **attention)
                logp, entropy = token_logprobs_entropy(hidden, head.weight, head.bias, wanted)
                values = self.value_head[0](hidden).squeeze(-1).float()
                ref = self.reference.token_logprobs(*args, **attention).float()
                sizes = [unit_targets([p]) for p in pieces[start : start + step]]
                for column, values_ in zip(columns, (logp, entropy, values, ref), strict=True):
                    column.extend(values_.cpu().split(sizes))
        return tuple(columns)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        targets: torch.Tensor,
        unit_sizes: list[int] | None = None,
        return_predictions: bool = False,
        token_values: dict[str, torch.Tensor] | None = None,
        **kwargs,
    ) -> tuple:
        if token_values is None:
            raise RuntimeError("stage ppo's units come from its rollout phase (token_values)")
        keep, _ = kept(targets)
        hidden, wanted = target_hidden(self.hf, input_ids, position_ids, targets, **kwargs)
        head = self.hf.get_output_embeddings()
        logp = token_logprobs(hidden, head.weight, head.bias, wanted)
        shared = self.rl.value_head == "shared"  # else the value loss stops at the head
        values = self.value_head[0](hidden if shared else hidden.detach()).squeeze(-1).float()
        old, old_v, adv, ret = (token_values[k][keep].float() for k in TOKEN_FIELDS)
        eps = self.rl.clip_epsilon
        log_ratio = logp - old
        ratio = torch.exp(log_ratio)
        unclipped, clipped = -adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps)
        policy = torch.max(unclipped, clipped)
        clipped_v = old_v + (values - old_v).clamp(-self.rl.value_clip, self.rl.value_clip)
        value_plain, value_clipped = (values - ret) ** 2, (clipped_v - ret) ** 2
        value_loss = 0.5 * torch.max(value_plain, value_clipped)
        loss = policy + self.rl.value_coef * value_loss
        self._add(  # a clip fraction: the tokens whose clipped term was the larger (TRL's)
            policy_loss=policy.detach(),
            value_loss=value_loss.detach(),
            clip_fraction=(clipped > unclipped).float().detach(),
            value_clip_fraction=(value_clipped > value_plain).float().detach(),
            approx_kl=0.5 * log_ratio.detach() ** 2,
        )
        return loss.sum(), int(keep.sum())
