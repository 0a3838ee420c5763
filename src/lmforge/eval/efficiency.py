"""The efficiency figures every evaluation report carries: parameters (total, and trained by the
run that made the model), peak memory, and time per kind of evaluation with its latency per
unit of work.

- ``params_total``: the loaded model's parameters (an adapter's included; a 4-bit weight counts
  as the weights it stands for, ``models.params``); ``params_trainable``: what the training
  run trained, read from its manifest (``params_trainable`` of the ``lmforge train`` run whose
  folder holds the model), else the adapter's parameters, else every parameter (a full model
  of unknown origin); ``params_trainable_source`` says which;
- ``peak_rss_mib``: the process's peak resident memory (``ru_maxrss``: model loading included);
  ``peak_cuda_mib`` on a GPU;
- per evaluation kind: ``seconds`` and ``ms_per_token`` (perplexity: per scored token; exact
  match: per generated token, prompt processing included), ``ms_per_item`` (multiple choice,
  classification, lm-eval tasks).
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from dataclasses import dataclass, field

import torch

from lmforge.models.params import parameter_report


def _producing_run(paths: list[str | None]) -> dict | None:
    """The metrics of the ``lmforge train`` run that made a model folder (its manifest)."""
    from lmforge.artifacts import find_manifest, read_manifest

    for path in paths:
        manifest = find_manifest(path) if path else None
        if manifest is None:
            continue
        try:
            metrics = read_manifest(manifest).get("metrics", {})
        except (OSError, ValueError):
            continue
        if "params_trainable" in metrics:
            return metrics
    return None


def peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024**2 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB


@dataclass
class Efficiency:
    params: dict
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(cls, model: torch.nn.Module, model_cfg) -> Efficiency:
        report = parameter_report(model)
        params = {"params_total": report["total"]}
        trained = _producing_run([model_cfg.adapter, model_cfg.path])
        if trained is not None:
            params.update(params_trainable=trained["params_trainable"], source="training run")
        elif "adapter" in report["groups"]:
            params.update(params_trainable=report["groups"]["adapter"]["total"], source="adapter")
        else:
            params.update(params_trainable=report["total"], source="all parameters")
        params["params_trainable_source"] = params.pop("source")
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return cls(params)

    @contextlib.contextmanager
    def timed(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - start

    def summary(self, metrics: dict) -> dict:
        """The figures, with each kind's latency per unit from its own ``metrics``."""
        out = {**self.params, "peak_rss_mib": round(peak_rss_mib(), 1)}
        if torch.cuda.is_available():
            out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 1024**2, 1)
        units = {
            "perplexity": ("ms_per_token", metrics.get("perplexity", {}).get("tokens")),
            "exact_match": (
                "ms_per_token",
                metrics.get("exact_match", {}).get("generated_tokens"),
            ),
            "multiple_choice": ("ms_per_item", metrics.get("multiple_choice", {}).get("total")),
            "classification": ("ms_per_item", metrics.get("classification", {}).get("total")),
            "harness": (
                "ms_per_item",
                sum(int(v.get("sample_len", 0)) for v in metrics.get("harness", {}).values()),
            ),
        }
        for name, seconds in self.seconds.items():
            row = {"seconds": round(seconds, 3)}
            key, n = units.get(name, (None, None))
            if key and n:
                row[key] = round(1000 * seconds / n, 4)
            out[name] = row
        return out


def format_efficiency(e: dict) -> str:
    parts = [
        f"parameters {e['params_total']:,} ({e['params_trainable']:,} trained, "
        f"{e['params_trainable_source']})",
        f"peak RSS {e['peak_rss_mib']:.0f} MiB",
    ]
    for name, row in e.items():
        if isinstance(row, dict):
            unit = next((k for k in ("ms_per_token", "ms_per_item") if k in row), None)
            per = f", {row[unit]:.3f} {unit.replace('_', ' ')}" if unit else ""
            parts.append(f"{name} {row['seconds']:.1f} s{per}")
    return "efficiency: " + "; ".join(parts)
