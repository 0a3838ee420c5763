"""Local executor: shard tasks in this process (one worker) or in a pool of processes.

Worker processes are started with ``spawn`` so that they never inherit a forked copy of
torch's thread pools or an open model (fork + threads can deadlock). A pool lives for the whole
run, so blocks that load a model do it once per worker, not once per shard.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from lmforge.data.pipeline import Executor


class LocalExecutor(Executor):
    def __init__(self, workers: int = 1):
        self.workers = workers if workers > 0 else (os.cpu_count() or 1)
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list:
        if self.workers == 1 or len(items) <= 1:
            return [fn(item) for item in items]
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
