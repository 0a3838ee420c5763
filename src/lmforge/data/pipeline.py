"""Run a list of blocks over sharded documents, resumably, on any executor.

The pipeline is cut into *stages* at every global block (dedup, split, balancing): a stage
starts with an optional global block, whose ``fit`` has seen all of the previous stage's output,
and continues with streaming blocks. Work is laid out under ``work_dir``::

    ingest.json                 marker: number of shards, reader counts (written last)
    rejects.jsonl               rows the readers could not use (file, line, reason)
    s0/in-00000.jsonl ...       ingested documents, ``shard_size`` per shard
    s1/fit.pkl                  the state of stage 1's global block
    sK/part-00000.jsonl         stage K's output for shard 0 (input of stage K+1)
    sK/excl-00000.jsonl         documents stage K dropped, with block, reason and detail
    sK/done-00000.json          completion marker = that shard's block counts (written last)

Every file is written atomically and a shard's marker only after its outputs, so a run killed
at any point (even ``kill -9``) resumes from the shards already done, and the finished output
is byte-identical to an uninterrupted run: shards are pure functions of their input, the
config, and per-document seeds. The final stage writes straight into the output folder.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.artifacts import atomic_write_bytes, atomic_write_json, remove_partial_writes
from lmforge.data.blocks import Block, BlockStats, FitContext, GlobalBlock, ShardContext, run_block
from lmforge.data.document import Document
from lmforge.data.readers import Rejects, iter_records
from lmforge.data.schema import RowError
from lmforge.data.writers import encode_rows
from lmforge.errors import DataError


@dataclass
class InputSpec:
    """One group of input files: where documents come from and how to read them."""

    files: list[str]
    source: str
    text_mode: str = "line"
    text_field: str = "text"
    id_field: str = "id"


@dataclass
class Stage:
    global_block: GlobalBlock | None
    blocks: list[Block]

    @property
    def all_blocks(self) -> list[Block]:
        return ([self.global_block] if self.global_block else []) + self.blocks


def plan_stages(blocks: Sequence[Block]) -> list[Stage]:
    """Cut the block list before every global block; the first stage may have none."""
    stages = [Stage(None, [])]
    for block in blocks:
        if block.is_global:
            stages.append(Stage(block, []))
        else:
            stages[-1].blocks.append(block)
    if len(stages) > 1 and not stages[0].blocks:
        stages.pop(0)  # a pipeline that starts with a global block needs no empty first stage
    return stages


# ----------------------------------------------------------------------------- shard files
def shard_file(folder: Path, prefix: str, index: int, suffix: str = "jsonl") -> Path:
    return folder / f"{prefix}-{index:05d}.{suffix}"


def read_docs(path: Path) -> Iterator[Document]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            yield Document.from_stored(json.loads(line))


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


# ----------------------------------------------------------------------------- ingest
def ingest(inputs: Sequence[InputSpec], work_dir: Path, shard_size: int, max_chars: int) -> dict:
    """Read every input into ``s0/in-*.jsonl`` shards of documents; unusable rows to rejects.

    Returns (and writes to ``ingest.json``, last) ``{"shards", "read", "rejected", "by_reason"}``.
    Document ids: the row's id field, else ``{source}/{file name}:{line}``; a repeated id is a
    reject (exclusions, diffs and ``duplicate_of`` need ids to be unique).
    """
    marker = work_dir / "ingest.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    folder = work_dir / "s0"
    rejects = Rejects()
    seen_ids: set[str] = set()
    shard: list[dict] = []
    shards = 0
    read = 0
    row_rejects = 0  # rejected here; the rest of ``rejects`` the readers rejected before parsing

    def flush() -> None:
        nonlocal shard, shards
        atomic_write_bytes(shard_file(folder, "in", shards), _jsonl(shard))
        shards += 1
        shard = []

    for spec in inputs:
        for record in iter_records(spec.files, rejects, text_mode=spec.text_mode):
            read += 1
            try:
                doc = _document(record.row, record.source, record.line, spec, max_chars)
            except RowError as exc:
                rejects.add_record(record, str(exc))
                row_rejects += 1
                continue
            if doc.id in seen_ids:
                rejects.add_record(record, f"duplicate id: {doc.id!r} was used by an earlier row")
                row_rejects += 1
                continue
            seen_ids.add(doc.id)
            shard.append(doc.to_row())
            if len(shard) >= shard_size:
                flush()
    # reader-level rejects (bad JSON, bad UTF-8) never reached the loop: they are rows read too
    read += len(rejects) - row_rejects
    if shard or shards == 0:
        flush()
    rejects.write(work_dir / "rejects.jsonl")
    info = {
        "shards": shards,
        "read": read,
        "rejected": len(rejects),
        "by_reason": rejects.by_reason(),
    }
    atomic_write_json(marker, info)
    return info


def _document(row: Any, source_file: str, line: int, spec: InputSpec, max_chars: int) -> Document:
    if isinstance(row, dict):
        if spec.text_field != "text" and spec.text_field in row:
            row = {("text" if k == spec.text_field else k): v for k, v in row.items()}
        if spec.id_field != "id" and spec.id_field in row:
            row = {("id" if k == spec.id_field else k): v for k, v in row.items()}
    default_id = f"{spec.source}/{Path(source_file).name}:{line}"
    meta = {"source": spec.source, "file": source_file, "line": line}
    doc = Document.from_row(row, default_id, meta)
    size = len(doc.content)
    if size > max_chars:
        raise RowError(f"document too large: {size} characters > max_chars {max_chars}")
    return doc


# ----------------------------------------------------------------------------- shard tasks
# Workers keep set-up blocks and loaded states between tasks (models load once per worker).
_READY: dict[tuple, Any] = {}


def _ready_blocks(key: tuple, blocks: list[Block]) -> list[Block]:
    if key not in _READY:
        for block in blocks:
            block.setup()
        _READY[key] = blocks
    return _READY[key]


def _load_state(path: str | None) -> Any:
    if path is None:
        return None
    key = ("state", path)
    if key not in _READY:
        with open(path, "rb") as fh:
            _READY[key] = pickle.load(fh)
    return _READY[key]


@dataclass
class ShardTask:
    run_key: str
    stage: int
    shard: int
    source: str  # input shard (jsonl of documents)
    work: str  # this stage's work folder
    global_block: GlobalBlock | None
    state_path: str | None
    blocks: list[Block]
    seed: int
    final_dir: str | None  # the output data folder when this is the last stage
    output_format: str = "jsonl"


def run_shard(task: ShardTask) -> dict:
    """Run one shard through one stage; returns (and writes, last) the shard's block counts."""
    work = Path(task.work)
    marker = shard_file(work, "done", task.shard, "json")
    if marker.is_file():
        return json.loads(marker.read_text())
    blocks = _ready_blocks(
        (task.run_key, task.stage), [*filter(None, [task.global_block]), *task.blocks]
    )
    state = _load_state(task.state_path)
    exclusions: list[dict] = []
    counts: list[dict] = []
    stream: Iterator[Document] = read_docs(Path(task.source))
    # chain lazily; each block's counts are final once the stream is exhausted
    contexts: list[ShardContext] = []
    for block in blocks:
        bctx = ShardContext(task.shard, task.seed, exclusions)
        contexts.append(bctx)
        stream = run_block(block, stream, bctx, state if block.is_global else None)
    out = [doc.to_row() for doc in stream]
    for block, bctx in zip(blocks, contexts, strict=True):
        counts.append({"name": block.name, **bctx.stats.to_dict()})
    outputs = _write_outputs(task, work, out)
    excl = shard_file(work, "excl", task.shard)
    atomic_write_bytes(excl, _jsonl(exclusions))
    result = {"shard": task.shard, "docs": len(out), "blocks": counts, "outputs": outputs}
    atomic_write_json(marker, result)
    return result


