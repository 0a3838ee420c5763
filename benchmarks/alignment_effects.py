"""What the alignment stages do to a model: a reward model's held-out pair accuracy, and DPO's
held-out margin and the accuracy of sampled (greedy) answers before and after.

It runs ``lmforge demo`` (or reads a finished one: ``--demo DIR``): generated bilingual data,
a tokenizer, a pretrained tiny Llama, LoRA SFT on six instruction tasks, then DPO with a new
LoRA adapter on preference pairs built from the training tasks (``lmforge.data.synthetic_pairs``:
the correct answer chosen, a wrong answer of the same task rejected), starting from the SFT
adapter, and exact-match evaluations of the SFT and DPO models on the held-out test tasks. Then
it trains a reward model (stage ``rm``, full fine-tuning, from the SFT model) on the same pairs
and evaluates it on the held-out pairs before its first step and after.

The preference is a rule a model must read the prompt to follow: both answers of a pair are
well-formed answers of the task (``even``/``odd``, ``positive``/``negative``, two spelled
numbers), so neither length nor format tells them apart.

    .venv/bin/python benchmarks/alignment_effects.py                  # demo + reward model
    .venv/bin/python benchmarks/alignment_effects.py --demo demo-run  # reuse `make demo`'s run

Results: ``benchmarks/results/alignment_effects.json``; summary in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import format_table, run_header, run_main, write_results

REPO = Path(__file__).resolve().parents[1]
QUIET = ["track.progress=false", "track.tensorboard=off"]


def lmforge(*args: str) -> None:
    cmd = [sys.executable, "-m", "lmforge.cli", *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def reward_model(demo: Path, steps: int, seed: int) -> dict:
    out = demo / "reward-model"
    pairs = demo / "data" / "pairs"
    lmforge(
        "train",
        "stage=rm",
        f"model.path={demo / 'sft' / 'model'}",
        f"data.train=[{pairs / 'train.jsonl'}]",
        f"data.validation=[{pairs / 'val.jsonl'}]",
        "data.max_length=128",
        "adapter.type=full",
        "train.batch_size=16",
        f"train.max_steps={steps}",
        "train.lr=3e-4",
        "train.warmup_steps=20",
        f"train.seed={seed}",
        "train.eval_on_start=true",
        f"train.eval_every={max(1, steps // 4)}",
        "train.log_every=25",
        f"output_dir={out}",
        "force=true",
        *QUIET,
    )
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "evaluations": [
            {k: r[k] for k in ("step", "eval_accuracy", "eval_loss", "eval_reward_margin")}
            for r in rows
            if "eval_loss" in r
        ],
        "steps": steps,
        "run_dir": str(out),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, default=None, help="a finished demo run folder")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lmforge-alignment-effects"))
    parser.add_argument("--rm-steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    demo = args.demo
    if demo is None:
        demo = args.work / "demo"
        lmforge("demo", f"output_dir={demo}", f"seed={args.seed}", "progress=false")
    report = json.loads((demo / "report.json").read_text())
    figures = report["figures"]
    rm = reward_model(demo, args.rm_steps, args.seed)
    results = {
        **run_header("alignment_effects", sys.argv),
        "demo": str(demo),
        "dpo": {
            k: figures[k]
            for k in (
                "accuracy_after_sft_merged",
                "accuracy_after_dpo",
                "accuracy_by_task_after",
                "accuracy_by_task_after_dpo",
                "dpo_pair_accuracy_before",
                "dpo_pair_accuracy_after",
                "dpo_logp_margin_before",
                "dpo_logp_margin_after",
            )
        },
        "reward_model": rm,
    }
    first, last = rm["evaluations"][0], rm["evaluations"][-1]
    print(
        "\n"
        + format_table(
            ["held-out figure", "before", "after"],
            [
                [
                    "DPO: pairs where the chosen answer is more likely",
                    f"{figures['dpo_pair_accuracy_before']:.3f}",
                    f"{figures['dpo_pair_accuracy_after']:.3f}",
                ],
                [
                    "DPO: mean log p(chosen) - log p(rejected)",
                    f"{figures['dpo_logp_margin_before']:.2f}",
                    f"{figures['dpo_logp_margin_after']:.2f}",
                ],
                [
                    "DPO: exact match of greedy answers (test tasks)",
                    f"{figures['accuracy_after_sft_merged']:.3f}",
                    f"{figures['accuracy_after_dpo']:.3f}",
                ],
                [
                    f"reward model: pair accuracy (step 0 -> {last['step']})",
                    f"{first['eval_accuracy']:.3f}",
                    f"{last['eval_accuracy']:.3f}",
                ],
            ],
        )
    )
    default = REPO / "benchmarks" / "results" / "alignment_effects.json"
    write_results(results, args.results or default)
    return 0


if __name__ == "__main__":
    run_main(main)
