"""DPO throughput: lmforge's ``stage=dpo`` against TRL's ``DPOTrainer``, LoRA on a small model.

Run it (about 6 minutes on the quiet 2-core CPU machine of the recorded run; the sides run one
after another):

    .venv/bin/python benchmarks/dpo_throughput.py                      # 30 steps, both sides
    .venv/bin/python benchmarks/dpo_throughput.py --steps 2 --no-wait  # smoke run, no results file

Sides (``SIDES``): TRL's ``DPOTrainer`` (the baseline) and lmforge's ``train`` CLI with
``stage=dpo``.

Held fixed on both sides (``SETTINGS``):

- the same starting weights: a ``small-llama`` preset (hidden 384, 6 layers, tied embeddings) built
  once with seed 0 and saved to a folder both sides load, with a byte-level BPE tokenizer (vocab
  8000, lmforge's default ChatML template) trained on the text of the data set;
- the same pairs, in the same order: LLaMA-Factory's ``dpo_en_demo``
  (``../shared/data/llamafactory-demo``), read by lmforge from its ``dataset_info.json``
  (``data.dataset_dir``, ``data.dataset=[dpo_en_demo]``) and given to TRL as the token ids of
  lmforge's own encoder (``training.encoders.preference_pieces``, run once here), so both train
  on identical prompt and answer tokens. The first ``4 * steps`` usable pairs in file order;
  lmforge with ``train.shuffle=false``, TRL through a ``SequentialSampler`` (checked). Pairs whose
  prompt leaves no room for an answer within ``max_length`` are rejected by lmforge's encoder and
  left out of both sides; longer answers are cut at ``max_length`` tokens on both;
- the same targets: each answer's tokens through its EOS. lmforge's pieces also carry the ``\\n``
  the template writes after EOS, as input without a target; TRL is given the pieces without it
  (otherwise it would learn it), so TRL sees one token less per uncut piece, which changes no
  log-probability (causal attention);
- the same objective: sigmoid DPO loss, beta 0.1, no label smoothing, reference = the policy with
  the LoRA adapter switched off (TRL: a PEFT ``peft_config`` and ``ref_model=None``, checked: no
  ``"ref"`` adapter copy; lmforge: ``disable_adapter``), computed anew at every step
  (``precompute_ref_log_probs=False``); the mean over the step's pairs;
- the same LoRA (r=8, alpha=16, dropout 0, q/k/v/o/gate/up/down, A drawn right after seeding with
  0) and optimisation: 4 pairs (8 sequences) per step, no accumulation, fp32, no gradient
  checkpointing, AdamW lr 5e-4 betas (0.9, 0.95) weight decay 0, grad clip 1.0, cosine schedule
  with 3 warmup steps down to 0, seed 0; the loss logged at every step on both sides.

What differs is the implementation: TRL pads the batch's 8 sequences (chosen then rejected) to the
longest one and runs the policy and the reference on that padded batch (its fused LM head computes
per-token log-probs, entropy, mean logits and top-1 hits for its metrics); lmforge packs the 8
sequences into one varlen row and computes the answer log-probs chunk by chunk.

TRL 1.16's ``DPOTrainer`` always tokenises its data (``_prepare_dataset``), so the TRL side
overrides that one method to take the pre-tokenised ``prompt_ids``/``chosen_ids``/``rejected_ids``
(TRL's own collator, forward, loss and optimizer are unchanged; tokenisation is outside the timed
loop anyway). To show what TRL's own tokenisation would have given, that side also runs TRL's
``_prepare_dataset`` on the same conversations and records how many pairs come out identical.

Measured per side (each in its own process, see ``common``): training-loop wall seconds, pairs/s,
non-padding input tokens/s, the final loss (mean over the last ``FINAL_WINDOW`` steps), the share
of token slots that are padding, and peak RSS. Results go to
``benchmarks/results/dpo_throughput.json``. The machine is noisy (about ±20% run to run): one run
is one sample.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import (
    IGNORE,
    SHARED_DATA,
    BenchError,
    add_run_args,
    format_table,
    lmforge_train,
    lmforge_train_overrides,
    parse_side_args,
    pct,
    results_path,
    run_child_side,
    run_each_side,
    run_header,
    run_main,
    run_sides_main,
    shared_file,
    side_warnings,
    write_results,
)
from hf_sides import add_loop_timer, check_trainer, hf_training_kwargs

DATA_DIR = "llamafactory-demo"
DATASET = "dpo_en_demo"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SETTINGS = {
    "preset": "small-llama",
    "vocab_size": 8000,
    "batch_size": 4,  # pairs per micro-batch (8 sequences)
    "grad_accum": 1,
    "max_length": 1024,
    "precision": "fp32",
    "lr": 5e-4,
    "schedule": "cosine",
    "warmup_steps": 3,
    "min_lr_ratio": 0.0,
    "betas": [0.9, 0.95],
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "log_every": 1,
    "seed": 0,
    "lora_rank": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "lora_targets": LORA_TARGETS,
    "dpo_loss": "sigmoid",
    "beta": 0.1,
}
STEPS = 30  # a full run; fewer steps is a smoke run
FINAL_WINDOW = 5  # steps averaged into the final loss
BASELINE = "trl"
SIDES = {
    "trl": "TRL DPOTrainer + PEFT LoRA (peft_config, ref_model=None: reference = adapter "
    "disabled, recomputed each step); chosen and rejected padded to the batch's longest",
    "lmforge": "lmforge train stage=dpo (CLI): the 8 sequences of a step packed into one varlen "
    "row; reference = adapter disabled; figures from manifest.json and metrics.jsonl",
}


# --------------------------------------------------------------------------- shared setup
def dataset_folder() -> Path:
    shared_file(f"{DATA_DIR}/dataset_info.json", "LLaMA-Factory's demo data sets")
    shared_file(f"{DATA_DIR}/{DATASET}.json", f"LLaMA-Factory's {DATASET}")
    return SHARED_DATA / DATA_DIR


def _answer_span(targets: list[int]) -> tuple[int, int]:
    """``(start, end)`` of the learned tokens of a piece: ``ids[start:end]`` are the answer
    through its EOS (a piece's target at ``i`` is the label of token ``i + 1``)."""
    learned = [i for i, t in enumerate(targets) if t != IGNORE]
    if not learned or learned != list(range(learned[0], learned[-1] + 1)):
        raise BenchError("a preference piece's targets are not one contiguous answer")
    return learned[0] + 1, learned[-1] + 2


def prepare(work: Path, steps: int) -> dict:
    """Tokenizer + starting model in ``work/model``; the pairs as both sides see them in
    ``work/pairs.json`` (lmforge's encoding, the first ``batch_size * steps`` usable pairs)."""
    from lmforge.config.groups import DataConfig, ModelConfig, TokenizerConfig
    from lmforge.data.llamafactory import iter_llamafactory
    from lmforge.data.preference import to_preference
    from lmforge.data.readers import Rejects
    from lmforge.models.load import build_model, load_tokenizer, save_pretrained
    from lmforge.tokenizer.templates import check_eos_template
    from lmforge.tokenizer.train import train_tokenizer
    from lmforge.training.encoders import PairSettings, preference_pieces

    s = SETTINGS
    folder = dataset_folder()
    raw = json.loads((folder / f"{DATASET}.json").read_text(encoding="utf-8"))
    texts = [
        "\n".join([*(m["value"] for m in row["conversations"]), *_answers(row)]) for row in raw
    ]
    tokenizer = train_tokenizer(texts, TokenizerConfig(vocab_size=s["vocab_size"]))
    check_eos_template(tokenizer)
    model = build_model(
        ModelConfig(preset=s["preset"], tokenizer="in-memory"), tokenizer, seed=s["seed"]
    )
    save_pretrained(model, tokenizer, work / "model")
    params = sum(p.numel() for p in model.parameters())
    del model

    # encode as lmforge's CLI will: the saved tokenizer, the data set's records one by one (a
    # rejected record yields no pieces), so that each pair keeps its conversation for TRL's check
    tokenizer = load_tokenizer(work / "model")
    cfg = DataConfig(max_length=s["max_length"])
    rejects = Rejects()
    counts = {"read": 0, "rejected": 0, "used": 0, "truncated": 0}
    need = steps * s["batch_size"] * s["grad_accum"]
    pairs = []
    for record in iter_llamafactory(f"{folder}#{DATASET}", rejects):
        pieces = [
            p
            for p, _ in preference_pieces([record], cfg, tokenizer, rejects, counts, PairSettings())
        ]
        if not pieces:
            continue
        chosen, rejected = pieces
        (c0, c1), (r0, r1) = _answer_span(chosen.targets), _answer_span(rejected.targets)
        if c0 != r0 or chosen.ids[:c0] != rejected.ids[:r0]:
            raise BenchError(f"{record.where}: chosen and rejected do not share the prompt tokens")
        pref = to_preference(record.row)
        pairs.append(
            {
                "where": record.where,
                "prompt_ids": chosen.ids[:c0],
                "chosen_ids": chosen.ids[c0:c1],
                "rejected_ids": rejected.ids[r0:r1],
                "lmforge_tokens": len(chosen) + len(rejected),
                # the conversation, as TRL's conversational format has it (for its own tokeniser)
                "prompt": pref.prompt,
                "chosen": [pref.chosen],
                "rejected": [pref.rejected],
            }
        )
    usable = len(pairs)
    if usable < need:
        raise BenchError(f"{DATASET} has {usable} usable pairs; {steps} steps need {need}")
    pairs = pairs[:need]
    (work / "pairs.json").write_text(json.dumps(pairs, ensure_ascii=False) + "\n")

    per = s["batch_size"] * s["grad_accum"]
    trl_lengths = [
        [len(p["prompt_ids"]) + len(p[k]) for k in ("chosen_ids", "rejected_ids")] for p in pairs
    ]
    return {
        "vocab_size": len(tokenizer),
        "params_total": params,
        "dataset_rows": len(raw),
        "usable_pairs": usable,
        "rejected_pairs": counts["rejected"],
        "truncated_pairs_all": counts["truncated"],
        "truncated_sequences_used": sum(
            1 for lens in trl_lengths for n in lens if n >= s["max_length"]
        ),
        "pairs": need,
        "lmforge_tokens": sum(p["lmforge_tokens"] for p in pairs),
        "trl_tokens": sum(sum(lens) for lens in trl_lengths),
        "answer_tokens": sum(len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs),
        "lmforge_tokens_per_step": [
            sum(p["lmforge_tokens"] for p in pairs[i : i + per]) for i in range(0, need, per)
        ],
        "trl_tokens_per_step": [
            sum(sum(lens) for lens in trl_lengths[i : i + per]) for i in range(0, need, per)
        ],
        "longest_sequence": max(max(lens) for lens in trl_lengths),
        "mean_sequence": sum(sum(lens) for lens in trl_lengths) / (2 * need),
    }


def _answers(row: dict) -> list[str]:
    return [
        str(row[k]["value"]) if isinstance(row[k], dict) else str(row[k])
        for k in ("chosen", "rejected")
    ]


# --------------------------------------------------------------------------- TRL side
def run_trl(work: Path, steps: int) -> dict:
    """TRL ``DPOTrainer`` on lmforge's token ids; LoRA through ``peft_config``."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from lmforge.models.load import load_tokenizer

    s = SETTINGS
    tokenizer = load_tokenizer(work / "model")
    pairs = json.loads((work / "pairs.json").read_text(encoding="utf-8"))
    columns = ("prompt_ids", "chosen_ids", "rejected_ids")
    dataset = Dataset.from_list([{k: p[k] for k in columns} for p in pairs])
    args = DPOConfig(
        **hf_training_kwargs(s, work / "trl", steps, s["batch_size"]),
        max_length=s["max_length"],
        truncation_mode="keep_start",
        padding_free=False,  # TRL 1.16: unavailable, falls back to padding anyway
        pad_to_multiple_of=None,
        precompute_ref_log_probs=False,
        loss_type=[s["dpo_loss"]],
        beta=s["beta"],
        label_smoothing=0.0,
        use_weighting=False,
        sync_ref_model=False,
        disable_dropout=True,
    )
    native = trl_tokenisation_check(DPOTrainer, tokenizer, args, pairs)

    class RecordingDPOTrainer(DPOTrainer):
        """``DPOTrainer`` on pre-tokenised pairs, recording each step's tensors and loss."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.per_step: list[dict] = []
            add_loop_timer(self)

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            missing = [c for c in columns if c not in dataset.column_names]
            if missing:
                raise BenchError(f"the TRL side's {dataset_name} data lacks {missing}")
            return dataset  # lmforge's token ids: TRL's collator takes them as they are

        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs["attention_mask"]
            stats = {
                "tokens": int(mask.sum()),
                "slots": mask.numel(),
                "answer_tokens": int(inputs["completion_mask"].sum()),
                "pairs": mask.shape[0] // 2,
                "longest": mask.shape[1],
            }
            loss = super().training_step(model, inputs, num_items_in_batch)
            stats["loss"] = float(loss)
            self.per_step.append(stats)
            return loss

    model = AutoModelForCausalLM.from_pretrained(
        str(work / "model"), dtype=torch.float32, use_safetensors=True, local_files_only=True
    )
    model.config.use_cache = False
    lora = LoraConfig(
        r=s["lora_rank"],
        lora_alpha=s["lora_alpha"],
        lora_dropout=s["lora_dropout"],
        target_modules=s["lora_targets"],
        task_type="CAUSAL_LM",
    )
    # DPOTrainer seeds with args.seed and wraps the model itself: A drawn right after seeding
    trainer = RecordingDPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
    )
    check_trainer(trainer, "trl")
    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.ref_model is not None or "ref" in peft_model.peft_config:
        raise BenchError("TRL's reference is not the adapter switched off")
    if trainer.args.gradient_checkpointing or trainer.precompute_ref_logps:
        raise BenchError("TRL: gradient checkpointing / precomputed reference must be off")
    trainer.train()

    per_step = trainer.per_step
    if len(per_step) != steps:
        raise BenchError(f"DPOTrainer ran {len(per_step)} steps, expected {steps}")
    tokens = sum(x["tokens"] for x in per_step)
    slots = sum(x["slots"] for x in per_step)
    n_pairs = sum(x["pairs"] for x in per_step)
    seconds = trainer.loop_seconds
    logged = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "steps": steps,
        "pairs": n_pairs,
        "tokens": tokens,
        "answer_tokens": sum(x["answer_tokens"] for x in per_step),
        "slots": slots,
        "padding_fraction": 1 - tokens / max(1, slots),
        "train_seconds": seconds,
        "pairs_per_s": n_pairs / seconds,
        "tokens_per_s": tokens / seconds,
        "step_losses": [x["loss"] for x in per_step],
        "tokens_per_step": [x["tokens"] for x in per_step],
        "padded_length_per_step": [x["longest"] for x in per_step],
        "reward_margin_per_step": [h.get("rewards/margins") for h in logged],
        "reward_accuracy_per_step": [h.get("rewards/accuracies") for h in logged],
        "hf_logged_losses": [[h["step"], h["loss"]] for h in logged],
        "trl_own_tokenisation": native,
        "threads": torch.get_num_threads(),
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "optim": str(getattr(trainer.args.optim, "value", trainer.args.optim)),
    }


