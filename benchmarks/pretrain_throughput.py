"""Full-parameter pretraining throughput: lmforge against Hugging Face ``Trainer``, two model sizes.

Run it (about 25 minutes on the quiet 2-core CPU machine):

    .venv/bin/python benchmarks/pretrain_throughput.py                     # 50 steps, both sizes
    .venv/bin/python benchmarks/pretrain_throughput.py --sizes tiny-llama --sides lmforge
    .venv/bin/python benchmarks/pretrain_throughput.py --steps 2 --no-wait    # smoke run

For each size (``SIZES``: the ``tiny-llama`` and ``small-llama`` presets) both sides train the
same randomly initialised model (built once with seed 0 and saved to a folder both load) on the
same blocks, in the same order, with the same optimisation (``SETTINGS``).

The data is the WikiText-2 validation text (``../shared/data/wikitext-2/valid.txt``; nothing is
downloaded), split into its 60 articles. A byte-level BPE tokenizer (vocab 8000) is trained on
them. Each article's tokens are cut into chunks of ``block - 1`` tokens and every chunk is
written back as text, as one document, only when re-encoding that text gives the same tokens.
A document plus its EOS token is then exactly one block, so the blocks are the same whatever
way a trainer concatenates documents: lmforge reads the documents (``stage=pt``,
``data.format=text``) and cuts blocks itself; Hugging Face ``Trainer`` gets each document's
token ids + EOS as one row with ``labels = input_ids`` (full causal attention within the block,
``use_cache=False``, no padding). Tokenisation is outside the timed loop on both sides.

Measured per side (each in its own process, see ``common``): tokens per second of
training-loop wall time, the final loss (token-weighted mean over the last logging window),
MFU (model FLOPs from ``lmforge.training.flops``: 6 per weight per token with ``lm_head`` on the
target positions, plus attention 12·L·d·T² per block; and plain 6·N) over the measured fp32
matmul peak, and peak RSS. Results go to ``benchmarks/results/pretrain_throughput.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

from common import (
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
    subset,
    token_count_warning,
    window_diffs,
    write_results,
)
from hf_sides import check_trainer, hf_result, hf_training_kwargs, recording_trainer

DATA = "wikitext-2/valid.txt"
STEPS = 50  # a full run; fewer steps is a smoke run
SIZES = {  # name -> lmforge model preset (and overrides, if a size needs them)
    "tiny-llama": {"preset": "tiny-llama", "overrides": {}},
    "small-llama": {"preset": "small-llama", "overrides": {}},
}
SETTINGS = {
    "vocab_size": 8000,
    "block": 512,  # tokens per block (data.max_length)
    "batch_size": 8,
    "grad_accum": 1,
    "precision": "fp32",
    "lr": 1e-3,
    "schedule": "cosine",
    "warmup_steps": 10,
    "min_lr_ratio": 0.0,
    "betas": [0.9, 0.95],
    "weight_decay": 0.0,  # lmforge and HF differ in which parameters they exempt from decay
    "max_grad_norm": 1.0,
    "log_every": 10,
    "seed": 0,
}
SIDES = {
    "hf": "Hugging Face Trainer, all weights trained, one block per row, labels = input_ids",
    "lmforge": "lmforge train stage=pt (CLI), reading the run's manifest.json and metrics.jsonl",
}
BASELINE = "hf"
ARTICLE_TITLE = re.compile(r"^ = [^=].* = $")  # " = Title = "; sections are " = = Section = = "


# --------------------------------------------------------------------------- shared setup
def articles(path: Path) -> list[str]:
    """WikiText's articles: title line + non-empty lines, as WikiText tokenises them."""
    out: list[list[str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if ARTICLE_TITLE.match(line):
            out.append([])
        if line.strip() and out:
            out[-1].append(line.strip())
    return ["\n".join(lines) for lines in out if lines]


def block_documents(tokenizer, texts: list[str], block: int) -> tuple[list[str], int]:
    """Documents of exactly ``block - 1`` tokens (+ EOS = one block), and how many were dropped.

    A chunk is kept only if its decoded text encodes back to the same tokens.
    """
    docs, dropped, size = [], 0, block - 1
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids) - size + 1, size):
            chunk = ids[start : start + size]
            doc = tokenizer.decode(chunk)
            if tokenizer(doc, add_special_tokens=False)["input_ids"] == chunk and doc.strip():
                docs.append(doc)
            else:
                dropped += 1
    return docs, dropped