def _write_outputs(task: ShardTask, work: Path, rows: list[dict]) -> list[dict]:
    """Write the shard's documents; returns ``[{"path", "docs"}]`` (one per split at the end)."""
    if task.final_dir is None:
        path = shard_file(work, "part", task.shard)
        atomic_write_bytes(path, _jsonl(rows))
        return [{"path": str(path), "docs": len(rows)}]
    final = Path(task.final_dir)
    groups: dict[str, list[dict]] = {}
    for row in rows:
        split = (row.get("metadata") or {}).get("split")
        groups.setdefault(split or "", []).append(row)
    written = []
    for split, group in sorted(groups.items()):
        folder = final / split if split else final
        path = shard_file(folder, "part", task.shard, task.output_format)
        atomic_write_bytes(path, encode_rows(group, task.output_format))
        written.append({"path": str(path), "docs": len(group)})
    return written


def fit_map_task(args: tuple) -> Any:
    """Executor task for ``FitContext.map_shards``: ``fn(shard, documents of that shard)``."""
    fn, shard, path = args
    return fn(shard, read_docs(Path(path)))


# ----------------------------------------------------------------------------- in memory
def run_in_memory(
    blocks: Sequence[Block], shards: Sequence[Sequence[Document]], seed: int = 0
) -> tuple[list[list[Document]], list[dict], list[dict]]:
    """Run ``blocks`` over in-memory shards of documents: no files, no executor, no resume.

    For notebooks and tests; the same blocks, order and per-document seeds as ``lmforge
    prepare``. Returns (output shards, exclusions, per-block counts like ``stats.json``'s).
    Global blocks ``fit`` on the previous block's output, so a list of blocks means what it
    means in a pipeline.yaml.
    """
    current = [list(shard) for shard in shards]
    exclusions: list[dict] = []
    counts = []
    for index, block in enumerate(blocks):
        block.setup()
        state = None
        if block.is_global:
            snapshot = current
            ctx = FitContext(
                num_shards=len(snapshot),
                read_shard=lambda i, snap=snapshot: iter(snap[i]),
                map_shards=lambda fn, snap=snapshot: [fn(i, iter(d)) for i, d in enumerate(snap)],
                seed=seed,
                block_name=block.name,
            )
            state = block.fit(ctx)
        total = BlockStats()
        nxt = []
        for i, shard in enumerate(current):
            bctx = ShardContext(i, seed, exclusions)
            nxt.append(list(run_block(block, shard, bctx, state)))
            total.merge(bctx.stats.to_dict())
        counts.append({"index": index, "name": block.name, **total.to_dict()})
        current = nxt
    return current, exclusions, counts


