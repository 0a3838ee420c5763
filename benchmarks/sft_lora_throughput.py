"""LoRA SFT throughput: lmforge vs Hugging Face ``Trainer`` + PEFT, same model, data and schedule.

Run it (about 10 minutes on the quiet 2-core CPU machine):

    make bench
    # or
    .venv/bin/python benchmarks/sft_lora_throughput.py            # 100 optimizer steps
    .venv/bin/python benchmarks/sft_lora_throughput.py --steps 10 # quick smoke run

What is compared (everything else is held fixed, see ``SETTINGS``):

- the same starting weights: a ``small-llama`` preset (hidden 384, 6 layers, tied embeddings,
  ~13.7M parameters at vocab 8000) built once with seed 0 and saved to a folder both sides load;
- the same tokenizer: byte-level BPE, vocab 8000, trained on the alpaca rows' text and saved
  with the model;
- the same examples in the same optimizer steps: the first ``8 * steps`` rows of
  ``../shared/data/llamafactory-demo/alpaca_en_demo.json`` after a shuffle seeded with 0,
  written in that order to a jsonl file; lmforge reads it with ``train.shuffle=false``, HF gets
  ``train_sampling_strategy="sequential"`` (a ``SequentialSampler``, checked before training);
- the same labels: both sides encode with ``lmforge.training.sft.encode_messages`` (prompt
  tokens masked with -100);
- the same LoRA (r=8, alpha=16, dropout 0, q/k/v/o/gate/up/down, not lm_head) and optimisation:
  micro-batch 8, no accumulation, max length 1024, fp32, AdamW lr 1e-3 betas (0.9, 0.95) weight
  decay 0, grad clip 1.0, cosine schedule with 10 warmup steps decaying to 0, seed 0.

The difference under test is how a batch is laid out: HF pads each micro-batch to its longest
sequence (``DataCollatorForSeq2Seq``, labels padded with -100); lmforge packs it however it likes.

Throughput is non-padding input tokens per second of training-loop wall time (setup, model
loading and tokenisation excluded on both sides). Each side runs in its own subprocess so one
cannot leave threads, allocator state or global flags behind for the other. Results are printed
as a table and written to ``benchmarks/results/sft_lora_throughput.json``.

The machine is noisy (about ±20% run to run): one run is one sample; repeat before concluding.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "llamafactory-demo" / "alpaca_en_demo.json"
RESULTS = REPO / "benchmarks" / "results" / "sft_lora_throughput.json"

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SETTINGS = {
    "preset": "small-llama",
    "vocab_size": 8000,
    "batch_size": 8,
    "grad_accum": 1,
    "max_length": 1024,
    "precision": "fp32",
    "lr": 1e-3,
    "schedule": "cosine",
    "warmup_steps": 10,
    "min_lr_ratio": 0.0,
    "betas": [0.9, 0.95],
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "log_every": 10,
    "seed": 0,
    "lora_rank": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "lora_targets": LORA_TARGETS,
}

# The lmforge API this benchmark is written against (see the module docstring).
LMFORGE_METRICS = ("train_loss", "tokens", "target_tokens", "train_seconds", "tokens_per_s")


class BenchError(RuntimeError):
    """A problem the user can act on; printed without a traceback."""


# --------------------------------------------------------------------------- shared setup
def load_rows(steps: int) -> tuple[list[dict], list[dict]]:
    """(the first ``8 * steps`` rows after a shuffle seeded with 0, all rows)."""
    if not DATA.is_file():
        raise BenchError(
            f"data file not found: {DATA}\n"
            "This benchmark needs the LLaMA-Factory demo data beside the checkout "
            "(../shared/data/llamafactory-demo/alpaca_en_demo.json); nothing is downloaded."
        )
    rows = json.loads(DATA.read_text(encoding="utf-8"))
    need = steps * SETTINGS["batch_size"] * SETTINGS["grad_accum"]
    if len(rows) < need:
        raise BenchError(f"{DATA} has {len(rows)} rows; {steps} steps need {need}")
    order = list(range(len(rows)))
    random.Random(SETTINGS["seed"]).shuffle(order)
    return [rows[i] for i in order[:need]], rows


def check_lmforge_api() -> None:
    """Fail before any heavy work if the lmforge functions this benchmark calls are missing."""
    missing = []
    try:
        from lmforge.training.sft import encode_messages  # noqa: F401
    except ImportError as exc:
        missing.append(f"lmforge.training.sft.encode_messages ({exc})")
    try:
        from lmforge.recipes.train import run  # noqa: F401
    except ImportError as exc:
        missing.append(f"lmforge.recipes.train.run ({exc})")
    if missing:
        raise BenchError(
            "this benchmark needs lmforge's training API, which is not importable yet:\n  "
            + "\n  ".join(missing)
            + "\nExpected: encode_messages(tokenizer, messages, max_length) -> (input_ids, labels)"
            " and recipes.train.run(TrainRecipe) -> Run with run.metrics keys "
            + ", ".join(LMFORGE_METRICS)
        )


def prepare(work: Path, train_rows: list[dict], all_rows: list[dict]) -> dict:
    """Tokenizer + starting model saved to ``work/model``; the training rows to ``train.jsonl``."""
    from lmforge.config.groups import ModelConfig, TokenizerConfig
    from lmforge.models.load import build_model, save_pretrained
    from lmforge.tokenizer.templates import check_eos_template
    from lmforge.tokenizer.train import train_tokenizer

    texts = [
        "\n".join(str(row[k]) for k in ("instruction", "input", "output") if row.get(k))
        for row in all_rows
    ]
    tokenizer = train_tokenizer(texts, TokenizerConfig(vocab_size=SETTINGS["vocab_size"]))
    check_eos_template(tokenizer)
    model = build_model(
        ModelConfig(preset=SETTINGS["preset"], tokenizer="in-memory"),
        tokenizer,
        seed=SETTINGS["seed"],
    )
    model_dir = save_pretrained(model, tokenizer, work / "model")
    train_file = work / "train.jsonl"
    with open(train_file, "w", encoding="utf-8") as fh:
        for row in train_rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    # Parameter counts for the FLOPs estimate. The embedding is tied to lm_head, so
    # ``parameters()`` lists it once; "non-embedding" removes it.
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    return {
        "model_dir": str(model_dir),
        "train_file": str(train_file),
        "vocab_size": len(tokenizer),
        "params_total": total,
        "params_embedding": embedding,
        "params_non_embedding": total - embedding,
        "tied_embeddings": bool(getattr(model.config, "tie_word_embeddings", False)),
    }


def matmul_peak_gflops(n: int = 2048, reps: int = 5) -> float:
    """Best-of-``reps`` fp32 ``torch.matmul`` of two n×n matrices, in GFLOP/s (2·n³ per product)."""
    import torch

    a = torch.randn(n, n, dtype=torch.float32)
    b = torch.randn(n, n, dtype=torch.float32)
    torch.matmul(a, b)  # warm-up: thread pool, page faults
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


# --------------------------------------------------------------------------- the two sides
def run_lmforge(work: Path, steps: int) -> dict:
    """lmforge's train recipe on the pre-shuffled file, reading throughput from ``run.metrics``."""
    import torch

    from lmforge.config import load_config
    from lmforge.config.recipes import TrainRecipe
    from lmforge.recipes.train import run

    s = SETTINGS
    overrides = [
        "stage=sft",
        f"model.path={work / 'model'}",
        "adapter.type=lora",
        f"adapter.rank={s['lora_rank']}",
        f"adapter.alpha={s['lora_alpha']}",
        f"adapter.dropout={s['lora_dropout']}",
        f"adapter.target_modules=[{','.join(s['lora_targets'])}]",
        f"data.train=[{work / 'train.jsonl'}]",
        "data.format=alpaca",
        f"data.max_length={s['max_length']}",
        f"train.max_steps={steps}",
        f"train.batch_size={s['batch_size']}",
        f"train.grad_accum={s['grad_accum']}",
        f"train.lr={s['lr']}",
        f"train.schedule={s['schedule']}",
        f"train.warmup_steps={s['warmup_steps']}",
        f"train.min_lr_ratio={s['min_lr_ratio']}",
        f"train.betas=[{s['betas'][0]},{s['betas'][1]}]",
        f"train.weight_decay={s['weight_decay']}",
        f"train.max_grad_norm={s['max_grad_norm']}",
        f"train.precision={s['precision']}",
        "train.shuffle=false",
        f"train.log_every={s['log_every']}",
        f"train.seed={s['seed']}",
        "train.device=cpu",
        "track.progress=false",
        "track.tensorboard='off'",  # quoted: YAML reads a bare off as False
        f"output_dir={work / 'lmforge-run'}",
        "force=true",
    ]
    cfg = load_config(TrainRecipe, None, overrides)
    t0 = time.perf_counter()
    result = run(cfg)
    total_seconds = time.perf_counter() - t0
    metrics = dict(getattr(result, "metrics", {}) or {})
    missing = [k for k in LMFORGE_METRICS if k not in metrics]
    if missing:
        raise BenchError(
            f"lmforge's run.metrics lacks {missing} (has: {sorted(metrics)}); this benchmark "
            "expects " + ", ".join(LMFORGE_METRICS)
        )
    run_dir = Path(getattr(result, "dir", work / "lmforge-run"))
    logged = []
    if (run_dir / "metrics.jsonl").is_file():
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            if "loss" in row:
                logged.append((row["step"], row["loss"]))
    return {
        "tokens": int(metrics["tokens"]),
        "target_tokens": int(metrics["target_tokens"]),
        "padded_tokens": lmforge_layout_tokens(work, steps),
        "train_seconds": float(metrics["train_seconds"]),
        "tokens_per_s": float(metrics["tokens_per_s"]),
        "final_loss": float(metrics["train_loss"]),
        "process_seconds": total_seconds,
        "threads": torch.get_num_threads(),
        "overrides": overrides,
        "logged_losses": logged,
        "metrics": metrics,
        "run_dir": str(run_dir),
    }


