"""Evaluation: perplexity and task metrics."""
