"""Augmentation blocks: documents in, the same documents out, each followed by new copies.

    - back_translate: {model: models/opus-en-zh, reverse_model: models/opus-zh-en, pivot_lang: zh}
    - back_translate: {function: "my_pkg.mt:translate", pivot_lang: de}
    - generate_augment: {model: runs/sft, prompt: "Paraphrase: {text}\\n", num_samples: 2}
    - augment_eda: {alpha_sr: 0.1, num_aug: 4}          # lmforge.data.augment_eda

What is rewritten (:func:`text_slots`): ``text``, the *user* turns of ``messages`` and the
``prompt`` of a preference pair. Assistant answers, ``chosen`` / ``rejected`` and labels are
copied unchanged: they are the targets the model must learn, and rewriting them would change
what is true (a paraphrased answer to an arithmetic question may no longer be right).

A copy gets the id ``{id}#{method}{k}`` and ``metadata["augmented"] = {"method", "from", ...}``.
Documents that already carry ``metadata["augmented"]`` are passed through without new copies
(augmenting augmentations compounds noise), as are documents outside ``splits`` when it is set
(augmenting a test split would leak into evaluation). A copy identical to its source is dropped
silently: it was never added, so the block's counts stay exact.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pydantic import Field, field_validator, model_validator

from lmforge.config.base import Group
from lmforge.data.blocks import ShardContext, register
from lmforge.data.document import Document
from lmforge.data.model_filters import ModelBlock, batches, import_callable
from lmforge.errors import ConfigError

LANGUAGE_NAMES = {
    "en": "English",
    "zh": "Chinese",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "ja": "Japanese",
    "ko": "Korean",
    "ru": "Russian",
    "it": "Italian",
    "pt": "Portuguese",
}


# ---------------------------------------------------------------------------- shared helpers
class AugmentParams(Group):
    splits: list[str] | None = Field(
        None,
        description="augment only documents whose metadata split is listed, e.g. [train];"
        " null: every document",
    )


def should_augment(doc: Document, splits: list[str] | None) -> bool:
    """False for copies made by an augmentation block and for documents outside ``splits``."""
    if doc.metadata.get("augmented"):
        return False
    return splits is None or doc.metadata.get("split") in splits


Slot = tuple[Any, str]  # (Document or dict, attribute / key) holding one rewritable string


def text_slots(doc: Document) -> list[Slot]:
    """The non-blank strings augmentation may rewrite, in a fixed order (see module docstring)."""
    slots: list[Slot] = []
    if doc.text is not None:
        slots.append((doc, "text"))
    slots.extend(_user_turns(doc.messages))
    prompt = doc.fields.get("prompt")
    if isinstance(prompt, str):
        slots.append((doc.fields, "prompt"))
    elif isinstance(prompt, list):
        slots.extend(_user_turns(prompt))
    return [s for s in slots if read_slot(s).strip()]


def _user_turns(messages: list | None) -> list[Slot]:
    return [
        (m, "content")
        for m in messages or ()
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str)
    ]


def read_slot(slot: Slot) -> str:
    obj, key = slot
    return getattr(obj, key) if isinstance(obj, Document) else obj[key]


def write_slot(slot: Slot, value: str) -> None:
    obj, key = slot
    if isinstance(obj, Document):
        setattr(obj, key, value)
    else:
        obj[key] = value


def slot_texts(doc: Document) -> list[str]:
    return [read_slot(s) for s in text_slots(doc)]


def augmented_copy(doc: Document, texts: list[str], suffix: str, info: dict) -> Document | None:
    """A deep copy of ``doc`` with its slots replaced by ``texts``, id ``{doc.id}#{suffix}`` and
    ``metadata["augmented"] = {"from": doc.id, **info}``; None when nothing changed."""
    new = Document(
        id=f"{doc.id}#{suffix}",
        text=doc.text,
        messages=copy.deepcopy(doc.messages),
        fields=copy.deepcopy(doc.fields),
        metadata=copy.deepcopy(doc.metadata),
    )
    slots = text_slots(new)
    if len(slots) != len(texts):
        raise ValueError(f"{len(texts)} texts for {len(slots)} slots of document {doc.id}")
    before = [read_slot(s) for s in slots]
    if texts == before:
        return None
    for slot, text in zip(slots, texts, strict=True):
        write_slot(slot, text)
    new.metadata["augmented"] = {**info, "from": doc.id}
    return new


def fill(template: str, text: str, lang: str = "") -> str:
    """``template`` with ``{text}`` and ``{lang}`` replaced (plain replacement: text may hold
    braces that ``str.format`` would choke on)."""
    return template.replace("{lang}", LANGUAGE_NAMES.get(lang, lang)).replace("{text}", text)


def _check_template(value: str | None) -> str | None:
    if value is not None and "{text}" not in value:
        raise ValueError(f"prompt {value!r} must contain {{text}} (where the document goes)")
    return value


# ---------------------------------------------------------------------------- translators
Translator = Callable[[list[str], str, str], list[str]]


class Seq2SeqTranslator:
    """A local Hugging Face translation model (Marian, T5, ...) decoded greedily or by beam."""

    def __init__(self, path: str, device: str, max_new_tokens: int, num_beams: int, prompt: str):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from lmforge.models.load import resolve_device, resolve_dir

        folder = resolve_dir(path, "back_translate model")
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForSeq2SeqLM.from_pretrained(str(folder), local_files_only=True)
        self.model = model.to(resolve_device(device)).eval()
        self.max_new_tokens, self.num_beams, self.prompt = max_new_tokens, num_beams, prompt

    def __call__(self, texts: list[str], src: str, tgt: str) -> list[str]:
        import torch

        enc = self.tokenizer(
            [fill(self.prompt, t, tgt) for t in texts],
            padding=True,
            truncation=True,
            max_length=getattr(self.model.config, "max_position_embeddings", None),
            return_tensors="pt",
        )
        device = next(self.model.parameters()).device
        with torch.no_grad():
            out = self.model.generate(
                **{k: v.to(device) for k, v in enc.items()},
                max_new_tokens=self.max_new_tokens,
                num_beams=self.num_beams,
                do_sample=False,
            )
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


class CausalTranslator:
    """An lmforge causal LM asked to translate by a prompt, decoded greedily by lmforge's
    :func:`lmforge.serve.generate.generate`."""

    def __init__(self, path: str, device: str, gen: Any, prompt: str):
        from lmforge.config.groups import ModelConfig
        from lmforge.models.load import load_for_inference, resolve_device

        self.model, self.tokenizer = load_for_inference(
            ModelConfig(path=path), resolve_device(device)
        )
        self.gen, self.prompt = gen, prompt

    def __call__(self, texts: list[str], src: str, tgt: str) -> list[str]:
        from lmforge.serve.generate import generate

        prompts = [fill(self.prompt, t, tgt) for t in texts]
        return [r["text"].strip() for r in generate(self.model, self.tokenizer, prompts, self.gen)]


def is_seq2seq(path: str) -> bool:
    """True when the folder's config declares an encoder-decoder model."""
    from transformers import AutoConfig

    from lmforge.models.load import resolve_dir

    folder = resolve_dir(path, "back_translate model")
    return bool(AutoConfig.from_pretrained(str(folder), local_files_only=True).is_encoder_decoder)