def lmforge_layout_tokens(work: Path, steps: int) -> int | None:
    """Token slots (real + padding) in the tensors lmforge's loop builds, for the report.

    lmforge does not report its padding, so this re-encodes the examples and calls the batch
    builder its loop uses (``lmforge.training.collate.micro_batch``, rows of at most
    ``max_length`` tokens). Diagnostic only: None if that internal API has changed.
    """
    try:
        from lmforge.data.schema import alpaca_to_messages
        from lmforge.models.load import load_tokenizer
        from lmforge.training.collate import Piece, micro_batch
        from lmforge.training.sft import encode_messages

        tokenizer = load_tokenizer(work / "model")
        with open(work / "train.jsonl", encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh]
        units = [
            [
                Piece.from_labels(
                    *encode_messages(tokenizer, alpaca_to_messages(r), SETTINGS["max_length"])
                )
            ]
            for r in rows
        ]
        size = SETTINGS["batch_size"]
        return sum(
            micro_batch(units[i : i + size], tokenizer.pad_token_id, SETTINGS["max_length"])[
                "input_ids"
            ].numel()
            for i in range(0, steps * size, size)
        )
    except Exception as exc:  # noqa: BLE001 - a diagnostic must not sink the benchmark
        print(f"note: could not measure lmforge's padding ({type(exc).__name__}: {exc})")
        return None


