"""``lmforge sweep CONFIG``: search a recipe's config keys with Optuna, pruning bad trials.

    lmforge sweep configs/sweep.yaml n_trials=30 timeout=3600
    lmforge train runs/sweep/best.yaml        # the winner, ready to run (e.g. longer)

Each trial is an ordinary ``lmforge train`` run in ``OUTPUT_DIR/trial-NNN/`` (its own manifest,
metrics, checkpoints, model) on the base config with the trial's values set at their dotted keys.
The sampler is Optuna's TPE (seeded); while a trial trains, each evaluation is reported to the
pruner (the median rule by default), which may stop it. A trial whose run fails (the loss
became NaN, out of memory) is recorded as failed and the sweep goes on; a user error (a missing
file, a metric the evaluation does not log) stops the sweep, since every trial would hit it.

Sweep folder: ``study.db`` (Optuna's SQLite storage: a killed sweep started again continues
where it stopped, retrying the trial that was running), ``trial-NNN/``, ``results.csv`` and
``results.md`` (trial, state, objective, parameters, steps, why it was pruned or failed, updated
after every trial), ``best.yaml`` (the best trial's config) and ``manifest.json`` (with every
trial's manifest as an input, so ``lmforge lineage`` reaches the trials' data).
"""

from __future__ import annotations

import math
import re
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from lmforge.artifacts import MANIFEST, Run, atomic_write_json, atomic_write_text, recorded
from lmforge.config import RECIPE_CONFIGS, build_config, to_dict
from lmforge.config.base import deep_merge, read_yaml
from lmforge.config.sweep import SweepRecipe
from lmforge.errors import ConfigError, MissingDependency, RunFailed, UserError
from lmforge.tune.results import _manifest, trial_dir_name, trial_rows, write_tables
from lmforge.tune.space import nested, probe_points, suggest

STUDY = "study.db"
_TRIAL_DIR = re.compile(r"^trial-\d+$")
_OUTPUTS = ("results.csv", "results.md", "best.yaml")


def run(cfg: SweepRecipe) -> Run:
    optuna = _import_optuna()
    out = Path(cfg.output_dir)
    base = deep_merge(read_yaml(cfg.base) if cfg.base else {}, cfg.config)
    check_trial_configs(cfg, base)
    if cfg.force or cfg.resume == "never":
        _clear(out)
    run = Run.start("sweep", to_dict(cfg), out, inputs={"base_config": cfg.base})
    with recorded(run):
        study = _open_study(optuna, cfg, base, out)
        interrupted = _close_interrupted(optuna, study)
        deadline = None if cfg.timeout is None else time.monotonic() + cfg.timeout
        while _finished(study, interrupted) < cfg.n_trials:
            if deadline is not None and time.monotonic() > deadline:
                print(f"lmforge: sweep timeout ({cfg.timeout} s): no further trials")
                break
            _run_trial(optuna, study, cfg, base, out)
            _write_results(study, cfg, base, out, interrupted)
        best = _write_results(study, cfg, base, out, interrupted)
        _record(run, study, cfg, out, interrupted, best)
        if best is None:
            raise RunFailed(f"no trial of the sweep completed; see {out / 'results.md'}")
        print(
            f"lmforge: sweep done: best trial {best.number} {cfg.objective.metric}="
            f"{best.value:.6g}; {out / 'best.yaml'}"
        )
    return run


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise MissingDependency("optuna", "sweep", "lmforge sweep") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# --------------------------------------------------------------------------- configs
def trial_config(base: dict, params: dict[str, Any], output_dir: Path | str) -> dict:
    """The recipe config of one trial: ``base`` with ``params`` at their dotted keys."""
    return {**deep_merge(base, nested(params)), "output_dir": str(output_dir)}


def check_trial_configs(cfg: SweepRecipe, base: dict) -> None:
    """Validate the recipe config at both ends of every range, every choice and every enqueued
    set, so that a bad base or choice fails now instead of as N failed trials."""
    recipe_cls = RECIPE_CONFIGS[cfg.recipe]
    source = cfg.base or "sweep config"
    for params in [*probe_points(cfg.space), *cfg.enqueue]:
        trial = build_config(
            recipe_cls, trial_config(base, params, "probe"), f"{source} + {params}"
        )
        if getattr(getattr(trial, "launcher", None), "nproc", 1) > 1:
            raise ConfigError(
                "sweep trials run in the sweep's process (their evaluations feed the pruner): "
                "set launcher.nproc=1 in the base config"
            )


