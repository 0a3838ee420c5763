"""Ray executor: the same shard tasks as Ray tasks, on a running cluster or a local instance.

``address`` None starts (or joins) a local Ray instance with ``workers`` CPUs; "auto" or
"ray://host:port" joins an existing cluster. Nothing about the pipeline changes: tasks are the
same picklable functions the local executor runs, and results come back in shard order, so the
output is byte-identical to a local run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

from lmforge.data.pipeline import Executor
from lmforge.errors import MissingDependency


class RayExecutor(Executor):
    def __init__(self, workers: int = 0, address: str | None = None):
        if importlib.util.find_spec("ray") is None:
            raise MissingDependency("ray", "ray", "the ray executor")
        self.workers = workers
        self.address = address
        self._started = False
        self._remote: dict[Callable, Any] = {}

    def _ray(self):
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address:
                kwargs["address"] = self.address
            elif self.workers > 0:
                kwargs["num_cpus"] = self.workers
            ray.init(**kwargs)
            self._started = True
        return ray

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list:
        ray = self._ray()
        if fn not in self._remote:
            self._remote[fn] = ray.remote(fn)
        remote = self._remote[fn]
        return ray.get([remote.remote(item) for item in items])

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
