"""lmforge models inside lm-evaluation-harness: :class:`LmforgeLM` is an lm-eval ``LM``
(registered as ``lmforge``) over any model lmforge loads (a run folder, a model folder, an
adapter on its base), so lm-eval's tasks score lmforge models without a conversion step::

    lm = LmforgeLM(path="runs/sft_lora", max_length=512)
    lm_eval.simple_evaluate(model=lm, tasks=[...])
    # or: lm_eval --model lmforge --model_args path=runs/sft_lora,max_length=512

The three request types follow lm-eval's own ``HFLM`` conventions, so that the numbers are the
ones its ``hf`` backend gives on the saved model folder (a test checks it on WikiText-2):

- ``loglikelihood(context, continuation)``: lm-eval's ``TemplateLM`` splits the pair into
  tokens (trailing context spaces move to the continuation; an empty context becomes the prefix
  token); the model reads the last ``max_length`` tokens before each continuation token and the
  result is ``(sum of log p, whether every continuation token was the argmax)``;
- ``loglikelihood_rolling(text)``: lmforge's perplexity (``eval.perplexity``), which implements
  the same disjoint windows of ``max_length`` tokens after one prefix token (BOS, else EOS);
- ``generate_until(context, {"until", "max_gen_toks", "do_sample", "temperature"})``: lmforge's
  batched ``generate`` on the raw context (lm-eval has already applied any chat template),
  cut at the first stop string.
"""

from __future__ import annotations

import os
from pathlib import Path

from lmforge.errors import ConfigError, MissingDependency

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError:  # the eval extra is not installed: the class below cannot exist
    raise MissingDependency("lm-eval", "eval", "lmforge's lm-evaluation-harness model") from None

from lmforge.config.groups import GenerationConfig, ModelConfig
from lmforge.eval.likelihood import token_loglikelihoods
from lmforge.eval.local_tasks import TASKS, write_tasks
from lmforge.eval.perplexity import perplexity, prefix_token_id
from lmforge.models.load import load_for_inference, resolve_device
from lmforge.serve.generate import generate
from lmforge.tokenizer.templates import render


@register_model("lmforge")
class LmforgeLM(TemplateLM):
    def __init__(
        self,
        path: str | None = None,
        adapter: str | None = None,
        max_length: int = 2048,
        batch_size: int | str = 8,
        device: str = "auto",
        model=None,
        tokenizer=None,
        **_ignored,
    ):
        """Load ``path`` (and ``adapter``) with lmforge's loader, or wrap a loaded ``model`` and
        ``tokenizer``. ``max_length`` is the context each forward reads at most."""
        super().__init__()
        if model is None:
            if path is None:
                raise ValueError("LmforgeLM needs path= (a run or model folder) or model=")
            model, tokenizer = load_for_inference(
                ModelConfig(path=path, adapter=adapter), resolve_device(device)
            )
        self.model, self.tokenizer = model.eval(), tokenizer
        limit = getattr(model.config, "max_position_embeddings", None)
        self.max_length = min(int(max_length), limit) if limit else int(max_length)
        self.batch_size = 8 if batch_size == "auto" else int(batch_size)

    # ------------------------------------------------------------------ what TemplateLM asks for
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        return prefix_token_id(self.tokenizer)

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "lmforge").replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list:
        return self.tokenizer(string, add_special_tokens=bool(add_special_tokens))["input_ids"]

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt=True) -> str:
        return render(self.tokenizer, chat_history, add_generation_prompt=add_generation_prompt)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list:
        pairs = [(context, continuation) for _, context, continuation in requests]
        return token_loglikelihoods(
            self.model, self.tokenizer, pairs, self.max_length, self.batch_size
        )

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        texts = [req.args[0] for req in requests]
        result = perplexity(
            self.model, self.tokenizer, texts, self.max_length, batch_size=self.batch_size
        )
        return [-nll for nll, _ in result.per_text]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in requests:  # one by one: each request has its own stop strings and length
            context, kwargs = req.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            sample = bool(kwargs.get("do_sample", False))
            cfg = GenerationConfig(
                max_new_tokens=int(kwargs.get("max_gen_toks", 256)),
                temperature=float(kwargs.get("temperature", 1.0)) if sample else 0.0,
                stop=until,
                chat=False,
                batch_size=1,
            )
            (result,) = generate(self.model, self.tokenizer, [context], cfg)
            out.append(result["text"])
        return out


def run_tasks(model, tokenizer, cfg, folder: Path) -> tuple[dict, list[dict], dict]:
    """``(metrics per task, items, counts)`` of ``cfg.tasks`` (``config.groups.HarnessConfig``)
    run by lm-eval on ``model``, fully offline: the shipped tasks are written to
    ``folder/harness_tasks`` (``eval.local_tasks``), ``cfg.include_path`` adds the user's own;
    the Hugging Face hub and datasets are switched to offline mode first."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    shipped = write_tasks(Path(folder) / "harness_tasks")
    for path in cfg.include_path:
        if not Path(path).is_dir():
            raise ConfigError(f"harness.include_path: {path} is not a folder of task YAMLs")
    manager = TaskManager(include_path=[str(shipped), *cfg.include_path])
    unknown = [t for t in cfg.tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(
            f"harness.tasks: unknown task(s) {', '.join(unknown)}; shipped: "
            f"{', '.join(TASKS)} (or add a folder of task YAMLs to harness.include_path)"
        )
    lm = LmforgeLM(
        model=model, tokenizer=tokenizer, max_length=cfg.max_length, batch_size=cfg.batch_size
    )
    out = simple_evaluate(
        model=lm,
        tasks=list(cfg.tasks),
        task_manager=manager,
        num_fewshot=cfg.num_fewshot,
        limit=cfg.limit,
        apply_chat_template=cfg.chat,
        log_samples=True,
        bootstrap_iters=1000,
    )
    metrics, items = {}, []
    for task, values in out["results"].items():
        metrics[task] = {
            k: float(v) for k, v in values.items() if isinstance(v, int | float) and k != "name"
        }
    for task, samples in out.get("samples", {}).items():
        for s in samples:
            doc = s.get("doc", {})
            scores = {k: float(s[k]) for k in ("acc", "acc_norm", "exact_match") if k in s}
            items.append(
                {
                    "eval": f"harness:{task}",
                    "id": str(doc.get("id", s["doc_id"])),
                    "task": task,
                    "target": s.get("target"),
                    "response": _plain(s.get("filtered_resps")),
                    **scores,
                }
            )
    counts = {"tasks": len(metrics), "items": len(items), "tasks_folder": str(shipped)}
    return metrics, items, counts


def _plain(value):
    """lm-eval's responses as JSON: tuples to lists, numpy numbers to floats."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value