# ----------------------------------------------------------------------------- the run
class Executor:
    """What the pipeline needs from an executor: an ordered parallel map over picklable calls."""

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list:
        raise NotImplementedError

    def close(self) -> None:
        pass


@dataclass
class PipelineResult:
    stats: dict
    data_files: dict[Path, int]  # output shard -> documents in it
    exclusion_files: list[Path]
    rejects_file: Path


def run_pipeline(
    inputs: Sequence[InputSpec],
    blocks: Sequence[Block],
    out_dir: Path,
    work_dir: Path,
    executor: Executor,
    run_key: str,
    seed: int = 0,
    shard_size: int = 10_000,
    max_chars: int = 1_000_000,
    output_format: str = "jsonl",
    progress: Callable[[str], None] = lambda msg: None,
) -> PipelineResult:
    """Ingest, run every stage over every shard, and assemble ``out_dir/{data,exclusions}``."""
    for folder in (work_dir, out_dir / "data", out_dir / "exclusions"):
        remove_partial_writes(folder)  # what a killed run was writing when it died
    info = ingest(inputs, work_dir, shard_size, max_chars)
    num = info["shards"]
    progress(f"ingested {info['read']} rows into {num} shards ({info['rejected']} rejected)")
    sources = [shard_file(work_dir / "s0", "in", i) for i in range(num)]
    stages = plan_stages(blocks)
    data_dir = out_dir / "data"
    stage_results: list[list[dict]] = []
    global_reports: dict[str, Any] = {}
    for k, stage in enumerate(stages, start=1):
        work = work_dir / f"s{k}"
        work.mkdir(parents=True, exist_ok=True)
        state_path = None
        if stage.global_block is not None:
            state_path = work / "fit.pkl"
            state = _fit(stage.global_block, sources, state_path, executor, seed, run_key, k)
            report = stage.global_block.summary(state)
            if report:
                global_reports[stage.global_block.name] = report
        last = k == len(stages)
        tasks = [
            ShardTask(
                run_key=run_key,
                stage=k,
                shard=i,
                source=str(src),
                work=str(work),
                global_block=stage.global_block,
                state_path=str(state_path) if state_path else None,
                blocks=stage.blocks,
                seed=seed,
                final_dir=str(data_dir) if last else None,
                output_format=output_format,
            )
            for i, src in enumerate(sources)
        ]
        names = ", ".join(b.name for b in stage.all_blocks) or "write"
        progress(f"stage {k}/{len(stages)} ({names}) over {num} shards")
        results = executor.map(run_shard, tasks)
        stage_results.append(results)
        sources = [shard_file(work, "part", i) for i in range(num)]
    exclusion_files = _assemble_exclusions(work_dir, out_dir / "exclusions", len(stages), num)
    rejects_file = out_dir / "rejects.jsonl"
    atomic_write_bytes(rejects_file, (work_dir / "rejects.jsonl").read_bytes())
    data_files = {Path(o["path"]): o["docs"] for r in stage_results[-1] for o in r["outputs"]}
    stats = _stats(info, stages, stage_results, global_reports)
    _READY.clear()  # in-process runs: let this run's models and states go
    return PipelineResult(stats, data_files, exclusion_files, rejects_file)