def prepare(work: Path, steps: int, sizes: list[str]) -> dict:
    """Tokenizer, documents (``docs.jsonl``) and one starting model per size; FLOPs per size."""
    from lmforge.config.groups import ModelConfig, TokenizerConfig
    from lmforge.models.load import build_model, load_tokenizer, save_pretrained
    from lmforge.tokenizer.train import train_tokenizer
    from lmforge.training.flops import FlopsProfile

    s = SETTINGS
    texts = articles(shared_file(DATA, "the WikiText-2 validation text"))
    tokenizer = train_tokenizer(texts, TokenizerConfig(vocab_size=s["vocab_size"]))
    save_pretrained(None, tokenizer, work / "tokenizer")
    tokenizer = load_tokenizer(work / "tokenizer")  # as every side will load it
    docs, dropped = block_documents(tokenizer, texts, s["block"])
    need = steps * s["batch_size"] * s["grad_accum"]
    if len(docs) < need:
        raise BenchError(
            f"{DATA} gives {len(docs)} blocks of {s['block']} tokens; {steps} steps need {need} "
            f"(at most {len(docs) // (s['batch_size'] * s['grad_accum'])} steps)"
        )
    with open(work / "docs.jsonl", "w", encoding="utf-8") as fh:
        for doc in docs[:need]:
            fh.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")

    tokens = need * s["block"]
    out = {"blocks": need, "blocks_available": len(docs), "chunks_dropped": dropped}
    out.update(tokens=tokens, target_tokens=need * (s["block"] - 1), sizes={})
    for size in sizes:
        spec = SIZES[size]
        model = build_model(
            ModelConfig(preset=spec["preset"], overrides=spec["overrides"], tokenizer="in-memory"),
            tokenizer,
            seed=s["seed"],
        )
        save_pretrained(model, tokenizer, work / size / "model")
        profile = FlopsProfile.of(model)
        total = sum(p.numel() for p in model.parameters())
        out["sizes"][size] = {
            "params_total": total,
            "params_non_embedding": total - model.get_input_embeddings().weight.numel(),
            "params_matmul": profile.matmul_params,
            "flops_profile": dataclasses.asdict(profile),
            "flops": profile.training_flops([s["block"]] * need, out["target_tokens"]),
            "flops_6n": 6 * profile.matmul_params * tokens,
        }
    return out