def _clear(out: Path) -> None:
    """Delete what a sweep wrote in ``out`` (only that: the folder may hold other things)."""
    if not out.is_dir():
        return
    for path in out.iterdir():
        if path.is_dir() and (_TRIAL_DIR.match(path.name) or path.name == "best"):
            shutil.rmtree(path)
        elif path.name in (STUDY, MANIFEST, *_OUTPUTS):
            path.unlink()


# --------------------------------------------------------------------------- the study
def _open_study(optuna, cfg: SweepRecipe, base: dict, out: Path):
    from lmforge.artifacts import fingerprint_obj

    settings = fingerprint_obj(
        {"recipe": cfg.recipe, "base": base, **cfg.model_dump(include={"space", "objective"})}
        | cfg.model_dump(include={"sampler", "pruner"})
    )
    out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(out / STUDY).resolve()}"
    if (out / STUDY).exists():
        old = optuna.load_study(study_name="lmforge", storage=storage)
        if old.user_attrs.get("settings") != settings:
            raise ConfigError(
                f"{out / STUDY} holds a sweep with another base config, space, objective, "
                "sampler or pruner: use a new output_dir, or resume=never to start over"
            )
    if cfg.sampler.type == "tpe":
        sampler = optuna.samplers.TPESampler(
            seed=cfg.sampler.seed, n_startup_trials=cfg.sampler.n_startup_trials
        )
    else:
        sampler = optuna.samplers.RandomSampler(seed=cfg.sampler.seed)
    if cfg.pruner.type == "median":
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=cfg.pruner.n_startup_trials, n_warmup_steps=cfg.pruner.n_warmup_steps
        )
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(
        storage=storage,
        study_name="lmforge",
        direction=cfg.objective.direction,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    if "settings" not in study.user_attrs:  # a new study
        study.set_user_attr("settings", settings)
        for params in cfg.enqueue:
            study.enqueue_trial(params)
    elif study.trials:
        print(f"lmforge: resuming the sweep in {out} ({len(study.trials)} trials so far)")
    return study


def _close_interrupted(optuna, study) -> set[int]:
    """Trials left running by a killed sweep: marked failed (reported as interrupted, and not
    counted in n_trials) and their parameters queued again, so the point is still tried."""
    interrupted = set(study.user_attrs.get("interrupted", []))
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params)
        interrupted.add(t.number)
        print(f"lmforge: trial {t.number} was interrupted; its parameters are tried again")
    study.set_user_attr("interrupted", sorted(interrupted))
    return interrupted


def _finished(study, interrupted: set[int]) -> int:
    return sum(
        1
        for t in study.trials
        if t.state.name in ("COMPLETE", "PRUNED", "FAIL") and t.number not in interrupted
    )


# --------------------------------------------------------------------------- one trial
def _run_trial(optuna, study, cfg: SweepRecipe, base: dict, out: Path) -> None:
    from lmforge.recipes import train

    trial = study.ask()
    params = suggest(trial, cfg.space)
    folder = out / trial_dir_name(trial.number)
    started = time.perf_counter()

    def finish(state: str, reason: str = "", value: float | None = None) -> None:
        if reason:
            trial.set_user_attr("reason", reason)
        if value is not None:
            study.tell(trial, value)
        else:
            study.tell(trial, state=getattr(optuna.trial.TrialState, state.upper()))
        shown = f"{cfg.objective.metric}={value:.6g}" if value is not None else reason
        print(
            f"lmforge: trial {trial.number} {state}: {shown} "
            f"({_format(params)}) in {time.perf_counter() - started:.1f} s"
        )

    try:
        recipe_cfg = build_config(
            RECIPE_CONFIGS[cfg.recipe], trial_config(base, params, folder), f"trial {trial.number}"
        )
    except ConfigError as exc:  # a combination of values the recipe refuses
        return finish("fail", f"invalid config: {exc}")
    try:
        train.run(recipe_cfg, on_eval=_reporter(optuna, trial, cfg))
    except optuna.TrialPruned as exc:
        _relabel_manifest(folder, "pruned", str(exc))
        return finish("pruned", str(exc))
    except UserError:
        finish("fail", "user error (the sweep stops)")
        raise
    except Exception as exc:  # the run itself failed (RunFailed: diverged; out of memory; ...)
        return finish("fail", f"{type(exc).__name__}: {exc}")
    metrics = _manifest(folder).get("metrics", {})
    value = metrics.get(cfg.objective.metric)
    if not isinstance(value, int | float):
        finish("fail", f"no {cfg.objective.metric} in the trial's metrics")
        logged = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, int | float)))
        raise ConfigError(
            f"objective.metric '{cfg.objective.metric}' is not among the metrics trial "
            f"{trial.number} recorded ({logged})"
        )
    if not math.isfinite(value):
        return finish("fail", f"{cfg.objective.metric} is {value}")
    finish("complete", value=float(value))


