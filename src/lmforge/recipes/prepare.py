"""``lmforge prepare pipeline.yaml``: curate raw data with a declared list of blocks.

    lmforge prepare configs/prepare.yaml
    lmforge prepare configs/prepare.yaml executor.workers=2 output_dir=runs/web-v2

Writes into ``OUTPUT_DIR``:

- ``data/part-*.jsonl`` (or ``data/<split>/part-*.jsonl`` after a ``split`` block): kept
  documents, one ``{"id", "text"|"messages", ..., "metadata"}`` row each;
- ``exclusions/part-*.jsonl``: every dropped document with the block, reason and detail;
- ``rejects.jsonl``: input rows that could not be used, with file, line and reason;
- ``stats.json``: counts per block and reason (``read + added = kept + dropped + rejected``) and
  a sha256 per output shard; ``report/``: the run report; ``manifest.json``.

A killed run resumes from the shards already finished (``OUTPUT_DIR/work/``); a finished run with
the same config and inputs is reused.
"""

from __future__ import annotations

import shutil
import sys

from lmforge.artifacts import Run, atomic_write_json, fingerprint_file, recorded
from lmforge.config import to_dict
from lmforge.config.prepare import PrepareRecipe, block_specs
from lmforge.data.blocks import Block, build_block
from lmforge.data.executors import make_executor
from lmforge.data.pipeline import InputSpec, run_pipeline


def build_blocks(cfg: PrepareRecipe) -> list[Block]:
    return [build_block(name, params) for name, params in block_specs(cfg.blocks)]


def _block_inputs(blocks: list[Block]) -> dict[str, list[str]]:
    """Files the blocks read (eval sets, models, mixed-in text): inputs of the run's cache key."""
    found: dict[str, list[str]] = {}
    for block in blocks:
        paths = block.input_paths()
        if paths:
            found.setdefault(f"block:{block.name}", []).extend(paths)
    return found


def run(cfg: PrepareRecipe) -> Run:
    blocks = build_blocks(cfg)
    files = [f for spec in cfg.inputs for f in spec.files]
    from lmforge.data.readers import check_files, split_selector

    check_files(files, "input")
    inputs = {"raw": [str(split_selector(f)[0]) for f in files], **_block_inputs(blocks)}
    run = Run.start("prepare", to_dict(cfg), cfg.output_dir, inputs=inputs)
    if not cfg.force and run.finished_before():
        print(f"lmforge: reusing finished prepare run {run.dir}")
        return run
    out = run.dir
    work = out / "work" / run.cache_key[:16]
    specs = [
        InputSpec(
            files=spec.files,
            source=spec.source_name(),
            text_mode=spec.text_mode,
            text_field=spec.text_field,
            id_field=spec.id_field,
        )
        for spec in cfg.inputs
    ]
    executor = make_executor(cfg.executor.kind, cfg.executor.workers, cfg.executor.address)
    with recorded(run):
        for stale in ("data", "exclusions"):  # outputs of a different config must not mix in
            if (out / stale).exists() and not (work / "ingest.json").exists():
                shutil.rmtree(out / stale)
        try:
            result = run_pipeline(
                specs,
                blocks,
                out,
                work,
                executor,
                run_key=run.cache_key,
                seed=cfg.seed,
                shard_size=cfg.shard_size,
                max_chars=cfg.max_chars,
                output_format=cfg.output.format,
                progress=lambda msg: print(f"lmforge prepare: {msg}", file=sys.stderr),
            )
        finally:
            executor.close()
        stats = result.stats
        stats["shards"] = {
            str(p.relative_to(out)): {"docs": n, "sha256": fingerprint_file(p)}
            for p, n in sorted(result.data_files.items())
        }
        atomic_write_json(out / "stats.json", stats)
        for path in sorted(result.data_files):
            run.add_output(path, f"data:{path.relative_to(out / 'data')}")
        run.add_output(out / "data", "data")
        run.add_output(result.rejects_file, "rejects")
        run.add_output(out / "exclusions", "exclusions")
        run.add_output(out / "stats.json", "stats")
        run.counts.update(stats["totals"])
        run.counts["dropped_by_block"] = {
            f"{b['index']}:{b['name']}": b["dropped"] for b in stats["blocks"] if b["dropped"]
        }
        if cfg.report:
            from lmforge.data.report import write_report

            report = write_report(out)
            run.add_output(report, "report")
        if not cfg.keep_work:
            shutil.rmtree(out / "work", ignore_errors=True)
        _print_summary(stats)
    return run


def _print_summary(stats: dict) -> None:
    t = stats["totals"]
    print(
        f"lmforge prepare: read {t['read']}, kept {t['kept']}, dropped {t['dropped']}, "
        f"rejected {t['rejected']}, added {t['added']}",
        file=sys.stderr,
    )
    for block in stats["blocks"]:
        reasons = ", ".join(f"{r} {n}" for r, n in block["dropped"].items())
        extra = f" changed {block['changed']}" if block["changed"] else ""
        extra += f" added {block['added']}" if block["added"] else ""
        print(
            f"  {block['index']:>2} {block['name']:<18} seen {block['seen']:<8} "
            f"kept {block['kept']:<8}{extra}{'  dropped: ' + reasons if reasons else ''}",
            file=sys.stderr,
        )
