"""The ``prepare`` recipe's config: inputs, a list of blocks, executor and output.

Example ``pipeline.yaml``::

    output_dir: runs/prepared
    inputs:
      - files: [raw/web.jsonl.gz]
        source: web
      - files: [raw/notes.txt]
        text_mode: paragraph
    blocks:
      - normalize
      - langid: {keep: [en, zh]}
      - gopher_quality
      - minhash_dedup: {threshold: 0.8}
      - pii
      - split: {ratios: [0.8, 0.1, 0.1]}
    executor: {kind: local, workers: 2}

Blocks are validated here, before any work starts: an unknown block or parameter fails with
the block's position, the nearest valid name and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from lmforge.config.base import Group, RecipeConfig


class PrepareInput(Group):
    files: list[str] = Field(..., min_length=1, description="files, folders or folder#dataset")
    source: str | None = Field(
        None, description="name recorded in metadata.source (default: the first file's stem)"
    )
    text_mode: Literal["line", "paragraph"] = Field(
        "line", description="plain text: a document per line or per blank-line paragraph"
    )
    text_field: str = Field("text", description="column holding the text in json/csv rows")
    id_field: str = Field("id", description="column holding a document id, when there is one")

    def source_name(self) -> str:
        if self.source:
            return self.source
        name = Path(self.files[0].split("#")[-1] if "#" in self.files[0] else self.files[0]).name
        return name.split(".")[0] or "input"


class PrepareOutputConfig(Group):
    format: Literal["jsonl", "jsonl.gz", "parquet"] = Field("jsonl", description="shard format")


class ExecutorConfig(Group):
    kind: Literal["local", "ray"] = Field("local", description="local processes or Ray tasks")
    workers: int = Field(
        1, ge=0, description="parallel shard tasks (0: every core); output does not depend on it"
    )
    address: str | None = Field(
        None, description="ray: cluster address ('auto', 'ray://host:10001'); None starts one"
    )


def _block_entry(entry: Any, position: int) -> tuple[str, dict]:
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and len(entry) == 1:
        ((name, params),) = entry.items()
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise ValueError(
                f"blocks[{position}] ({name}): parameters must be a mapping, got {params!r}"
            )
        return str(name), params
    raise ValueError(
        f"blocks[{position}]: write a block as a name ('- normalize') or a one-key mapping "
        f"('- minhash_dedup: {{threshold: 0.8}}'), got {entry!r}"
    )


def block_specs(entries: list) -> list[tuple[str, dict]]:
    return [_block_entry(e, i) for i, e in enumerate(entries)]


class PrepareRecipe(RecipeConfig):
    output_dir: str = Field("runs/prepared", description="run directory written by this recipe")
    inputs: list[PrepareInput] = Field(
        default_factory=list, description="where documents come from"
    )
    blocks: list[Any] = Field(
        default_factory=list, description="pipeline blocks in order: '- name' or '- name: {..}'"
    )
    output: PrepareOutputConfig = Field(
        default_factory=PrepareOutputConfig, description="kept documents"
    )
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig, description="where it runs")
    seed: int = Field(
        0, description="seed for every random choice (sampling, splits, augmentation)"
    )
    shard_size: int = Field(
        10_000, gt=0, description="documents per shard: the unit of parallelism and of resume"
    )
    max_chars: int = Field(
        1_000_000, gt=0, description="documents longer than this go to the rejects file"
    )
    report: bool = Field(True, description="write report/report.md, report.html and plots")
    keep_work: bool = Field(
        False, description="keep the work folder (intermediate shards) after a finished run"
    )

    @field_validator("inputs")
    @classmethod
    def _need_inputs(cls, value: list[PrepareInput]) -> list[PrepareInput]:
        if not value:
            raise ValueError("list at least one input: inputs: [{files: [data.jsonl]}]")
        return value

    @field_validator("blocks")
    @classmethod
    def _valid_blocks(cls, value: list) -> list:
        from lmforge.data.blocks import build_block
        from lmforge.errors import DataError

        for position, (name, params) in enumerate(block_specs(value)):
            try:
                build_block(name, params)
            except DataError as exc:
                raise ValueError(f"blocks[{position}]: {exc}") from None
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or name}: {e['msg']}"
                    + ("" if isinstance(e.get("input"), dict) else f" (got {e.get('input')!r})")
                    for e in exc.errors()
                )
                from lmforge.data.blocks import REGISTRY

                allowed = ", ".join(REGISTRY[name].Params.model_fields)
                raise ValueError(
                    f"blocks[{position}] ({name}): {problems} [parameters: {allowed or 'none'}]"
                ) from None
        return value
