"""Stage grpo: rewards and group advantages by hand, and a short run from an SFT model whose
exact-match reward rises while the KL to the reference stays small."""

from __future__ import annotations

import pytest
import torch

from lmforge.config.training import RewardSpec
from lmforge.rl.grpo import group_advantages
from lmforge.rl.rewards import Completion, total_reward


def test_rewards_are_their_definitions() -> None:
    specs = [
        RewardSpec(type="exact_match"),
        RewardSpec(type="regex", pattern=r"^(even|odd)$", weight=0.5),
        RewardSpec(type="length", target_tokens=4, weight=0.1),
    ]
    right = Completion("Odd.", tokens=2, reference="odd")
    wrong = Completion("even", tokens=6, reference="odd")
    assert total_reward(right, specs) == pytest.approx(1.0 + 0.0 + 0.1 * -0.5)  # "Odd." no regex
    assert total_reward(wrong, specs) == pytest.approx(0.0 + 0.5 + 0.1 * -0.5)
    assert total_reward(Completion("x" * 9, 40, "odd"), specs[2:]) == pytest.approx(-0.1)


def test_bad_reward_settings_are_config_errors() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs pattern"):
        RewardSpec(type="regex")
    with pytest.raises(ValidationError, match="not a valid regex"):
        RewardSpec(type="regex", pattern="(")
    with pytest.raises(ValidationError, match="needs target_tokens"):
        RewardSpec(type="length")
    with pytest.raises(ValidationError, match="needs path"):
        RewardSpec(type="model")


def test_group_advantages() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 3.0]])
    scaled = group_advantages(rewards, scale=True)
    torch.testing.assert_close(scaled[0], torch.tensor([1.0, -1.0, -1.0, 1.0]))
    assert scaled[1].abs().max() == 0  # all the same: nothing to learn
    torch.testing.assert_close(scaled.mean(dim=1), torch.zeros(3))
    torch.testing.assert_close(
        group_advantages(rewards, scale=False)[2], torch.tensor([-0.75, -0.75, -0.75, 2.25])
    )
