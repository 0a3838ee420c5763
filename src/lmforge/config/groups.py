"""The config groups, one per concern. Recipes compose them (see ``lmforge.config.recipes``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lmforge.config.base import Group


def _chat_template(value: str | None) -> str | None:
    """A template name or Jinja string (checked when the config is read, not after training)."""
    from lmforge.errors import ConfigError
    from lmforge.tokenizer.templates import resolve_template

    if value is not None:
        try:
            resolve_template(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    return value


class ModelConfig(Group):
    preset: str | None = Field(
        None,
        description="named architecture built with random weights (see lmforge.models.presets)",
    )
    path: str | None = Field(
        None, description="local Hugging Face model folder or lmforge run directory to load"
    )
    tokenizer: str | None = Field(
        None, description="tokenizer folder or tokenizer run directory (default: model.path)"
    )
    adapter: str | None = Field(
        None, description="PEFT adapter folder or run directory applied on top (generate/evaluate)"
    )
    overrides: dict[str, int | float | str | bool] = Field(
        default_factory=dict, description="preset fields to change, e.g. {hidden_size: 256}"
    )
    trust_remote_code: bool = Field(
        False, description="allow a model folder to run its own Python code (off: safer)"
    )

    @model_validator(mode="after")
    def _one_source(self):
        if self.preset and self.path:
            raise ValueError("set model.preset (random weights) or model.path (load), not both")
        return self


class DataConfig(Group):
    train: list[str] = Field(default_factory=list, description="training files (jsonl, json, txt)")
    validation: list[str] = Field(
        default_factory=list, description="validation files; empty: carve val_ratio out of train"
    )
    val_ratio: float = Field(
        0.0, ge=0.0, lt=1.0, description="fraction of train held out when no validation files"
    )
    format: Literal["auto", "text", "alpaca", "messages"] = Field(
        "auto", description="row format; auto detects from the keys of each row"
    )
    text_field: str = Field("text", description="key holding the text for format=text")
    max_length: int = Field(512, gt=1, description="tokens per example (sft) or per block (pt)")
    long_examples: Literal["truncate", "segment"] = Field(
        "truncate",
        description="sft: an example longer than max_length is cut (truncate), or trained "
        "in windows of max_length that share segment_overlap tokens of context (segment)",
    )
    segment_overlap: int = Field(
        64, gt=0, description="segment: context tokens a window repeats from the one before"
    )
    max_examples: int | None = Field(
        None, gt=0, description="use at most this many training examples (after reading)"
    )
    cache: bool = Field(
        True, description="reuse tokenised data cached on disk (keyed by data, tokenizer, settings)"
    )
    cache_dir: str | None = Field(
        None,
        description="cache root (holds tokenized/<key>/); null: $LMFORGE_CACHE or ~/.cache/lmforge",
    )
    cache_shard_tokens: int = Field(
        1 << 24,
        gt=0,
        description="tokens per cache shard file; bounds memory while writing (16M: ~128 MB)",
    )
    template: str | None = Field(
        None,
        description="chat template put on the tokenizer and saved with the model: chatml, qwen, "
        "llama3, alpaca, default or a Jinja string; null: the tokenizer's own",
    )
    default_system: str | None = Field(
        None,
        description="system message given to conversations without one (replaces the "
        "template's default system prompt)",
    )
    # LLaMA-Factory dataset folders, with LLaMA-Factory's key names
    dataset_dir: str | None = Field(
        None, description="LLaMA-Factory dataset folder (holds dataset_info.json)"
    )
    dataset: list[str] = Field(
        default_factory=list,
        description="training datasets named in dataset_dir's dataset_info.json (sets data.train)",
    )
    eval_dataset: list[str] = Field(
        default_factory=list,
        description="validation datasets from dataset_dir; empty: val_ratio of each dataset",
    )
    mix_strategy: Literal["concat", "interleave_under", "interleave_over"] = Field(
        "concat",
        description="several datasets: concat; interleave_under (sample until one runs out); "
        "interleave_over (sample until each was seen whole, repeating the small ones)",
    )
    interleave_probs: list[float] | None = Field(
        None, description="sampling probability of each data.dataset (interleave_*); null: equal"
    )
    placeholders: dict[str, str] = Field(
        default_factory=dict,
        description="values for {{key}} in the data, e.g. {name: Forge, author: ACME} for "
        "LLaMA-Factory's identity.json (unfilled {{name}}/{{author}} rows are rejected)",
    )
    task_field: str = Field(
        "task",
        description="row key naming the row's task (per-task eval loss, task_prefix); rows of a "
        "data.dataset entry without one take the dataset's name",
    )
    task_prefix: dict[str, str] = Field(
        default_factory=dict,
        description="text put before the first user message of each task's rows, "
        "e.g. {summarize: 'Summarize: '}",
    )
    task_weights: dict[str, float] = Field(
        default_factory=dict,
        description="sft: loss weight of each task's tokens (2: counted twice, 0: not learned; "
        "unlisted tasks and 'untagged' rows: 1); validation losses stay unweighted",
    )

    @model_validator(mode="before")
    @classmethod
    def _llamafactory_lists(cls, data):
        """Comma-separated strings as LLaMA-Factory writes them; data.dataset -> data.train."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in ("dataset", "eval_dataset", "interleave_probs"):
            if isinstance(data.get(key), str):
                data[key] = [x.strip() for x in data[key].split(",") if x.strip()]
        folder = data.get("dataset_dir")
        for key, target in (("dataset", "train"), ("eval_dataset", "validation")):
            if not data.get(key):
                continue
            if not folder:
                raise ValueError(f"data.{key} needs data.dataset_dir (holding dataset_info.json)")
            derived = [f"{folder}#{name}" for name in data[key]]
            if data.get(target) and list(data[target]) != derived:
                raise ValueError(f"set data.{key} or data.{target}, not both")
            data[target] = derived  # the files every reader, fingerprint and manifest uses
        return data

    _template_known = field_validator("template")(_chat_template)

    @model_validator(mode="after")
    def _mixing_fits(self):
        if self.interleave_probs is not None:
            if len(self.interleave_probs) != len(self.dataset):
                raise ValueError(
                    f"data.interleave_probs has {len(self.interleave_probs)} values for "
                    f"{len(self.dataset)} datasets in data.dataset"
                )
            if any(p < 0 for p in self.interleave_probs) or sum(self.interleave_probs) <= 0:
                raise ValueError("data.interleave_probs must be >= 0 and not all 0")
        if self.mix_strategy != "concat" and not self.dataset:
            raise ValueError(f"data.mix_strategy={self.mix_strategy} mixes data.dataset entries")
        if self.long_examples == "segment" and self.segment_overlap >= self.max_length:
            raise ValueError(
                f"data.segment_overlap ({self.segment_overlap}) must be below data.max_length "
                f"({self.max_length}): each window must hold new tokens"
            )
        bad = {t: w for t, w in self.task_weights.items() if not 0 <= w < float("inf")}
        if bad:
            raise ValueError(f"data.task_weights must be finite and >= 0, not {bad}")
        return self


