"""``lmforge train CONFIG``: pretrain (``stage: pt``), fine-tune (``stage: sft``), train a
classifier (``stage: cls``), a reward model (``stage: rm``) or align with preferences (``stage:
dpo``, ``kto``) with any ``adapter.type`` (full, freeze, lora, qlora, ia3, prefix, prompt,
p-tuning: ``models.adapters``). What each stage trains is in ``training.stages``.

    lmforge train configs/sft_lora.yaml model.path=runs/pt train.max_steps=200
    lmforge train configs/cls_minilm_lora.yaml              # MiniLM + LoRA text classifier
    lmforge train configs/dpo_lora.yaml model.path=runs/sft_lora   # DPO on the SFT adapter
    # CPU is the default; on a GPU the same command uses it (train.device=auto)
    lmforge train configs/sft_lora.yaml launcher.nproc=2   # 2 processes (see training.distributed)
    torchrun --standalone --nproc_per_node 2 -m lmforge.cli train configs/sft_lora.yaml  # same

Run directory: ``model/`` (full weights, or the PEFT adapter + ``base/`` when the base was a
preset), ``checkpoints/step-N/``, ``metrics.jsonl``, ``tensorboard/``, ``rejects.jsonl``,
``manifest.json``. ``train.resume=auto`` (default) continues from the latest checkpoint.
Tokenised data is cached (``data.cache``, see ``lmforge.training.data``); the manifest's
``counts.data_cache`` says which cache folder was used and whether it was hit.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from lmforge.artifacts import Run, recorded
from lmforge.config import to_dict
from lmforge.config.recipes import TrainRecipe
from lmforge.config.training import AdapterConfig
from lmforge.data.readers import Rejects, split_selector
from lmforge.errors import ConfigError
from lmforge.models.adapters import (
    Task,
    apply_adapter,
    check_config,
    check_fits,
    pads_rows,
    saves_adapter,
    write_adapter_info,
)
from lmforge.models.load import (
    LABELS_FILE,
    MODEL_SUBDIR,
    build_model,
    is_adapter_dir,
    load_tokenizer,
    resolve_dir,
    save_pretrained,
)
from lmforge.models.params import format_report, parameter_report
from lmforge.recipes.evaluate import file_kinds
from lmforge.recipes.gates import Gating
from lmforge.tokenizer.templates import apply_template, check_eos_template, fit_model_to_template
from lmforge.training.continual import add_replay, continual_inputs, with_ewc
from lmforge.training.data import load_stage_data
from lmforge.training.datasets import mixing_summary
from lmforge.training.distributed import Strategy, check_available, launch, setup, torchrun_env
from lmforge.training.loop import LoopOptions, train_loop
from lmforge.training.multitask import task_evaluator
from lmforge.training.stages import StagePlan, plan_stage


def _inputs(cfg: TrainRecipe) -> dict:
    data = {"train_data": cfg.data.train, "validation_data": cfg.data.validation}
    # folder#dataset (LLaMA-Factory): the folder
    inputs: dict = {role: [str(split_selector(f)[0]) for f in fs] for role, fs in data.items()}
    if cfg.model.path:
        inputs["base_model"] = str(resolve_dir(cfg.model.path))
    if cfg.model.tokenizer:
        inputs["tokenizer"] = str(resolve_dir(cfg.model.tokenizer, "tokenizer"))
    inputs.update(continual_inputs(cfg.continual))  # previous task's data, replay, Fisher
    ev = cfg.eval
    evaluated = [str(split_selector(f)[0]) for k in file_kinds(ev) for f in getattr(ev, k).files]
    if evaluated:  # eval before/after training (eval.gates)
        inputs["eval_data"] = evaluated
    return inputs


def run(cfg: TrainRecipe, on_step=None, on_eval=None) -> Run | int:
    """Train in this process, or under torchrun (every rank runs this; rank 0 writes).

    ``on_step(step)`` and ``on_eval(step, metrics)`` are called after each optimizer step and
    each evaluation (tests, sweeps); an exception they raise ends the run as failed.

    With ``launcher.nproc > 1`` outside torchrun, start ``nproc`` processes under torchrun and
    return their exit code instead.
    """
    check_available(cfg.distributed)
    if cfg.launcher.nproc > 1 and torchrun_env() is None:
        return launch(to_dict(cfg), cfg.launcher.nproc)
    strategy = setup(cfg.distributed, cfg.train)
    try:
        return _train(cfg, strategy, on_step, on_eval)
    finally:
        strategy.close()


def _train(cfg: TrainRecipe, strategy: Strategy, on_step, on_eval=None) -> Run:
    main = strategy.is_main
    run = Run.start(cfg.stage, to_dict(cfg), cfg.output_dir, inputs=_inputs(cfg) if main else None)
    run.inputs = strategy.main_decides(lambda: run.inputs)  # hashed once (a base model is big)
    if not cfg.force and strategy.main_decides(lambda: run.finished_before() is not None):
        if main:
            print(f"lmforge: reusing finished {cfg.stage} run {run.dir}")
        return run
    with recorded(run) if main else contextlib.nullcontext(run):  # the manifest: rank 0's
        cfg = start_from_adapter(cfg, run.dir, strategy)
        adapter_notes = check_config(cfg.adapter, cfg.stage, cfg.train.packing)  # before data
        gating = Gating(cfg, strategy)  # eval.gates: parsed and checked before any work
        if gating.needs_start_eval and not cfg.train.eval_on_start:
            adapter_notes.append("eval.gates compare eval_* with base: train.eval_on_start=true")
            cfg = cfg.model_copy(
                update={"train": cfg.train.model_copy(update={"eval_on_start": True})}
            )
        tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path)
        # data.template: the tokenizer gets it (and its tokens, its EOS); saved with the model
        template = apply_template(tokenizer, cfg.data.template) if cfg.data.template else None
        plan = plan_stage(cfg, tokenizer)  # head, data encoder, objective
        if plan.chat:
            check_eos_template(tokenizer)
        rejects = Rejects()
        known = {i["path"]: i["fingerprint"] for i in run.inputs}  # no second hash of the data
        rejects_path = run.dir / "rejects.jsonl"
        try:
            with strategy.main_first():  # rank 0 fills the tokenised-data cache, the rest read it
                train, val = load_stage_data(
                    plan.encoder,
                    cfg.data,
                    tokenizer,
                    rejects,
                    cfg.train.seed,
                    known,
                    cfg.track.progress and main,
                )
                if cfg.continual.replay_ratio > 0:  # old-task units among the new (continual)
                    train.units, replay = add_replay(
                        plan.encoder, cfg, tokenizer, train.units, rejects, known
                    )
                    run.counts["replay"] = replay
        finally:  # also when no row was usable: the error points at this file
            if main:
                rejects.write(rejects_path)
        if train.cache.get("hit") and main:
            print(f"lmforge: tokenised data from the cache {train.cache['path']}")
        run.counts.update(
            train=train.counts,
            validation=val.counts,
            train_units=len(train.units),
            validation_units=len(val.units),
            rejects_file=str(rejects_path),
            data_cache=train.cache,
            **({"chat_template": template.as_dict()} if template else {}),
        )
        if plan.labels:
            run.counts["labels"] = plan.labels
        if mix := mixing_summary(cfg.data, cfg.train.seed):
            run.counts["mixing"] = mix
        if main:
            run.save()

        model = build_model(
            cfg.model,
            tokenizer,
            seed=cfg.train.seed,
            head=plan.head,
            config_updates=plan.model_config,
        )
        new_ids = fit_model_to_template(
            model, tokenizer, template, seed=cfg.train.seed, check=plan.chat
        )
        vocab = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > vocab:
            raise ConfigError(
                f"the tokenizer has {len(tokenizer)} tokens but the model's "
                f"embedding has {vocab} rows: use the model's own tokenizer"
            )
        check_fits(model, cfg.adapter)  # fail on a bad target or layer count before writing
        base_dir = None
        if saves_adapter(cfg.adapter.type):
            # a preset base exists nowhere else: save it (in fp32, before the adapter wraps or
            # quantises it) for later loading; so is a base whose embeddings grew (new_ids)
            if cfg.model.path and not new_ids:
                base_dir = resolve_dir(cfg.model.path)
            else:
                base_dir = run.dir / "base"
                if main:
                    save_pretrained(model, tokenizer, base_dir)
        torch.manual_seed(cfg.train.seed)  # LoRA's A, prompt embeddings: same seed, same init
        device = strategy.device_for(cfg.train.device)
        task = Task(plan.peft_task, tuple(new_ids or ()))
        applied = apply_adapter(model, cfg.adapter, tokenizer, device, task)
        model = applied.model
        params = parameter_report(model)
        if main:
            ranks = strategy.world_size
            spread = f", {strategy.name} over {ranks} processes" if ranks > 1 else ""
            for note in adapter_notes + applied.notes:
                print(f"lmforge: {note}")
            print(
                f"lmforge: {plan.name} {cfg.adapter.type}: {format_report(params)}\n"
                f"lmforge: {len(train.units)} training units{spread}"
            )
        run.metrics.update(
            params_total=params["total"],
            params_trainable=params["trainable"],
            params_trainable_pct=params["trainable_pct"],
            params_by_group=params["groups"],
            **applied.metrics,
        )

        hf = model.get_base_model() if hasattr(model, "get_base_model") else model
        if cfg.train.activation_checkpointing:
            hf.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        if cfg.train.compile:
            compile_layers(hf)
        # packing: each micro-batch is one row with per-sequence attention (``attention``). On a
        # model without transformers' attention interface, sft examples are packed into rows of
        # at most max_length tokens instead; pt blocks are all max_length long: one row each;
        # encoders and classifiers get one padded row per piece with an attention mask.
        # prefix/prompt/p-tuning prepend virtual tokens to every row: one padded row per example
        packing = cfg.train.packing and not pads_rows(cfg.adapter.type)
        capacity = cfg.data.max_length if (plan.pack_rows and packing) else None
        opts = LoopOptions(
            trajectory=trajectory(run, strategy.world_size, plan.batch_size_matters),
            run_dir=run.dir,
            pad_id=tokenizer.pad_token_id,
            pack_capacity=capacity,
            varlen=packing,
            attention_mask=plan.attention_mask,
            objective=plan.objective,
            progress=cfg.track.progress,
            tensorboard=cfg.track.tensorboard,
            on_step=on_step,
            on_eval=on_eval,
            strategy=strategy,
            evaluate=task_evaluator(val.counts),  # eval loss per task, when rows have tasks
        )
        if cfg.continual.ewc_lambda > 0:  # the objective inside EWC (training.continual)
            opts.objective = with_ewc(cfg, plan, model, tokenizer, run, strategy, opts)
        if main and gating.evaluates:  # the base of every gate
            run.metrics["eval_before"] = gating.before(model, tokenizer, device)
        # force=true recomputes: start over instead of resuming the finished checkpoint
        train_cfg = cfg.train.model_copy(update={"resume": "never"}) if cfg.force else cfg.train
        run.metrics.update(train_loop(model, train.units, val.units, train_cfg, opts))

        extra = plan.finish(model, run.dir, main) if plan.finish else None  # PPO: value head
        out = save_model(
            model, tokenizer, run.dir / MODEL_SUBDIR, base_dir, strategy, cfg.adapter, plan
        )
        if main:
            run.add_output(out, "model")
            if extra is not None:
                run.add_output(extra, Path(extra).stem)
        if main and (gating.evaluates or gating.gates):
            evaluation, results = gating.after(model, tokenizer, run.metrics, run.dir)
            if evaluation:
                run.metrics["eval_after"] = evaluation
            if results:
                run.metrics["gates"] = results
                for r in results:
                    print(f"lmforge: gate {r['gate']!r}: {'passed' if r['passed'] else 'FAILED'}")
            Gating.enforce(results)  # the run fails (non-zero exit) on an unmet gate
            run.add_output(run.dir / "metrics.jsonl", "metrics")
    if main:
        print(f"lmforge: {cfg.stage} run finished: {out}")
    return run


START_SUBDIR = "start"  # a run that starts from an adapter: the adapter merged into its base


def start_from_adapter(cfg: TrainRecipe, run_dir: Path, strategy: Strategy) -> TrainRecipe:
    """``cfg`` itself, or, when ``model.path`` is a PEFT adapter (an SFT LoRA run before DPO or
    a reward model), ``cfg`` with ``model.path`` at that adapter merged into its base, saved in
    ``run_dir/start``: the stage starts from exactly what the adapter computed, a new adapter
    sits on the merged weights (so that switching it off gives the starting policy, the DPO
    reference), and the saved adapter records that folder as its base."""
    folder = resolve_dir(cfg.model.path) if cfg.model.path else None
    if folder is None or not is_adapter_dir(folder):
        return cfg
    merged = run_dir / START_SUBDIR
    if strategy.is_main:
        from lmforge.export.merge import merge_adapter

        model, tokenizer = merge_adapter(folder)
        save_pretrained(model, tokenizer, merged)
        print(
            f"lmforge: model.path is an adapter: starting from it merged into its base ({merged})"
        )
    strategy.barrier()
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": str(merged)})})


# Keys that change logging, checkpointing or placement but not the weights a run produces.
# distributed/launcher only decide which process computes which micro-batch of a step: every
# strategy computes the same gradient of the same global batch, up to float summation order;
# eval (files evaluated before and after training, gates) only reads the model.
_NOT_TRAJECTORY = {"output_dir", "force", "track", "distributed", "launcher", "eval"}
_NOT_TRAJECTORY_DATA = {"cache", "cache_dir", "cache_shard_tokens"}  # same units either way
_NOT_TRAJECTORY_TRAIN = {
    "log_every",
    "eval_every",
    "eval_on_start",
    "eval_batches",
    "save_every",
    "keep_last",
    "resume",
    "device",
    # how a step is computed, not what: same losses (compile within float tolerance)
    "compile",
    "activation_checkpointing",
    # the split of a step into micro-batches and processes: replaced by global_batch below
    "batch_size",
    "grad_accum",
}


def trajectory(run: Run, world_size: int = 1, batch_size_matters: bool = False) -> dict:
    """What a checkpoint must agree on to be resumed: config (minus I/O keys) + input contents.

    A step's gradient depends on which units it takes, not on how they are split into
    micro-batches (``batch_size`` x ``grad_accum``) or processes (the loop normalises by the
    whole step's target count), so the trajectory holds the units per step, ``global_batch``:
    4 processes x batch_size 2 resume the checkpoint of 1 process x batch_size 8. Unless
    ``batch_size_matters``: a contrastive loss takes its negatives from the micro-batch.
    """
    config = {k: v for k, v in run.config.items() if k not in _NOT_TRAJECTORY}
    train = run.config["train"]
    config["train"] = {k: v for k, v in train.items() if k not in _NOT_TRAJECTORY_TRAIN}
    config["train"]["global_batch"] = train["batch_size"] * train["grad_accum"] * world_size
    if batch_size_matters:
        config["train"]["batch_size"] = train["batch_size"]
    config["data"] = {k: v for k, v in config["data"].items() if k not in _NOT_TRAJECTORY_DATA}
    return {"config": config, "inputs": {i["path"]: i["fingerprint"] for i in run.inputs}}


def compile_layers(hf) -> None:
    """``torch.compile`` each decoder layer (dynamic shapes: packed rows change length every
    step). Per layer rather than the whole model: the varlen attention loop breaks the graph
    anyway, and the layers share one compiled graph. Measured on the 2-core CPU (small-llama +
    LoRA, 4 micro-batches of ~1400 tokens): 10-15% faster per step, after 25 s (warm inductor
    cache) to 80 s (cold) of compiling, so it pays for runs longer than ~10 minutes."""
    decoder = hf.get_decoder()
    layers = getattr(decoder, "layers", None)
    if layers is None:
        decoder.compile(dynamic=True)
        return
    for layer in layers:
        layer.compile(dynamic=True)


def save_model(
    model,
    tokenizer,
    out: Path,
    base_dir: Path | None,
    strategy: Strategy | None = None,
    adapter: AdapterConfig | None = None,
    plan: StagePlan | None = None,
) -> Path:
    """Full weights, or (``base_dir`` given) the adapter with its config pointing at the base,
    ``lmforge_adapter.json`` saying which ``adapter`` type it is (see ``models.adapters``) and,
    for a classifier, ``labels.json`` (the base's config does not know the head).

    Under torchrun every rank calls this (sharded weights are gathered); rank 0 writes.
    """
    strategy = strategy or Strategy()
    state = strategy.model_state(model)
    if base_dir is not None:  # PEFT compares vocabularies with it: a grown one is in base_dir
        for peft_cfg in getattr(model, "peft_config", {}).values():
            peft_cfg.base_model_name_or_path = str(Path(base_dir).resolve())
    if strategy.is_main:
        save_pretrained(model, tokenizer, out, state)
        if base_dir is not None:
            config_path = out / "adapter_config.json"
            adapter_cfg = json.loads(config_path.read_text())
            adapter_cfg["base_model_name_or_path"] = str(Path(base_dir).resolve())
            config_path.write_text(json.dumps(adapter_cfg, indent=2))
            if adapter is not None:
                write_adapter_info(out, adapter)
            if plan is not None and plan.labels:
                labels = json.dumps(plan.labels, ensure_ascii=False, indent=1)
                (out / LABELS_FILE).write_text(labels, encoding="utf-8")
    strategy.barrier()
    return out
