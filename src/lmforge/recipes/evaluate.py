"""``lmforge evaluate CONFIG``: perplexity on text and exact-match accuracy on instruction data.

    lmforge evaluate model.path=runs/pt perplexity.files=[heldout.jsonl] perplexity.window=256
    lmforge evaluate model.adapter=runs/lora exact_match.files=[test.jsonl] output_dir=runs/eval

Perplexity: a .txt file is one document (the whole file); each .jsonl/.json row is one document
(``perplexity.text_field``). Reported per file and overall: nll (nats), tokens, words, bytes,
token and word perplexity, bits per byte (lm-eval's ``loglikelihood_rolling`` convention, see
``lmforge.eval.perplexity``).
Exact match: alpaca / messages / sharegpt / ``{"prompt", "reference"}`` rows are answered with
``generation`` settings (greedy by default, through the chat template) and compared after
normalisation; prompts longer than ``exact_match.max_length`` tokens are rejected.

Writes ``OUTPUT_DIR/metrics.json``, ``OUTPUT_DIR/items.jsonl`` (one score per document or
question, so comparisons and significance tests need no rerun), ``rejects.jsonl`` and
``manifest.json``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from lmforge.artifacts import Run, atomic_write_json, atomic_write_text, recorded
from lmforge.config import to_dict
from lmforge.config.recipes import EvaluateRecipe
from lmforge.data.readers import TEXT_SUFFIXES, Rejects, check_files, iter_records
from lmforge.data.schema import RowError, to_text
from lmforge.errors import ConfigError, DataError
from lmforge.eval import classify, multiple_choice, text_metrics
from lmforge.eval.efficiency import Efficiency, format_efficiency
from lmforge.eval.exact_match import exact_match
from lmforge.eval.perplexity import PerplexityResult, count_words, perplexity
from lmforge.models.load import load_for_inference, resolve_device
from lmforge.recipes.evaluate_analysis import analyse_errors, evaluate_robustness
from lmforge.recipes.generate import (
    model_inputs,
    prompt_input,
    read_prompts,
    row_id,
)
from lmforge.serve.generate import encode_prompts, generate


def read_documents(path: Path, text_field: str, rejects: Rejects) -> list[tuple]:
    """(item id, source file, line, text) per document: a text file is one document, a JSON
    row is one (its own ``id``, else ``shard:line`` of the file it was read from)."""
    if path.suffix.lower() in TEXT_SUFFIXES:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            rejects.add(str(path), 1, f"not UTF-8: {exc.reason}")
            return []
        if not text.strip():
            rejects.add(str(path), 1, "empty text")
            return []
        return [(f"{path.name}:1", str(path), 1, text)]
    docs = []
    for record in iter_records([path], rejects):
        try:
            text = to_text(record.row, text_field)
        except RowError as exc:
            rejects.add_record(record, str(exc))
            continue
        docs.append((row_id(record), record.source, record.line, text))
    return docs


def evaluate_perplexity(cfg: EvaluateRecipe, model, tokenizer, rejects: Rejects):
    """(metrics, items, counts) for ``cfg.perplexity.files``."""
    pcfg = cfg.perplexity
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and pcfg.window > limit:
        raise ConfigError(
            f"perplexity.window ({pcfg.window}) exceeds the model's context "
            f"({limit} positions); lower perplexity.window"
        )
    before = len(rejects)
    total, per_file, items = PerplexityResult(), {}, []
    for path in check_files(pcfg.files, "perplexity file"):
        docs = read_documents(path, pcfg.text_field, rejects)
        texts = [text for *_, text in docs]
        result = perplexity(model, tokenizer, texts, pcfg.window, pcfg.stride, pcfg.batch_size)
        per_file[str(path)] = result.summary()
        total = total.merge(result)
        for (item_id, source, line, text), (nll, tokens) in zip(docs, result.per_text, strict=True):
            items.append(
                {
                    "eval": "perplexity",
                    "id": item_id,
                    "source": source,
                    "source_line": line,
                    "nll": nll,
                    "tokens": tokens,
                    "words": count_words(text),
                    "bytes": len(text.encode("utf-8")),
                }
            )
    if not items:
        raise DataError(f"no usable text in perplexity.files {pcfg.files}")
    counts = {
        "read": len(items) + len(rejects) - before,
        "used": len(items),
        "rejected": len(rejects) - before,
    }
    return {**total.summary(), "files": per_file}, items, counts, None


def _counts(read: int, used: int, rejected: int) -> dict:
    """read = used + rejected + skipped (rows beyond ``max_examples``)."""
    return {"read": read, "used": used, "rejected": rejected, "skipped": read - used - rejected}


def evaluate_exact_match(cfg: EvaluateRecipe, model, tokenizer, rejects: Rejects):
    """(metrics, items, counts) for ``cfg.exact_match.files``."""
    ecfg, gen = cfg.exact_match, cfg.generation
    before = len(rejects)
    questions = []
    for prompt in read_prompts(
        [str(p) for p in check_files(ecfg.files, "exact_match file")], rejects
    ):
        try:
            if prompt.reference is None:
                raise RowError("no reference answer (add 'reference' or an assistant answer)")
            inputs = prompt_input(prompt, gen.chat)
            n_tokens = len(encode_prompts(tokenizer, [inputs], gen)[0])
            if n_tokens > ecfg.max_length:
                raise RowError(
                    f"prompt too long: {n_tokens} tokens > exact_match.max_length "
                    f"({ecfg.max_length})"
                )
        except RowError as exc:
            rejects.add(prompt.source, prompt.line, str(exc), prompt.row)
            continue
        questions.append((prompt, inputs))
    read = len(questions) + len(rejects) - before
    if ecfg.max_examples:
        questions = questions[: ecfg.max_examples]
    if not questions:
        raise DataError(f"no usable questions in exact_match.files {ecfg.files}")
    metrics, items = answer_questions(cfg, model, tokenizer, questions)
    return metrics, items, _counts(read, len(questions), len(rejects) - before), questions


def answer_questions(cfg: EvaluateRecipe, model, tokenizer, questions: list) -> tuple:
    """(metrics, items) of ``(prompt, model input)`` questions answered with ``generation``."""
    ecfg, gen = cfg.exact_match, cfg.generation
    results = generate(model, tokenizer, [q for _, q in questions], gen, progress=True)
    predictions = [r["text"] for r in results]
    references = [p.reference for p, _ in questions]
    scores = exact_match(predictions, references)
    text_scores, per_item = reference_metrics(predictions, references, ecfg.metrics)
    items, by_task = [], defaultdict(list)
    for k, ((prompt, _), result, correct) in enumerate(
        zip(questions, results, scores["per_item"], strict=True)
    ):
        task = prompt.row.get("task") if isinstance(prompt.row, dict) else None
        items.append(
            {
                "eval": "exact_match",
                "id": prompt.id,
                "source": prompt.source,
                "source_line": prompt.line,
                "task": task,
                "prompt": prompt.text,
                "prediction": result["text"],
                "reference": prompt.reference,
                "correct": correct,
                **{name: values[k] for name, values in per_item.items()},
                "new_tokens": result["new_tokens"],
                "finish_reason": result["finish_reason"],
            }
        )
        if isinstance(task, str):
            by_task[task].append(correct)
    metrics = {k: scores[k] for k in ("accuracy", "correct", "total")} | text_scores
    metrics["generated_tokens"] = sum(r["new_tokens"] for r in results)
    if by_task:
        metrics["by_task"] = {t: sum(v) / len(v) for t, v in sorted(by_task.items())}
    return metrics, items


def reference_metrics(
    predictions: list[str], references: list[str], names: list[str]
) -> tuple[dict, dict[str, list[float]]]:
    """Corpus scores and per-item scores of the text metrics in ``names`` (besides exact
    match, which is always computed): bleu, chrf (0-100), rouge1/rouge2/rougeL (0-1)."""
    corpus, per_item = {}, {}
    if "bleu" in names:
        out = text_metrics.bleu(predictions, references)
        # corpus BLEU is 0 when no answer has four tokens; the mean sentence BLEU (smoothed,
        # effective order) is what per-item comparisons use
        mean = sum(out["per_item"]) / len(out["per_item"])
        corpus.update(bleu=out["bleu"], bleu_sentence=mean, bleu_tokenize=out["tokenize"])
        per_item["bleu"] = out["per_item"]
    if "chrf" in names:
        out = text_metrics.chrf(predictions, references)
        corpus["chrf"] = out["chrf"]
        per_item["chrf"] = out["per_item"]
    if "rouge" in names:
        out = text_metrics.rouge(predictions, references)
        for key in text_metrics.ROUGE_TYPES:
            corpus[key] = out[key]
            per_item[key] = [item[key] for item in out["per_item"]]
    return corpus, per_item


def evaluate_multiple_choice(cfg: EvaluateRecipe, model, tokenizer, rejects: Rejects):
    """(metrics, items, counts) for ``cfg.multiple_choice.files``."""
    mcfg = cfg.multiple_choice
    before = len(rejects)
    rows = multiple_choice.read_rows(
        [str(p) for p in check_files(mcfg.files, "multiple_choice file")], rejects
    )
    read = len(rows) + len(rejects) - before
    if mcfg.max_examples:
        rows = rows[: mcfg.max_examples]
    if not rows:
        raise DataError(f"no usable rows in multiple_choice.files {mcfg.files}")
    metrics, items = multiple_choice.evaluate_rows(model, tokenizer, rows, mcfg)
    return metrics, items, _counts(read, len(rows), len(rejects) - before), rows


def evaluate_classification(cfg: EvaluateRecipe, model, tokenizer, rejects: Rejects):
    """(metrics, items, counts, None) for ``cfg.classification.files``."""
    ccfg = cfg.classification
    try:
        task = classify.task_of(model)
    except RowError as exc:
        raise ConfigError(f"classification.files: {exc} (evaluate a stage cls run)") from None
    names = classify.class_names(model)
    before = len(rejects)
    files = [str(p) for p in check_files(ccfg.files, "classification file")]
    rows = classify.read_rows(files, ccfg, names, task, rejects)
    read = len(rows) + len(rejects) - before
    if ccfg.max_examples:
        rows = rows[: ccfg.max_examples]
    if not rows:
        raise DataError(f"no usable rows in classification.files {ccfg.files}")
    metrics, items = classify.evaluate_rows(
        model, tokenizer, rows, task, names, ccfg.max_length, ccfg.batch_size
    )
    return metrics, items, _counts(read, len(rows), len(rejects) - before), None


def evaluate_harness(cfg: EvaluateRecipe, model, tokenizer, rejects: Rejects, folder: Path):
    """(metrics, items, counts) of ``cfg.harness.tasks`` run by lm-evaluation-harness."""
    from lmforge.eval.harness import run_tasks

    return (*run_tasks(model, tokenizer, cfg.harness, folder), None)


# the evaluation kinds that read files, in the order a run evaluates them
FILE_KINDS = {
    "perplexity": evaluate_perplexity,
    "exact_match": evaluate_exact_match,
    "multiple_choice": evaluate_multiple_choice,
    "classification": evaluate_classification,
}


def file_kinds(cfg) -> list[str]:
    """The file kinds ``cfg`` (an ``EvaluateRecipe`` or a training config's ``eval`` group,
    which has no classification) has files for."""
    return [k for k in FILE_KINDS if getattr(cfg, k, None) is not None and getattr(cfg, k).files]


def evaluate_model(cfg, model, tokenizer, rejects: Rejects) -> dict:
    """``{kind: metrics}`` of every file kind ``cfg`` has files for, on a model already in
    memory (training gates: before and after training)."""
    return {kind: FILE_KINDS[kind](cfg, model, tokenizer, rejects)[0] for kind in file_kinds(cfg)}


def run(cfg: EvaluateRecipe) -> Run:
    files = [f for kind in file_kinds(cfg) for f in getattr(cfg, kind).files]
    if not (files or cfg.harness.tasks):
        raise ConfigError(
            "nothing to evaluate: set perplexity.files, exact_match.files, "
            "multiple_choice.files, classification.files and/or harness.tasks"
        )
    check_files(files, "evaluation file")
    run = Run.start(
        "evaluate",
        to_dict(cfg),
        cfg.output_dir,
        inputs={
            **model_inputs(cfg.model),
            **{f"{kind}_data": getattr(cfg, kind).files for kind in FILE_KINDS},
        },
    )
    if not cfg.force and run.finished_before():
        print(f"lmforge: reusing finished evaluate run {run.dir}")
        return run
    with recorded(run):
        model, tokenizer = load_for_inference(cfg.model, resolve_device(cfg.device))
        rejects, items = Rejects(), []
        meter = Efficiency.start(model, cfg.model)
        kinds = {kind: FILE_KINDS[kind] for kind in file_kinds(cfg)}
        if cfg.harness.tasks:
            kinds["harness"] = lambda *args: evaluate_harness(*args, folder=run.dir)
        inputs = {}  # what robustness perturbs: the exact-match and multiple-choice questions
        for name, evaluate in kinds.items():
            with meter.timed(name):
                metrics, new_items, counts, used = evaluate(cfg, model, tokenizer, rejects)
            run.metrics[name], run.counts[name], inputs[name] = metrics, counts, used
            items.extend(new_items)
        if cfg.robustness.perturbations:
            with meter.timed("robustness"):
                run.metrics["robustness"], new_items = evaluate_robustness(
                    cfg, model, tokenizer, inputs, answer_questions
                )
            items.extend(new_items)
        if cfg.error_analysis:
            run.metrics["error_analysis"] = analyse_errors(items, run.dir / "errors")
        run.metrics["efficiency"] = meter.summary(run.metrics)
        rejects_path = rejects.write(run.dir / "rejects.jsonl")
        run.counts.update(
            rejected=len(rejects),
            rejected_by_reason=rejects.by_reason(),
            rejects_file=str(rejects_path),
        )
        items_path = atomic_write_text(
            run.dir / "items.jsonl",
            "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items),
        )
        metrics_path = atomic_write_json(run.dir / "metrics.json", run.metrics)
        run.add_output(metrics_path, "metrics")
        run.add_output(items_path, "items")
    print(format_metrics(run.metrics))
    return run


def format_metrics(metrics: dict) -> str:
    lines = []
    if "perplexity" in metrics:
        p = metrics["perplexity"]
        lines.append(
            f"perplexity: {p['token_perplexity']:.3f} per token, "
            f"{p['word_perplexity']:.3f} per word, {p['bits_per_byte']:.4f} bits/byte "
            f"({p['tokens']} tokens)"
        )
    if "exact_match" in metrics:
        e = metrics["exact_match"]
        more = "".join(
            f", {k} {e[k]:.2f}" if k in ("bleu", "bleu_sentence", "chrf") else f", {k} {e[k]:.3f}"
            for k in ("bleu", "bleu_sentence", "chrf", *text_metrics.ROUGE_TYPES)
            if k in e
        )
        lines.append(f"exact match: {e['accuracy']:.3f} ({e['correct']}/{e['total']}){more}")
    if "multiple_choice" in metrics:
        m = metrics["multiple_choice"]
        lines.append(
            f"multiple choice: acc {m['acc']:.3f}, acc_norm {m['acc_norm']:.3f} ({m['total']})"
        )
    if "classification" in metrics:
        c = metrics["classification"]
        entity = f", entity F1 {c['entity']['f1']:.3f}" if "entity" in c else ""
        lines.append(
            f"classification ({c['task']}): accuracy {c['accuracy']:.3f}, macro F1 "
            f"{c['macro_f1']:.3f}, micro F1 {c['micro_f1']:.3f}{entity} ({c['total']})"
        )
    for task, values in metrics.get("harness", {}).items():
        shown = ", ".join(
            f"{k.split(',')[0]} {v:.3f}"
            for k, v in values.items()
            if "stderr" not in k and k not in ("sample_len",)
        )
        lines.append(f"lm-eval {task}: {shown}")
    for kind, suites in metrics.get("robustness", {}).items():
        shown = ", ".join(
            f"{name} -{r['all']['drop']:.3f} ({r['changed']} changed)"
            for name, r in suites.items()
            if isinstance(r, dict)
        )
        lines.append(f"robustness {kind} (clean {suites['clean_accuracy']:.3f}): {shown}")
    for kind, e in metrics.get("error_analysis", {}).items():
        lines.append(
            f"errors {kind}: {e['errors']} wrong, {e['clusters']} clusters in {e['folder']}"
        )
    if "efficiency" in metrics:
        lines.append(format_efficiency(metrics["efficiency"]))
    return "\n".join(lines)