def run_hf(work: Path, steps: int) -> dict:
    """HF ``Trainer`` + PEFT with padding to the longest sequence of each micro-batch."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import SequentialSampler
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    from lmforge.data.schema import alpaca_to_messages
    from lmforge.models.load import load_tokenizer
    from lmforge.training.sft import encode_messages

    s = SETTINGS
    model_dir = work / "model"
    tokenizer = load_tokenizer(model_dir)  # the same files lmforge loads from model.path
    with open(work / "train.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    examples = []
    for row in rows:
        ids, labels = encode_messages(tokenizer, alpaca_to_messages(row), s["max_length"])
        examples.append(
            {"input_ids": list(ids), "attention_mask": [1] * len(ids), "labels": list(labels)}
        )

    # LoRA A matrices are drawn at random when the adapter is added (loading draws nothing), so
    # the draw matches lmforge's only if lmforge also seeds torch with train.seed right before
    # add_lora.
    set_seed(s["seed"])
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, use_safetensors=True, local_files_only=True
    )
    model.config.use_cache = False  # standard for training; no KV cache is built per step
    model = get_peft_model(
        model,
        LoraConfig(
            r=s["lora_rank"],
            lora_alpha=s["lora_alpha"],
            lora_dropout=s["lora_dropout"],
            target_modules=s["lora_targets"],
            task_type="CAUSAL_LM",
        ),
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    padding = DataCollatorForSeq2Seq(
        tokenizer, padding="longest", label_pad_token_id=-100, return_tensors="pt"
    )
    seen = {"batches": 0, "tokens": 0, "padded_tokens": 0, "target_tokens": 0}
    targets_per_step: list[int] = []  # one entry per micro-batch = per optimizer step here
    loss_per_step: list[float] = []

    def collate(features):
        # HF's padding collator, plus counters of what it actually produced (a few sums).
        batch = padding(features)
        seen["batches"] += 1
        seen["tokens"] += int(batch["attention_mask"].sum())
        seen["padded_tokens"] += batch["input_ids"].numel()
        targets_per_step.append(int((batch["labels"][:, 1:] != -100).sum()))
        seen["target_tokens"] += targets_per_step[-1]
        return batch

    class StepLossTrainer(Trainer):
        """Records each step's loss (a float of a tensor Trainer already returns)."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            loss_per_step.append(float(loss))
            return loss

    class LoopTimer(TrainerCallback):
        """Wall time of the training loop only (after the dataloader and optimizer exist)."""

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            self.seconds = time.perf_counter() - self.t0

    args = TrainingArguments(
        output_dir=str(work / "hf-run"),
        max_steps=steps,
        per_device_train_batch_size=s["batch_size"],
        gradient_accumulation_steps=s["grad_accum"],
        learning_rate=s["lr"],
        lr_scheduler_type=s["schedule"],
        warmup_steps=s["warmup_steps"],
        adam_beta1=s["betas"][0],
        adam_beta2=s["betas"][1],
        weight_decay=s["weight_decay"],
        max_grad_norm=s["max_grad_norm"],
        bf16=False,
        fp16=False,
        use_cpu=True,
        seed=s["seed"],
        data_seed=s["seed"],
        train_sampling_strategy="sequential",
        logging_steps=s["log_every"],
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_pin_memory=False,
    )
    timer = LoopTimer()
    trainer = StepLossTrainer(
        model=model,
        args=args,
        train_dataset=examples,
        data_collator=collate,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    sampler = trainer._get_train_sampler()
    if not isinstance(sampler, SequentialSampler):
        raise BenchError(f"HF side would not read the examples in order (sampler: {sampler!r})")

    t0 = time.perf_counter()
    trainer.train()
    total_seconds = time.perf_counter() - t0

    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    if not losses or losses[-1][0] != steps:
        raise BenchError(f"HF did not log a loss at step {steps} (logged: {losses})")
    if seen["batches"] != steps:
        raise BenchError(f"HF consumed {seen['batches']} micro-batches, expected {steps}")
    # HF logs the mean of the window's per-step mean losses; lmforge logs total loss / total
    # target tokens over the window. Same window, token-weighted, for a like-for-like check:
    window = slice(steps - s["log_every"], steps)
    weighted = sum(
        loss * n for loss, n in zip(loss_per_step[window], targets_per_step[window], strict=True)
    ) / sum(targets_per_step[window])
    return {
        "tokens": seen["tokens"],
        "target_tokens": seen["target_tokens"],
        "padded_tokens": seen["padded_tokens"],
        "final_loss_token_weighted": weighted,
        "padding_fraction": 1 - seen["tokens"] / seen["padded_tokens"],
        "train_seconds": timer.seconds,
        "tokens_per_s": seen["tokens"] / timer.seconds,
        "final_loss": float(losses[-1][1]),
        "logged_losses": losses,
        "process_seconds": total_seconds,
        "threads": torch.get_num_threads(),
        "trainable_params": trainable,
        "optim": str(args.optim.value if hasattr(args.optim, "value") else args.optim),
    }


SIDES = {"lmforge": run_lmforge, "hf": run_hf}


def run_side(side: str, work: Path, steps: int) -> dict:
    """One side in a fresh interpreter; its result comes back through ``work/<side>.json``."""
    out = work / f"{side}.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--side",
        side,
        "--work",
        str(work),
        "--steps",
        str(steps),
    ]
    print(f"\n=== {side}: training {steps} steps ...", flush=True)
    load_before = os.getloadavg()
    proc = subprocess.run(cmd, cwd=REPO)
    if proc.returncode != 0 or not out.is_file():
        raise BenchError(f"the {side} side failed (exit code {proc.returncode}); see above")
    result = json.loads(out.read_text())
    # Other processes on the same cores make the numbers meaningless: record the load around it.
    result["loadavg_1m_before"], result["loadavg_1m_after"] = load_before[0], os.getloadavg()[0]
    return result


