"""LoRA SFT throughput: lmforge against Hugging Face ``Trainer``, TRL ``SFTTrainer`` and layouts.

Run it (about 30 minutes on the quiet 2-core CPU machine; sides run one after another):

    make bench
    # or
    .venv/bin/python benchmarks/sft_lora_throughput.py                 # 100 steps, every side
    .venv/bin/python benchmarks/sft_lora_throughput.py --sides hf-padded,lmforge
    .venv/bin/python benchmarks/sft_lora_throughput.py --steps 3 --no-wait   # smoke run

Sides (``--sides``; see ``SIDES``): HF ``Trainer`` + PEFT padding each micro-batch (the
baseline), the same ``Trainer`` fed each micro-batch flattened into one row with restarting
``position_ids`` (``DataCollatorWithFlattening``), TRL's ``SFTTrainer`` with ``padding_free=True``
and with ``packing=True`` (BFD), and lmforge's ``train`` CLI.

Held fixed on every side (``SETTINGS``):

- the same starting weights: a ``small-llama`` preset (hidden 384, 6 layers, tied embeddings,
  ~13.7M parameters at vocab 8000) built once with seed 0 and saved to a folder all sides load;
- the same tokenizer: byte-level BPE, vocab 8000, trained on the alpaca rows' text;
- the same examples in the same order: the first ``8 * steps`` rows of
  ``../shared/data/llamafactory-demo/alpaca_en_demo.json`` after a shuffle seeded with 0;
  lmforge reads them with ``train.shuffle=false``, the others through a ``SequentialSampler``
  (checked). TRL's ``packing=True`` regroups them (see ``SIDES``);
- the same labels: every side encodes with ``lmforge.training.sft.encode_messages`` (prompt
  tokens masked with -100), outside the timed loop; TRL receives the token ids and labels;
- the same LoRA (r=8, alpha=16, dropout 0, q/k/v/o/gate/up/down, not lm_head, A drawn after
  seeding with 0) and optimisation: micro-batch 8, no accumulation, max length 1024, fp32, no
  gradient checkpointing, AdamW lr 1e-3 betas (0.9, 0.95) weight decay 0, grad clip 1.0,
  cosine schedule with 10 warmup steps decaying to 0, seed 0.

Measured per side (each in its own process, see ``common``): non-padding input tokens per
second of training-loop wall time, the final loss (token-weighted mean over the last logging
window, as lmforge logs it), the share of token slots that are padding, MFU (LoRA-aware model
FLOPs from ``lmforge.training.flops`` over the measured fp32 matmul peak) and peak RSS.
Results go to ``benchmarks/results/sft_lora_throughput.json``. The machine is noisy (about ±20%
run to run): one run is one sample; repeat before concluding.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path

from common import (
    IGNORE,
    BenchError,
    add_run_args,
    format_table,
    lmforge_train,
    lmforge_train_overrides,
    measure_peak_gflops,
    parse_side_args,
    pct,
    results_path,
    run_child_side,
    run_each_side,
    run_header,
    run_main,
    run_sides_main,
    shared_file,
    side_warnings,
    token_count_warning,
    window_diffs,
    write_results,
)
from hf_sides import check_trainer, hf_result, hf_training_kwargs, recording_trainer

DATA = "llamafactory-demo/alpaca_en_demo.json"
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
STEPS = 100  # a full run; fewer steps is a smoke run
TRL_SIDES = {"trl-padding-free", "trl-packing"}
BASELINE = "hf-padded"
# name -> what differs; the order is the order of the runs and of the table
SIDES = {
    "hf-padded": "HF Trainer + PEFT; each micro-batch padded to its longest example "
    "(DataCollatorForSeq2Seq, labels padded with -100)",
    "hf-flattened": "HF Trainer + PEFT; each micro-batch flattened into one row, position_ids "
    "restarting per example, no padding (DataCollatorWithFlattening)",
    "trl-padding-free": "TRL SFTTrainer, padding_free=True: its own flattening collator and "
    "chunked log-prob loss; max_length=None (examples are already cut to 1024)",
    "trl-packing": "TRL SFTTrainer, packing=True (BFD): the whole set packed into rows of "
    "max_length before training, then flattened; other examples share a step, and the step "
    "count and rows per step are chosen to keep about the same tokens per step",
    "lmforge": "lmforge train (CLI), reading the run's manifest.json and metrics.jsonl",
}


# --------------------------------------------------------------------------- shared setup
def load_rows(steps: int) -> tuple[list[dict], list[dict]]:
    """(the first ``8 * steps`` rows after a shuffle seeded with 0, all rows)."""
    path = shared_file(DATA, "the LLaMA-Factory demo data")
    rows = json.loads(path.read_text(encoding="utf-8"))
    need = steps * SETTINGS["batch_size"] * SETTINGS["grad_accum"]
    if len(rows) < need:
        raise BenchError(f"{path} has {len(rows)} rows; {steps} steps need {need}")
    order = list(range(len(rows)))
    random.Random(SETTINGS["seed"]).shuffle(order)
    return [rows[i] for i in order[:need]], rows


def prepare(work: Path, train_rows: list[dict], all_rows: list[dict]) -> dict:
    """Tokenizer + starting model in ``work/model``, rows in ``train.jsonl``; FLOPs of the run."""
    from lmforge.config.groups import ModelConfig, TokenizerConfig
    from lmforge.config.training import AdapterConfig
    from lmforge.models.adapters import add_lora
    from lmforge.models.load import build_model, save_pretrained
    from lmforge.tokenizer.templates import check_eos_template
    from lmforge.tokenizer.train import train_tokenizer
    from lmforge.training.flops import FlopsProfile

    s = SETTINGS
    texts = [
        "\n".join(str(row[k]) for k in ("instruction", "input", "output") if row.get(k))
        for row in all_rows
    ]
    tokenizer = train_tokenizer(texts, TokenizerConfig(vocab_size=s["vocab_size"]))
    check_eos_template(tokenizer)
    model = build_model(
        ModelConfig(preset=s["preset"], tokenizer="in-memory"), tokenizer, seed=s["seed"]
    )
    save_pretrained(model, tokenizer, work / "model")
    with open(work / "train.jsonl", "w", encoding="utf-8") as fh:
        for row in train_rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    lora = add_lora(
        model,
        AdapterConfig(
            type="lora",
            rank=s["lora_rank"],
            alpha=s["lora_alpha"],
            dropout=s["lora_dropout"],
            target_modules=s["lora_targets"],
        ),
    )
    profile = FlopsProfile.of(lora)
    lengths, targets = [], 0
    for ids, labels in encode_rows(tokenizer, train_rows):
        lengths.append(len(ids))
        targets += sum(1 for t in labels[1:] if t != IGNORE)
    flops = profile.training_flops(lengths, lm_head_positions=targets)
    return {
        "vocab_size": len(tokenizer),
        "params_total": total,
        "params_non_embedding": total - embedding,
        "params_lora": profile.trained_params,
        "flops_profile": dataclasses.asdict(profile),
        "tokens": sum(lengths),
        "target_tokens": targets,
        "flops": flops,
        "flops_lm_head_all_tokens": profile.training_flops(lengths),
    }


def encode_rows(tokenizer, rows: list[dict]) -> list[tuple[list[int], list[int]]]:
    from lmforge.data.schema import alpaca_to_messages
    from lmforge.training.sft import encode_messages

    return [
        encode_messages(tokenizer, alpaca_to_messages(row), SETTINGS["max_length"]) for row in rows
    ]


def encoded_examples(work: Path):
    """(tokenizer, examples) for the Hugging Face sides: the files lmforge loads, encoded alike."""
    from lmforge.models.load import load_tokenizer

    tokenizer = load_tokenizer(work / "model")
    with open(work / "train.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    examples = [
        {"input_ids": list(ids), "labels": list(labels)}
        for ids, labels in encode_rows(tokenizer, rows)
    ]
    return tokenizer, examples


def lora_model(work: Path):
    """The saved base in fp32 with LoRA; A drawn right after seeding, as lmforge does."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    s = SETTINGS
    set_seed(s["seed"])
    model = AutoModelForCausalLM.from_pretrained(
        str(work / "model"), dtype=torch.float32, use_safetensors=True, local_files_only=True
    )
    model.config.use_cache = False  # training; flattened rows need it off in transformers 5
    return get_peft_model(
        model,
        LoraConfig(
            r=s["lora_rank"],
            lora_alpha=s["lora_alpha"],
            lora_dropout=s["lora_dropout"],
            target_modules=s["lora_targets"],
            task_type="CAUSAL_LM",
        ),
    )


