"""GRPO throughput: lmforge's ``stage=grpo`` against TRL's ``GRPOTrainer``, full fine-tuning of a
tiny model with an exact-match reward.

Run it (about 40 seconds on the quiet 2-core CPU machine, tokenizer and SFT model included; the
sides run one after another):

    .venv/bin/python benchmarks/grpo_throughput.py                      # 30 steps, both sides
    .venv/bin/python benchmarks/grpo_throughput.py --steps 2 --no-wait  # smoke run, no results file

Sides (``SIDES``): TRL's ``GRPOTrainer`` (the baseline) and lmforge's ``train`` recipe with
``stage=grpo``, each in its own process (see ``common``), with ``torch.set_num_threads(THREADS)``
before anything else (2: every core of the recorded machine, torch's own default there, as in
``dpo_throughput``).

Held fixed on both sides (``SETTINGS``):

- the same starting model: a ``tiny-llama`` (hidden 128, 2 layers) with a byte-level BPE
  tokenizer (vocab 1000, lmforge's ChatML template, EOS ``<|im_end|>``) trained by lmforge's
  tokenizer recipe on the synthetic demo corpus, then a short full SFT (80 steps, lr 3e-3) on the
  parity rows below, as the GRPO tests do; both sides load that run's ``model`` folder (a plain
  transformers folder);
- the same prompts, in the same order: ``make_pairs(120, seed=0, tasks=(en_parity, zh_parity))``
  (240 rows, an instruction and its reference answer), shuffled once with seed 0 so that English
  and Chinese rows mix, the first ``8 * steps`` of them; lmforge with ``train.shuffle=false``,
  TRL with ``shuffle_dataset=False``. Both render the prompt through the saved tokenizer's chat
  template with the generation prompt (lmforge itself; TRL from conversational ``prompt``
  messages); each side records the prompt ids of every step and the script checks them against
  the expected ones;
- the same rollouts: 8 prompts per optimizer step, 4 answers each (32 completions; TRL:
  ``per_device_train_batch_size=32`` completions, ``num_generations=4``, one generation batch per
  step), sampled with temperature 1.0, top-p 1, top-k off, at most 6 new tokens, stopping at the
  EOS (TRL stops at the tokenizer's EOS plus the model's generation-config EOS ids, lmforge at the
  same list; both keep the EOS as the answer's last token and train on it);
- the same reward: exact match after ``lmforge.eval.exact_match.normalize_answer`` of the
  answer's text (decoded without special tokens) against the row's reference;
- the same objective: group-relative advantages divided by the group's std, one optimisation pass
  per rollout (ratio 1, clip 0.2), the k3 KL to the frozen starting model with beta 0.04 (TRL:
  ``use_bias_correction_kl=False``, so the KL's gradient is the same as lmforge's), token-level
  normalisation over the step's answer tokens (TRL ``loss_type="dapo"``); truncated answers kept;
- the same optimisation: AdamW lr 1e-3 betas (0.9, 0.95) weight decay 0, grad clip 1.0, constant
  schedule, no warmup, fp32 on the CPU, no gradient checkpointing, seed 0; metrics logged at
  every step.

Known differences that no setting removes (reported, not hidden): TRL divides advantages by the
group's *sample* std (Bessel, ``n - 1``) plus 1e-4, lmforge by the population std (``n``): for a
group of 4 TRL's advantages are ``sqrt(3/4) = 0.87`` times lmforge's. TRL also computes the
per-token entropy of every answer token (for its ``entropy`` metric) and pads the 32 sequences to
the longest; lmforge packs them into one varlen row. The random streams differ, so the two sides
sample different answers: the reward curves are comparable in trend, not step by step.

Measured per side: training-loop wall seconds (TRL: ``on_train_begin`` to ``on_train_end``,
``hf_sides.add_loop_timer``; lmforge: the manifest's ``train_seconds``, the sum of its steps,
rollouts included), completions/s, the mean reward (= exact-match rate) of the first and last
``WINDOW`` steps from each side's own log, answer lengths and the share that ended with EOS, and
peak RSS of the side's process (``ru_maxrss``, model loading included). Results go to
``benchmarks/results/grpo_throughput.json``. The machine is noisy (about ±20% run to run): one run
is one sample.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from common import (
    BenchError,
    add_run_args,
    format_table,
    parse_side_args,
    pct,
    results_path,
    run_child_side,
    run_each_side,
    run_header,
    run_main,
    run_sides_main,
    side_warnings,
    train_overrides,
    write_results,
)
from hf_sides import add_loop_timer, hf_training_kwargs

THREADS = 2  # torch threads on every side (the recorded machine's cores, torch's default there)
TASKS = ("en_parity", "zh_parity")
SETTINGS = {
    "threads": THREADS,
    "rows_per_task": 120,
    "data_seed": 0,  # make_pairs' seed and the one shuffle of its rows
    "tokenizer_vocab": 1000,
    "preset": "tiny-llama",
    "sft_steps": 80,
    "sft_lr": 3e-3,
    "max_length": 64,
    "batch_size": 8,  # prompts per optimizer step
    "group_size": 4,  # answers per prompt
    "max_new_tokens": 6,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "beta": 0.04,
    "clip_epsilon": 0.2,
    "scale_rewards": True,
    "lr": 1e-3,
    "schedule": "constant",
    "warmup_steps": 0,
    "betas": [0.9, 0.95],
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "precision": "fp32",
    "log_every": 1,
    "seed": 0,
}
STEPS = 30  # a full run (240 prompts: one pass over the rows); fewer steps is a smoke run
WINDOW = 5  # steps averaged into the first/last reward
BASELINE = "trl"
SIDES = {
    "trl": "TRL GRPOTrainer (transformers generate, 32 completions padded to the longest; "
    "reference: a second copy of the SFT model; loss_type dapo)",
    "lmforge": "lmforge train stage=grpo (recipes.train.run in a fresh process): rollouts with "
    "generate + KV cache, the 32 sequences packed into one varlen row; figures from "
    "manifest.json and metrics.jsonl",
}


def _set_threads() -> None:
    import torch

    torch.set_num_threads(THREADS)


def _train(overrides: list[str]) -> None:
    from lmforge.config import load_config
    from lmforge.config.recipes import TrainRecipe
    from lmforge.recipes.train import run

    run(
        load_config(
            TrainRecipe, None, [*overrides, "track.progress=false", "track.tensorboard=off"]
        )
    )


# --------------------------------------------------------------------------- shared setup
def prepare(work: Path, steps: int) -> dict:
    """The rows (``work/rows.jsonl``), a tokenizer and the SFT starting model
    (``work/sft/model``); the expected prompt ids of every step in ``work/expected.json``."""
    from lmforge.config import load_config
    from lmforge.config.groups import GenerationConfig
    from lmforge.config.recipes import TokenizerRecipe
    from lmforge.data.schema import prompt_messages
    from lmforge.data.synthetic import write_demo_data
    from lmforge.data.synthetic_pairs import make_pairs, write_pairs
    from lmforge.models.load import load_tokenizer
    from lmforge.recipes.tokenizer import run as tokenizer_run
    from lmforge.serve.generate import encode_prompts

    s = SETTINGS
    _set_threads()
    rows = make_pairs(s["rows_per_task"], seed=s["data_seed"], tasks=TASKS)
    random.Random(s["data_seed"]).shuffle(rows)
    need = steps * s["batch_size"]
    if need > len(rows):
        raise BenchError(f"{steps} steps need {need} prompts; the data has {len(rows)}")
    write_pairs(work / "rows.jsonl", rows)

    sft = work / "sft"
    if not (sft / "model" / "config.json").is_file():  # a kept --work folder reuses its model
        demo = write_demo_data(work / "demo", n_docs=600, n_per_task=60, seed=0)
        tokenizer_run(
            load_config(
                TokenizerRecipe,
                None,
                [
                    f"data.files=[{demo['corpus']}]",
                    f"tokenizer.vocab_size={s['tokenizer_vocab']}",
                    f"output_dir={work / 'tok'}",
                    "force=true",
                ],
            )
        )
        _train(
            [
                "stage=sft",
                f"model.preset={s['preset']}",
                f"model.tokenizer={work / 'tok' / 'tokenizer'}",
                f"data.train=[{work / 'rows.jsonl'}]",
                f"data.max_length={s['max_length']}",
                "adapter.type=full",
                f"train.batch_size={s['batch_size']}",
                f"train.max_steps={s['sft_steps']}",
                f"train.lr={s['sft_lr']}",
                "train.log_every=10",
                f"train.seed={s['seed']}",
                "train.device=cpu",
                f"output_dir={sft}",
                "force=true",
            ]
        )
    tokenizer = load_tokenizer(sft / "model")
    if not getattr(tokenizer, "chat_template", None):
        raise BenchError(f"the saved tokenizer in {sft / 'model'} has no chat template")
    prompts = [prompt_messages(r)[0] for r in rows[:need]]
    ids = encode_prompts(tokenizer, prompts, GenerationConfig())
    expected = [ids[i : i + s["batch_size"]] for i in range(0, need, s["batch_size"])]
    (work / "expected.json").write_text(json.dumps(expected) + "\n")
    return {
        "rows": len(rows),
        "prompts": need,
        "completions": need * s["group_size"],
        "eos_token": tokenizer.eos_token,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "vocab_size": len(tokenizer),
        "mean_prompt_tokens": sum(len(x) for x in ids) / need,
        "sft_model": str(sft / "model"),
        "sft_metrics": json.loads((sft / "manifest.json").read_text()).get("metrics", {}),
    }


# --------------------------------------------------------------------------- TRL side
def run_trl(work: Path, steps: int) -> dict:
    """TRL ``GRPOTrainer`` on the SFT model folder, conversational prompts."""
    _set_threads()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from lmforge.data.schema import prompt_messages
    from lmforge.eval.exact_match import normalize_answer
    from lmforge.models.load import load_tokenizer

    s = SETTINGS
    model_dir = work / "sft" / "model"
    rows = [json.loads(x) for x in (work / "rows.jsonl").read_text(encoding="utf-8").splitlines()]
    need = steps * s["batch_size"]
    records = []
    for i, row in enumerate(rows[:need]):
        prompt, reference = prompt_messages(row)
        records.append({"prompt": prompt, "reference": reference, "row": i})
    dataset = Dataset.from_list(records)
    completions_per_step = s["batch_size"] * s["group_size"]
    args = GRPOConfig(
        **hf_training_kwargs({**s, "grad_accum": 1}, work / "trl", steps, completions_per_step),
        num_generations=s["group_size"],
        max_completion_length=s["max_new_tokens"],
        temperature=s["temperature"],
        top_p=s["top_p"],
        top_k=s["top_k"],
        beta=s["beta"],
        epsilon=s["clip_epsilon"],
        num_iterations=1,
        loss_type="dapo",
        scale_rewards="group" if s["scale_rewards"] else "none",
        use_bias_correction_kl=False,  # lmforge's KL term is not multiplied by the ratio
        mask_truncated_completions=False,
        shuffle_dataset=False,
        use_vllm=False,
        disable_dropout=True,
        log_completions=False,
    )
    if args.generation_batch_size != completions_per_step or args.steps_per_generation != 1:
        raise BenchError(
            f"TRL would generate {args.generation_batch_size} completions every "
            f"{args.steps_per_generation} steps; expected {completions_per_step} every step"
        )

    per_step_rows: list[list[int]] = []

    def exact_match(completions, reference, row, **kwargs):
        per_step_rows.append(list(row))
        return [
            float(normalize_answer(c[0]["content"]) == normalize_answer(r))
            for c, r in zip(completions, reference, strict=True)
        ]

    class StepTimer(TrainerCallback):
        """Wall seconds of every optimizer step (``on_step_begin`` to ``on_step_end``: the
        rollout, the forward and backward passes, clipping and the optimizer step)."""

        def __init__(self, trainer):
            self.trainer = trainer

        def on_step_begin(self, args, state, control, **kw):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.trainer.step_seconds.append(time.perf_counter() - self._t0)

    class RecordingGRPOTrainer(GRPOTrainer):
        """``GRPOTrainer`` recording the prompt ids it renders and each rollout's answers."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.prompt_ids_per_step: list[list[list[int]]] = []
            self.answers_per_step: list[dict] = []
            self.step_seconds: list[float] = []
            add_loop_timer(self)
            self.add_callback(StepTimer(self))

        def _tokenize_prompts(self, prompts):
            out = super()._tokenize_prompts(prompts)
            ids = [list(map(int, x)) for x in out[0]]
            self.prompt_ids_per_step.append(ids[:: self.num_generations])
            return out

        def _generate_single_turn(self, prompt_ids, *a, **kw):
            completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *a, **kw)
            eos = set(self.eos_token_ids)
            self.answers_per_step.append(
                {
                    "completions": len(completion_ids),
                    "answer_tokens": sum(len(c) for c in completion_ids),
                    "finished": sum(1 for c in completion_ids if c and c[-1] in eos),
                }
            )
            return completion_ids, logprobs

    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, use_safetensors=True, local_files_only=True
    )
    trainer = RecordingGRPOTrainer(
        model=model,
        reward_funcs=exact_match,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    if args.bf16 or args.fp16 or args.gradient_checkpointing:
        raise BenchError("TRL: bf16/fp16/gradient checkpointing must be off")
    dtypes = {p.dtype for p in trainer.model.parameters()}
    if dtypes != {torch.float32} or trainer.ref_model is None:
        raise BenchError(f"TRL: parameters {dtypes}, reference {type(trainer.ref_model)}")
    eos_ids = list(trainer.eos_token_ids)
    trainer.train()

    logged = [h for h in trainer.state.log_history if "reward" in h]
    if len(logged) != steps or len(trainer.answers_per_step) != steps:
        raise BenchError(
            f"TRL logged {len(logged)} rewards over {len(trainer.answers_per_step)} rollouts; "
            f"expected {steps}"
        )
    completions = sum(a["completions"] for a in trainer.answers_per_step)
    seconds = trainer.loop_seconds
    return {
        "steps": steps,
        "completions": completions,
        "train_seconds": seconds,
        "completions_per_s": completions / seconds,
        "step_seconds": trainer.step_seconds,
        "reward_per_step": [h["reward"] for h in logged],
        "exact_match_per_step": [h.get("rewards/exact_match/mean") for h in logged],
        "kl_per_step": [h.get("kl") for h in logged],
        "loss_per_step": [h.get("loss") for h in logged],
        "answer_tokens": sum(a["answer_tokens"] for a in trainer.answers_per_step),
        "finished": sum(a["finished"] for a in trainer.answers_per_step),
        "mean_length_per_step": [h.get("completions/mean_length") for h in logged],
        "prompt_ids_per_step": trainer.prompt_ids_per_step,
        "rows_per_step": [sorted(set(r)) for r in per_step_rows],
        "eos_token_ids": eos_ids,
        "threads": torch.get_num_threads(),
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "optim": str(getattr(trainer.args.optim, "value", trainer.args.optim)),
    }


# --------------------------------------------------------------------------- lmforge side
def lmforge_overrides(work: Path, steps: int) -> list[str]:
    s = SETTINGS
    return [
        "stage=grpo",
        f"model.path={work / 'sft' / 'model'}",
        f"data.train=[{work / 'rows.jsonl'}]",
        f"data.max_length={s['max_length']}",
        "adapter.type=full",
        f"rl.group_size={s['group_size']}",
        f"rl.max_new_tokens={s['max_new_tokens']}",
        f"rl.temperature={s['temperature']}",
        f"rl.top_p={s['top_p']}",
        f"rl.beta={s['beta']}",
        f"rl.clip_epsilon={s['clip_epsilon']}",
        f"rl.scale_rewards={str(s['scale_rewards']).lower()}",
        "rl.rewards=[{type: exact_match}]",
        # no accumulation; the constant schedule has no floor to set
        *train_overrides({**s, "grad_accum": 1}, steps, skip=("min_lr_ratio",)),
        f"output_dir={work / 'lmforge-run'}",
        "force=true",
    ]


def run_lmforge(work: Path, steps: int) -> dict:
    """lmforge's train recipe in this (fresh) process; rollouts recorded through a thin wrapper
    around the two functions ``rl.grpo`` calls (prompt ids, answer lengths), nothing else."""
    import os

    _set_threads()
    os.environ.setdefault("LMFORGE_CACHE", str(work / "lmforge-cache"))
    import torch

    import lmforge.rl.grpo as grpo

    prompt_ids_per_step: list[list[list[int]]] = []
    answers_per_step: list[dict] = []
    own_prompts, own_sample = grpo.prompts_and_references, grpo.sample_answers

    def prompts_and_references(units, tokenizer):
        prompts, references = own_prompts(units, tokenizer)
        prompt_ids_per_step.append([list(p) for p in prompts])
        return prompts, references

    def sample_answers(*a, **kw):
        answers = own_sample(*a, **kw)
        flat = [x for group in answers for x in group]
        answers_per_step.append(
            {
                "completions": len(flat),
                "answer_tokens": sum(len(x.ids) for x in flat),
                "finished": sum(1 for x in flat if x.finished),
            }
        )
        return answers

    grpo.prompts_and_references = prompts_and_references
    grpo.sample_answers = sample_answers
    run_dir = work / "lmforge-run"
    _train(lmforge_overrides(work, steps))

    manifest = json.loads((run_dir / "manifest.json").read_text())
    if manifest.get("status") != "completed":
        raise BenchError(f"lmforge run status is {manifest.get('status')!r}")
    rows = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    train_rows = [r for r in rows if "loss" in r and "reward" in r and "eval_loss" not in r]
    if [r["step"] for r in train_rows] != list(range(1, steps + 1)):
        raise BenchError("lmforge did not log a reward at every step (train.log_every=1)")
    metrics = manifest.get("metrics", {})
    seconds = float(metrics["train_seconds"])
    completions = sum(a["completions"] for a in answers_per_step)
    return {
        "steps": steps,
        "completions": completions,
        "train_seconds": seconds,
        "completions_per_s": completions / seconds,
        "step_seconds": [
            b - a
            for a, b in zip(
                [0.0] + [r["elapsed"] for r in train_rows],
                [r["elapsed"] for r in train_rows],
                strict=False,
            )
        ],
        "reward_per_step": [float(r["reward"]) for r in train_rows],
        "exact_match_per_step": [r.get("exact_match") for r in train_rows],
        "kl_per_step": [r.get("kl") for r in train_rows],
        "loss_per_step": [r.get("loss") for r in train_rows],
        "answer_tokens": sum(a["answer_tokens"] for a in answers_per_step),
        "finished": sum(a["finished"] for a in answers_per_step),
        "mean_length_per_step": [r.get("answer_tokens") for r in train_rows],
        "prompt_ids_per_step": prompt_ids_per_step,
        "metrics": metrics,
        "git_revision": manifest.get("git_revision"),
        "run_dir": str(run_dir),
        "overrides": lmforge_overrides(work, steps),
        "threads": torch.get_num_threads(),
    }


CHILD_SIDES = {"trl": run_trl, "lmforge": run_lmforge}


def run_one(side: str, work: Path, steps: int) -> dict:
    print(f"\n=== {side}: {SIDES[side]}", flush=True)
    return run_child_side(__file__, side, work, steps)


# --------------------------------------------------------------------------- report
def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def summarise(results: dict, work: Path) -> None:
    """Reward windows, EOS share, the prompt check and the speed ratio, in place."""
    expected = json.loads((work / "expected.json").read_text())
    base = results.get(BASELINE)
    for side in results.values():
        rewards = side["reward_per_step"]
        side["reward_first"] = _mean(rewards[:WINDOW])
        side["reward_last"] = _mean(rewards[-WINDOW:])
        side["mean_answer_tokens"] = side["answer_tokens"] / side["completions"]
        side["finished_share"] = side["finished"] / side["completions"]
        later = side["step_seconds"][1:]
        side["first_step_s"] = side["step_seconds"][0]
        side["completions_per_s_after_step_1"] = (
            len(later) * SETTINGS["batch_size"] * SETTINGS["group_size"] / sum(later)
            if later
            else None
        )
        side["prompts_as_expected"] = side.pop("prompt_ids_per_step") == expected
    for side in results.values():
        if base is not None:
            side["speed_ratio_to_baseline"] = side["completions_per_s"] / base["completions_per_s"]
            mine, theirs = (x["completions_per_s_after_step_1"] for x in (side, base))
            side["speed_ratio_after_step_1"] = mine / theirs if mine and theirs else None


def report(results: dict, prep: dict) -> str:
    headers = [
        "side",
        "loop s",
        "compl./s",
        f"vs {BASELINE}",
        "step 1 s",
        "compl./s 2..",
        f"reward first {WINDOW}",
        f"reward last {WINDOW}",
        "answer tok",
        "ended EOS",
        "peak RSS",
    ]
    rows = [
        [
            name,
            f"{side['train_seconds']:.1f}",
            f"{side['completions_per_s']:.2f}",
            f"{side['speed_ratio_to_baseline']:.2f}x"
            if "speed_ratio_to_baseline" in side
            else "n/a",
            f"{side['first_step_s']:.2f}",
            "n/a"
            if side["completions_per_s_after_step_1"] is None
            else f"{side['completions_per_s_after_step_1']:.2f}",
            f"{side['reward_first']:.3f}",
            f"{side['reward_last']:.3f}",
            f"{side['mean_answer_tokens']:.2f}",
            pct(side["finished_share"]),
            f"{side['peak_rss_mib']:,.0f} MiB",
        ]
        for name, side in results.items()
    ]
    lines = [format_table(headers, rows), ""]
    if BASELINE in results and "lmforge" in results:
        lm, trl = results["lmforge"], results[BASELINE]
        lines.append(
            f"lmforge / TRL speed (completions/s): "
            f"{lm['completions_per_s'] / trl['completions_per_s']:.2f}x"
            + (
                f"; from step 2 on: {lm['speed_ratio_after_step_1']:.2f}x"
                if lm.get("speed_ratio_after_step_1") is not None
                else ""
            )
        )
    lines += [
        f"{prep['prompts']} prompts ({SETTINGS['batch_size']} per step) x "
        f"{SETTINGS['group_size']} answers of at most {SETTINGS['max_new_tokens']} tokens; "
        f"prompts {prep['mean_prompt_tokens']:.1f} tokens on average; EOS {prep['eos_token']!r}",
        "loop s: TRL on_train_begin..on_train_end; lmforge: the sum of its steps (rollouts "
        "included); step 1 s / compl./s 2..: the first step alone and the rate over the others "
        "(TRL: on_step_begin..on_step_end); reward: mean exact-match rate of the first/last "
        "steps from each side's log",
        "peak RSS: ru_maxrss of each side's process (model loading and the reference included)",
    ]

    def check(name: str, side: dict) -> str | None:
        if side["prompts_as_expected"]:
            return None
        return f"WARNING: {name} did not see the expected prompt ids in the expected order"

    lines += side_warnings(results, check)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_args(parser, STEPS, "grpo_throughput", SIDES)
    args = parse_side_args(parser, argv, CHILD_SIDES)

    def parent(work: Path) -> tuple[dict, dict]:
        prep = prepare(work, args.steps)
        results = run_each_side(
            args.sides, lambda side: run_one(side, work, args.steps), args.no_wait
        )
        summarise(results, work)
        return prep, results

    requires = ["accelerate", *(["trl", "datasets"] if "trl" in args.sides else [])]
    done = run_sides_main(args, CHILD_SIDES, parent, requires)
    if done is None:  # a child process
        return 0
    prep, results = done
    out = {
        **run_header("grpo_throughput", sys.argv),
        "steps": args.steps,
        "settings": SETTINGS,
        "window": WINDOW,
        "sides": {name: SIDES[name] for name in results},
        "baseline": BASELINE,
        "data": f"lmforge.data.synthetic_pairs.make_pairs({SETTINGS['rows_per_task']}, "
        f"seed={SETTINGS['data_seed']}, tasks={TASKS}), shuffled with seed {SETTINGS['data_seed']}",
        "expected": prep,
        "results": results,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    print("\n" + report(results, prep))
    write_results(out, results_path("grpo_throughput", args.results, args.steps >= STEPS))
    return 0


if __name__ == "__main__":
    run_main(main)
