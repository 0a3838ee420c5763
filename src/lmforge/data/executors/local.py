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

from tqdm import tqdm

from lmforge.data.pipeline import Executor


class LocalExecutor(Executor):
    def __init__(self, workers: int = 1):
        self.workers = workers if workers > 0 else (os.cpu_count() or 1)
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list:
        if self.workers == 1 or len(items) <= 1:
            results = map(fn, items)
        else:
            if self._pool is None:
                context = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
            results = self._pool.map(fn, items)
        # shards/s and an ETA on a terminal; silent when stderr is not one (CI, tests)
        return list(tqdm(results, total=len(items), unit="shard", disable=None, leave=False))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
