"""``lmforge demo``: the whole path on CPU, with no download, in a few minutes on 2 cores.

    lmforge demo                      # what `make demo` runs; writes demo-run/
    lmforge demo pt_steps=200 sft_steps=100 output_dir=/tmp/quick-demo

1. generate a bilingual corpus and instruction tasks (``lmforge.data.synthetic``) and split them
   (corpus 95/5; tasks 70/15/15 train/validation/test);
2. train a byte-level BPE tokenizer; 3. pretrain a tiny Llama-style model from random weights;
4. fine-tune it with LoRA on the instruction tasks; 5. evaluate before and after (perplexity
   on held-out corpus text, exact-match accuracy on the test tasks);
6. merge the adapter into a plain Hugging Face model and evaluate that;
7. align the fine-tuned model with DPO on preference pairs built from the training tasks (the
   correct answer chosen, a wrong one rejected; ``lmforge.data.synthetic_pairs``), starting from
   the SFT adapter, and evaluate again; 8. apply the promotion rule to the SFT and DPO models
   (``evaluate compare``) and print a report.

Each step is an ordinary recipe run with its own manifest, so ``lmforge lineage
demo-run/merged/model`` walks from the served model back to the generated data files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lmforge.artifacts import Run, atomic_write_json, atomic_write_text, recorded
from lmforge.config import build_config, load_config, to_dict
from lmforge.config.groups import ModelConfig
from lmforge.config.prepare import PrepareRecipe
from lmforge.config.recipes import (
    DemoRecipe,
    EvaluateRecipe,
    ExportMergeRecipe,
    TokenizerRecipe,
    TrainRecipe,
)
from lmforge.data.noise import add_noise, write_noisy_jsonl
from lmforge.data.readers import Rejects, iter_records
from lmforge.data.synthetic import write_demo_data
from lmforge.data.synthetic_pairs import to_pairs, write_pairs
from lmforge.models.load import build_model, load_tokenizer, save_pretrained
from lmforge.recipes import evaluate, export, prepare, tokenizer, train


def _prepare(out: Path, raw: Path, blocks: list, workers: int = 1, **extra) -> Path:
    """One ``lmforge prepare`` run over ``raw``; returns its run directory."""
    cfg = build_config(
        PrepareRecipe,
        {
            "output_dir": str(out),
            "inputs": [{"files": [str(raw)]}],
            "blocks": blocks,
            "shard_size": 1000,
            "executor": {"kind": "local", "workers": workers},
            **extra,
        },
        source=f"demo prepare {out.name}",
    )
    return prepare.run(cfg).dir


def prepare_data(out: Path, cfg: DemoRecipe) -> dict[str, Path]:
    """Generate raw data (with planted duplicates, PII, junk and malformed rows) and curate it.

    Two ``lmforge prepare`` runs: the instruction tasks (deduplicated, split 70/15/15 stratified
    by task, near-duplicates kept inside one split) and the pretraining corpus (normalised,
    language-checked, junk and duplicates removed, PII redacted, decontaminated against the test
    tasks, split 95/5). Returns the split folders the later steps train and evaluate on.
    """
    raw_dir = out / "raw"
    run = Run.start("data", to_dict(cfg), raw_dir)
    with recorded(run):
        generated = write_demo_data(
            raw_dir / "generated", n_docs=cfg.n_docs, n_per_task=cfg.n_per_task, seed=cfg.seed
        )
        clean = [json.loads(line) for line in generated["corpus"].read_text().splitlines()]
        rows, bad_lines = add_noise(clean, seed=cfg.seed)
        raw_corpus = write_noisy_jsonl(raw_dir / "corpus.jsonl", rows, bad_lines, cfg.seed)
        raw_tasks = raw_dir / "tasks.jsonl"
        raw_tasks.write_bytes(generated["tasks"].read_bytes())
        for role, path in (("corpus", raw_corpus), ("tasks", raw_tasks)):
            run.add_input(path, f"generated_{role}")  # lineage ends at these files
            run.add_output(path, f"raw_{role}")
    tasks = _prepare(
        out / "tasks",
        raw_tasks,
        [
            "normalize",
            "exact_dedup",
            {"split": {"ratios": [0.7, 0.15, 0.15], "stratify": "task"}},
        ],
        seed=cfg.seed,
    )
    corpus = _prepare(
        out / "corpus",
        raw_corpus,
        [
            "normalize",
            {"langid": {"keep": ["en", "zh"]}},
            "garbled",
            {"length_filter": {"min_chars": 15}},
            "exact_dedup",
            {"minhash_dedup": {"threshold": 0.8}},
            "pii",
            {"decontaminate": {"eval_files": [str(tasks / "data" / "test")]}},
            {"split": {"ratios": [0.95, 0.05], "names": ["train", "validation"]}},
        ],
        seed=cfg.seed,
    )
    return {
        "corpus_train": corpus / "data" / "train",
        "corpus_val": corpus / "data" / "validation",
        "tasks_train": tasks / "data" / "train",
        "tasks_val": tasks / "data" / "validation",
        "tasks_test": tasks / "data" / "test",
    }


def _evaluate(label: str, out: Path, model: list[str], files: dict[str, Path]) -> dict:
    cfg = load_config(
        EvaluateRecipe,
        None,
        [
            *model,
            f"output_dir={out / f'eval-{label}'}",
            f"perplexity.files=[{files['corpus_val']}]",
            "perplexity.window=256",
            f"exact_match.files=[{files['tasks_test']}]",
            "generation.max_new_tokens=12",
            "generation.batch_size=32",
        ],
    )
    return evaluate.run(cfg).metrics


def run(cfg: DemoRecipe) -> Run:
    out = Path(cfg.output_dir)
    started = time.time()
    demo = Run.start("demo", to_dict(cfg), out)
    with recorded(demo):
        print("lmforge demo: 1/8 generating raw data and curating it (lmforge prepare)")
        files = prepare_data(out / "data", cfg)

        print("lmforge demo: 2/8 training a tokenizer")
        tok_run = tokenizer.run(
            load_config(
                TokenizerRecipe,
                None,
                [
                    f"data.files=[{files['corpus_train']}]",
                    f"tokenizer.vocab_size={cfg.vocab_size}",
                    f"output_dir={out / 'tokenizer'}",
                ],
            )
        )
        tok_dir = tok_run.dir / "tokenizer"

        print("lmforge demo: 3/8 pretraining a tiny Llama-style model from random weights")
        pt = train.run(
            load_config(
                TrainRecipe,
                None,
                [
                    "stage=pt",
                    f"model.preset={cfg.preset}",
                    f"model.tokenizer={tok_dir}",
                    f"data.train=[{files['corpus_train']}]",
                    f"data.validation=[{files['corpus_val']}]",
                    "data.max_length=256",
                    "train.batch_size=8",
                    f"train.max_steps={cfg.pt_steps}",
                    "train.lr=3e-3",
                    "train.warmup_steps=20",
                    f"train.seed={cfg.seed}",
                    f"train.save_every={max(1, cfg.pt_steps // 2)}",
                    "train.log_every=25",
                    f"output_dir={out / 'pt'}",
                    f"track.progress={cfg.progress}",
                ],
            )
        )

        print("lmforge demo: 4/8 evaluating the random-init and pretrained models")
        tok = load_tokenizer(tok_dir)  # the pretraining run's starting point (same seed)
        initial = save_pretrained(
            build_model(ModelConfig(preset=cfg.preset), tok, seed=cfg.seed),
            tok,
            out / "random-init" / "model",
        )
        before_pt = _evaluate("random-init", out, [f"model.path={initial}"], files)
        before = _evaluate("pretrained", out, [f"model.path={pt.dir}"], files)

        print("lmforge demo: 5/8 fine-tuning with LoRA on the instruction tasks")
        sft = train.run(
            load_config(
                TrainRecipe,
                None,
                [
                    "stage=sft",
                    f"model.path={pt.dir}",
                    "adapter.type=lora",
                    "adapter.rank=16",
                    "adapter.alpha=32",
                    f"data.train=[{files['tasks_train']}]",
                    f"data.validation=[{files['tasks_val']}]",
                    "data.max_length=128",
                    "train.batch_size=16",
                    f"train.max_steps={cfg.sft_steps}",
                    "train.lr=3e-3",
                    "train.warmup_steps=10",
                    f"train.seed={cfg.seed}",
                    "train.log_every=25",
                    f"train.eval_every={max(1, cfg.sft_steps // 4)}",
                    f"output_dir={out / 'sft'}",
                    f"track.progress={cfg.progress}",
                ],
            )
        )

        print("lmforge demo: 6/8 merging the adapter and evaluating the merged model")
        merged = export.merge(
            load_config(
                ExportMergeRecipe, None, [f"adapter={sft.dir}", f"output_dir={out / 'merged'}"]
            )
        )
        after = _evaluate("merged", out, [f"model.path={merged.dir}"], files)

        print("lmforge demo: 7/8 aligning with DPO on preference pairs (correct answer chosen)")
        dpo = align(out, files, sft, cfg)
        aligned = _evaluate("dpo", out, [f"model.path={dpo.dir}"], files)
        promotion = promote(out)

        report = build_report(
            out,
            files,
            tok_run,
            pt,
            sft,
            merged,
            (before_pt, before, after),
            (dpo, aligned, promotion),
            time.time() - started,
        )
        demo.metrics.update(report["figures"])
        demo.add_output(atomic_write_json(out / "report.json", report), "report")
        demo.add_output(atomic_write_text(out / "report.md", report["text"]), "report_text")
    print("lmforge demo: 8/8 report\n")
    print(report["text"])
    return demo


def promote(out: Path) -> dict:
    """The promotion rule on the SFT and DPO evaluations (``lmforge evaluate compare``): is the
    DPO model significantly better on every metric (exact match, perplexity)?"""
    from lmforge.eval import compare

    folder = out / "compare-sft-dpo"
    compare.main([str(out / "eval-merged"), str(out / "eval-dpo"), "--output", str(folder)])
    return json.loads((folder / "compare.json").read_text(encoding="utf-8"))


def preference_pairs(out: Path, files: dict[str, Path], seed: int) -> dict[str, Path]:
    """Pairs from the curated train and validation tasks (a run of its own, for lineage)."""
    run = Run.start("pairs", {"seed": seed}, out)
    paths = {}
    with recorded(run):
        for split in ("train", "val"):
            source = files[f"tasks_{split}"]
            rows = [r.row for r in iter_records([source], Rejects())]
            paths[split] = write_pairs(out / f"{split}.jsonl", to_pairs(rows, seed))
            run.add_input(source, f"tasks_{split}")
            run.add_output(paths[split], f"pairs_{split}")
    return paths


def align(out: Path, files: dict[str, Path], sft: Run, cfg: DemoRecipe) -> Run:
    """DPO (sigmoid loss plus the chosen answers' NLL, RPO) with a new LoRA adapter on the SFT
    adapter merged into its base; the held-out pairs are evaluated before the first step too
    (their margin under the SFT model)."""
    pairs = preference_pairs(out / "data" / "pairs", files, cfg.seed)
    return train.run(
        load_config(
            TrainRecipe,
            None,
            [
                "stage=dpo",
                f"model.path={sft.dir / 'model'}",
                "adapter.type=lora",
                "adapter.rank=16",
                "adapter.alpha=32",
                f"data.train=[{pairs['train']}]",
                f"data.validation=[{pairs['val']}]",
                "data.max_length=128",
                "preference.beta=0.1",
                # without the chosen answers' NLL, 150 steps at this lr raised the held-out
                # margin 8 -> 26 nats but greedy exact match fell 0.78 -> 0.51 (both answers
                # became less likely); with it, exact match rose (docs/alignment.md)
                "preference.sft_weight=1.0",
                "train.batch_size=16",
                f"train.max_steps={cfg.dpo_steps}",
                "train.lr=1e-3",
                "train.warmup_steps=10",
                f"train.seed={cfg.seed}",
                "train.log_every=25",
                "train.eval_on_start=true",
                f"train.eval_every={max(1, cfg.dpo_steps // 2)}",
                f"output_dir={out / 'dpo'}",
                f"track.progress={cfg.progress}",
            ],
        )
    )


def promotion_rows(result: dict) -> str:
    significant = {"A": "SFT better", "B": "DPO better", None: "no"}
    rows = []
    for m in result["metrics"]:
        low, high = m["ci"]
        rows.append(
            f"| {m['name']} ({m['direction']} is better) | {m['mean_a']:.4g} | {m['mean_b']:.4g} | "
            f"{m['diff']:+.4g} [{low:+.4g}, {high:+.4g}] | {significant[m['significant']]} |"
        )
    return "\n".join(rows)


def curation_table(data_dir: Path) -> str:
    """What each ``prepare`` block did to the demo's raw data (from the runs' stats.json)."""
    lines = ["What lmforge prepare did to the raw data (dropped documents: exclusions/):", ""]
    for name in ("tasks", "corpus"):
        stats = json.loads((data_dir / name / "stats.json").read_text(encoding="utf-8"))
        t = stats["totals"]
        lines += [
            f"{name}: read {t['read']}, kept {t['kept']}, dropped {t['dropped']}, "
            f"rejected {t['rejected']} (rejects.jsonl)",
            "",
            "| block | seen | kept | changed | dropped (reason: count) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for b in stats["blocks"]:
            reasons = ", ".join(f"{r}: {n}" for r, n in b["dropped"].items()) or "-"
            counts = f"{b['seen']} | {b['kept']} | {b['changed']}"
            lines.append(f"| {b['name']} | {counts} | {reasons} |")
        lines.append("")
    return "\n".join(lines)


def build_report(out, files, tok_run, pt, sft, merged, evals, alignment, seconds) -> dict:
    before_pt, before, after = evals
    dpo, aligned, promotion = alignment
    start = dpo.metrics  # start_eval_*: the held-out pairs under the SFT model (step 0)

    def ppl(m):
        return m["perplexity"]["token_perplexity"]

    def acc(m):
        return m["exact_match"]["accuracy"]

    figures = {
        "perplexity_random_init": ppl(before_pt),
        "perplexity_pretrained": ppl(before),
        "perplexity_after_sft_merged": ppl(after),
        "accuracy_random_init": acc(before_pt),
        "accuracy_before_sft": acc(before),
        "accuracy_after_sft_merged": acc(after),
        "accuracy_by_task_after": after["exact_match"].get("by_task", {}),
        "accuracy_after_dpo": acc(aligned),
        "accuracy_by_task_after_dpo": aligned["exact_match"].get("by_task", {}),
        "dpo_pair_accuracy_before": start["start_eval_logp_accuracy"],
        "dpo_pair_accuracy_after": dpo.metrics["eval_logp_accuracy"],
        "dpo_logp_margin_before": start["start_eval_logp_margin"],
        "dpo_logp_margin_after": dpo.metrics["eval_logp_margin"],
        "promotion_verdict": promotion["verdict"],
        "seconds": round(seconds, 1),
    }
    before_tasks = before["exact_match"].get("by_task", {})
    dpo_tasks = figures["accuracy_by_task_after_dpo"]
    by_task = "\n".join(
        f"| {task} | {before_tasks.get(task, 0.0):.2f} | {after_acc:.2f} | "
        f"{dpo_tasks.get(task, 0.0):.2f} |"
        for task, after_acc in sorted(figures["accuracy_by_task_after"].items())
    )
    f = figures
    dpo_rows = (
        f"| pairs where the chosen answer is more likely | {f['dpo_pair_accuracy_before']:.3f} "
        f"| {f['dpo_pair_accuracy_after']:.3f} |\n"
        f"| log p(chosen) - log p(rejected), mean | {f['dpo_logp_margin_before']:.2f} "
        f"| {f['dpo_logp_margin_after']:.2f} |"
    )
    text = f"""# lmforge demo report