class TrackConfig(Group):
    tensorboard: Literal["auto", "on", "off"] = Field(
        "auto", description="TensorBoard event files in the run directory (auto: if installed)"
    )
    progress: bool = Field(True, description="show a progress bar with tokens/s")

    @field_validator("tensorboard", mode="before")
    @classmethod
    def _yaml_on_off(cls, v):
        # YAML 1.1 (PyYAML) reads a bare on/off as a boolean, in files and in overrides alike
        return ("on" if v else "off") if isinstance(v, bool) else v


class DistributedConfig(Group):
    """How the processes that torchrun started share the work (one process: ignored)."""

    strategy: Literal["auto", "ddp", "fsdp", "deepspeed"] = Field(
        "auto",
        description="auto: ddp when WORLD_SIZE>1; fsdp: FSDP2, parameters sharded per decoder "
        "layer; deepspeed: the ZeRO config in distributed.deepspeed",
    )
    deepspeed: str | None = Field(
        None,
        description="DeepSpeed ZeRO config JSON (needs the deepspeed package; GPU clusters)",
    )

    @model_validator(mode="after")
    def _deepspeed_file_with_deepspeed(self):
        if self.strategy == "deepspeed" and not self.deepspeed:
            raise ValueError(
                "distributed.strategy=deepspeed needs distributed.deepspeed (a ZeRO config JSON)"
            )
        if self.deepspeed and self.strategy != "deepspeed":
            raise ValueError(
                "distributed.deepspeed is read only with distributed.strategy=deepspeed"
            )
        return self


class LauncherConfig(Group):
    nproc: int = Field(
        1,
        ge=1,
        description="processes on this machine; >1: lmforge restarts itself under torchrun "
        "(one per GPU; on CPU one torch thread each unless OMP_NUM_THREADS is set)",
    )