def trl_tokenisation_check(trainer_cls, tokenizer, args, pairs: list[dict]) -> dict:
    """TRL's own ``_prepare_dataset`` on the pairs' conversations, against the ids the side is
    given (after TRL's ``keep_start`` cut at ``max_length``). A diagnostic: never fatal."""
    from types import SimpleNamespace

    from datasets import Dataset

    rows = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]
    try:
        own = trainer_cls._prepare_dataset(
            SimpleNamespace(_tokenizer=tokenizer), Dataset.from_list(rows), tokenizer, args, "check"
        )
    except Exception as exc:  # a private method: record why, do not fail the benchmark
        return {"error": f"{type(exc).__name__}: {exc}"}
    limit = args.max_length
    same, extra = 0, []
    for p, o in zip(pairs, own, strict=True):
        given = [p["prompt_ids"] + p[k] for k in ("chosen_ids", "rejected_ids")]
        theirs = [(o["prompt_ids"] + o[k])[:limit] for k in ("chosen_ids", "rejected_ids")]
        same += int(given == theirs)
        extra.append(sum(len(t) for t in theirs) - sum(len(g) for g in given))
        # what TRL's own tokens add: the template's "\n" after EOS, learned as a target
    return {
        "pairs": len(pairs),
        "identical_pairs": same,
        "own_minus_given_tokens": sum(extra),
        "own_prompt_tokens_equal": sum(
            int(p["prompt_ids"] == o["prompt_ids"]) for p, o in zip(pairs, own, strict=True)
        ),
        "own_answers_start_with_given": sum(
            int(
                all(
                    o[k][: len(p[k])] == p[k]
                    for k in ("chosen_ids", "rejected_ids")
                    if len(p["prompt_ids"]) + len(p[k]) < limit
                )
            )
            for p, o in zip(pairs, own, strict=True)
        ),
    }


