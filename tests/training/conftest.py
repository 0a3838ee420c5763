"""Training tests run tiny models: one torch thread is fastest for them and keeps a busy
two-core machine from thrashing (several spinning OpenMP threads made steps ~40x slower)."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def sgd_loop(monkeypatch):
    """``sgd_loop(run_dir, pad_id, max_steps, lr, batch_size, grad_accum=1, **loop options)``
    gives ``run(model, units) -> metrics rows``: ``loop.train_loop`` with plain SGD and nothing
    else moving (constant lr, no warmup, no clipping, no shuffling, fp32), so the weight change
    of a step is ``lr x gradient`` (AdamW's first step is ~lr * sign(grad) and would hide a
    wrong normalisation)."""
    from lmforge.config.training import TrainConfig
    from lmforge.training import loop

    def sgd(model, cfg):
        return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)

    monkeypatch.setattr(loop, "build_optimizer", sgd)

    def make(run_dir, pad_id, max_steps, lr, batch_size, grad_accum=1, **opts):
        run_dir.mkdir()
        cfg = TrainConfig(
            batch_size=batch_size,
            grad_accum=grad_accum,
            max_steps=max_steps,
            lr=lr,
            schedule="constant",
            warmup_steps=0,
            max_grad_norm=None,
            shuffle=False,
            log_every=1,
            device="cpu",
            precision="fp32",
        )
        options = loop.LoopOptions(
            run_dir=run_dir, pad_id=pad_id, progress=False, tensorboard="off", **opts
        )

        def run(model, units) -> list[dict]:
            loop.train_loop(model, units, [], cfg, options)
            lines = (run_dir / "metrics.jsonl").read_text().splitlines()
            return [json.loads(x) for x in lines]

        return run

    return make