# --------------------------------------------------------------------------- report
def flops_per_token(params: dict, lora_params: int) -> float:
    """Model FLOPs per trained token: the standard 6·N estimate (Kaplan et al. 2020).

    N = non-embedding parameters of the base model + the LoRA parameters. 6 = 2 (forward) +
    4 (backward). The same N and formula are used for both sides, so the ratio between them is
    exact whatever the formula's error. Caveats, both ways: with the base frozen its weight
    gradients are never computed, so the real backward through frozen layers is ~2·N not 4·N
    (6·N overstates); and 6·N leaves out the tied lm_head projection (vocab × hidden, ~22% more
    matmul FLOPs here) and the attention-score FLOPs (which grow with sequence length), which
    understates. Padding FLOPs spent by HF on pad tokens are not counted as useful work.
    """
    return 6.0 * (params["params_non_embedding"] + lora_params)


def window_diffs(lm_losses: list, hf_losses: list) -> dict:
    """Loss difference (%) for every logging window both sides logged."""
    hf_at = {int(step): loss for step, loss in hf_losses}
    diffs = {
        int(step): 100 * (loss - hf_at[int(step)]) / hf_at[int(step)]
        for step, loss in lm_losses
        if int(step) in hf_at
    }
    return {
        "window_loss_diff_pct": diffs,
        "windows_compared": len(diffs),
        "max_window_loss_diff_pct": max((abs(d) for d in diffs.values()), default=float("nan")),
    }


