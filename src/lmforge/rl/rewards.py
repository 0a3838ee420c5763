"""Rewards for sampled completions (stages ``grpo`` and ``ppo``): each maps a completion's text
and the row's reference answer to a number, and ``rl.rewards`` in the config sums them with
weights.

- ``exact_match``: 1 when the completion equals the reference after ``eval.exact_match``'s
  normalisation (case, surrounding whitespace and punctuation), else 0;
- ``regex``: 1 when ``pattern`` matches the completion (``re.search``; a format reward), else 0;
- ``length``: ``-|tokens - target| / target``, at most 0: a penalty for straying from a length;
- ``model``: the scalar score of a reward model (a stage ``rm`` run, :class:`RewardModel`) on
  the conversation as the policy rendered it (prompt, answer, end-of-turn token). The reward
  model reads that text with its own tokenizer, so it must share the policy's chat template, as
  one trained from the same SFT model does.

Length alone cannot earn the exact-match reward, and the format reward is earned by every
well-formed answer, right or wrong: a run's accuracy is the exact-match rate it logs.
:class:`RewardScorer` is what both stages call after a rollout: every configured term for every
sampled answer, and the statistics they log.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmforge.eval.exact_match import normalize_answer


@dataclass
class Completion:
    text: str
    tokens: int
    reference: str | None


def exact_match_reward(c: Completion) -> float:
    if c.reference is None:
        return 0.0
    return float(normalize_answer(c.text) == normalize_answer(c.reference))


def regex_reward(c: Completion, pattern: re.Pattern) -> float:
    return float(pattern.search(c.text) is not None)


def length_reward(c: Completion, target: int) -> float:
    return -min(1.0, abs(c.tokens - target) / target)


def total_reward(c: Completion, specs: Sequence) -> float:
    """The weighted sum of the programmatic ``specs`` (``config.training.RewardSpec``; model
    rewards are scored in batches by :class:`RewardModel`) for one completion."""
    total = 0.0
    for spec in specs:
        if spec.type == "exact_match":
            value = exact_match_reward(c)
        elif spec.type == "regex":
            value = regex_reward(c, re.compile(spec.pattern))
        elif spec.type == "length":
            value = length_reward(c, spec.target_tokens)
        else:
            continue
        total += spec.weight * value
    return total


class RewardModel:
    """A trained reward model (stage ``rm``: a one-label ``...ForSequenceClassification``) that
    scores rendered conversations, loaded once on ``device`` in eval mode."""

    def __init__(self, path: str, device: torch.device, batch_size: int = 16):
        from lmforge.config.groups import ModelConfig
        from lmforge.errors import ConfigError
        from lmforge.models.load import load_for_inference

        self.model, self.tokenizer = load_for_inference(ModelConfig(path=path), str(device))
        labels = getattr(self.model.config, "num_labels", None)
        if labels != 1:
            raise ConfigError(
                f"rl.rewards model {path} has {labels} labels; a reward model (stage rm) has 1"
            )
        self.tokenizer.padding_side = "right"  # the model reads the last real token
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def score(self, texts: list[str]) -> list[float]:
        """The reward of each text (a rendered conversation), right-padded in batches: the
        model reads the last real token, as it did in training."""
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                add_special_tokens=False,
                padding=True,
                return_tensors="pt",
            ).to(self.device)
            out.extend(self.model(**batch).logits[:, 0].float().tolist())
        return out


def text_after_eos(tokenizer) -> str:
    """What the chat template writes after an assistant turn's EOS (ChatML: a newline): part of
    every rendered turn a reward model was trained on, and so of what it scores."""
    from lmforge.tokenizer.templates import render

    turn = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    text, eos = render(tokenizer, turn), tokenizer.eos_token
    return text[text.rindex(eos) + len(eos) :] if eos and eos in text else ""


class RewardScorer:
    """The summed ``rl.rewards`` of sampled answers: programmatic terms per answer, reward models
    (loaded at first use, on the policy's device) in batches over the rendered conversations."""

    def __init__(self, tokenizer, specs: Sequence):
        self.tokenizer = tokenizer
        self.specs = list(specs)
        self.scores_exact = any(s.type == "exact_match" for s in self.specs)
        self._models: dict[str, RewardModel] = {}
        self._after_eos = text_after_eos(tokenizer)

    def score(
        self,
        prompts: list[list[int]],
        answers: list[list],
        references: list[str | None],
        device: torch.device,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(rewards (prompts, answers per prompt), statistics)`` for ``answers[i]`` (each a
        ``rollouts.Answer``) sampled from ``prompts[i]``; the statistics are ``reward``,
        ``answer_tokens`` and, with an exact-match term, ``exact_match`` per answer."""
        flat = [(i, a) for i, row in enumerate(answers) for a in row]
        shape = (len(answers), len(answers[0]) if answers else 0)
        rewards = torch.tensor(
            [
                total_reward(Completion(a.text, len(a.ids), references[i]), self.specs)
                for i, a in flat
            ],
            dtype=torch.float32,
        )
        for spec in self.specs:
            if spec.type == "model":  # the text as rm training rendered it (after_eos too)
                texts = [
                    self.tokenizer.decode(prompts[i] + a.ids)
                    + (self._after_eos if a.finished else "")
                    for i, a in flat
                ]
                rewards += spec.weight * torch.tensor(self._model(spec.path, device).score(texts))
        stats = {
            "reward": rewards,
            "answer_tokens": torch.tensor([float(len(a.ids)) for _, a in flat]),
        }
        if self.scores_exact:
            stats["exact_match"] = torch.tensor(
                [exact_match_reward(Completion(a.text, 0, references[i])) for i, a in flat]
            )
        return rewards.view(shape), stats

    def _model(self, path: str, device: torch.device) -> RewardModel:
        if path not in self._models:
            self._models[path] = RewardModel(path, device)
        return self._models[path]