# --------------------------------------------------------------------------- lmforge side
def lmforge_overrides(work: Path, steps: int) -> list[str]:
    s = SETTINGS
    return [
        "stage=dpo",
        f"model.path={work / 'model'}",
        "adapter.type=lora",
        f"adapter.rank={s['lora_rank']}",
        f"adapter.alpha={s['lora_alpha']}",
        f"adapter.dropout={s['lora_dropout']}",
        f"adapter.target_modules=[{','.join(s['lora_targets'])}]",
        f"data.dataset_dir={dataset_folder()}",
        f"data.dataset=[{DATASET}]",
        f"data.max_length={s['max_length']}",
        f"preference.loss={s['dpo_loss']}",
        f"preference.beta={s['beta']}",
        "preference.label_smoothing=0.0",
        *lmforge_train_overrides(s, steps),
        f"output_dir={work / 'lmforge-run'}",
    ]


def run_lmforge(work: Path, steps: int) -> dict:
    run_dir = work / "lmforge-run"
    out = lmforge_train(lmforge_overrides(work, steps), run_dir)
    rows = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    train_rows = [r for r in rows if "loss" in r and "eval_loss" not in r]
    if [r["step"] for r in train_rows] != list(range(1, steps + 1)):
        raise BenchError("lmforge did not log a loss at every step (train.log_every=1)")
    cumulative = [0] + [int(r["tokens"]) for r in train_rows]
    out.update(
        steps=steps,
        pairs=out["target_tokens"],  # a DPO unit's weight is one pair
        pairs_per_s=out["target_tokens"] / out["train_seconds"],
        step_losses=[float(r["loss"]) for r in train_rows],
        tokens_per_step=[b - a for a, b in zip(cumulative, cumulative[1:], strict=False)],
        reward_margin_per_step=[r.get("reward_margin") for r in train_rows],
        reward_accuracy_per_step=[r.get("reward_accuracy") for r in train_rows],
    )
    return out


