"""Reinforcement learning from rewards: rollouts by generation, programmatic rewards, GRPO."""
