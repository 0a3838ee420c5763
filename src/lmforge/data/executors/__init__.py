"""Executors run the pipeline's shard tasks: ``local`` (processes on this machine) or ``ray``."""

from __future__ import annotations

from lmforge.data.pipeline import Executor


def make_executor(kind: str, workers: int, address: str | None = None) -> Executor:
    if kind == "local":
        from lmforge.data.executors.local import LocalExecutor

        return LocalExecutor(workers)
    if kind == "ray":
        from lmforge.data.executors.ray import RayExecutor

        return RayExecutor(workers, address)
    raise ValueError(f"unknown executor {kind!r}")
