"""Hyperparameter search: search spaces over config keys, and the results of a study."""
