"""Training tests run tiny models: one torch thread is fastest for them and keeps a busy
two-core machine from thrashing (several spinning OpenMP threads made steps ~40x slower)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
