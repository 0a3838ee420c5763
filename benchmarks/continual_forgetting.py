"""Catastrophic forgetting, and what replay and EWC do about it, on a tiny model.

A ``tiny-llama`` (hidden 128, 2 layers) learns task A, then task B from the A model, under each
setting: plain fine-tuning on B ("neither"), B with a share of A's training rows replayed
(``continual.replay_ratio``), and B with EWC (``continual.ewc_lambda``, several values). Every
model is scored with ``lmforge evaluate``'s exact match (greedy, through the chat template) on
held-out rows of both tasks, so the table shows A's accuracy before and after B next to B's.

The tasks are the synthetic demo tasks (``lmforge.data.synthetic``): A = ``en_sentiment``
("What is the sentiment of this review: ..." -> positive / negative), B = ``zh_parity``
("数字57是奇数还是偶数？" -> 奇数 / 偶数) by default. Each task's rows are split 80/20 into
train and test, seeded. A model is first pretrained briefly on the synthetic corpus (the
knowledge the tasks use), then fully fine-tuned on A; every B run starts from that A model with
the same steps, learning rate and seed, so the settings differ only by replay or EWC.

    .venv/bin/python benchmarks/continual_forgetting.py              # full run, results JSON
    .venv/bin/python benchmarks/continual_forgetting.py --quick      # smoke run, a few minutes

Everything is generated and trained in ``--work`` (a temporary folder by default); nothing is
downloaded. Results: ``benchmarks/results/continual_forgetting.json`` and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

from common import format_table, results_path, run_header, run_main, write_results

QUIET = ["track.progress=false", "track.tensorboard=off"]


def split_tasks(tasks_file: Path, names: list[str], out: Path, seed: int) -> dict[str, Path]:
    """``{name}_train.jsonl`` / ``{name}_test.jsonl`` per task (80/20, seeded) and ``test.jsonl``
    with every task's test rows."""
    rows = [json.loads(x) for x in tasks_file.read_text(encoding="utf-8").splitlines()]
    out.mkdir(parents=True, exist_ok=True)
    paths, tests = {}, []
    for name in names:
        mine = [r for r in rows if r["task"] == name]
        random.Random(f"{seed}-{name}").shuffle(mine)
        cut = int(0.8 * len(mine))
        for split, part in (("train", mine[:cut]), ("test", mine[cut:])):
            paths[f"{name}_{split}"] = _write(out / f"{name}_{split}.jsonl", part)
        tests += mine[cut:]
    paths["test"] = _write(out / "test.jsonl", tests)
    return paths


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def train(overrides: list[str]) -> dict:
    from lmforge.config import load_config
    from lmforge.config.recipes import TrainRecipe
    from lmforge.recipes.train import run

    result = run(load_config(TrainRecipe, None, overrides + QUIET))  # reused when finished
    manifest = json.loads((result.dir / "manifest.json").read_text())
    rows = [json.loads(x) for x in (result.dir / "metrics.jsonl").read_text().splitlines()]
    last = next(r for r in reversed(rows) if "loss" in r)
    return {
        "run_dir": str(result.dir),
        "seconds": manifest["seconds"],  # of the run that trained it (a rerun reuses it)
        "train_loss": last["loss"],
        "ewc_penalty": last.get("ewc_penalty"),
        "train_units": manifest["counts"]["train_units"],
        "replayed": manifest["counts"].get("replay", {}).get("replayed", 0),
        "fisher": manifest["counts"].get("ewc", {}).get("stats"),
    }


