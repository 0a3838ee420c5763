"""The Hugging Face side of benchmarks/cls_minilm.py, and its independent evaluator.

``train``: what a user would write without lmforge: ``AutoModelForSequenceClassification`` on
the same MiniLM folder, PEFT LoRA on query/key/value (or full fine-tuning), ``Trainer`` with
``DataCollatorWithPadding`` (one padded row per text), the same optimiser settings, then the
held-out accuracy from ``Trainer.predict``.

``evaluate``: held-out accuracy of a saved lmforge model, computed with plain transformers/PEFT
(padded batches, ``model(**batch).logits.argmax``), so the figure does not come from lmforge's
own evaluation code.

    python benchmarks/hf_cls_side.py train --out R.json --model DIR --train T --test E ...
    python benchmarks/hf_cls_side.py evaluate --out R.json --model RUN/model --test E
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _accuracy(model, tokenizer, rows: list[dict], label2id: dict, batch_size: int = 64) -> dict:
    import torch

    model.eval()
    correct, gold_all, pred_all = 0, [], []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            enc = tokenizer(
                [r["text"] for r in chunk],
                truncation=True,
                max_length=64,
                padding=True,
                return_tensors="pt",
            )
            pred = model(**enc).logits.argmax(-1).tolist()
            gold = [label2id[r["label"]] for r in chunk]
            correct += sum(p == g for p, g in zip(pred, gold, strict=True))
            gold_all += gold
            pred_all += pred
    return {"test_accuracy": correct / len(rows), "test_items": len(rows)}


def evaluate(args) -> dict:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(args.model)
    if (folder / "adapter_config.json").is_file():  # an lmforge LoRA run: adapter + labels.json
        from peft import PeftModel

        config = json.loads((folder / "adapter_config.json").read_text())
        labels = json.loads((folder / "labels.json").read_text())
        base = AutoModelForSequenceClassification.from_pretrained(
            config["base_model_name_or_path"],
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)},
        )
        model = PeftModel.from_pretrained(base, str(folder))
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(folder))
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return _accuracy(model, tokenizer, _rows(Path(args.test)), {n: i for i, n in enumerate(labels)})


def train(args) -> dict:
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    torch.manual_seed(args.seed)
    rows = _rows(Path(args.train))
    labels = sorted({r["label"] for r in rows})
    label2id = {n: i for i, n in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id=label2id,
    )
    if args.adapter == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=args.rank,
                lora_alpha=args.alpha,
                lora_dropout=args.dropout,
                target_modules=["query", "key", "value"],
                task_type="SEQ_CLS",
            ),
        )
    encoded = [
        {
            **tokenizer(r["text"], truncation=True, max_length=64),
            "labels": label2id[r["label"]],
        }
        for r in rows
    ]

    class Timer(TrainerCallback):
        seconds = float("nan")

        def on_train_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_train_end(self, *a, **k):
            Timer.seconds = time.perf_counter() - self.t0

    steps = math.ceil(len(encoded) / args.batch_size) * args.epochs
    targs = TrainingArguments(
        output_dir=str(Path(args.out).parent / "hf-trainer"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=int(args.warmup_ratio * steps),  # as lmforge's train.warmup_ratio
        adam_beta1=0.9,
        adam_beta2=0.95,
        weight_decay=0.0,
        max_grad_norm=1.0,
        use_cpu=True,
        seed=args.seed,
        data_seed=args.seed,
        logging_steps=20,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=encoded,
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[Timer()],
    )
    trainer.train()
    tokens = sum(len(e["input_ids"]) for e in encoded) * args.epochs
    result = _accuracy(model, tokenizer, _rows(Path(args.test)), label2id)
    return {
        **result,
        "train_seconds": Timer.seconds,
        "examples_per_s": len(encoded) * args.epochs / Timer.seconds,
        "tokens_per_s": tokens / Timer.seconds,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "final_loss": next(
            (h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["train", "evaluate"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--train")
    parser.add_argument("--test", required=True)
    parser.add_argument("--adapter", choices=["lora", "full"], default="lora")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-ratio", type=float, default=0.06)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = train(args) if args.mode == "train" else evaluate(args)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