# ---------------------------------------------------------------------------- back_translate
class BackTranslateParams(AugmentParams):
    model: str | None = Field(
        None,
        description="source->pivot model: a Hugging Face seq2seq folder (Marian, T5) or an lmforge"
        " causal model folder / run (prompted with `prompt`)",
    )
    reverse_model: str | None = Field(
        None, description="pivot->source model (default: `model`, for multilingual models)"
    )
    function: str | None = Field(
        None, description="'package.module:callable' (texts: list[str], src, tgt) -> list[str]"
    )
    source_lang: str = Field("en", description="language code of the documents")
    pivot_lang: str = Field("zh", description="language translated through and back")
    prompt: str | None = Field(
        None,
        description="template with {text} and {lang} (the target language's name); default:"
        " '{text}' for seq2seq models, 'Translate to {lang}: {text}\\n' for causal ones",
    )
    chat: bool = Field(False, description="causal models: wrap the prompt in the chat template")
    max_new_tokens: int = Field(128, gt=0, description="tokens generated per translation at most")
    num_beams: int = Field(1, gt=0, description="seq2seq beam width; 1: greedy")
    batch_size: int = Field(16, gt=0, description="documents translated together")
    device: str = Field("auto", description="auto: the first CUDA GPU if visible, else cpu")

    @field_validator("prompt")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        return _check_template(value)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.model is None) == (self.function is None):
            raise ValueError("set exactly one of model (a translation model folder) or function")
        if self.reverse_model and not self.model:
            raise ValueError("reverse_model needs model (the forward direction) as well")
        if self.source_lang == self.pivot_lang:
            raise ValueError(f"pivot_lang must differ from source_lang ({self.source_lang})")
        return self