CHILD_SIDES = {"trl": run_trl}


def run_one(side: str, work: Path, steps: int) -> dict:
    print(f"\n=== {side}: {SIDES[side]}", flush=True)
    if side == "lmforge":
        return run_lmforge(work, steps)
    return run_child_side(__file__, side, work, steps)


# --------------------------------------------------------------------------- report
def summarise(results: dict) -> None:
    """Final loss, per-step loss differences and the speed ratio, in place."""
    base = results.get(BASELINE)
    for side in results.values():
        last = side["step_losses"][-FINAL_WINDOW:]
        side["final_loss"] = sum(last) / len(last)
        if base is not None:
            side["speed_ratio_to_baseline"] = side["pairs_per_s"] / base["pairs_per_s"]
            diffs = [a - b for a, b in zip(side["step_losses"], base["step_losses"], strict=True)]
            side["step_loss_diff"] = diffs
            side["max_abs_step_loss_diff"] = max(abs(d) for d in diffs)


def report(results: dict, prep: dict) -> str:
    headers = [
        "side",
        "loop s",
        "pairs/s",
        "tokens/s",
        f"vs {BASELINE}",
        "final loss",
        "padding",
        "peak RSS",
    ]
    rows = [
        [
            name,
            f"{side['train_seconds']:.1f}",
            f"{side['pairs_per_s']:.3f}",
            f"{side['tokens_per_s']:,.0f}",
            f"{side['speed_ratio_to_baseline']:.2f}x"
            if "speed_ratio_to_baseline" in side
            else "n/a",
            f"{side['final_loss']:.4f}",
            pct(side.get("padding_fraction")),
            f"{side['peak_rss_mib']:,.0f} MiB",
        ]
        for name, side in results.items()
    ]
    lines = [format_table(headers, rows), ""]
    if BASELINE in results and "lmforge" in results:
        lm, trl = results["lmforge"], results[BASELINE]
        lines.append(
            f"lmforge / TRL speed (pairs/s): {lm['pairs_per_s'] / trl['pairs_per_s']:.2f}x; "
            f"largest per-step loss difference {lm['max_abs_step_loss_diff']:.2e} "
            f"(step 1: {lm['step_losses'][0]:.6f} vs {trl['step_losses'][0]:.6f})"
        )
    lines += [
        f"{prep['pairs']} pairs ({SETTINGS['batch_size']} per step) of "
        f"{prep['usable_pairs']} usable in {DATASET}; sequences "
        f"{prep['mean_sequence']:.0f} tokens on average, longest {prep['longest_sequence']}; "
        f"{prep['truncated_sequences_used']} sequences cut at "
        f"{SETTINGS['max_length']}",
        "pairs/s and tokens/s: over training-loop seconds; tokens: non-padding input tokens as "
        f"each side counts them (lmforge {prep['lmforge_tokens']:,}, with the untrained '\\n' "
        f"after each EOS; TRL {prep['trl_tokens']:,}); final loss: mean of the last "
        f"{FINAL_WINDOW} steps",
        "peak RSS: ru_maxrss of each side's process (model loading and data included)",
    ]
    native = results.get(BASELINE, {}).get("trl_own_tokenisation")
    if native:
        if "error" in native:
            lines.append(f"TRL's own tokenisation check failed: {native['error']}")
        else:
            lines.append(
                f"TRL's own tokenisation of the same conversations: {native['identical_pairs']}"
                f"/{native['pairs']} pairs identical to the ids given; prompts equal in "
                f"{native['own_prompt_tokens_equal']}, answers extending the given ones in "
                f"{native['own_answers_start_with_given']}; "
                f"{native['own_minus_given_tokens']:+,} tokens in all"
            )
    expected = {"lmforge": "lmforge_tokens_per_step", "trl": "trl_tokens_per_step"}

    def check(name: str, side: dict) -> str | None:
        if side["tokens_per_step"] == prep[expected[name]] and side["pairs"] == prep["pairs"]:
            return None
        return (
            f"WARNING: {name} trained on other pairs or in another order than expected "
            f"({side['pairs']} pairs, {sum(side['tokens_per_step']):,} tokens; expected "
            f"{prep['pairs']}, {sum(prep[expected[name]]):,})"
        )

    lines += side_warnings(results, check)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_args(parser, STEPS, "dpo_throughput", SIDES)
    args = parse_side_args(parser, argv, CHILD_SIDES)

    def parent(work: Path) -> tuple[dict, dict]:
        prep = prepare(work, args.steps)
        results = run_each_side(
            args.sides, lambda side: run_one(side, work, args.steps), args.no_wait
        )
        return prep, results

    requires = ["peft", "accelerate", *(["trl", "datasets"] if "trl" in args.sides else [])]
    done = run_sides_main(args, CHILD_SIDES, parent, requires)
    if done is None:  # a child process
        return 0
    prep, results = done
    summarise(results)
    out = {
        **run_header("dpo_throughput", sys.argv),
        "steps": args.steps,
        "settings": SETTINGS,
        "final_window": FINAL_WINDOW,
        "sides": {name: SIDES[name] for name in results},
        "baseline": BASELINE,
        "data": f"{DATA_DIR}/{DATASET}",
        "expected": prep,
        "results": results,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    print("\n" + report(results, prep))
    write_results(out, results_path("dpo_throughput", args.results, args.steps >= STEPS))
    return 0


if __name__ == "__main__":
    run_main(main)
