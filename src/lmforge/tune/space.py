"""A search space over dotted config keys, as Optuna suggestions and as config overrides.

space = {"train.lr": ParamSpec(low=1e-4, high=1e-2, log=True),
         "train.batch_size": ParamSpec(type="categorical", choices=[8, 16])}
params = suggest(trial, space)   # {"train.lr": 0.0031, "train.batch_size": 16}
config = deep_merge(base, nested(params))
"""

from __future__ import annotations

from typing import Any

from lmforge.config.sweep import ParamSpec


def suggest(trial, space: dict[str, ParamSpec]) -> dict[str, Any]:
    """One value per key from an ``optuna.Trial`` (an enqueued trial gets its fixed values)."""
    params: dict[str, Any] = {}
    for key, spec in space.items():
        if spec.type == "categorical":
            params[key] = trial.suggest_categorical(key, spec.choices)
        elif spec.type == "int":
            params[key] = trial.suggest_int(
                key, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log
            )
        else:
            params[key] = trial.suggest_float(
                key, spec.low, spec.high, step=spec.step, log=spec.log
            )
    return params


def nested(params: dict[str, Any]) -> dict:
    """``{"train.lr": 0.01}`` -> ``{"train": {"lr": 0.01}}`` (for ``deep_merge``)."""
    out: dict = {}
    for key, value in params.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def probe_points(space: dict[str, ParamSpec]) -> list[dict[str, Any]]:
    """Parameter sets that between them use every categorical choice and both ends of every
    range: validating the config at each catches a bad choice before any trial runs."""
    width = max((len(s.choices) for s in space.values() if s.choices), default=1)
    width = max(width, 2)
    points = []
    for i in range(width):
        point = {}
        for key, spec in space.items():
            if spec.type == "categorical":
                point[key] = spec.choices[i % len(spec.choices)]
            else:
                value = spec.low if i % 2 == 0 else spec.high
                point[key] = int(value) if spec.type == "int" else value
        points.append(point)
    return points
