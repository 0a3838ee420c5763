"""Objectives: what a stage's loss is (see ``base`` for what the training loop asks of one)."""