def lmforge_revision() -> str | None:
    from lmforge.artifacts import git_revision

    return git_revision()


def machine() -> dict:
    model_name = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    import transformers

    try:
        import peft

        peft_version = peft.__version__
    except ImportError:
        peft_version = None
    return {
        "cpu": model_name,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft_version,
    }


def _count(n: int | None) -> str:
    return "n/a" if n is None else f"{n:,}"


def _padding(side: dict) -> str:
    padded = side.get("padded_tokens")
    return "n/a" if not padded else f"{1 - side['tokens'] / padded:.1%}"


def report(results: dict) -> str:
    lm, hf = results["lmforge"], results["hf"]
    rows = [
        ("non-pad tokens/s", f"{lm['tokens_per_s']:,.0f}", f"{hf['tokens_per_s']:,.0f}"),
        ("train loop seconds", f"{lm['train_seconds']:.1f}", f"{hf['train_seconds']:.1f}"),
        ("final train loss (last 10 steps)", f"{lm['final_loss']:.4f}", f"{hf['final_loss']:.4f}"),
        ("MFU (6N, vs measured matmul peak)", f"{lm['mfu']:.1%}", f"{hf['mfu']:.1%}"),
        ("non-pad input tokens", f"{lm['tokens']:,}", f"{hf['tokens']:,}"),
        ("target (loss) tokens", f"{lm['target_tokens']:,}", f"{hf['target_tokens']:,}"),
        ("tokens incl. padding", _count(lm["padded_tokens"]), _count(hf["padded_tokens"])),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  {'lmforge':>12}  {'HF Trainer':>12}"]
    lines += [f"{name:{width}}  {a:>12}  {b:>12}" for name, a, b in rows]
    c = results["comparison"]
    lines += [
        "",
        f"throughput ratio lmforge / HF : {c['tokens_per_s_ratio']:.2f}x",
        f"final loss difference          : {c['loss_diff_pct']:+.2f}% (lmforge vs HF logged)",
        f"  same window, token-weighted  : {c['loss_diff_pct_token_weighted']:+.2f}% "
        f"(HF {hf['final_loss_token_weighted']:.4f}, weighted like lmforge's)",
        f"per-window loss difference     : max {c['max_window_loss_diff_pct']:.2f}% over "
        f"{c['windows_compared']} windows of {SETTINGS['log_every']} steps",
        f"padding share of input slots   : lmforge {_padding(lm)}, HF {_padding(hf)}",
        f"fp32 matmul peak               : {results['matmul_peak_gflops']:.1f} GFLOP/s "
        f"(2048x2048, best of 5, higher of start {results['matmul_peak_gflops_start']:.1f} "
        f"and end {results['matmul_peak_gflops_end']:.1f})",
    ]
    if lm["tokens"] != hf["tokens"] or lm["target_tokens"] != hf["target_tokens"]:
        lines.append("WARNING: the two sides did not process the same tokens (see counts above)")
    busiest = max(v for side in (lm, hf) for k, v in side.items() if k.startswith("loadavg"))
    if busiest > results["machine"]["cores"] + 0.5:
        lines.append(
            f"WARNING: load average reached {busiest:.1f} on {results['machine']['cores']}"
            " cores: other processes competed for the CPU; these figures are not clean"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=100,
        help="optimizer steps per side, a multiple of 10 (default 100)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="working folder (default: a temporary folder, removed after)",
    )
    parser.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    log_every = SETTINGS["log_every"]
    if args.steps <= 0 or args.steps % log_every:
        parser.error(
            f"--steps must be a positive multiple of {log_every} "
            "(both sides' final loss is the mean over the last logging window)"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    try:
        if args.side:  # child process: one side only
            from lmforge.errors import LmforgeError

            try:
                result = SIDES[args.side](args.work, args.steps)
            except LmforgeError as exc:  # lmforge's own errors say what to change
                raise BenchError(f"{args.side}: lmforge: {exc}") from None
            (args.work / f"{args.side}.json").write_text(json.dumps(result, indent=2) + "\n")
            return 0

        train_rows, all_rows = load_rows(args.steps)
        check_lmforge_api()
        with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as tmp:
            work = args.work or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            peak_start = matmul_peak_gflops()
            print(f"fp32 matmul peak: {peak_start:.1f} GFLOP/s", flush=True)
            params = prepare(work, train_rows, all_rows)
            results = {side: run_side(side, work, args.steps) for side in ("lmforge", "hf")}
            peak_end = matmul_peak_gflops()
    except BenchError as exc:
        print(f"sft_lora_throughput: {exc}", file=sys.stderr)
        return 2

    # A busy machine lowers one measurement more than the other: the higher is nearer the peak.
    peak = max(peak_start, peak_end)
    lora_params = results["hf"]["trainable_params"]
    per_token = flops_per_token(params, lora_params)
    for side in results.values():
        side["mfu"] = per_token * side["tokens_per_s"] / (peak * 1e9)
    lm, hf = results["lmforge"], results["hf"]
    out = {
        "benchmark": "sft_lora_throughput",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "steps": args.steps,
        "examples": len(train_rows),
        "settings": SETTINGS,
        "data": str(DATA),
        "machine": machine(),
        "lmforge_git_revision": lmforge_revision(),
        "model": {
            **{k: v for k, v in params.items() if k.startswith(("params", "vocab", "tied"))},
            "params_lora": lora_params,
        },
        "flops_per_token": per_token,
        "flops_formula": "6 * (non-embedding base params + LoRA params) per non-pad token",
        "matmul_peak_gflops": peak,
        "matmul_peak_gflops_start": peak_start,
        "matmul_peak_gflops_end": peak_end,
        "lmforge": lm,
        "hf": hf,
        "comparison": {
            "tokens_per_s_ratio": lm["tokens_per_s"] / hf["tokens_per_s"],
            "loss_diff_pct": 100 * (lm["final_loss"] - hf["final_loss"]) / hf["final_loss"],
            "loss_diff_pct_token_weighted": 100
            * (lm["final_loss"] - hf["final_loss_token_weighted"])
            / hf["final_loss_token_weighted"],
            "same_tokens": lm["tokens"] == hf["tokens"],
            "same_target_tokens": lm["target_tokens"] == hf["target_tokens"],
            **window_diffs(lm["logged_losses"], hf["logged_losses"]),
        },
    }
    print("\n" + report(out))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
