"""How many parameters a model has and trains, in total and per kind of module.

Groups are read from parameter names (transformers and PEFT naming): ``adapter`` (LoRA, DoRA,
IA3, prompt encoders, PEFT's trained copies of ``modules_to_save``), ``embeddings``,
``attention``, ``mlp``, ``norm``, ``head`` (an output head tied to the input embedding is one
tensor and counts under ``embeddings``), ``other``. A 4-bit weight counts as the number of
weights it stands for, not its packed bytes.
"""

from __future__ import annotations

import re

import torch

from lmforge.models.quantize import logical_numel

GROUPS: list[tuple[str, re.Pattern]] = [
    ("adapter", re.compile(r"lora_|ia3_|prompt_encoder|modules_to_save\.")),
    ("embeddings", re.compile(r"embed|wte\.|wpe\.|embeddings\.")),
    ("head", re.compile(r"(^|\.)(lm_head|score|classifier|cls)\.")),
    ("norm", re.compile(r"norm|ln_\d|ln_f\.|layernorm", re.IGNORECASE)),
    ("attention", re.compile(r"attn|attention")),
    ("mlp", re.compile(r"mlp|feed_forward|ffn|intermediate|\.output\.dense|experts")),
]


def group_of(name: str) -> str:
    """The group of a ``named_parameters`` name (first match in :data:`GROUPS`, else other)."""
    return next((group for group, pattern in GROUPS if pattern.search(name)), "other")


def parameter_report(model: torch.nn.Module) -> dict:
    """``{"total", "trainable", "trainable_pct", "groups": {group: {"total", "trainable"}}}``.

    Counts each tensor once (tied weights are shared); groups with no parameter are left out.
    """
    groups: dict[str, dict[str, int]] = {}
    total = trainable = 0
    for name, param in model.named_parameters():
        n = logical_numel(param)
        row = groups.setdefault(group_of(name), {"total": 0, "trainable": 0})
        row["total"] += n
        total += n
        if param.requires_grad:
            row["trainable"] += n
            trainable += n
    order = [g for g, _ in GROUPS] + ["other"]
    return {
        "total": total,
        "trainable": trainable,
        "trainable_pct": round(100.0 * trainable / max(1, total), 4),
        "groups": {g: groups[g] for g in order if g in groups},
    }


def format_report(report: dict) -> str:
    """A few aligned lines: the totals, then one line per group."""
    lines = [
        f"{report['trainable']:,} of {report['total']:,} parameters trainable "
        f"({report['trainable_pct']:.2f}%)"
    ]
    for group, row in report["groups"].items():
        share = 100.0 * row["trainable"] / max(1, row["total"])
        lines.append(
            f"  {group:<10} {row['trainable']:>12,} of {row['total']:>12,} trainable ({share:.1f}%)"
        )
    return "\n".join(lines)