# --------------------------------------------------------------------------- the sides
def run_hf(work: Path, size: str, steps: int) -> dict:
    """HF ``Trainer``, full training, on the documents' tokens + EOS: one block per row."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    from lmforge.models.load import load_tokenizer

    s = SETTINGS
    tokenizer = load_tokenizer(work / "tokenizer")
    examples = []
    with open(work / "docs.jsonl", encoding="utf-8") as fh:
        for line in fh:
            text = json.loads(line)["text"]
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            if len(ids) != s["block"]:
                raise BenchError(f"a document encodes to {len(ids)} tokens, not {s['block']}")
            examples.append({"input_ids": ids, "labels": ids})
    set_seed(s["seed"])
    model = AutoModelForCausalLM.from_pretrained(
        str(work / size / "model"), dtype=torch.float32, use_safetensors=True, local_files_only=True
    )
    model.config.use_cache = False
    kwargs = hf_training_kwargs(s, work / size / "hf-run", steps, s["batch_size"])
    trainer = recording_trainer(Trainer)(
        model=model,
        args=TrainingArguments(**kwargs),
        train_dataset=examples,
        data_collator=default_data_collator,
    )
    check_trainer(trainer, f"{size}/hf")
    trainer.train()
    return hf_result(trainer, steps, s["log_every"])


def lmforge_overrides(work: Path, size: str, steps: int) -> list[str]:
    return [
        "stage=pt",
        f"model.path={work / size / 'model'}",
        "adapter.type=full",
        f"data.train=[{work / 'docs.jsonl'}]",
        "data.format=text",
        f"data.max_length={SETTINGS['block']}",
        *lmforge_train_overrides(SETTINGS, steps),
        f"output_dir={work / size / 'lmforge-run'}",
    ]


def run_one(side: str, size: str, work: Path, steps: int) -> dict:
    print(f"\n=== {size} / {side}: {SIDES[side]}", flush=True)
    if side == "lmforge":
        return lmforge_train(lmforge_overrides(work, size, steps), work / size / "lmforge-run")
    return run_child_side(__file__, side, work, steps, work / size / f"{side}.json", size=size)


CHILD_SIDES = {"hf": run_hf}  # run by run_child_side, one size at a time


# --------------------------------------------------------------------------- report
def summarise(results: dict, prep: dict, peak: float) -> None:
    """MFU and the comparison with the baseline for every (size, side), in place."""
    for size, sides in results.items():
        info = prep["sizes"][size]
        base = sides.get(BASELINE)
        for side in sides.values():
            side["mfu"] = info["flops"] / prep["tokens"] * side["tokens_per_s"] / (peak * 1e9)
            side["mfu_6n"] = info["flops_6n"] / prep["tokens"] * side["tokens_per_s"] / (peak * 1e9)
            if base is not None:
                side["ratio_to_baseline"] = side["tokens_per_s"] / base["tokens_per_s"]
                side["loss_diff_pct"] = (
                    100 * (side["final_loss"] - base["final_loss"]) / base["final_loss"]
                )
                side.update(window_diffs(side["window_losses"], base["window_losses"]))


def report(results: dict, prep: dict, peak: dict) -> str:
    headers = ["size / side", "tokens/s", f"vs {BASELINE}", "final loss", "loss diff"]
    headers += ["MFU", "MFU 6N", "peak RSS", "loop s"]
    rows = []
    for size, sides in results.items():
        for name, side in sides.items():
            rows.append(
                [
                    f"{size} / {name}",
                    f"{side['tokens_per_s']:,.0f}",
                    f"{side['ratio_to_baseline']:.2f}x" if "ratio_to_baseline" in side else "n/a",
                    f"{side['final_loss']:.4f}",
                    f"{side['loss_diff_pct']:+.2f}%" if "loss_diff_pct" in side else "n/a",
                    pct(side["mfu"]),
                    pct(side["mfu_6n"]),
                    f"{side['peak_rss_mib']:,.0f} MiB",
                    f"{side['train_seconds']:.1f}",
                ]
            )
    lines = [format_table(headers, rows), ""]
    for size in results:
        info = prep["sizes"][size]
        lines.append(
            f"{size}: {info['params_total'] / 1e6:.2f}M parameters, N = "
            f"{info['params_matmul'] / 1e6:.2f}M matmul weights (lm_head included), "
            f"{info['flops'] / prep['tokens'] / 1e6:.1f} MFLOP per token with attention"
        )
    lines += [
        f"tokens/s: {prep['tokens']:,} tokens ({prep['blocks']} blocks of {SETTINGS['block']}) "
        "/ training-loop seconds; final loss: token-weighted mean over the last logging "
        f"window (up to {SETTINGS['log_every']} steps); loss diff vs {BASELINE}",
        "MFU: lmforge.training.flops (6 per weight per token, lm_head on target positions, "
        "attention 12·L·d·T² per block); MFU 6N: 6 x matmul weights x tokens; over the fp32 "
        f"matmul peak {peak['gflops']:.1f} GFLOP/s (higher of start {peak['start']:.1f} and "
        f"end {peak['end']:.1f}; 2048x2048, best of 5)",
        "peak RSS: ru_maxrss of each side's process from os.wait4 (model loading and "
        "tokenisation included)",
    ]
    for size, sides in results.items():
        lines += side_warnings(
            sides, lambda label, side: token_count_warning(label, side, prep), f"{size} / "
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_args(parser, STEPS, "pretrain_throughput", SIDES)
    parser.add_argument(
        "--sizes",
        type=subset(SIZES),
        default=list(SIZES),
        help=f"comma-separated subset of: {', '.join(SIZES)} (default: all)",
    )
    parser.add_argument("--size", choices=sorted(SIZES), help=argparse.SUPPRESS)
    args = parse_side_args(parser, argv, CHILD_SIDES)

    def parent(work: Path) -> tuple[dict, dict, float, float]:
        peak_start = measure_peak_gflops()
        print(f"fp32 matmul peak: {peak_start:.1f} GFLOP/s", flush=True)
        prep = prepare(work, args.steps, args.sizes)
        results = {
            size: run_each_side(
                args.sides,
                lambda side, size=size: run_one(side, size, work, args.steps),
                args.no_wait,
            )
            for size in args.sizes
        }
        return prep, results, peak_start, measure_peak_gflops()

    try:
        done = run_sides_main(args, CHILD_SIDES, parent, ["accelerate"], child_options=["size"])
    except BenchError as exc:
        print(f"pretrain_throughput: {exc}", file=sys.stderr)
        return 2
    if done is None:  # a child process
        return 0
    prep, results, peak_start, peak_end = done
    peak = {"gflops": max(peak_start, peak_end), "start": peak_start, "end": peak_end}
    summarise(results, prep, peak["gflops"])
    out = {
        **run_header("pretrain_throughput", sys.argv),
        "steps": args.steps,
        "settings": SETTINGS,
        "sizes": {size: SIZES[size] for size in results},
        "sides": {name: SIDES[name] for name in args.sides},
        "baseline": BASELINE,
        "data": DATA,
        "prepared": prep,
        "flops_convention": "lmforge.training.flops: 6 FLOPs per matmul weight per token "
        "(lm_head included, on target positions), attention 12 * layers * width * block^2 "
        "per block; mfu_6n: 6 * matmul weights per token",
        "matmul_peak_gflops": peak,
        "results": results,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    print("\n" + report(results, prep, peak))
    write_results(out, results_path("pretrain_throughput", args.results, args.steps >= STEPS))
    return 0


if __name__ == "__main__":
    run_main(main)