# --------------------------------------------------------------------------- the sides
def run_hf(work: Path, steps: int, flattened: bool) -> dict:
    """HF ``Trainer`` + PEFT, micro-batches padded or flattened into one row."""
    from transformers import (
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
        Trainer,
        TrainingArguments,
    )

    tokenizer, examples = encoded_examples(work)
    if flattened:
        collator = DataCollatorWithFlattening()  # position_ids restart per example, labels -100
    else:
        examples = [{**e, "attention_mask": [1] * len(e["input_ids"])} for e in examples]
        collator = DataCollatorForSeq2Seq(
            tokenizer, padding="longest", label_pad_token_id=IGNORE, return_tensors="pt"
        )
    model = lora_model(work)
    name = "hf-flattened" if flattened else "hf-padded"
    kwargs = hf_training_kwargs(SETTINGS, work / name, steps, SETTINGS["batch_size"])
    trainer = recording_trainer(Trainer)(
        model=model,
        args=TrainingArguments(**kwargs),
        train_dataset=examples,
        data_collator=collator,
        processing_class=tokenizer,
    )
    check_trainer(trainer, name)
    trainer.train()
    return hf_result(trainer, steps, SETTINGS["log_every"])


def run_trl(work: Path, steps: int, packing: bool) -> dict:
    """TRL ``SFTTrainer`` on pre-tokenised rows (``input_ids`` + ``labels``: no re-templating)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from trl.data_utils import pack_dataset

    s = SETTINGS
    tokenizer, examples = encoded_examples(work)
    dataset = Dataset.from_list(examples)
    if packing:
        # Rows per step so that a step holds about as many tokens as 8 examples do elsewhere.
        n_rows = len(pack_dataset(dataset, s["max_length"], "bfd"))
        per_step = max(1, round(n_rows / steps))
        run_steps = math.ceil(n_rows / per_step)
    else:
        n_rows, per_step, run_steps = len(examples), s["batch_size"], steps
    name = "trl-packing" if packing else "trl-padding-free"
    args = SFTConfig(
        **hf_training_kwargs(s, work / name, run_steps, per_step),
        packing=packing,
        packing_strategy="bfd",
        padding_free=not packing,  # packing="bfd" turns padding-free on by itself
        # padding-free without packing refuses a max_length: the rows are already cut to 1024
        max_length=s["max_length"] if packing else None,
        shuffle_dataset=False,
        completion_only_loss=None,  # labels are given: TRL keeps them as they are
        assistant_only_loss=False,
        loss_type="nll",
    )
    trainer = recording_trainer(SFTTrainer)(
        model=lora_model(work), args=args, train_dataset=dataset, processing_class=tokenizer
    )
    check_trainer(trainer, name)
    trainer.train()
    result = hf_result(trainer, run_steps, s["log_every"])
    result.update(trl_rows=n_rows, trl_rows_per_step=per_step)
    return result


def lmforge_overrides(work: Path, steps: int) -> list[str]:
    s = SETTINGS
    return [
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
        *lmforge_train_overrides(s, steps),
        f"output_dir={work / 'lmforge-run'}",
    ]


CHILD_SIDES = {
    "hf-padded": lambda work, steps: run_hf(work, steps, flattened=False),
    "hf-flattened": lambda work, steps: run_hf(work, steps, flattened=True),
    "trl-padding-free": lambda work, steps: run_trl(work, steps, packing=False),
    "trl-packing": lambda work, steps: run_trl(work, steps, packing=True),
}


def run_one(side: str, work: Path, steps: int) -> dict:
    """One side in a fresh process: lmforge through its CLI, the others through this script."""
    print(f"\n=== {side}: {SIDES[side]}", flush=True)
    if side == "lmforge":
        return lmforge_train(lmforge_overrides(work, steps), work / "lmforge-run")
    return run_child_side(__file__, side, work, steps)


# --------------------------------------------------------------------------- report
def summarise(results: dict, prep: dict, peak: float) -> None:
    """Add MFU and the comparison with the baseline to every side's result, in place."""
    per_token = prep["flops"] / prep["tokens"]
    per_token_all = prep["flops_lm_head_all_tokens"] / prep["tokens"]
    base = results.get(BASELINE)
    for side in results.values():
        side["mfu"] = per_token * side["tokens_per_s"] / (peak * 1e9)
        side["mfu_lm_head_all_tokens"] = per_token_all * side["tokens_per_s"] / (peak * 1e9)
        if base is not None:
            side["ratio_to_baseline"] = side["tokens_per_s"] / base["tokens_per_s"]
            side["loss_diff_pct"] = (
                100 * (side["final_loss"] - base["final_loss"]) / base["final_loss"]
            )
            side.update(window_diffs(side["window_losses"], base["window_losses"]))


