"""Memory and speed of LoRA on an fp32 base vs QLoRA on a bitsandbytes or torchao NF4 base.

    .venv/bin/python benchmarks/qlora_memory.py                  # small-llama, 30 steps per side
    .venv/bin/python benchmarks/qlora_memory.py --steps 3 --no-wait   # smoke run

Every side is ``lmforge train`` (stage sft, ``small-llama`` from random weights, LoRA rank 16 on
every linear layer, 16 examples per packed step, fp32 compute) in a fresh interpreter,
on the same synthetic instruction data and a byte-level BPE tokenizer of 8000 tokens made first.
Only ``adapter.type`` and ``adapter.quant_backend`` differ. Each side reports:

- ``rss_steps_mib``: the highest resident memory (``/proc/self/statm``, sampled every 5 ms) from
  the end of the first optimizer step to the end of the run: what training holds once weights,
  optimizer state and activation buffers exist;
- ``peak_rss_mib``: the kernel's high-water mark for the whole process (``ru_maxrss``), which
  includes building the fp32 model that QLoRA then quantises in memory;
- sides run with ``MALLOC_MMAP_THRESHOLD_=131072`` (see :data:`MALLOC`) so that freed tensors
  leave the resident set;
- tokens/s and the final loss (the adapter trains on a 4-bit base, so the loss differs a bit);
- for QLoRA, the quantised layers' weight bytes before and after (``metrics.quantization``).

Needs the ``qlora`` extra (bitsandbytes, torchao); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_run_args,
    format_table,
    results_path,
    run_header,
    run_main,
    run_process,
    wait_until_quiet,
    write_results,
)

SIDES = {
    "lora-fp32": ["adapter.type=lora"],
    "qlora-bitsandbytes": ["adapter.type=qlora", "adapter.quant_backend=bitsandbytes"],
    "qlora-torchao": ["adapter.type=qlora", "adapter.quant_backend=torchao"],
}
STEPS = 30
# glibc keeps freed memory for reuse instead of returning it, and raises its mmap threshold after
# large frees; then the fp32 weights QLoRA frees after quantising still count as resident. A fixed
# threshold makes every tensor above 128 KiB its own mapping, returned on free: resident memory
# then follows the tensors alive.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def _rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def prepare(work: Path) -> None:
    """Synthetic instruction data and an 8000-token tokenizer in ``work`` (a child process)."""
    from lmforge.config import load_config
    from lmforge.config.recipes import TokenizerRecipe
    from lmforge.data.synthetic import write_demo_data
    from lmforge.recipes.tokenizer import run

    data = write_demo_data(work / "data", n_docs=3000, n_per_task=200, seed=0)
    run(
        load_config(
            TokenizerRecipe,
            None,
            [
                f"data.files=[{data['corpus']}]",
                "tokenizer.vocab_size=8000",
                f"output_dir={work / 'tok'}",
            ],
        )
    )


def side(work: Path, name: str, steps: int, out: Path) -> None:
    """One side in this process: train, sampling resident memory; JSON to ``out``."""
    from lmforge.config import load_config
    from lmforge.config.recipes import TrainRecipe
    from lmforge.recipes.train import run

    marks = {"setup": 0.0, "steps": 0.0}
    phase = ["setup"]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            marks[phase[0]] = max(marks[phase[0]], _rss_mib())
            time.sleep(0.005)

    def on_step(done: int) -> None:
        phase[0] = "steps"

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    run_dir = work / name
    cfg = load_config(
        TrainRecipe,
        None,
        [
            "stage=sft",
            "model.preset=small-llama",
            f"model.tokenizer={work / 'tok'}",
            f"data.train=[{work / 'data' / 'tasks.jsonl'}]",
            "data.max_length=256",
            *SIDES[name],
            "adapter.rank=16",
            "adapter.alpha=32",
            "adapter.target_modules=all-linear",
            "train.batch_size=16",
            f"train.max_steps={steps}",
            "train.lr=1e-3",
            "train.precision=fp32",
            "train.device=cpu",
            "train.shuffle=false",
            "train.log_every=1",
            "track.progress=false",
            "track.tensorboard='off'",
            "force=true",
            f"output_dir={run_dir}",
        ],
    )
    t0 = time.perf_counter()
    result = run(cfg, on_step=on_step)
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    metrics = result.metrics
    out.write_text(
        json.dumps(
            {
                "rss_steps_mib": round(marks["steps"], 1),
                "tokens_per_s": metrics["tokens_per_s"],
                "final_loss": metrics["train_loss"],
                "params_trainable": metrics["params_trainable"],
                "quantization": metrics.get("quantization"),
                "recipe_seconds": round(seconds, 2),
            }
        )
    )


def _weights(quant: dict | None) -> str:
    if not quant:
        return "-"
    return f"{quant['bytes_before'] / 2**20:.1f} -> {quant['bytes_after'] / 2**20:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_run_args(parser, STEPS, "qlora_memory", SIDES)
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare)
        return 0
    if args.side:
        side(args.work, args.side, args.steps, args.out)
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="qlora-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    script = str(Path(__file__).resolve())
    run_process([sys.executable, script, "--prepare", str(work)], "prepare")
    results = {**run_header("qlora_memory", sys.argv), "steps": args.steps, "sides": {}}
    for name in args.sides:
        if not args.no_wait:
            wait_until_quiet(0.10, 300)
        out = work / f"{name}.json"
        stats = run_process(
            [sys.executable, script, "--work", str(work), "--side", name, "--out", str(out)]
            + ["--steps", str(args.steps)],
            name,
            env={"LMFORGE_CACHE": str(work / "lmforge-cache"), **MALLOC},
        )
        results["sides"][name] = {**json.loads(out.read_text()), **stats}
    rows = [
        [
            name,
            f"{s['rss_steps_mib']:.0f}",
            f"{s['peak_rss_mib']:.0f}",
            f"{s['tokens_per_s']:.0f}",
            f"{s['final_loss']:.3f}",
            _weights(s.get("quantization")),
        ]
        for name, s in results["sides"].items()
    ]
    headers = ["side", "RSS steps 2+ MiB", "peak RSS MiB", "tok/s", "loss", "4-bit MiB"]
    print("\n" + format_table(headers, rows))
    write_results(results, results_path("qlora_memory", args.results, args.steps == STEPS))
    return 0


if __name__ == "__main__":
    run_main(main)
