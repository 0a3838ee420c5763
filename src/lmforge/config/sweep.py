"""The config of ``lmforge sweep``: a base recipe config, a search space over its dotted keys,
the objective, the sampler and the pruner (see ``lmforge.recipes.sweep``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from lmforge.config.base import Group, RecipeConfig, _nested_group

Choice = bool | int | float | str | None


class ParamSpec(Group):
    """One dimension of the search: a float or int range, or a list of choices."""

    type: Literal["float", "int", "categorical"] = Field(
        "float", description="float or int (low..high), or categorical (choices)"
    )
    low: float | None = Field(None, description="smallest value (float, int)")
    high: float | None = Field(None, description="largest value, included (float, int)")
    log: bool = Field(False, description="sample on a log scale (learning rates); needs low > 0")
    step: float | None = Field(None, gt=0, description="grid spacing within low..high; null: any")
    choices: list[Choice] | None = Field(None, description="the values tried (categorical)")

    @model_validator(mode="after")
    def _range_or_choices(self):
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs choices: [a, b, ...]")
            if self.low is not None or self.high is not None:
                raise ValueError("a categorical parameter takes choices, not low/high")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} parameter takes low/high, not choices")
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a {self.type} parameter needs low < high")
        if self.log and self.low <= 0:
            raise ValueError("log: true needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.type == "int" and not all(
            float(v).is_integer() for v in (self.low, self.high, self.step or 1)
        ):
            raise ValueError("an int parameter needs whole numbers for low, high and step")
        return self


class ObjectiveConfig(Group):
    metric: str = Field(
        "eval_loss",
        description="key in each trial manifest's metrics: eval_loss (the last evaluation), "
        "best_value (the best one, with train.early_stopping), train_loss, ...",
    )
    direction: Literal["minimize", "maximize"] = Field(
        "minimize", description="minimize (losses) or maximize (accuracies)"
    )


class SamplerConfig(Group):
    type: Literal["tpe", "random"] = Field(
        "tpe", description="tpe: Optuna's Tree-structured Parzen Estimator; random: uniform"
    )
    seed: int = Field(0, description="sampler seed (a resumed sweep reseeds: not bit-identical)")
    n_startup_trials: int = Field(
        4, ge=0, description="random trials before TPE starts modelling the results"
    )


class PrunerConfig(Group):
    type: Literal["median", "none"] = Field(
        "median",
        description="median: stop a trial whose evaluation is worse than the median of earlier "
        "trials at the same step; none: run every trial to the end",
    )
    metric: str | None = Field(
        None,
        description="evaluation metric reported while a trial trains; null: objective.metric "
        "(must be logged at each evaluation, e.g. eval_loss; same direction as the objective)",
    )
    n_startup_trials: int = Field(2, ge=0, description="trials finished before any is pruned")
    n_warmup_steps: int = Field(0, ge=0, description="optimizer steps before a trial can be pruned")


class SweepRecipe(RecipeConfig):
    output_dir: str = Field(
        "runs/sweep", description="sweep folder: study.db, trial-NNN/, results, best.yaml"
    )
    recipe: Literal["train"] = Field("train", description="the recipe each trial runs")
    base: str | None = Field(None, description="the recipe's config file that trials start from")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="inline config merged over base, e.g. {train: {max_steps: 200}}",
    )
    space: dict[str, ParamSpec] = Field(
        default_factory=dict,
        description="dotted config key -> {type: float|int|categorical, low, high, log, step, "
        "choices}, e.g. {train.lr: {low: 1e-4, high: 1e-2, log: true}}",
    )
    enqueue: list[dict[str, Choice]] = Field(
        default_factory=list,
        description="parameter sets tried first, e.g. the current settings as a baseline",
    )
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig, description="what wins")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig, description="how trials pick")
    pruner: PrunerConfig = Field(default_factory=PrunerConfig, description="stopping bad trials")
    n_trials: int = Field(
        20, gt=0, description="trials finished in total, earlier runs of a resumed sweep included"
    )
    timeout: float | None = Field(
        None,
        gt=0,
        description="seconds from the start of this invocation; no trial starts after it "
        "(a running one finishes)",
    )
    resume: Literal["auto", "never"] = Field(
        "auto",
        description="auto: continue the study in output_dir/study.db; never (or force=true): "
        "delete it and its trials and start over",
    )

    @model_validator(mode="after")
    def _space_names_recipe_keys(self):
        from lmforge.config.recipes import RECIPE_CONFIGS

        if not self.space:
            raise ValueError("space must name at least one config key to search")
        target = RECIPE_CONFIGS[self.recipe]
        for key in [*self.space, *(k for params in self.enqueue for k in params)]:
            problem = _key_problem(target, key)
            if problem:
                raise ValueError(f"space/enqueue key '{key}': {problem}")
        for params in self.enqueue:
            unknown = set(params) - set(self.space)
            if unknown:
                raise ValueError(f"enqueue sets {sorted(unknown)}, which space does not search")
        return self


def _key_problem(cls: type[Group], key: str) -> str | None:
    """Why dotted ``key`` names no setting of ``cls`` (None: it does). Keys inside a mapping
    field (``model.overrides.hidden_size``) are accepted: the mapping decides its own keys."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        field = cls.model_fields.get(part)
        if field is None:
            return f"'{part}' is not a key of {'.'.join(parts[:i]) or 'the config'}"
        sub = _nested_group(field.annotation)
        if sub is None:
            rest = parts[i + 1 :]
            is_mapping = getattr(field.annotation, "__origin__", None) is dict
            if rest and not is_mapping:
                return f"'{'.'.join(parts[: i + 1])}' has no sub-keys"
            return None
        cls = sub
    return "names a whole group; search one of its keys"
