"""The config groups of training: what trains (adapter), what it learns (objective, classifier),
how (train, early stopping) and against forgetting (continual). ``lmforge.config.groups``
holds the others; recipes compose them (``lmforge.config.recipes``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmforge.config.base import Group

AdapterType = Literal["full", "freeze", "lora", "qlora", "prefix", "prompt", "p-tuning", "ia3"]
PROMPT_LEARNING = ("prefix", "prompt", "p-tuning")  # virtual tokens: padded rows, no merging

# the adapter.type values that read each option; set for any other type, it is an error
_READ_BY: dict[str, tuple[str, ...]] = {
    "rank": ("lora", "qlora"),
    "alpha": ("lora", "qlora"),
    "dropout": ("lora", "qlora"),
    "use_dora": ("lora", "qlora"),
    "use_rslora": ("lora", "qlora"),
    "target_modules": ("lora", "qlora", "ia3"),
    "feedforward_modules": ("ia3",),
    "modules_to_save": ("lora", "qlora", "ia3"),
    "train_layers": ("freeze",),
    "train_modules": ("freeze",),
    "quant_backend": ("qlora",),
    "double_quant": ("qlora",),
    "quant_block_size": ("qlora",),
    "compute_dtype": ("qlora",),
    "num_virtual_tokens": PROMPT_LEARNING,
    "prompt_init_text": ("prompt",),
    "encoder_hidden_size": ("p-tuning",),
}


class AdapterConfig(Group):
    """What is trained (see docs/finetuning.md for the methods side by side). Each option below
    names the types that read it; setting it for another type is an error."""

    type: AdapterType = Field(
        "full",
        description="full: every weight; freeze: the last decoder layers and named modules; "
        "lora, qlora (LoRA on a 4-bit base), ia3: PEFT adapters that merge into the base; "
        "prefix, prompt, p-tuning: learned virtual tokens (padded rows, served with the adapter)",
    )
    rank: int = Field(8, gt=0, description="lora/qlora: rank r of the update B·A")
    alpha: float = Field(16.0, gt=0, description="lora/qlora: scale numerator (alpha / rank)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="lora/qlora: dropout on the input")
    use_dora: bool = Field(
        False, description="lora/qlora: DoRA, a learned magnitude per output row besides LoRA"
    )
    use_rslora: bool = Field(
        False, description="lora/qlora: rsLoRA scale alpha / sqrt(rank), stable at high rank"
    )
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="lora/qlora/ia3: module names or name suffixes (q_proj, mlp.down_proj) to "
        "adapt, or all-linear; null: all-linear for LoRA, PEFT's choice per architecture for "
        "IA3 (llama: k_proj, v_proj, down_proj; bert: key, value, output.dense)",
    )
    feedforward_modules: list[str] | None = Field(
        None,
        description="ia3: the targets that are feed-forward layers (scaled on their input, the "
        "others on their output); null: PEFT's choice for the architecture, among the targets",
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="lora/qlora/ia3: modules trained in full beside the adapter (e.g. lm_head)",
    )
    train_layers: int = Field(
        0, ge=0, description="freeze: train the last N decoder layers (the rest stay frozen)"
    )
    train_modules: list[str] = Field(
        default_factory=list,
        description="freeze: also train these modules: a name, a name suffix (lm_head, norm) "
        "or a regular expression matching the whole module name",
    )
    quant_backend: Literal["bitsandbytes", "torchao"] = Field(
        "bitsandbytes",
        description="qlora: 4-bit NF4 base from bitsandbytes (Linear4bit) or torchao "
        "(NF4Tensor); on CPU both dequantise to multiply: they save memory, not time",
    )
    double_quant: bool = Field(
        True,
        description="qlora: store the per-block scales in 8 bits instead of 32 (blocks of 64: "
        "0.5 -> 0.13 bit per weight, less gain on small layers); torchao always does",
    )
    quant_block_size: Literal[32, 64, 128, 256, 512, 1024, 2048, 4096] = Field(
        64,
        description="qlora: weights per NF4 block (the sizes bitsandbytes takes); torchao leaves "
        "a layer whose size does not split into blocks in full precision (reported at start)",
    )
    compute_dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="qlora: dtype of the dequantised matmul; auto: fp32 on CPU, bf16 on GPU"
    )
    num_virtual_tokens: int = Field(
        20, gt=0, description="prefix/prompt/p-tuning: virtual tokens put before every row"
    )
    prompt_init_text: str | None = Field(
        None,
        description="prompt: start the virtual tokens from this text's token embeddings "
        "(repeated or cut to num_virtual_tokens); null: random",
    )
    encoder_hidden_size: int | None = Field(
        None,
        gt=0,
        description="p-tuning: hidden size of the MLP that encodes the virtual tokens; null: "
        "the model's hidden size",
    )

    @model_validator(mode="after")
    def _options_fit_the_type(self):
        # compared with the defaults, not with the keys given: a resolved config (torchrun,
        # manifests) lists every key
        fields = type(self).model_fields
        wrong = [
            key
            for key, readers in _READ_BY.items()
            if self.type not in readers
            and getattr(self, key) != fields[key].get_default(call_default_factory=True)
        ]
        if wrong:
            read = "; ".join(f"{k} by {'/'.join(_READ_BY[k])}" for k in wrong)
            raise ValueError(
                f"adapter.type={self.type} does not read "
                f"{', '.join('adapter.' + k for k in wrong)} (read: {read}): "
                "remove it or change adapter.type"
            )
        if self.type == "freeze" and not (self.train_layers or self.train_modules):
            raise ValueError(
                "adapter.type=freeze trains nothing: set adapter.train_layers (the last N "
                "decoder layers) and/or adapter.train_modules (e.g. [lm_head, norm])"
            )
        if self.type == "qlora" and self.quant_backend == "torchao":
            if not self.double_quant:
                raise ValueError(
                    "torchao NF4 always quantises the block scales: adapter.double_quant=false "
                    "needs adapter.quant_backend=bitsandbytes"
                )
            if self.use_dora:
                raise ValueError(
                    "DoRA needs the base weight's norm, which PEFT cannot read from a torchao "
                    "NF4 tensor: use adapter.quant_backend=bitsandbytes with adapter.use_dora"
                )
        if self.feedforward_modules and isinstance(self.target_modules, list):
            extra = sorted(set(self.feedforward_modules) - set(self.target_modules))
            if extra:
                raise ValueError(
                    f"adapter.feedforward_modules {extra} must also be in adapter.target_modules"
                )
        return self


class ObjectiveConfig(Group):
    """What stage ``pt`` learns (causal, masked or permutation LM, or contrastive embeddings)."""

    type: Literal["auto", "clm", "mlm", "plm", "contrastive"] = Field(
        "auto",
        description="auto: clm for decoders, mlm for BERT-style encoders, plm for XLNet; "
        "contrastive: SimCSE sentence embeddings",
    )
    mask_prob: float = Field(
        0.15, gt=0, lt=1, description="mlm: share of tokens selected (BERT: 15%)"
    )
    mask_token_frac: float = Field(
        0.8, ge=0, le=1, description="mlm: selected tokens replaced by [MASK] (BERT: 80%)"
    )
    random_token_frac: float = Field(
        0.1,
        ge=0,
        le=1,
        description="mlm: selected tokens replaced by a random token (BERT: 10%; the rest stay)",
    )
    plm_prob: float = Field(
        1 / 6, gt=0, lt=1, description="plm: share of tokens predicted (XLNet: 1/K with K = 6)"
    )
    temperature: float = Field(
        0.05, gt=0, description="contrastive: softmax temperature of cosine similarities"
    )
    pooling: Literal["mean", "first", "last"] = Field(
        "mean", description="contrastive: sentence embedding = mean, first or last token state"
    )
    positive_field: str = Field(
        "positive", description="contrastive: key of the positive text; absent: unsupervised"
    )
    negative_field: str = Field(
        "negative", description="contrastive: key of an optional hard-negative text"
    )

    @model_validator(mode="after")
    def _fractions(self):
        if self.mask_token_frac + self.random_token_frac > 1:
            raise ValueError("objective.mask_token_frac + random_token_frac must be at most 1")
        return self


class ClassifyConfig(Group):
    """Stage ``cls``: sequence or token classification on an encoder (or decoder) model."""

    task: Literal["sequence", "token"] = Field(
        "sequence", description="sequence: one label per text; token: one tag per word"
    )
    labels: list[str] | None = Field(
        None, description="class names in id order; null: every label in the training data"
    )
    label_field: str = Field("label", description="sequence: key of the label")
    tokens_field: str = Field("tokens", description="token: key of the list of words")
    tags_field: str = Field("tags", description="token: key of the list of tags, one per word")
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="share of the target mass spread over the other classes"
    )
    class_weights: Literal["none", "balanced"] | list[float] = Field(
        "none",
        description="none; balanced (n / (classes x count), from the training labels); "
        "or one weight per class",
    )


class PreferenceConfig(Group):
    """Stages ``rm``, ``dpo`` and ``kto``: learning from preferences (docs/alignment.md)."""

    loss: Literal["sigmoid", "robust", "hinge", "ipo", "simpo", "orpo"] = Field(
        "sigmoid",
        description="dpo: sigmoid (DPO), robust (rDPO), hinge (SLiC), ipo; simpo and orpo "
        "need no reference model",
    )
    beta: float = Field(
        0.1, gt=0, description="dpo: strength of the implicit KL to the reference (SimPO: ~2)"
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="dpo sigmoid/robust/simpo: assumed share of flipped pairs"
    )
    simpo_gamma: float = Field(0.5, ge=0, description="simpo: target reward margin gamma")
    sft_weight: float = Field(
        0.0,
        ge=0,
        description="dpo: add this times the chosen answers' per-token NLL (RPO; LLaMA-Factory's "
        "pref_ftx): keeps the chosen answers likely while the margin grows",
    )
    orpo_lambda: float = Field(
        0.1, gt=0, description="orpo: weight of the odds-ratio term beside the chosen NLL"
    )
    margin_field: str | None = Field(
        None, description="rm: row key holding how much better chosen is (loss margin)"
    )
    desirable_weight: float = Field(1.0, gt=0, description="kto: weight of desirable answers")
    undesirable_weight: float = Field(
        1.0, gt=0, description="kto: weight of undesirable answers (raise it when they are rare)"
    )


class RewardSpec(Group):
    """One programmatic reward term (see ``lmforge.rl.rewards``)."""

    type: Literal["exact_match", "regex", "length", "model"] = Field(
        "exact_match",
        description="exact_match: 1 when the answer equals the row's reference; regex: 1 when "
        "pattern matches; length: -|tokens - target_tokens| / target_tokens; model: the score "
        "of a reward model (a stage rm run) on the rendered conversation",
    )
    weight: float = Field(1.0, description="this term's weight in the summed reward")
    pattern: str | None = Field(None, description="regex: the pattern (re.search)")
    target_tokens: int | None = Field(None, gt=0, description="length: the wanted answer length")
    path: str | None = Field(
        None, description="model: the reward model (an rm run or its model folder)"
    )

    @model_validator(mode="after")
    def _needs_its_setting(self):
        if self.type == "regex":
            if not self.pattern:
                raise ValueError("a regex reward needs pattern")
            import re

            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a valid regex: {exc}") from None
        if self.type == "length" and not self.target_tokens:
            raise ValueError("a length reward needs target_tokens")
        if self.type == "model" and not self.path:
            raise ValueError("a model reward needs path (a stage rm run)")
        return self


class RLConfig(Group):
    """Stages ``grpo`` and ``ppo``: answers sampled from the policy, scored by rewards
    (programmatic or a reward model). GRPO samples ``group_size`` answers per prompt; PPO one,
    with a value head and GAE."""

    group_size: int = Field(4, ge=2, description="grpo: answers sampled per prompt (one group)")
    max_new_tokens: int = Field(16, gt=0, description="tokens per sampled answer at most")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the rollouts")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass of the rollouts")
    beta: float = Field(
        0.04,
        ge=0,
        description="weight of the KL penalty to the reference (0: no reference); ppo: the "
        "initial coefficient of the per-token KL penalty in the reward",
    )
    clip_epsilon: float = Field(0.2, gt=0, lt=1, description="PPO-style ratio clipping")
    ppo_epochs: int = Field(4, ge=1, description="ppo: optimisation passes over each rollout")
    mini_batches: int = Field(
        1, ge=1, description="ppo: optimizer steps per pass (the rollout split into as many parts)"
    )
    gamma: float = Field(1.0, ge=0, le=1, description="ppo: discount of future rewards")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="ppo: GAE's bias-variance lambda")
    value_coef: float = Field(0.1, ge=0, description="ppo: weight of the value loss")
    value_head: Literal["detached", "shared"] = Field(
        "detached",
        description="ppo: the value loss trains the value head alone (detached) or the policy's "
        "backbone too (shared, as TRL's value-head model)",
    )
    value_clip: float = Field(
        0.2, gt=0, description="ppo: how far a value may move from its rollout value (clipped loss)"
    )
    kl_target: float | None = Field(
        None,
        gt=0,
        description="ppo: adaptive KL controller (Ziegler et al. 2019) steering the summed "
        "per-answer KL to this value; null: the coefficient stays at beta",
    )
    kl_horizon: int = Field(10_000, gt=0, description="ppo: the adaptive controller's horizon")
    whiten_advantages: bool = Field(
        True, description="ppo: advantages shifted and scaled to mean 0, std 1 per rollout"
    )
    scale_rewards: bool = Field(
        True, description="divide each group's advantages by its reward std (GRPO); false: Dr. GRPO"
    )
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec()],
        description="summed reward terms, e.g. [{type: exact_match}, {type: regex, pattern: ...}]",
    )


class EarlyStoppingConfig(Group):
    """Stop when an evaluation metric stops improving (needs validation data, train.eval_every)."""

    metric: str = Field(
        "eval_loss",
        description="evaluation metric watched, also for load_best_at_end (eval_loss, eval_ppl, "
        "or any metric the evaluation logs)",
    )
    mode: Literal["min", "max"] = Field("min", description="min: lower is better; max: higher")
    patience: int | None = Field(
        None,
        gt=0,
        description="stop after this many evaluations in a row without improvement; null: off",
    )
    threshold: float = Field(
        0.0, ge=0, description="smallest improvement over the best that counts as one"
    )
    threshold_mode: Literal["abs", "rel"] = Field(
        "abs", description="abs: threshold in the metric's units; rel: a fraction of |best|"
    )


class ContinualConfig(Group):
    """Continual learning: train a new task on a model that learned a previous one (model.path)
    without forgetting it, by replaying the previous task's rows and/or EWC (Kirkpatrick et
    al. 2017). See docs/finetuning.md."""

    previous_data: list[str] = Field(
        default_factory=list,
        description="the previous task's training files: EWC's Fisher is estimated on them, "
        "and replay draws from them unless replay_files is set",
    )
    replay_files: list[str] = Field(
        default_factory=list, description="files whose rows are replayed; empty: previous_data"
    )
    replay_ratio: float = Field(
        0.0,
        ge=0,
        description="replayed rows per new-task training row, drawn seeded (0.25: one old row "
        "for every four new ones; more than the old rows: repeats); 0: no replay",
    )
    ewc_lambda: float = Field(
        0.0,
        ge=0,
        description="EWC strength: the loss adds lambda/2 * sum F_i (theta_i - theta*_i)^2 over "
        "the trainable weights (theta*: their values at the start); about 1/mean F "
        "(counts.ewc.stats.mean in the manifest); 0: no EWC",
    )
    fisher_examples: int = Field(
        256, gt=0, description="previous-task examples (a seeded sample) the Fisher is estimated on"
    )
    fisher_batch_size: int = Field(
        1,
        gt=0,
        description="examples per squared gradient; 1: the per-example empirical Fisher "
        "(larger: faster, and smaller values)",
    )
    fisher_file: str | None = Field(
        None,
        description="reuse the Fisher of an earlier run (its fisher.safetensors or run directory) "
        "made for the same starting model; null: estimate it into this run's directory",
    )

    @model_validator(mode="after")
    def _something_to_do(self):
        if self.ewc_lambda > 0 and not (self.previous_data or self.fisher_file):
            raise ValueError(
                "continual.ewc_lambda needs continual.previous_data (to estimate the Fisher on) "
                "or continual.fisher_file"
            )
        if self.replay_ratio > 0 and not (self.previous_data or self.replay_files):
            raise ValueError("continual.replay_ratio needs continual.previous_data or replay_files")
        return self


class TrainConfig(Group):
    epochs: float = Field(1.0, gt=0, description="passes over the training data")
    max_steps: int | None = Field(
        None, gt=0, description="stop after this many optimizer steps (overrides epochs)"
    )
    batch_size: int = Field(8, gt=0, description="examples (sft) or blocks (pt) per micro-batch")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    lr: float = Field(3e-4, gt=0, description="peak learning rate")
    min_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="final lr as a fraction of peak (~lr/10 as in Chinchilla)"
    )
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="decay after warmup"
    )
    warmup_steps: int | None = Field(None, ge=0, description="warmup steps (overrides ratio)")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="warmup as a fraction of steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    max_grad_norm: float | None = Field(1.0, description="clip gradients to this norm; null: off")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: fp32 on CPU (bf16 measured ~100x slower without bf16 units, ~1.8x "
        "faster with AMX: see docs/benchmarks.md), bf16 on GPU",
    )
    shuffle: bool = Field(True, description="reshuffle the training examples every epoch")
    packing: bool = Field(
        True,
        description="one row per micro-batch, attention kept per sequence (no padding); "
        "false: one padded row per example",
    )
    compile: bool = Field(
        False,
        description="torch.compile each decoder layer: ~10-15% faster steps on CPU after "
        "25-80 s of compiling (pays for long runs)",
    )
    activation_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, more compute"
    )
    eval_every: int | None = Field(None, gt=0, description="validate every N steps; null: at end")
    eval_on_start: bool = Field(
        False, description="also validate before the first step (logged as step 0: a baseline)"
    )
    eval_batches: int | None = Field(None, gt=0, description="cap on validation micro-batches")
    save_every: int | None = Field(None, gt=0, description="checkpoint every N steps; null: end")
    keep_last: int = Field(2, gt=0, description="checkpoints kept on disk")
    early_stopping: EarlyStoppingConfig = Field(
        default_factory=EarlyStoppingConfig, description="stop when validation stops improving"
    )
    load_best_at_end: bool = Field(
        False,
        description="model/ gets the weights of the best evaluation (early_stopping.metric); "
        "that checkpoint is written and kept past keep_last",
    )
    resume: Literal["auto", "never"] | str = Field(
        "auto", description="auto: continue from the latest checkpoint; never; or a path"
    )
    log_every: int = Field(10, gt=0, description="write metrics every N steps")
    seed: int = Field(0, description="seed for weights, shuffling and dropout")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, mps")

    @model_validator(mode="after")
    def _early_stopping_counts_evaluations(self):
        if self.early_stopping.patience is not None and not self.eval_every:
            raise ValueError(
                "train.early_stopping.patience counts evaluations: set train.eval_every"
            )
        return self
