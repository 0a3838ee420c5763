"""Where lmforge's LoRA SFT step spends its time: a torch.profiler breakdown by kind of work.

Same model, tokenizer, LoRA and examples as ``sft_lora_throughput.py`` (it prepares them the
same way, or reuses ``--work`` from a run of that script). It trains ``--batches`` micro-batches
of 8 examples through lmforge's objective and varlen attention, after two warm-up micro-batches,
and groups the profiler's self CPU time:

- base matmuls: the frozen q/k/v/o/gate/up/down projections, forward and input gradients;
- LoRA matmuls: every product with a rank-r side (r=8), forward and gradients;
- output layer: the vocab-wide products of the fused cross-entropy;
- attention: PyTorch's flash-attention CPU kernels, forward and backward;
- everything else: elementwise work (norms, rotary, SiLU, LoRA scaling, residual adds),
  gradient accumulation, copies, allocation.

For each group it prints the seconds, the share of the step and, for matmuls, the achieved
GFLOP/s (2·m·n·k per product) next to the measured fp32 matmul peak.

    .venv/bin/python benchmarks/profile_sft_step.py [--work DIR] [--batches 8]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, measure_peak_gflops, run_main  # noqa: E402
from sft_lora_throughput import (  # noqa: E402
    SETTINGS,
    encode_rows,
    load_rows,
    lora_model,
    prepare,
)

GROUPS = ("base matmuls", "LoRA matmuls", "output layer", "attention", "everything else")


def group_of(name: str, shapes: list) -> str:
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention"
    if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"):
        dims = {d for shape in shapes if shape for d in shape}
        if SETTINGS["lora_rank"] in dims:
            return "LoRA matmuls"
        if any(d >= 4096 for d in dims if d not in _token_counts):
            return "output layer"
        return "base matmuls"
    return "everything else"


_token_counts: set[int] = set()  # row lengths, so a long row is not taken for the vocab


def mm_flops(shapes: list) -> int:
    if len(shapes) >= 2 and len(shapes[0]) == 2 and len(shapes[1]) == 2:
        (m, k), (_, n) = shapes[0], shapes[1]
        return 2 * m * n * k
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="folder prepared by sft_lora_throughput.py")
    parser.add_argument("--batches", type=int, default=8, help="profiled micro-batches")
    parser.add_argument(
        "--plain-lora", action="store_true", help="PEFT's LoRA layers as they are (no lowrank)"
    )
    args = parser.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from lmforge.models.load import load_tokenizer
    from lmforge.training.attention import varlen_attention
    from lmforge.training.collate import Piece, varlen_batch
    from lmforge.training.lowrank import use_fast_lowrank
    from lmforge.training.objectives.causal import CausalLMLoss

    work = args.work or Path(tempfile.mkdtemp(prefix="lmforge-profile-"))
    need = args.batches + 2
    if not (work / "model").is_dir():
        train_rows, all_rows = load_rows(math.ceil(need * 8 / SETTINGS["batch_size"]))
        prepare(work, train_rows, all_rows)
    tokenizer = load_tokenizer(work / "model")
    rows = [json.loads(x) for x in (work / "train.jsonl").read_text().splitlines()]
    size = SETTINGS["batch_size"]
    examples = encode_rows(tokenizer, rows[: need * size])
    units = [[Piece.from_labels(ids, labels)] for ids, labels, *_ in examples]
    batches = [varlen_batch(units[i : i + size]) for i in range(0, need * size, size)]
    _token_counts.update(b["input_ids"].shape[1] for b in batches)

    model = lora_model(work)
    model.train()
    if not args.plain_lora:
        use_fast_lowrank(model, torch.device("cpu"))  # as lmforge's loop does on CPU
    objective = CausalLMLoss(model)

    def step(batch) -> None:
        loss, _ = objective(
            batch["input_ids"], batch["position_ids"], batch["targets"], **batch["attention"]
        )
        loss.backward()

    with varlen_attention(model, torch.device("cpu")):
        for batch in batches[:2]:
            step(batch)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            t0 = time.perf_counter()
            for batch in batches[2:]:
                step(batch)
            wall = time.perf_counter() - t0
    peak = measure_peak_gflops()
    seconds = dict.fromkeys(GROUPS, 0.0)
    flops = dict.fromkeys(GROUPS, 0)
    for event in prof.key_averages(group_by_input_shape=True):
        group = group_of(event.key, event.input_shapes)
        seconds[group] += event.self_cpu_time_total / 1e6
        if event.key in ("aten::mm", "aten::addmm"):
            flops[group] += mm_flops(event.input_shapes) * event.count
    profiled = sum(seconds.values())
    tokens = sum(b["input_ids"].shape[1] for b in batches[2:])
    rows_out = [
        [
            g,
            f"{seconds[g]:.2f}",
            f"{seconds[g] / profiled:.1%}",
            f"{flops[g] / seconds[g] / 1e9:.0f}" if flops[g] and seconds[g] else "",
        ]
        for g in GROUPS
    ]
    print(
        f"\n{args.batches} micro-batches of {size} examples, {tokens:,} tokens, wall "
        f"{wall:.2f} s under the profiler ({tokens / wall:.0f} tokens/s); "
        f"fp32 matmul peak {peak:.1f} GFLOP/s\n"
    )
    print(format_table(["work", "self CPU s", "share", "GFLOP/s"], rows_out))
    return 0


if __name__ == "__main__":
    run_main(main)