Finished in {seconds / 60:.1f} minutes on CPU.

| model | held-out perplexity (per token) | test exact match |
| --- | --- | --- |
| random init | {ppl(before_pt):.1f} | {acc(before_pt):.3f} |
| pretrained (before fine-tuning) | {ppl(before):.2f} | {acc(before):.3f} |
| LoRA fine-tuned, merged | {ppl(after):.2f} | {acc(after):.3f} |
| then DPO (LoRA on the merge) | {ppl(aligned):.2f} | {acc(aligned):.3f} |

Perplexity is on held-out corpus text. It rises after fine-tuning: the LoRA update that teaches
the question/answer format also moves the model away from plain corpus text (forgetting, which
replay of pretraining data reduces).

Exact match per task (pretrained -> fine-tuned -> aligned):

| task | before | after SFT | after DPO |
| --- | --- | --- | --- |
{by_task}

DPO on held-out preference pairs (the correct answer chosen, a wrong one of the same task
rejected), before its first step (the SFT model) and after {dpo.config["train"]["max_steps"]} steps:

| | before | after |
| --- | --- | --- |
{dpo_rows}

Promote the DPO model over the SFT one? `lmforge evaluate compare` (paired bootstrap over the
same test items; promote only when better on every metric with 95% confidence):

| metric | SFT | DPO | DPO - SFT, 95% CI | significant |
| --- | --- | --- | --- | --- |
{promotion_rows(promotion)}

Verdict (A = SFT, B = DPO): **{promotion["verdict"]}** ({promotion["reason"]}).

{curation_table(out / "data")}

Artifacts:
- curated data: {out / "data"}/{{corpus,tasks}}/ (data/, exclusions/, rejects.jsonl, report/)
- tokenizer:   {tok_run.dir / "tokenizer"}
- pretrained:  {pt.dir / "model"}
- LoRA adapter: {sft.dir / "model"}
- merged model: {merged.dir / "model"}  (plain Hugging Face folder)
- DPO adapter: {dpo.dir / "model"} (on {dpo.dir / "start"}, the SFT adapter merged)
- evaluations: {out}/eval-*/ (metrics.json, items.jsonl); SFT vs DPO: {out}/compare-sft-dpo/

Trace the merged model back to the generated data: lmforge lineage {merged.dir / "model"}
"""
    return {"figures": figures, "text": text}