def _reporter(optuna, trial, cfg: SweepRecipe):
    """``on_eval`` for the train loop: report each evaluation, raise ``TrialPruned`` when the
    pruner says so."""
    metric = cfg.pruner.metric or cfg.objective.metric
    prune = cfg.pruner.type != "none"

    def on_eval(step: int, metrics: dict) -> None:
        if metric not in metrics:
            if not prune:
                return
            logged = ", ".join(sorted(metrics))
            raise ConfigError(
                f"the pruner watches '{metric}', which evaluations do not log ({logged}): "
                "set pruner.metric (e.g. eval_loss) or pruner.type=none"
            )
        value = float(metrics[metric])
        if math.isfinite(value):
            trial.report(value, step)
        if prune and trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned at step {step}: {metric} {value:.4g} worse than the median of "
                "earlier trials at that step"
            )

    return on_eval


def _relabel_manifest(folder: Path, status: str, reason: str) -> None:
    """A pruned trial's run ended by an exception, so its manifest says failed: say pruned."""
    manifest = _manifest(folder)
    if manifest:
        manifest["status"] = status
        manifest["metrics"].pop("error", None)
        manifest["metrics"][status] = reason
        atomic_write_json(folder / MANIFEST, manifest)


def _format(params: dict) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


# --------------------------------------------------------------------------- results
def _write_results(study, cfg: SweepRecipe, base: dict, out: Path, interrupted: set[int]):
    """results.csv/md and best.yaml as they stand; the best complete trial (None: none yet)."""
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = study.best_trial if complete else None
    rows = trial_rows(study, cfg.objective.metric, out, interrupted)
    write_tables(rows, out, best.number if best else None)
    if best is not None:
        _write_best_yaml(cfg, base, out, best)
    return best


def _write_best_yaml(cfg: SweepRecipe, base: dict, out: Path, best) -> Path:
    data = trial_config(base, best.params, out / "best")
    header = (
        f"# recipe: {cfg.recipe}\n"
        f"# The best trial of the sweep in {out}: trial {best.number}, "
        f"{cfg.objective.metric} = {best.value:.6g} ({cfg.objective.direction}).\n"
        f"# Its run: {out / trial_dir_name(best.number)}. Run this config again (e.g. longer):\n"
        f"#   lmforge {cfg.recipe} {out / 'best.yaml'}\n"
    )
    body = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return atomic_write_text(out / "best.yaml", header + body)


def _record(run: Run, study, cfg: SweepRecipe, out: Path, interrupted: set[int], best) -> None:
    rows = trial_rows(study, cfg.objective.metric, out, interrupted)
    states = [r["state"] for r in rows]
    run.counts["trials"] = {s: states.count(s) for s in ("complete", "pruned", "failed")}
    run.counts["trials"]["interrupted"] = states.count("interrupted")
    run.metrics.update(objective=cfg.objective.metric, direction=cfg.objective.direction)
    if best is not None:
        run.metrics.update(
            best_trial=best.number,
            best_value=best.value,
            best_params=best.params,
            best_run_dir=str(out / trial_dir_name(best.number)),
        )
        run.add_output(out / "best.yaml", "best_config")
    for row in rows:  # lineage: the sweep -> each trial's run -> its data and base model
        if (Path(row["run_dir"]) / MANIFEST).is_file():
            run.add_input(Path(row["run_dir"]) / MANIFEST, "trial")
    run.add_output(out / "results.csv", "results")
    run.add_output(out / "results.md", "results_table")
    run.add_output(out / STUDY, "study")