def report(results: dict, prep: dict, peak: dict, steps: int) -> str:
    headers = [
        "side",
        "tokens/s",
        f"vs {BASELINE}",
        "final loss",
        "loss diff",
        "padding",
        "MFU",
        "peak RSS",
        "loop s",
    ]
    rows = []
    for name, side in results.items():
        mark = "*" if name == "trl-packing" else ""
        rows.append(
            [
                name + mark,
                f"{side['tokens_per_s']:,.0f}",
                f"{side['ratio_to_baseline']:.2f}x" if "ratio_to_baseline" in side else "n/a",
                f"{side['final_loss']:.4f}",
                f"{side['loss_diff_pct']:+.2f}%{mark}" if "loss_diff_pct" in side else "n/a",
                pct(side.get("padding_fraction")),
                pct(side["mfu"]),
                f"{side['peak_rss_mib']:,.0f} MiB",
                f"{side['train_seconds']:.1f}",
            ]
        )
    lines = [format_table(headers, rows), ""]
    if "trl-packing" in results:
        t = results["trl-packing"]
        lo, hi = t["sequences_per_step"]
        lines.append(
            f"* trl-packing: BFD packs the {prep['examples']} examples into {t['trl_rows']} rows "
            f"of <= {SETTINGS['max_length']} tokens, trained as {t['steps']} steps of "
            f"{t['trl_rows_per_step']} rows ({lo}-{hi} examples per step) instead of {steps} "
            f"steps of {SETTINGS['batch_size']}: other examples share a step and the schedule "
            "differs, so its loss is not comparable step for step"
        )
    lines += [
        f"tokens/s: non-padding input tokens ({prep['tokens']:,} expected) / training-loop "
        f"seconds; final loss: token-weighted mean over the last logging window (up to "
        f"{SETTINGS['log_every']} steps); loss diff vs {BASELINE}",
        f"MFU: {prep['flops'] / prep['tokens'] / 1e6:.1f} MFLOP per token (LoRA-aware, "
        "lmforge.training.flops: frozen weights 4, LoRA 6 per token, lm_head on target "
        "positions only, attention 12·L·d·Σlen²) over the fp32 matmul peak "
        f"{peak['gflops']:.1f} GFLOP/s (higher of start {peak['start']:.1f} and end "
        f"{peak['end']:.1f}; 2048x2048, best of 5)",
        "peak RSS: ru_maxrss of each side's process from os.wait4 (model loading and "
        "tokenisation included)",
    ]
    lines += side_warnings(results, lambda name, side: token_count_warning(name, side, prep))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_args(parser, STEPS, "sft_lora_throughput", SIDES)
    args = parse_side_args(parser, argv, CHILD_SIDES)

    def parent(work: Path) -> tuple[dict, dict, float, float]:
        train_rows, all_rows = load_rows(args.steps)
        peak_start = measure_peak_gflops()
        print(f"fp32 matmul peak: {peak_start:.1f} GFLOP/s", flush=True)
        prep = prepare(work, train_rows, all_rows)
        prep["examples"] = len(train_rows)
        results = run_each_side(
            args.sides, lambda side: run_one(side, work, args.steps), args.no_wait
        )
        return prep, results, peak_start, measure_peak_gflops()

    requires = ["peft", "accelerate", *(["trl", "datasets"] if TRL_SIDES & set(args.sides) else [])]
    try:
        done = run_sides_main(args, CHILD_SIDES, parent, requires)
    except BenchError as exc:
        print(f"sft_lora_throughput: {exc}", file=sys.stderr)
        return 2
    if done is None:  # a child process
        return 0
    prep, results, peak_start, peak_end = done

    # A busy machine lowers one measurement more than the other: the higher is nearer the peak.
    peak = {"gflops": max(peak_start, peak_end), "start": peak_start, "end": peak_end}
    summarise(results, prep, peak["gflops"])
    out = {
        **run_header("sft_lora_throughput", sys.argv),
        "steps": args.steps,
        "settings": SETTINGS,
        "sides": {name: SIDES[name] for name in results},
        "baseline": BASELINE,
        "data": DATA,
        "model": {k: v for k, v in prep.items() if k.startswith(("params", "vocab", "flops"))},
        "expected": {k: prep[k] for k in ("examples", "tokens", "target_tokens")},
        "flops_convention": "lmforge.training.flops: matmul weights incl. lm_head, frozen 4 / "
        "trained 6 FLOPs per weight per token, lm_head on target positions only, attention "
        "12 * layers * width * sum(len^2); padding not counted",
        "matmul_peak_gflops": peak,
        "results": results,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    print("\n" + report(results, prep, peak, args.steps))
    write_results(out, results_path("sft_lora_throughput", args.results, args.steps >= STEPS))
    return 0


if __name__ == "__main__":
    run_main(main)
