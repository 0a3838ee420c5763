"""What ``lmforge evaluate`` does with the items it scored: robustness (the exact-match and
multiple-choice questions asked again under each perturbation, ``eval.robustness``) and error
analysis (per-class errors, confusion PNG, clusters of the wrong answers,
``eval.error_analysis``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lmforge.config.recipes import EvaluateRecipe
from lmforge.errors import ConfigError
from lmforge.eval import error_analysis, multiple_choice, robustness
from lmforge.recipes.generate import prompt_input


def evaluate_robustness(
    cfg: EvaluateRecipe, model, tokenizer, inputs: dict, answer_questions
) -> tuple:
    """(metrics, items): ``robustness.perturbations`` applied to the exact-match questions
    (their last user message) and the multiple-choice questions, each perturbed prompt
    answered again (``answer_questions``: ``recipes.evaluate``'s, for the exact-match ones); per
    kind and perturbation the accuracy drop (``eval.robustness``)."""
    rcfg, metrics, items = cfg.robustness, {}, []
    suites = {}
    if inputs.get("exact_match"):
        questions = {p.id: (p, q) for p, q in inputs["exact_match"]}

        def answer(texts: list[str], chosen: list[dict]) -> list[float]:
            perturbed = []
            for text, item in zip(texts, chosen, strict=True):
                prompt = questions[item["id"]][0]
                messages = [dict(m) for m in prompt.messages]
                last = max(i for i, m in enumerate(messages) if m["role"] == "user")
                messages[last]["content"] = text
                changed = replace(prompt, messages=messages)
                perturbed.append((changed, prompt_input(changed, cfg.generation.chat)))
            _, scored = answer_questions(cfg, model, tokenizer, perturbed)
            return [float(i["correct"]) for i in scored]

        suites["exact_match"] = (
            [_robust_item(p.id, p.text, p.reference, p.row) for p, _ in inputs["exact_match"]],
            answer,
        )
    if inputs.get("multiple_choice"):
        rows = dict(inputs["multiple_choice"])
        mcfg = cfg.multiple_choice

        def choose(texts: list[str], chosen: list[dict]) -> list[float]:
            perturbed = [
                (item["id"], {**rows[item["id"]], "question": text, "prompt": text})
                for text, item in zip(texts, chosen, strict=True)
            ]
            _, scored = multiple_choice.evaluate_rows(model, tokenizer, perturbed, mcfg)
            return [float(i["correct"]) for i in scored]

        suites["multiple_choice"] = (
            [
                _robust_item(i, multiple_choice.parse_row(r)[0], r.get("answer"), r)
                for i, r in inputs["multiple_choice"]
            ],
            choose,
        )
    if not suites:
        raise ConfigError(
            "robustness.perturbations perturbs exact_match or multiple_choice questions: "
            "set exact_match.files or multiple_choice.files"
        )
    for kind, (robust_items, score) in suites.items():
        report = robustness.robustness_report(
            robust_items, score, rcfg.perturbations, rcfg.rate, rcfg.seed
        )
        metrics[kind] = {
            "clean_accuracy": report["clean_accuracy"],
            **{
                name: {k: v for k, v in result.items() if k != "rows"}
                for name, result in report["perturbations"].items()
            },
        }
        for name, result in report["perturbations"].items():
            for row in result["rows"]:
                items.append(
                    {
                        "eval": f"robustness:{kind}:{name}",
                        "id": row["id"],
                        "prompt": row["prompt"],
                        "changed": row["changed"],
                        "clean": row["clean_score"],
                        "correct": row["perturbed_score"],
                    }
                )
    return metrics, items


def _robust_item(item_id: str, prompt: str, reference, row) -> dict:
    lang = row.get("lang") if isinstance(row, dict) else None
    return {"id": item_id, "prompt": prompt, "reference": reference, "lang": lang}


def analyse_errors(items: list[dict], folder: Path) -> dict:
    """Error analysis (``eval.error_analysis``) of the exact-match and multiple-choice items,
    one folder per kind: per-class errors, a confusion PNG, clusters of the wrong answers."""
    out = {}
    for kind in ("exact_match", "multiple_choice", "classification"):
        chosen = [i for i in items if i["eval"] == kind]
        if chosen:
            summary = error_analysis.error_report(chosen, folder / kind)
            out[kind] = {
                "folder": str(folder / kind),
                "errors": sum(not i["correct"] for i in chosen),
                "clusters": len((summary.get("clusters") or {}).get("clusters", [])),
                "notes": summary.get("notes", []),
            }
    return out