def accuracy(model_dir: str, test: Path, out: Path) -> dict[str, float]:
    """Exact-match accuracy per task on ``test`` (lmforge evaluate, greedy)."""
    from lmforge.config import load_config
    from lmforge.config.recipes import EvaluateRecipe
    from lmforge.recipes.evaluate import run

    cfg = load_config(
        EvaluateRecipe,
        None,
        [
            f"model.path={model_dir}",
            f"exact_match.files=[{test}]",
            "generation.max_new_tokens=8",
            "generation.batch_size=32",
            "device=cpu",
            f"output_dir={out}",
        ],
    )
    folder = run(cfg).dir  # a finished evaluation is reused: read what it wrote
    return json.loads((folder / "metrics.json").read_text())["exact_match"]["by_task"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few steps, no results")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--task-a", default="en_sentiment")
    parser.add_argument("--task-b", default="zh_parity")
    parser.add_argument("--per-task", type=int, default=300, help="rows generated per task")
    parser.add_argument("--pt-steps", type=int, default=300)
    parser.add_argument("--a-steps", type=int, default=150)
    parser.add_argument("--b-steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=1e-3, help="fine-tuning lr (A and B)")
    parser.add_argument("--replay", default="0.1,0.25", help="replay ratios tried")
    parser.add_argument(
        "--lambdas", default="1e3,1e5,1e7,1e8,1e9,1e10,1e11,1e12,1e13", help="EWC lambdas tried"
    )
    parser.add_argument("--fisher-examples", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: robust on a shared machine)"
    )
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.quick:
        args.pt_steps, args.a_steps, args.b_steps, args.per_task = 20, 10, 10, 40
        args.lambdas, args.replay, args.fisher_examples = "1e10", "0.25", 8
    header = run_header("continual_forgetting", sys.argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="lmforge-forgetting-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"working in {work}")
    results = {**header, "settings": {k: str(v) for k, v in vars(args).items()}, "runs": {}}

    from lmforge.config import load_config
    from lmforge.config.recipes import TokenizerRecipe
    from lmforge.data.synthetic import write_demo_data
    from lmforge.recipes import tokenizer

    data = write_demo_data(work / "data", n_docs=2000, n_per_task=args.per_task, seed=args.seed)
    files = split_tasks(data["tasks"], [args.task_a, args.task_b], work / "split", args.seed)
    tok = tokenizer.run(
        load_config(
            TokenizerRecipe,
            None,
            [
                f"data.files=[{data['corpus']}]",
                "tokenizer.vocab_size=2000",
                f"output_dir={work}/tok",
            ],
        )
    )
    common = [f"data.cache_dir={work / 'cache'}", f"train.seed={args.seed}", "train.log_every=10"]
    sft = [
        "stage=sft",
        "data.max_length=128",
        "train.batch_size=16",
        f"train.lr={args.lr}",
        "train.warmup_steps=5",
        "train.schedule=constant",
        *common,
    ]
    pt = train(
        [
            "stage=pt",
            "model.preset=tiny-llama",
            f"model.tokenizer={tok.dir / 'tokenizer'}",
            f"data.train=[{data['corpus']}]",
            "data.max_length=128",
            "train.batch_size=8",
            f"train.max_steps={args.pt_steps}",
            "train.lr=3e-3",
            "train.warmup_steps=20",
            f"output_dir={work / 'pt'}",
            *common,
        ]
    )
    a_train = str(files[f"{args.task_a}_train"])
    model_a = train(
        [
            *sft,
            f"model.path={pt['run_dir']}",
            f"data.train=[{a_train}]",
            f"train.max_steps={args.a_steps}",
            f"output_dir={work / 'a'}",
        ]
    )
    before = accuracy(model_a["run_dir"], files["test"], work / "eval-a")
    results["runs"]["pretrained"] = {**pt, "accuracy": None}
    results["runs"]["after A"] = {**model_a, "accuracy": before}

    settings: dict[str, list[str]] = {"neither": []}
    previous = f"continual.previous_data=[{a_train}]"
    for r in args.replay.split(","):
        settings[f"replay {r}"] = [previous, f"continual.replay_ratio={r}"]
    fisher_from = None
    for lam in args.lambdas.split(","):
        extra = [
            previous,
            f"continual.ewc_lambda={lam}",
            f"continual.fisher_examples={args.fisher_examples}",
        ]
        if fisher_from:  # estimated once, by the first EWC run, for the same A model
            extra.append(f"continual.fisher_file={fisher_from}")
        settings[f"EWC {lam}"] = extra
        fisher_from = fisher_from or work / f"b-ewc-{lam}"
    for name, extra in settings.items():
        out = work / f"b-{name.replace(' ', '-').lower()}"
        b = train(
            [
                *sft,
                f"model.path={model_a['run_dir']}",
                f"data.train=[{files[f'{args.task_b}_train']}]",
                f"train.max_steps={args.b_steps}",
                f"output_dir={out}",
                *extra,
            ]
        )
        b["accuracy"] = accuracy(b["run_dir"], files["test"], out.with_name(out.name + "-eval"))
        b["lambda"] = float(name.split()[1]) if name.startswith("EWC") else None
        results["runs"][name] = b

    a, bt = args.task_a, args.task_b
    fisher_mean = next(
        (r["fisher"]["mean"] for r in results["runs"].values() if r.get("fisher")), 0
    )
    results["fisher_mean"] = fisher_mean
    rows = [
        [
            name,
            f"{r['accuracy'][a]:.3f}",
            f"{r['accuracy'][bt]:.3f}",
            f"{r['train_loss']:.3f}",
            "" if r.get("ewc_penalty") is None else f"{r['ewc_penalty']:.4f}",
            f"{r['lambda'] * fisher_mean:.3g}" if r.get("lambda") else "",
            str(r["replayed"]),
            f"{r['seconds']:.0f}",
        ]
        for name, r in results["runs"].items()
        if r["accuracy"] is not None
    ]
    headers = [
        "setting",
        f"{a} acc",
        f"{bt} acc",
        "last loss",
        "ewc_penalty",
        "lambda x mean F",
        "replayed",
        "s",
    ]
    print("\n" + format_table(headers, rows))
    write_results(results, results_path("continual_forgetting", args.results, not args.quick))
    return 0


if __name__ == "__main__":
    run_main(main)
