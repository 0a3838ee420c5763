"""Evaluation gates: conditions a training run must meet, checked on the model before and after
training (``eval.gates`` in any ``lmforge train`` config)::

    eval:
      perplexity: {files: [heldout.txt], window: 256}
      exact_match: {files: [test.jsonl]}
      gates:
        - accuracy >= 0.8                 # exact-match accuracy of the trained model
        - perplexity <= 1.05 * base       # at most 5% worse than the model before training
        - eval_loss < base                # the loop's own validation loss went down

A gate is ``METRIC OP BOUND``: ``OP`` one of ``>= > <= < ==``; ``BOUND`` a number, ``base`` (the
metric's value before training), ``K * base``, ``base * K``, ``base + K`` or ``base - K``.
Metrics are the evaluation's (:func:`gate_metrics`: ``perplexity`` (per token),
``word_perplexity``, ``bits_per_byte``, ``accuracy`` (exact match), ``bleu``, ``chrf``,
``rouge1``, ``rouge2``, ``rougeL``, ``acc`` and ``acc_norm`` (multiple choice)) and the training
loop's final ones (``eval_loss``, ``eval_ppl``, ``eval_accuracy``, ``eval_<statistic>``,
``train_loss``), whose ``base`` is the step-0 evaluation (``train.eval_on_start``, switched on
when a gate needs it). Gates are parsed before any work, so a typo fails at once; an unmet gate
marks the run failed (non-zero exit, the manifest's ``gates`` says which and by how much) after
the model is saved, so it can still be inspected.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from lmforge.errors import ConfigError

_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}
_GATE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(>=|<=|==|>|<)\s*(.+?)\s*$")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_BOUNDS = [
    (re.compile(rf"^({_NUMBER})$"), lambda k, base: k),
    (re.compile(r"^base$"), lambda k, base: base),
    (re.compile(rf"^({_NUMBER})\s*\*\s*base$"), lambda k, base: k * base),
    (re.compile(rf"^base\s*\*\s*({_NUMBER})$"), lambda k, base: base * k),
    (re.compile(rf"^base\s*\+\s*({_NUMBER})$"), lambda k, base: base + k),
    (re.compile(rf"^base\s*-\s*({_NUMBER})$"), lambda k, base: base - k),
]
# evaluation metrics by gate name: (kind, key in that kind's metrics)
EVALUATION = {
    "perplexity": ("perplexity", "token_perplexity"),
    "word_perplexity": ("perplexity", "word_perplexity"),
    "bits_per_byte": ("perplexity", "bits_per_byte"),
    "accuracy": ("exact_match", "accuracy"),
    "bleu": ("exact_match", "bleu"),
    "chrf": ("exact_match", "chrf"),
    "rouge1": ("exact_match", "rouge1"),
    "rouge2": ("exact_match", "rouge2"),
    "rougeL": ("exact_match", "rougeL"),
    "acc": ("multiple_choice", "acc"),
    "acc_norm": ("multiple_choice", "acc_norm"),
}
# the exact_match.metrics entry each text metric needs
TEXT_METRICS = {
    "bleu": "bleu",
    "chrf": "chrf",
    **dict.fromkeys(("rouge1", "rouge2", "rougeL"), "rouge"),
}


@dataclass(frozen=True)
class Gate:
    text: str
    metric: str
    op: str
    pattern: int  # which of _BOUNDS
    k: float

    @property
    def uses_base(self) -> bool:
        return self.pattern != 0  # every bound but a plain number

    def bound(self, base: float | None) -> float:
        return _BOUNDS[self.pattern][1](self.k, base)


def parse_gate(text: str) -> Gate:
    match = _GATE.match(text)
    if not match:
        raise ConfigError(
            f"eval.gates: cannot read {text!r}; write METRIC OP BOUND, e.g. 'accuracy >= 0.8' "
            "or 'perplexity <= 1.05 * base'"
        )
    metric, op, bound = match.groups()
    for i, (pattern, _) in enumerate(_BOUNDS):
        if m := pattern.match(bound):
            return Gate(text.strip(), metric, op, i, float(m.group(1)) if m.groups() else 0.0)
    raise ConfigError(
        f"eval.gates: bound {bound!r} in {text!r} is not a number, base, K * base, base * K, "
        "base + K or base - K"
    )


def parse_gates(texts: list[str], cfg) -> list[Gate]:
    """The gates of ``eval.gates``, each checked against what the evaluation ``cfg`` computes
    (a metric of an evaluation kind needs its files; ``bleu`` etc. need
    ``exact_match.metrics``)."""
    gates = [parse_gate(t) for t in texts]
    for gate in gates:
        if gate.metric in EVALUATION:
            kind = EVALUATION[gate.metric][0]
            if not getattr(cfg, kind).files:
                raise ConfigError(f"eval.gates {gate.text!r} needs eval.{kind}.files")
            needed = TEXT_METRICS.get(gate.metric)
            if needed and needed not in cfg.exact_match.metrics:
                raise ConfigError(
                    f"eval.gates {gate.text!r} needs {needed!r} in eval.exact_match.metrics"
                )
        elif not (gate.metric.startswith("eval_") or gate.metric == "train_loss"):
            raise ConfigError(
                f"eval.gates: unknown metric {gate.metric!r}; evaluation metrics: "
                f"{', '.join(EVALUATION)}; or the training loop's eval_* and train_loss"
            )
    return gates


def gate_metrics(evaluation: dict) -> dict[str, float]:
    """The gate names of an evaluation's metrics (``recipes.evaluate``'s per-kind dicts)."""
    out = {}
    for name, (kind, key) in EVALUATION.items():
        value = evaluation.get(kind, {}).get(key)
        if isinstance(value, int | float):
            out[name] = float(value)
    return out


def check_gates(gates: list[Gate], after: dict, before: dict) -> list[dict]:
    """One result per gate: ``{gate, metric, value, base, bound, passed}``; a metric missing
    after training fails its gate (``value`` None) rather than passing unseen."""
    results = []
    for gate in gates:
        value, base = after.get(gate.metric), before.get(gate.metric)
        bound = None
        if gate.uses_base and base is None:
            passed = False
        else:
            bound = gate.bound(base)
            passed = value is not None and math.isfinite(value) and _OPS[gate.op](value, bound)
        results.append(
            {
                "gate": gate.text,
                "metric": gate.metric,
                "value": value,
                "base": base,
                "bound": bound,
                "passed": passed,
            }
        )
    return results


def describe_failures(results: list[dict]) -> str:
    parts = []
    for r in results:
        if r["passed"]:
            continue
        if r["value"] is None:
            why = "no value after training"
        elif r["bound"] is None:
            why = "no value before training for base"
        else:
            base = f", base {r['base']:.6g}" if r["base"] is not None else ""
            why = f"{r['metric']} = {r['value']:.6g}, bound {r['bound']:.6g}{base}"
        parts.append(f"{r['gate']!r} ({why})")
    return "; ".join(parts)