@register("back_translate")
class BackTranslate(ModelBlock):
    """Add one back-translated copy per document (source -> pivot -> source, Sennrich et al.
    2016): same meaning, new wording. Decoding is deterministic (greedy or beam search).

    Documents whose ``metadata["lang"]`` names another language than ``source_lang`` pass
    through without a copy. ``metadata["augmented"]`` records ``method: back_translation``,
    ``pivot`` and the pivot text of each rewritten piece (``pivot_texts``) for inspection.
    """

    Params = BackTranslateParams

    def setup(self) -> None:
        p = self.params
        if p.function:
            self._forward = self._reverse = import_callable(p.function)
            return
        self._forward = self._load(p.model)
        self._reverse = self._load(p.reverse_model) if p.reverse_model else self._forward

    def _load(self, path: str) -> Translator:
        from lmforge.config.groups import GenerationConfig

        p = self.params
        if is_seq2seq(path):
            return Seq2SeqTranslator(
                path, p.device, p.max_new_tokens, p.num_beams, p.prompt or "{text}"
            )
        gen = GenerationConfig(
            max_new_tokens=p.max_new_tokens, temperature=0, chat=p.chat, batch_size=p.batch_size
        )
        return CausalTranslator(path, p.device, gen, p.prompt or "Translate to {lang}: {text}\n")

    def translate(self, texts: list[str]) -> tuple[list[str], list[str]]:
        """(pivot texts, back-translated texts), one each per input text."""
        if not hasattr(self, "_forward"):
            self.setup()
        p = self.params
        pivot = self._checked(self._forward(texts, p.source_lang, p.pivot_lang), texts)
        back = self._checked(self._reverse(pivot, p.pivot_lang, p.source_lang), texts)
        return pivot, back

    def _checked(self, out: Iterable[str], texts: list[str]) -> list[str]:
        out = [str(t) for t in out]
        if len(out) != len(texts):
            raise ConfigError(f"the translator returned {len(out)} texts for {len(texts)}")
        return out

    def run(self, docs: Iterable[Document], ctx: ShardContext) -> Iterator[Document]:
        p = self.params
        for batch in batches(docs, p.batch_size):
            wanted = [self._wanted(d) for d in batch]
            texts = [t for d, w in zip(batch, wanted, strict=True) if w for t in slot_texts(d)]
            pivot, back = self.translate(texts) if texts else ([], [])
            start = 0
            for doc, w in zip(batch, wanted, strict=True):
                yield doc
                if not w:
                    continue
                n = len(text_slots(doc))
                new, piv = back[start : start + n], pivot[start : start + n]
                start += n
                info = {"method": "back_translation", "pivot": p.pivot_lang, "pivot_texts": piv}
                copy_ = augmented_copy(doc, new, "bt0", info) if all(new) else None
                if copy_ is not None:
                    yield copy_

    def _wanted(self, doc: Document) -> bool:
        lang = doc.metadata.get("lang")
        return (
            should_augment(doc, self.params.splits)
            and lang in (None, self.params.source_lang)
            and bool(text_slots(doc))
        )


# ---------------------------------------------------------------------------- generate_augment
class GenerateAugmentParams(AugmentParams):
    model: str = Field(..., description="lmforge causal model folder or run directory")
    tokenizer: str | None = Field(None, description="tokenizer folder or run (default: model's)")
    prompt: str = Field("Paraphrase: {text}\n", description="template; {text} is the document")
    chat: bool = Field(False, description="wrap the prompt in the tokenizer's chat template")
    temperature: float = Field(0.8, ge=0, description="sampling temperature; 0: greedy")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling mass")
    max_new_tokens: int = Field(64, gt=0, description="tokens generated per sample at most")
    num_samples: int = Field(1, gt=0, description="augmented copies per document")
    stop: list[str] = Field(
        default_factory=list, description="strings that end a sample, e.g. ['\\n'] for one line"
    )
    device: str = Field("auto", description="auto: the first CUDA GPU if visible, else cpu")

    @field_validator("prompt")
    @classmethod
    def _template(cls, value: str) -> str:
        return _check_template(value)


@register("generate_augment")
class GenerateAugment(ModelBlock):
    """Add ``num_samples`` model-written rewrites of each document (paraphrases, by default).

    Every document is generated in its own call to lmforge's
    :func:`lmforge.serve.generate.generate`, seeded from ``ctx.rng(doc)``: its samples do not
    depend on which other documents share a shard, so any executor gives the same output. A
    sample that comes back blank for any piece of the document is not added.
    """

    Params = GenerateAugmentParams

    def setup(self) -> None:
        from lmforge.config.groups import ModelConfig
        from lmforge.models.load import load_for_inference, resolve_device

        p = self.params
        cfg = ModelConfig(path=p.model, tokenizer=p.tokenizer)
        self._model, self._tokenizer = load_for_inference(cfg, resolve_device(p.device))

    def samples(self, texts: list[str], seed: int) -> list[list[str]]:
        """``num_samples`` lists of rewrites, each holding one rewrite per text."""
        from lmforge.config.groups import GenerationConfig
        from lmforge.serve.generate import generate

        if not hasattr(self, "_model"):
            self.setup()
        p = self.params
        k = p.num_samples
        gen = GenerationConfig(
            max_new_tokens=p.max_new_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
            stop=p.stop,
            chat=p.chat,
            batch_size=len(texts) * k,
            seed=seed,
        )
        prompts = [fill(p.prompt, t) for t in texts for _ in range(k)]
        out = [r["text"].strip() for r in generate(self._model, self._tokenizer, prompts, gen)]
        return [out[j::k] for j in range(k)]  # prompts are text-major: sample j of each text

    def run(self, docs: Iterable[Document], ctx: ShardContext) -> Iterator[Document]:
        p = self.params
        for doc in docs:
            yield doc
            if not should_augment(doc, p.splits) or not text_slots(doc):
                continue
            seed = ctx.rng(doc, "generate").getrandbits(31)
            for j, texts in enumerate(self.samples(slot_texts(doc), seed)):
                if not all(texts):
                    continue
                info = {"method": "generate", "sample": j, "seed": seed}
                new = augmented_copy(doc, texts, f"gen{j}", info)
                if new is not None:
                    yield new
