"""``lmforge evaluate compare RUN_A RUN_B``: is the candidate B significantly better than A?

    lmforge evaluate compare runs/eval-current runs/eval-candidate [--output DIR]
        [--resamples 10000] [--seed 0] [--confidence 0.95]

RUN_A (the current model) and RUN_B (the candidate) are ``lmforge evaluate`` run folders (or
their ``items.jsonl``). Items are paired by (``eval``, ``id``); items found in one run only are
counted and reported, never used. A malformed row (not JSON, no ``eval``/``id``, a duplicate
item, a metric that is not a finite number) stops the comparison with a count of them.

Metrics: every numeric or boolean per-item field of an eval kind is a metric, except the counts
in ``NOT_METRICS`` (``tokens``, ``words``, ...). ``DIRECTIONS`` says which way is better (higher
unless listed as lower: nll, loss, perplexity, error rates); add entries there for new fields.
A field in ``RATIOS`` is normalised by a count: perplexity's ``nll`` becomes ``nll_per_token``,
the corpus-level total nll / total tokens (each run's own token counts), bootstrapped over
documents, so it matches the reported token perplexity (exp of it). Other metrics are the mean
over items (for BLEU / chrF the mean sentence score, not the corpus score); a metric whose values
are all booleans or 0/1 (exact match ``correct``, harness ``acc``) is binary.

Per metric: mean A, mean B, B-A, a paired percentile bootstrap (items resampled with
replacement, numpy, each metric from the same seed) giving the CI of B-A and a one-sided
p-value that B is better ((resamples where B is not better + 1) / (resamples + 1)), win / tie /
loss shares (per item; for a ratio metric per document nll/token), and for binary metrics
McNemar's test (exact two-sided binomial when the discordant pairs are fewer than 25, else
chi-square with continuity correction; pure Python, no scipy). McNemar's p and the p-values are
reported, not used below.

Verdict (the promotion rule), with ``confidence`` = 0.95 by default. For each metric, B is
*significantly better* when the two-sided ``confidence`` CI of B-A lies strictly on B's side of 0
(above 0 when higher is better, below 0 when lower is better); *significantly worse* when it lies
strictly on A's side. (A 95% two-sided CI excluding 0 is about a one-sided p < 0.025.)
  - "promote B": B is significantly better on every metric.
  - "keep A": A is significantly better on at least one metric (whatever the others say).
  - "no significant difference": neither of those (including B significantly better on some but
    not all metrics): not enough evidence to promote B, none that B is worse.
Requiring every metric to agree needs no multiple-comparison correction for "promote B"; "keep A"
is not corrected (with many metrics a false alarm on one is more likely, a conservative choice).

Writes ``OUTPUT_DIR/compare.json``, ``compare.md`` and ``manifest.json`` (inputs: both
``items.jsonl`` files with the manifests of their runs). ``OUTPUT_DIR`` defaults to
``runs/compare-<A>-vs-<B>``. Exit code 0 whenever the comparison ran, whatever the verdict.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import numpy as np

from lmforge.artifacts import (
    MANIFEST,
    Run,
    atomic_write_json,
    atomic_write_text,
    read_manifest,
    recorded,
)
from lmforge.errors import DataError, UserError

ITEMS = "items.jsonl"
# field -> "higher" or "lower" is better; a numeric field not listed here counts as "higher"
DIRECTIONS: dict[str, str] = {
    **dict.fromkeys(
        ("correct", "accuracy", "bleu", "chrf", "rouge1", "rouge2", "rougeL"), "higher"
    ),
    **dict.fromkeys(("f1", "precision", "recall", "exact_match", "score", "reward"), "higher"),
    **dict.fromkeys(("acc", "acc_norm", "correct_norm"), "higher"),
    **dict.fromkeys(("nll", "nll_per_token", "loss", "perplexity", "bits_per_byte"), "lower"),
    **dict.fromkeys(("ter", "wer", "cer", "error_rate", "edit_distance"), "lower"),
}
# field -> (the count it is divided by, corpus-level, and the metric's name)
RATIOS: dict[str, tuple[str, str]] = {"nll": ("tokens", "nll_per_token")}
# counts and indices, not scores (a multiple-choice "answer" / "prediction" is a choice index)
NOT_METRICS = {"id", "source_line", "line", "tokens", "words", "bytes", "new_tokens", "doc_id"}
NOT_METRICS |= {"answer", "prediction", "label", "gold", "target", "index"}
# robustness rows: whether the perturbation changed the prompt (the same in both runs) and the
# clean score (the exact_match/multiple_choice rows' own); their metric is ``correct``
NOT_METRICS |= {"changed", "clean"}
VERDICTS = ("promote B", "keep A", "no significant difference")


def _number(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _row_problem(row) -> str | None:
    if not isinstance(row, dict):
        return "not a JSON object"
    if not isinstance(row.get("eval"), str) or not row["eval"]:
        return "no 'eval' name"
    if isinstance(row.get("id"), bool) or not isinstance(row.get("id"), str | int):
        return "no 'id' (string or integer)"
    for key in (*DIRECTIONS, *(count for count, _ in RATIOS.values())):
        if row.get(key) is not None and not _number(row[key]):
            return f"'{key}' is not a finite number: {row[key]!r}"
    for key, (count, _) in RATIOS.items():
        if key in row and (not _number(row.get(count)) or row[count] < 0):
            return f"'{key}' without a '{count}' count"
    return None


def load_items(path: str | Path) -> tuple[Path, dict[tuple[str, str], dict]]:
    """(items.jsonl path, {(eval, id): row}) of an evaluate run folder or items file."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"run not found: {p}")
    items = p / ITEMS if p.is_dir() else p
    if not items.is_file():
        raise DataError(f"no {ITEMS} in {p}: give the folder of an `lmforge evaluate` run")
    try:
        lines = items.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{items} is not UTF-8: {exc.reason}") from None
    rows: dict[tuple[str, str], dict] = {}
    bad: list[str] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad.append(f"line {n}: malformed JSON")
            continue
        problem = _row_problem(row)
        key = None if problem else (row["eval"], str(row["id"]))
        if key in rows:
            problem = f"duplicate item {key[0]}/{key[1]}"
        if problem:
            bad.append(f"line {n}: {problem}")
            continue
        rows[key] = row
    if bad:
        raise DataError(
            f"{items}: {len(bad)} malformed row(s) of {len(bad) + len(rows)}; "
            + "; ".join(bad[:3])
            + ("; ..." if len(bad) > 3 else "")
        )
    if not rows:
        raise DataError(f"{items} holds no items")
    return items, rows


