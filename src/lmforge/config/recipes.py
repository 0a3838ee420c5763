"""One top-level config per recipe, composed from the groups in ``lmforge.config.groups``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmforge.config.base import Group, RecipeConfig
from lmforge.config.groups import (
    ClassificationEvalConfig,
    DataConfig,
    DistributedConfig,
    ExactMatchConfig,
    GatesConfig,
    GenerationConfig,
    HarnessConfig,
    LauncherConfig,
    ModelConfig,
    MultipleChoiceConfig,
    PerplexityConfig,
    RobustnessConfig,
    TokenizerConfig,
    TrackConfig,
)
from lmforge.config.prepare import PrepareRecipe
from lmforge.config.sweep import SweepRecipe
from lmforge.config.training import (
    AdapterConfig,
    ClassifyConfig,
    ContinualConfig,
    ObjectiveConfig,
    PreferenceConfig,
    RLConfig,
    TrainConfig,
)
from lmforge.config.vocab import VocabExtendRecipe


class TokenizerDataConfig(Group):
    files: list[str] = Field(default_factory=list, description="training text (txt or jsonl)")
    text_field: str = Field("text", description="key holding the text in jsonl rows")
    max_docs: int | None = Field(None, gt=0, description="read at most this many documents")


class TokenizerRecipe(RecipeConfig):
    data: TokenizerDataConfig = Field(default_factory=TokenizerDataConfig, description="corpus")
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig, description="algorithm")


class TrainRecipe(RecipeConfig):
    stage: Literal["pt", "sft", "cls", "rm", "dpo", "kto", "grpo", "ppo"] = Field(
        "sft",
        description="pt: pretrain on text (objective.type); sft: instructions; "
        "cls: sequence or token classification; rm: reward model on chosen/rejected pairs; "
        "dpo: preference optimisation (preference.loss); kto: answers labelled good or bad; "
        "grpo: groups of sampled answers scored by rewards (rl); ppo: sampled answers, a "
        "value head and GAE against a reward model or function (rl)",
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="what is trained")
    data: DataConfig = Field(default_factory=DataConfig, description="training data")
    objective: ObjectiveConfig = Field(
        default_factory=ObjectiveConfig, description="what stage pt learns"
    )
    cls: ClassifyConfig = Field(default_factory=ClassifyConfig, description="stage cls")
    preference: PreferenceConfig = Field(
        default_factory=PreferenceConfig, description="stages rm, dpo and kto"
    )
    rl: RLConfig = Field(
        default_factory=RLConfig, description="stages grpo and ppo: rollouts and rewards"
    )
    adapter: AdapterConfig = Field(
        default_factory=AdapterConfig, description="what trains: full, freeze, LoRA, QLoRA, ..."
    )
    continual: ContinualConfig = Field(
        default_factory=ContinualConfig, description="replay and EWC against forgetting"
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="optimisation")
    eval: GatesConfig = Field(
        default_factory=GatesConfig,
        description="evaluation before and after training, and the gates it must pass",
    )
    track: TrackConfig = Field(default_factory=TrackConfig, description="logging")
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig, description="data parallelism under torchrun"
    )
    launcher: LauncherConfig = Field(
        default_factory=LauncherConfig, description="start the processes of one machine"
    )

    @model_validator(mode="after")
    def _needs_model_and_data(self):
        if not (self.model.preset or self.model.path):
            raise ValueError("set model.preset or model.path")
        if self.model.preset and not self.model.tokenizer:
            raise ValueError("a preset model needs model.tokenizer (a tokenizer folder or run)")
        if not self.data.train:
            raise ValueError("data.train must list at least one file")
        if self.stage == "pt" and self.data.format not in ("auto", "text"):
            raise ValueError(
                f"stage pt reads plain text: data.format must be auto or text, "
                f"not {self.data.format}"
            )
        if self.stage == "sft" and self.data.format == "text":
            raise ValueError("stage sft needs conversations: data.format auto, alpaca or messages")
        if self.stage != "pt" and self.objective.type not in ("auto", "clm"):
            raise ValueError(
                f"objective.type={self.objective.type} belongs to stage pt, not {self.stage}"
            )
        if self.stage in ("rm", "dpo", "kto", "grpo", "ppo") and self.data.format == "text":
            raise ValueError(
                f"stage {self.stage} needs preference rows (prompt and chosen/rejected, or "
                "a labelled completion for kto): leave data.format at auto"
            )
        if self.stage == "cls" and self.data.format not in ("auto", "text"):
            raise ValueError("stage cls reads labelled rows: leave data.format at auto")
        if self.data.task_weights and self.stage != "sft":
            raise ValueError(f"data.task_weights weighs sft examples; stage {self.stage} has none")
        if self.continual.ewc_lambda > 0 and self.distributed.strategy in ("fsdp", "deepspeed"):
            raise ValueError(
                "continual.ewc_lambda needs whole parameters in every process: use "
                f"distributed.strategy=ddp (or auto), not {self.distributed.strategy}"
            )
        return self

    @model_validator(mode="after")
    def _eval_watch_needs_validation(self):
        watched = self.train.early_stopping.patience is not None or self.train.load_best_at_end
        if watched and not (self.data.validation or self.data.val_ratio > 0):
            raise ValueError(
                "train.early_stopping and train.load_best_at_end watch an evaluation metric: "
                "give data.validation files or a data.val_ratio"
            )
        return self


class GenerateRecipe(RecipeConfig):
    model: ModelConfig = Field(default_factory=ModelConfig, description="model to sample from")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="decoding")
    prompts: str | None = Field(None, description="prompts file: txt (one per line) or jsonl")
    output: str | None = Field(
        None, description="outputs jsonl (default: output_dir/outputs.jsonl)"
    )
    device: str = Field("auto", description="auto: cuda when available, else cpu; or cpu, cuda:1")


class ChatRecipe(Group):
    model: ModelConfig = Field(default_factory=ModelConfig, description="model to talk to")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="decoding")
    device: str = Field("auto", description="auto: cuda when available, else cpu; or cpu, cuda:1")


class EvaluateRecipe(RecipeConfig):
    model: ModelConfig = Field(default_factory=ModelConfig, description="model to evaluate")
    perplexity: PerplexityConfig = Field(default_factory=PerplexityConfig, description="text ppl")
    exact_match: ExactMatchConfig = Field(
        default_factory=ExactMatchConfig,
        description="generation against references: exact match, BLEU, chrF, ROUGE",
    )
    multiple_choice: MultipleChoiceConfig = Field(
        default_factory=MultipleChoiceConfig, description="choices scored by log-likelihood"
    )
    classification: ClassificationEvalConfig = Field(
        default_factory=ClassificationEvalConfig, description="a classifier on labelled rows"
    )
    harness: HarnessConfig = Field(
        default_factory=HarnessConfig, description="lm-evaluation-harness tasks, offline"
    )
    robustness: RobustnessConfig = Field(
        default_factory=RobustnessConfig, description="accuracy under perturbed prompts"
    )
    error_analysis: bool = Field(
        True,
        description="per-class errors, confusion PNG and clusters of the wrong answers "
        "(errors/<kind>/) for exact_match and multiple_choice",
    )
    generation: GenerationConfig = Field(
        default_factory=lambda: GenerationConfig(max_new_tokens=16),
        description="decoding for exact_match",
    )
    device: str = Field("auto", description="auto: cuda when available, else cpu; or cpu, cuda:1")


class ExportMergeRecipe(RecipeConfig):
    adapter: str | None = Field(
        None, description="adapter run directory or folder to merge (LoRA, DoRA, IA3, QLoRA)"
    )
    base: str | None = Field(None, description="base model folder (default: from the adapter)")


class DemoRecipe(RecipeConfig):
    output_dir: str = Field("demo-run", description="where the demo writes all its runs")
    n_docs: int = Field(3000, gt=10, description="pretraining documents generated")
    n_per_task: int = Field(400, gt=10, description="instruction examples per task")
    vocab_size: int = Field(2000, ge=300, description="tokenizer vocabulary")
    pt_steps: int = Field(800, gt=0, description="pretraining optimizer steps")
    sft_steps: int = Field(500, gt=0, description="LoRA fine-tuning optimizer steps")
    dpo_steps: int = Field(300, gt=0, description="DPO optimizer steps after fine-tuning")
    preset: str = Field("tiny-llama", description="model preset")
    seed: int = Field(0, description="seed for data, weights and sampling")
    progress: bool = Field(True, description="progress bars while training")


RECIPE_CONFIGS: dict[str, type[Group]] = {
    "tokenizer": TokenizerRecipe,
    "train": TrainRecipe,
    "generate": GenerateRecipe,
    "chat": ChatRecipe,
    "evaluate": EvaluateRecipe,
    "export merge": ExportMergeRecipe,
    "demo": DemoRecipe,
    "prepare": PrepareRecipe,
    "sweep": SweepRecipe,
    "tokenizer extend": VocabExtendRecipe,
}