def _fit(
    block: GlobalBlock,
    sources: list[Path],
    state_path: Path,
    executor: Executor,
    seed: int,
    run_key: str,
    stage: int,
) -> Any:
    if state_path.is_file():
        with open(state_path, "rb") as fh:
            return pickle.load(fh)
    _ready_blocks((run_key, stage, "fit"), [block])
    ctx = FitContext(
        num_shards=len(sources),
        read_shard=lambda i: read_docs(sources[i]),
        map_shards=lambda fn: executor.map(
            fit_map_task, [(fn, i, str(p)) for i, p in enumerate(sources)]
        ),
        seed=seed,
        block_name=block.name,
    )
    state = block.fit(ctx)
    atomic_write_bytes(state_path, pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
    return state


def _assemble_exclusions(work_dir: Path, folder: Path, stages: int, num: int) -> list[Path]:
    """One exclusions shard per input shard: every stage's drops for it, in pipeline order.

    The folder always exists (empty when nothing was dropped): DVC and scripts can rely on it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(num):
        parts = [
            shard_file(work_dir / f"s{k}", "excl", i).read_bytes() for k in range(1, stages + 1)
        ]
        data = b"".join(parts)
        if data:
            written.append(atomic_write_bytes(shard_file(folder, "part", i), data))
    return written


def _stats(
    info: dict, stages: list[Stage], stage_results: list[list[dict]], global_reports: dict
) -> dict:
    blocks: list[dict] = []
    index = 0
    for stage, results in zip(stages, stage_results, strict=True):
        for j, block in enumerate(stage.all_blocks):
            total = BlockStats()
            for r in results:
                total.merge(r["blocks"][j])
            blocks.append({"index": index, "name": block.name, **total.to_dict()})
            index += 1
    kept = sum(r["docs"] for r in stage_results[-1]) if stage_results else 0
    dropped = sum(sum(b["dropped"].values()) for b in blocks)
    added = sum(b["added"] for b in blocks)
    totals = {
        "read": info["read"],
        "rejected": info["rejected"],
        "kept": kept,
        "dropped": dropped,
        "added": added,
    }
    if totals["read"] + added != kept + dropped + totals["rejected"]:
        raise DataError(f"counts do not reconcile (a bug): {totals}")
    return {
        "totals": totals,
        "blocks": blocks,
        "rejected": info["by_reason"],
        "global": global_reports,
    }