def find_metrics(pairs: list[tuple[dict, dict]]) -> list[tuple[str, str, str | None, bool]]:
    """(field, metric name, count field or None, binary) for one eval kind's paired rows."""
    values: dict[str, list] = {}
    for ra, rb in pairs:
        for key in ra.keys() & rb.keys():
            va, vb = ra[key], rb[key]
            if key not in NOT_METRICS and _number(va) and _number(vb):
                values.setdefault(key, []).extend((va, vb))
    return [
        (key, RATIOS.get(key, (None, key))[1], RATIOS.get(key, (None,))[0], _all_bool(vs))
        for key, vs in sorted(values.items())
    ]


def _all_bool(values) -> bool:
    return all(v in (0, 1) for v in values)


def mcnemar(b: int, c: int) -> dict:
    """McNemar's test; b = items only A got right, c = items only B got right."""
    n, out = b + c, {"b": b, "c": c}
    if n == 0:
        return {**out, "test": "none (no discordant pairs)", "p_value": 1.0}
    if n < 25:
        tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
        return {**out, "test": "exact binomial", "p_value": min(1.0, 2 * tail)}
    chi2 = (abs(b - c) - 1) ** 2 / n  # 1 degree of freedom: P(chi2 > x) = erfc(sqrt(x / 2))
    out.update(test="chi-square, continuity corrected", statistic=chi2)
    return {**out, "p_value": math.erfc(math.sqrt(chi2 / 2))}


