"""``lmforge generate CONFIG``: complete every prompt in a file and write the outputs as JSONL.

    lmforge generate model.path=runs/sft prompts=prompts.txt output_dir=runs/gen
    lmforge generate model.adapter=runs/lora prompts=tasks.jsonl generation.max_new_tokens=32

Prompts: a .txt file holds one prompt per non-empty line; .jsonl/.json rows are ``{"prompt": ...}``
or alpaca / messages / sharegpt rows, whose final assistant answer becomes ``reference``.
Writes ``output`` (default ``OUTPUT_DIR/outputs.jsonl``; one row per prompt: ``id``,
``source_line``, ``prompt``, ``messages``, ``output``, ``reference``, ``finish_reason``,
``new_tokens``), ``OUTPUT_DIR/rejects.jsonl`` and ``OUTPUT_DIR/manifest.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from lmforge.artifacts import Run, atomic_write_text, recorded
from lmforge.config import to_dict
from lmforge.config.groups import ModelConfig
from lmforge.config.recipes import GenerateRecipe
from lmforge.data.readers import Record, Rejects, iter_records
from lmforge.data.schema import RowError, prompt_messages
from lmforge.errors import ConfigError, DataError
from lmforge.models.load import load_for_inference, resolve_device, resolve_dir
from lmforge.serve.generate import generate


@dataclass
class Prompt:
    """One usable prompt row: messages up to the answer, and the reference answer if any."""

    id: str
    source: str
    line: int
    messages: list[dict]
    reference: str | None
    row: object = None

    @property
    def text(self) -> str:
        """The last user message: what a reader of the outputs wants to see."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")


def read_prompts(files: list[str], rejects: Rejects) -> list[Prompt]:
    """Every usable prompt in ``files``; unusable rows go to ``rejects`` with the reason."""
    prompts = []
    for record in iter_records(files, rejects):
        try:
            messages, reference = prompt_messages(record.row)
            if not any(m["role"] == "user" for m in messages):
                raise RowError("no user message to answer")
        except RowError as exc:
            rejects.add_record(record, str(exc))
            continue
        prompts.append(
            Prompt(row_id(record), record.source, record.line, messages, reference, record.row)
        )
    return prompts


def row_id(record: Record) -> str:
    """A row's own ``id``, else ``file:line`` of the file (the shard) it was read from."""
    own = record.row.get("id") if isinstance(record.row, dict) else None
    return str(own) if isinstance(own, str | int) else f"{Path(record.source).name}:{record.line}"


def prompt_input(prompt: Prompt, chat: bool) -> list[dict] | str:
    """What ``generate`` takes: the messages (chat template), or for ``chat=false`` raw text."""
    if chat:
        return prompt.messages
    if len(prompt.messages) != 1:
        raise RowError("a conversation needs generation.chat=true (the chat template)")
    return prompt.messages[0]["content"]


def model_inputs(model: ModelConfig) -> dict:
    """Manifest inputs for a model config (resolved folders, so lineage finds their runs)."""
    inputs = {}
    if model.path:
        inputs["model"] = str(resolve_dir(model.path, "model.path"))
    if model.adapter:
        inputs["adapter"] = str(resolve_dir(model.adapter, "model.adapter"))
    if model.tokenizer:  # "tokenizer": a run's tokenizer/ folder wins over its model/ folder
        inputs["tokenizer"] = str(resolve_dir(model.tokenizer, "tokenizer"))
    return inputs


def run(cfg: GenerateRecipe) -> Run:
    if not cfg.prompts:
        raise ConfigError("set prompts: a .txt file (one prompt per line) or a .jsonl file")
    if not Path(cfg.prompts).is_file():
        raise DataError(f"prompts file not found: {cfg.prompts} (check prompts= in the config)")
    run = Run.start(
        "generate",
        to_dict(cfg),
        cfg.output_dir,
        inputs={**model_inputs(cfg.model), "prompts": cfg.prompts},
    )
    if not cfg.force and run.finished_before():
        print(f"lmforge: reusing finished generate run {run.dir}")
        return run
    with recorded(run):
        rejects = Rejects()
        prompts, inputs = [], []
        for prompt in read_prompts([cfg.prompts], rejects):
            try:
                inputs.append(prompt_input(prompt, cfg.generation.chat))
            except RowError as exc:
                rejects.add(prompt.source, prompt.line, str(exc), prompt.row)
                continue
            prompts.append(prompt)
        rejects_path = rejects.write(run.dir / "rejects.jsonl")
        run.counts.update(
            read=len(prompts) + len(rejects),
            used=len(prompts),
            rejected=len(rejects),
            rejected_by_reason=rejects.by_reason(),
            rejects_file=str(rejects_path),
        )
        if not prompts:
            raise DataError(
                f"no usable prompts in {cfg.prompts} ({len(rejects)} rejected, see {rejects_path})"
            )
        model, tokenizer = load_for_inference(cfg.model, resolve_device(cfg.device))
        started = time.perf_counter()
        results = generate(model, tokenizer, inputs, cfg.generation, progress=True)
        seconds = time.perf_counter() - started
        rows = [_output_row(p, r) for p, r in zip(prompts, results, strict=True)]
        out = Path(cfg.output) if cfg.output else run.dir / "outputs.jsonl"
        atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        run.add_output(out, "outputs")
        new_tokens = sum(r["new_tokens"] for r in results)
        run.metrics.update(
            new_tokens=new_tokens,
            seconds=round(seconds, 3),
            tokens_per_second=round(new_tokens / max(seconds, 1e-9), 1),
            finish_reasons={
                k: sum(r["finish_reason"] == k for r in results) for k in ("stop", "length")
            },
        )
    print(
        f"lmforge: {len(rows)} outputs written to {out}"
        + (f" ({len(rejects)} prompts rejected, see {rejects_path})" if len(rejects) else "")
    )
    return run


def _output_row(prompt: Prompt, result: dict) -> dict:
    row = {
        "id": prompt.id,
        "source_line": prompt.line,
        "prompt": prompt.text,
        "messages": prompt.messages,
        "output": result["text"],
        "finish_reason": result["finish_reason"],
        "new_tokens": result["new_tokens"],
    }
    if prompt.reference is not None:
        row["reference"] = prompt.reference
    return row
