"""Programmatic rewards for completions (stage ``grpo``): each maps a completion's text and the
row's reference answer to a number, and ``rl.rewards`` in the config sums them with weights.

- ``exact_match``: 1 when the completion equals the reference after ``eval.exact_match``'s
  normalisation (case, surrounding whitespace and punctuation), else 0;
- ``regex``: 1 when ``pattern`` matches the completion (``re.search``; a format reward), else 0;
- ``length``: ``-|tokens - target| / target``, at most 0: a penalty for straying from a length.

Length alone cannot earn the exact-match reward, and the format reward is earned by every
well-formed answer, right or wrong: a run's accuracy is the exact-match rate it logs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

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
    """The weighted sum of ``specs`` (``config.training.RewardSpec``) for one completion."""
    total = 0.0
    for spec in specs:
        if spec.type == "exact_match":
            value = exact_match_reward(c)
        elif spec.type == "regex":
            value = regex_reward(c, re.compile(spec.pattern))
        else:
            value = length_reward(c, spec.target_tokens)
        total += spec.weight * value
    return total