def compare_metric(
    xa,
    xb,
    da=None,
    db=None,
    *,
    lower: bool = False,
    binary: bool = False,
    resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Paired comparison of per-item values (sum(x) / sum(d) per side; d = 1 for a mean)."""
    xa, xb = np.asarray(xa, dtype=float), np.asarray(xb, dtype=float)
    da = np.ones_like(xa) if da is None else np.asarray(da, dtype=float)
    db = np.ones_like(xb) if db is None else np.asarray(db, dtype=float)
    n, sign = len(xa), -1.0 if lower else 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_a, mean_b = xa.sum() / da.sum(), xb.sum() / db.sum()
        per_item = sign * (np.where(db > 0, xb / db, 0) - np.where(da > 0, xa / da, 0))
        rng, diffs, chunk = np.random.default_rng(seed), [], max(1, 4_000_000 // n)
        for start in range(0, resamples, chunk):
            idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
            diffs.append(xb[idx].sum(1) / db[idx].sum(1) - xa[idx].sum(1) / da[idx].sum(1))
    diffs = np.concatenate(diffs)
    alpha = (1 - confidence) / 2
    lo, hi = (float(v) for v in np.nanquantile(diffs, [alpha, 1 - alpha]))
    not_better = int(np.sum(~(sign * diffs > 0)))  # nan (0/0 resample) counts as not better
    better_side = lo > 0 if not lower else hi < 0
    worse_side = hi < 0 if not lower else lo > 0
    out = {
        "direction": "lower" if lower else "higher",
        "n": n,
        "mean_a": float(mean_a),
        "mean_b": float(mean_b),
        "diff": float(mean_b - mean_a),
        "ci": [lo, hi],
        "p_b_better": (not_better + 1) / (resamples + 1),
        "win_rate": float(np.mean(per_item > 0)),
        "tie_rate": float(np.mean(per_item == 0)),
        "loss_rate": float(np.mean(per_item < 0)),
        "significant": "B" if better_side else "A" if worse_side else None,
    }
    if binary:
        out["mcnemar"] = mcnemar(
            int(np.sum((xa > 0) & (xb == 0))), int(np.sum((xa == 0) & (xb > 0)))
        )
    return out


def verdict(metrics: list[dict]) -> tuple[str, str]:
    """(verdict, reason) from the per-metric ``significant`` fields (see the module docstring)."""
    worse = [m["name"] for m in metrics if m["significant"] == "A"]
    better = [m["name"] for m in metrics if m["significant"] == "B"]
    if worse:
        return "keep A", f"A significantly better on {', '.join(worse)}"
    if metrics and len(better) == len(metrics):
        return "promote B", f"B significantly better on all {len(metrics)} metric(s)"
    return "no significant difference", (
        f"B significantly better on {len(better)} of {len(metrics)} metric(s), A on none"
    )


def compare_runs(run_a, run_b, resamples=10_000, seed=0, confidence=0.95) -> dict:
    """The whole comparison as a JSON-ready dict (what ``compare.json`` holds)."""
    if resamples < 1 or not 0 < confidence < 1:
        raise UserError("--resamples must be >= 1 and --confidence between 0 and 1")
    (path_a, items_a), (path_b, items_b) = load_items(run_a), load_items(run_b)
    shared = sorted(items_a.keys() & items_b.keys())
    kinds = sorted({k for k, _ in items_a} | {k for k, _ in items_b})
    groups = {"paired": shared, "only_a": items_a.keys() - items_b.keys()}
    groups["only_b"] = items_b.keys() - items_a.keys()
    pairing: dict = {name: len(keys) for name, keys in groups.items()}
    pairing["by_eval"] = {
        e: {name: sum(k == e for k, _ in keys) for name, keys in groups.items()} for e in kinds
    }
    if not shared:
        raise DataError(
            f"{path_a} and {path_b} share no items (same eval and id): "
            f"{len(items_a)} items only in A, {len(items_b)} only in B"
        )
    metrics, notes = [], []
    for kind in kinds:
        pairs = [(items_a[k], items_b[k]) for k in shared if k[0] == kind]
        for field, metric, count, binary in find_metrics(pairs):
            used = [
                (ra, rb) for ra, rb in pairs if _number(ra.get(field)) and _number(rb.get(field))
            ]
            name = f"{kind}/{metric}"
            if len(used) < len(pairs):
                notes.append(f"{name}: {len(pairs) - len(used)} paired item(s) lack a value")
            if count and any(ra[count] != rb[count] for ra, rb in used):
                notes.append(f"{name}: {count} differ between the runs (different tokenizers?)")
            result = compare_metric(
                [ra[field] for ra, _ in used],
                [rb[field] for _, rb in used],
                [ra[count] for ra, _ in used] if count else None,
                [rb[count] for _, rb in used] if count else None,
                lower=DIRECTIONS.get(metric) == "lower",
                binary=binary,
                resamples=resamples,
                seed=seed,
                confidence=confidence,
            )
            metrics.append({"name": name, "eval": kind, "field": field, **result})
    if not metrics:
        raise DataError("the paired items have no numeric or boolean fields to compare")
    decision, reason = verdict(metrics)
    return {
        "run_a": _describe(path_a, len(items_a)),
        "run_b": _describe(path_b, len(items_b)),
        "settings": {"resamples": resamples, "seed": seed, "confidence": confidence},
        "pairing": pairing,
        "metrics": metrics,
        "notes": notes,
        "verdict": decision,
        "reason": reason,
    }


def _describe(items: Path, n: int) -> dict:
    manifest = items.parent / MANIFEST
    info = {"items": str(items.resolve()), "n_items": n, "stage": None, "status": None}
    if manifest.is_file():
        try:
            m = read_manifest(manifest)
            info.update(stage=m.get("stage"), status=m.get("status"))
        except (OSError, ValueError):
            pass
    return info


def _cells(m: dict) -> list[str]:
    first = [m["name"], m["direction"], str(m["n"])]
    nums = [f"{m['mean_a']:.4f}", f"{m['mean_b']:.4f}", f"{m['diff']:+.4f}"]
    ci, p = f"[{m['ci'][0]:+.4f}, {m['ci'][1]:+.4f}]", f"{m['p_b_better']:.4f}"
    rates = f"{m['win_rate']:.0%}/{m['tie_rate']:.0%}/{m['loss_rate']:.0%}"
    mcn = f"{m['mcnemar']['p_value']:.4f}" if "mcnemar" in m else "-"
    sig = {"B": "B better", "A": "A better"}.get(m["significant"], "no")
    return [*first, *nums, ci, p, rates, mcn, sig]


def format_table(result: dict, markdown: bool = False) -> str:
    p, conf = result["pairing"], f"{result['settings']['confidence']:.0%}"
    head = ["metric", "better", "n", "mean A", "mean B", "B-A", f"{conf} CI", "p(B better)"]
    head += ["win/tie/loss", "McNemar p", "significant"]
    rows = [_cells(m) for m in result["metrics"]]
    if markdown:
        table = [f"| {' | '.join(r)} |" for r in [head, ["---"] * len(head), *rows]]
    else:
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        table = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [head, *rows]
        ]
    lines = [
        f"A (current):   {result['run_a']['items']}",
        f"B (candidate): {result['run_b']['items']}",
        f"paired items: {p['paired']}; left out: {p['only_a']} only in A, {p['only_b']} only in B",
        "",
        *table,
        "",
        *[f"note: {n}" for n in result["notes"]],
        f"verdict: {result['verdict']} ({result['reason']})",
    ]
    return "\n".join(lines) + "\n"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message}\n{self.format_usage().strip()}")


def _slug(path: str) -> str:
    p = Path(path).resolve()
    return re.sub(r"[^A-Za-z0-9._-]+", "_", (p.parent if p.is_file() else p).name) or "run"


def main(argv: list[str]) -> int:
    """``lmforge evaluate compare RUN_A RUN_B [options]``; returns the exit code."""
    parser = _Parser(
        prog="lmforge evaluate compare",
        description="Paired comparison of two evaluate runs: A = current model, B = candidate.",
    )
    parser.add_argument("run_a", help="evaluate run folder (or items.jsonl) of the current model")
    parser.add_argument("run_b", help="evaluate run folder (or items.jsonl) of the candidate")
    parser.add_argument("-o", "--output", help="run folder (default runs/compare-<A>-vs-<B>)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--confidence", type=float, default=0.95, help="CI level for the verdict")
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    result = compare_runs(args.run_a, args.run_b, args.resamples, args.seed, args.confidence)
    out = Path(args.output or f"runs/compare-{_slug(args.run_a)}-vs-{_slug(args.run_b)}")
    inputs = {Path(result[k]["items"]).parent for k in ("run_a", "run_b")}
    if out.resolve() in inputs or _describe(out / ITEMS, 0)["stage"] not in (None, "compare"):
        raise UserError(f"refusing to write into {out}: it holds another run; pick --output")
    config = {"run_a": args.run_a, "run_b": args.run_b, **result["settings"]}
    run = Run.start(
        "compare",
        config,
        out,
        inputs={"run_a": result["run_a"]["items"], "run_b": result["run_b"]["items"]},
    )
    with recorded(run):
        run.add_output(atomic_write_json(run.dir / "compare.json", result), "compare")
        run.add_output(atomic_write_text(run.dir / "compare.md", format_table(result, True)), "md")
        run.counts.update({k: result["pairing"][k] for k in ("paired", "only_a", "only_b")})
        run.metrics = {"verdict": result["verdict"], "reason": result["reason"]}
        run.metrics.update(
            {m["name"]: {k: m[k] for k in ("diff", "ci")} for m in result["metrics"]}
        )
    print(format_table(result), end="")
    print(f"lmforge: wrote {run.dir / 'compare.json'}")
    return 0