class GenerationConfig(Group):
    max_new_tokens: int = Field(64, gt=0, description="tokens generated per prompt at most")
    temperature: float = Field(0.0, ge=0, description="0: greedy decoding")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    top_k: int = Field(0, ge=0, description="sample among the k most likely tokens; 0: off")
    stop: list[str] = Field(default_factory=list, description="strings that end generation")
    chat: bool = Field(True, description="render prompts with the tokenizer's chat template")
    system: str | None = Field(None, description="system message for chat prompts")
    batch_size: int = Field(8, gt=0, description="prompts generated together")
    seed: int = Field(0, description="sampling seed")


class TokenizerConfig(Group):
    type: Literal["byte_bpe", "unigram", "wordpiece"] = Field(
        "byte_bpe", description="subword algorithm"
    )
    vocab_size: int = Field(8000, ge=64, description="target vocabulary size")
    min_frequency: int = Field(2, ge=1, description="minimum pair/word count to enter the vocab")
    special_tokens: list[str] = Field(
        default_factory=lambda: ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        description="tokens never split; eos/pad must be among them",
    )
    eos_token: str = Field("<|im_end|>", description="end of a document and of an assistant turn")
    pad_token: str = Field("<|pad|>", description="padding token")
    unk_token: str = Field("<|unk|>", description="unknown token (unigram, wordpiece)")
    mask_token: str | None = Field(
        None, description="mask token for masked-LM pretraining (e.g. [MASK]); null: none"
    )
    chat_template: str = Field(
        "chatml", description="chatml, or a Jinja template string (must end turns with eos)"
    )
    split_digits: bool = Field(True, description="one token per digit (helps arithmetic)")
    lowercase: bool = Field(False, description="lowercase text before tokenising (wordpiece)")

    @model_validator(mode="before")
    @classmethod
    def _template_tokens(cls, data):
        """A named chat template brings its special tokens, and its end-of-turn token as the
        default eos_token (llama3: <|eot_id|>)."""
        if not isinstance(data, dict) or not isinstance(data.get("chat_template"), str):
            return data
        from lmforge.tokenizer.templates import template_tokens

        eos, specials = template_tokens(data["chat_template"])
        if not (eos or specials):
            return data
        data = dict(data)
        if eos and data.setdefault("eos_token", eos) != eos:
            raise ValueError(
                f"tokenizer.chat_template={data['chat_template']} ends turns with {eos}: set "
                f"tokenizer.eos_token={eos} (or leave it unset)"
            )
        given = data.get("special_tokens", cls.model_fields["special_tokens"].default_factory())
        data["special_tokens"] = list(dict.fromkeys([*given, *specials, *([eos] if eos else [])]))
        return data

    _template_known = field_validator("chat_template")(_chat_template)

    @model_validator(mode="after")
    def _specials_declared(self):
        missing = [t for t in (self.eos_token, self.pad_token) if t not in self.special_tokens]
        if missing:
            raise ValueError(f"{missing} must also be listed in tokenizer.special_tokens")
        return self


class PerplexityConfig(Group):
    files: list[str] = Field(default_factory=list, description="text files (txt or jsonl)")
    window: int = Field(512, gt=1, description="tokens per forward pass")
    stride: int | None = Field(
        None, gt=0, description="new tokens scored per window; null: = window (disjoint)"
    )
    text_field: str = Field("text", description="key holding the text in jsonl files")
    batch_size: int = Field(8, gt=0, description="windows per forward pass (speed only)")

    @field_validator("stride")
    @classmethod
    def _stride_le_window(cls, v, info):
        window = info.data.get("window")
        if v is not None and window is not None and v > window:
            raise ValueError(f"stride ({v}) cannot exceed window ({window})")
        return v


class ExactMatchConfig(Group):
    files: list[str] = Field(default_factory=list, description="instruction test files")
    max_examples: int | None = Field(None, gt=0, description="score at most this many")
    max_length: int = Field(512, gt=1, description="longest prompt accepted, in tokens")
    metrics: list[Literal["exact_match", "bleu", "chrf", "rouge"]] = Field(
        default_factory=lambda: ["exact_match"],
        description="scores of each answer against its reference: exact_match (normalised), "
        "bleu and chrf (sacrebleu; zh tokenizer for Chinese), rouge (ROUGE-1/2/L, CJK-aware)",
    )

    @field_validator("metrics")
    @classmethod
    def _some_metric(cls, v):
        if not v:
            raise ValueError("list at least one of exact_match, bleu, chrf, rouge")
        return list(dict.fromkeys(v))


