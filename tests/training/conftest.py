"""Training tests run tiny models: one torch thread is fastest for them and keeps a busy
two-core machine from thrashing (several spinning OpenMP threads made steps ~40x slower)."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch


@contextlib.contextmanager
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with _one_thread():
        yield


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


# ------------------------------------------------------------------ alignment (rm, dpo, grpo, ppo)
QUIET = ["track.progress=false", "track.tensorboard=off"]


def train_run(overrides: list[str]):
    """``lmforge train`` with these overrides, quietly."""
    from lmforge.config import load_config
    from lmforge.config.recipes import TrainRecipe
    from lmforge.recipes.train import run

    return run(load_config(TrainRecipe, None, overrides + QUIET))


def _pair_args(tokenizer_dir, pairs, out) -> list[str]:
    return [
        f"model.tokenizer={tokenizer_dir}",
        f"data.train=[{pairs['train']}]",
        f"data.validation=[{pairs['val']}]",
        "data.max_length=64",
        "train.batch_size=8",
        "train.log_every=5",
        f"output_dir={out}",
    ]


@pytest.fixture(scope="session")
def pair_args():
    """``pair_args(tokenizer_dir, pairs, out)``: the overrides the alignment runs share."""
    return _pair_args


@pytest.fixture(scope="session")
def pairs(tmp_path_factory) -> dict:
    """Parity pairs (the correct label chosen, the other rejected), English and Chinese."""
    from lmforge.data.synthetic_pairs import make_pairs, write_pairs

    folder = tmp_path_factory.mktemp("pairs")
    rows = make_pairs(120, seed=0, tasks=("en_parity", "zh_parity"))
    return {
        "train": write_pairs(folder / "train.jsonl", rows[:200]),
        "val": write_pairs(folder / "val.jsonl", rows[200:]),
    }


@pytest.fixture(scope="session")
def sft_lora(tokenizer_dir, pairs, tmp_path_factory):
    """A short LoRA SFT on the correct answers: the starting point of DPO and the reward model."""
    out = tmp_path_factory.mktemp("sft")
    with _one_thread():
        train_run(
            [
                "stage=sft",
                "model.preset=tiny-llama",
                *_pair_args(tokenizer_dir, pairs, out),
                "adapter.type=lora",
                "adapter.rank=8",
                "train.max_steps=30",
                "train.lr=3e-3",
            ]
        )
    return out


@pytest.fixture(scope="session")
def reward_model(sft_lora, tokenizer_dir, pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm")
    with _one_thread():
        train_run(
            [
                "stage=rm",
                f"model.path={sft_lora / 'model'}",  # a reward model starts from the SFT model
                *_pair_args(tokenizer_dir, pairs, out)[1:],
                "train.max_steps=300",
                "train.lr=3e-3",
                "train.eval_every=150",
                "train.log_every=25",
            ]
        )
    return out


@pytest.fixture(scope="session")
def sft_full(tokenizer_dir, pairs, tmp_path_factory):
    """Full SFT long enough to answer in the task's format (even/odd, 奇数/偶数) and stop, but
    not to be right every time (120 steps reach ~93%: nothing left for RL)."""
    out = tmp_path_factory.mktemp("sft-full")
    with _one_thread():
        train_run(
            [
                "stage=sft",
                "model.preset=tiny-llama",
                *_pair_args(tokenizer_dir, pairs, out),
                "train.max_steps=80",
                "train.lr=3e-3",
            ]
        )
    return out
