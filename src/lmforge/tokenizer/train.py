"""Train a byte-level BPE, Unigram or WordPiece tokenizer with the ``tokenizers`` library.

The result is a ``PreTrainedTokenizerFast`` saved in the Hugging Face layout, so
``AutoTokenizer.from_pretrained(folder)`` loads it unchanged. Chinese works out of the box:
byte-level BPE covers every byte; Unigram and WordPiece split on whitespace and punctuation and
(for WordPiece) isolate CJK characters the way BERT's tokenizer does, so unspaced Chinese is
not one giant word.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from lmforge.config.groups import TokenizerConfig
from lmforge.tokenizer.templates import resolve_template


def _pre_tokenizer(cfg: TokenizerConfig):
    digits = [pre_tokenizers.Digits(individual_digits=True)] if cfg.split_digits else []
    if cfg.type == "byte_bpe":
        steps = [*digits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    elif cfg.type == "unigram":  # sentencepiece-style: "▁" marks spaces; Han runs stay whole
        steps = [pre_tokenizers.Metaspace(prepend_scheme="first"), *digits]
    else:
        steps = [pre_tokenizers.BertPreTokenizer(), *digits]
    return steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)


def _build(cfg: TokenizerConfig) -> tuple[Tokenizer, object]:
    masks = [cfg.mask_token] if cfg.mask_token else []
    specials = list(dict.fromkeys([*cfg.special_tokens, *masks]))
    if cfg.type == "byte_bpe":
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif cfg.type == "unigram":
        specials = list(dict.fromkeys([*specials, cfg.unk_token]))
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.decoder = decoders.Metaspace(prepend_scheme="first")
        trainer = trainers.UnigramTrainer(
            vocab_size=cfg.vocab_size,
            special_tokens=specials,
            unk_token=cfg.unk_token,
            show_progress=False,
        )
    else:  # BERT-style: CJK characters become words of their own, like BERT's tokenizer
        specials = list(dict.fromkeys([*specials, cfg.unk_token]))
        tok = Tokenizer(models.WordPiece(unk_token=cfg.unk_token))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=True,
            strip_accents=cfg.lowercase,
            lowercase=cfg.lowercase,
        )
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            special_tokens=specials,
            show_progress=False,
        )
    tok.pre_tokenizer = _pre_tokenizer(cfg)
    return tok, trainer


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig):
    """Train on ``texts``; a ``PreTrainedTokenizerFast`` with eos, pad and the chat template."""
    from transformers import PreTrainedTokenizerFast

    tok, trainer = _build(cfg)

    def batches() -> Iterator[list[str]]:
        batch: list[str] = []
        for text in texts:
            batch.append(text)
            if len(batch) == 1000:
                yield batch
                batch = []
        if batch:
            yield batch

    tok.train_from_iterator(batches(), trainer=trainer)
    extra = {"unk_token": cfg.unk_token} if cfg.type != "byte_bpe" else {}
    if cfg.mask_token:
        extra["mask_token"] = cfg.mask_token
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=cfg.eos_token,
        pad_token=cfg.pad_token,
        additional_special_tokens=[
            t for t in cfg.special_tokens if t not in (cfg.eos_token, cfg.pad_token)
        ],
        clean_up_tokenization_spaces=False,
        **extra,
    )
    fast.chat_template = resolve_template(cfg.chat_template)
    return fast