class MultipleChoiceConfig(Group):
    files: list[str] = Field(
        default_factory=list,
        description='rows {"question", "choices": [...], "answer": index or choice}',
    )
    template: str = Field(
        "Question: {question}\nAnswer:", description="the prompt, {question} filled in"
    )
    delimiter: str = Field(" ", description="text between the prompt and each choice")
    chat: bool = Field(
        False,
        description="the filled template as a user turn through the chat template (choices "
        "follow the assistant turn's start, no delimiter), as lm-eval's apply_chat_template",
    )
    max_length: int = Field(2048, gt=1, description="tokens the model reads per choice at most")
    batch_size: int = Field(8, gt=0, description="choices scored together (speed only)")
    max_examples: int | None = Field(None, gt=0, description="score at most this many")

    @field_validator("template")
    @classmethod
    def _has_question(cls, v):
        if "{question}" not in v:
            raise ValueError("template must contain {question}")
        return v


class ClassificationEvalConfig(Group):
    """A classifier (stage cls) labels rows: accuracy, P/R/F1, confusion, entity F1 (BIO)."""

    files: list[str] = Field(
        default_factory=list,
        description='rows {"text", "label"} (sequence) or {"tokens", "tags"} (token classifier)',
    )
    text_field: str = Field("text", description="sequence rows: the text")
    label_field: str = Field("label", description="sequence rows: the gold label")
    tokens_field: str = Field("tokens", description="token rows: the words")
    tags_field: str = Field("tags", description="token rows: one gold tag per word")
    max_length: int = Field(512, gt=1, description="tokens per row at most (cut beyond)")
    batch_size: int = Field(16, gt=0, description="rows per forward pass (speed only)")
    max_examples: int | None = Field(None, gt=0, description="score at most this many")


class HarnessConfig(Group):
    """lm-evaluation-harness tasks run on the model through lmforge's ``LM`` (offline)."""

    tasks: list[str] = Field(
        default_factory=list,
        description="lm-eval task names: the shipped lmforge_* tasks (eval.local_tasks) or "
        "tasks in include_path",
    )
    include_path: list[str] = Field(
        default_factory=list, description="folders of your own lm-eval task YAMLs (local data)"
    )
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples; null: task's")
    limit: int | None = Field(None, gt=0, description="items per task at most")
    max_length: int = Field(2048, gt=1, description="context the model reads at most")
    batch_size: int = Field(8, gt=0, description="requests scored together (speed only)")
    chat: bool = Field(
        False,
        description="render each task prompt as a user turn through the model's chat template "
        "(lm-eval's apply_chat_template); false: raw text, lm-eval's default",
    )


class RobustnessConfig(Group):
    """Perturbation suites (``eval.robustness``) on the exact_match and multiple_choice items:
    the accuracy on perturbed prompts against the clean ones."""

    perturbations: list[str] = Field(
        default_factory=list,
        description="typos, casing, upper, lower, whitespace, synonyms, zh_char_noise; "
        "empty: no robustness evaluation",
    )
    rate: float = Field(0.1, ge=0, le=1, description="share of words/characters perturbed")
    seed: int = Field(0, description="perturbation seed (each item gets its own from it)")

    @field_validator("perturbations")
    @classmethod
    def _known(cls, v):
        from lmforge.eval.robustness import PERTURBATIONS

        unknown = [p for p in v if p not in PERTURBATIONS]
        if unknown:
            raise ValueError(
                f"unknown perturbation(s) {', '.join(unknown)}; choose from "
                f"{', '.join(PERTURBATIONS)}"
            )
        return list(dict.fromkeys(v))


class GatesConfig(Group):
    """``eval`` in a training config: what to evaluate before and after training, and the
    gates the trained model must pass (``eval.gates``; see ``lmforge.eval.gates``)."""

    gates: list[str] = Field(
        default_factory=list,
        description="conditions, e.g. 'accuracy >= 0.8', 'perplexity <= 1.05 * base', "
        "'eval_loss < base'; an unmet one fails the run",
    )
    perplexity: PerplexityConfig = Field(default_factory=PerplexityConfig, description="text ppl")
    exact_match: ExactMatchConfig = Field(
        default_factory=ExactMatchConfig, description="generation against references"
    )
    multiple_choice: MultipleChoiceConfig = Field(
        default_factory=MultipleChoiceConfig, description="choices by log-likelihood"
    )
    generation: GenerationConfig = Field(
        default_factory=lambda: GenerationConfig(max_new_tokens=16),
        description="decoding for exact_match",
    )
