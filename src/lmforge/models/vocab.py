"""Growing a vocabulary: add tokens to a tokenizer and matching rows to a model's embeddings.

New rows start at the mean of the existing rows (input embeddings, and the output head when it
is not tied to them), so that a new token's logit starts near the average and the model's next
token distribution barely moves (Hewitt, "Initializing new word embeddings for pretrained
language models"). Rows appended to the matrix come from ``transformers``'
``resize_token_embeddings(mean_resizing=True)`` (mean plus noise of 1e-9 x the covariance);
ids of new tokens that land on rows the matrix already had (vocabularies padded to a multiple
of 64, say: never trained) are set to the mean here.

    ids = extend_vocabulary(model, tokenizer, ["<|eot_id|>"], special=True)

With LoRA the embeddings are frozen, so new rows would stay at the mean: pass
:func:`trainable_token_indices` to PEFT (``LoraConfig(trainable_token_indices=...)``) to train
just those rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmforge.errors import ConfigError


def add_tokens(tokenizer, tokens: Sequence[str], special: bool = False) -> list[str]:
    """Add the tokens ``tokenizer`` cannot write as one token; return those added, in order.

    A token counts as present when encoding its text gives exactly its own id (a string that is
    in the vocabulary but gets split by the pre-tokenizer is not usable as a marker).
    ``special``: never split, and dropped by ``decode(skip_special_tokens=True)``.
    """
    wanted = [t for t in dict.fromkeys(tokens) if not _is_single_token(tokenizer, t)]
    if wanted:
        tokenizer.add_tokens(wanted, special_tokens=special)
    broken = [t for t in wanted if not _is_single_token(tokenizer, t)]
    if broken:
        raise ConfigError(f"could not add {broken} to the tokenizer as single tokens")
    return wanted


def _is_single_token(tokenizer, token: str) -> bool:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        return False
    return tokenizer(token, add_special_tokens=False)["input_ids"] == [token_id]


def init_new_token_rows(
    model: torch.nn.Module, new_ids: Sequence[int], vocab_size: int, seed: int = 0
) -> None:
    """Make ``model`` have at least ``vocab_size`` embedding rows, with the rows of ``new_ids``
    at the mean of the other rows (input embeddings and an untied output head).

    ``vocab_size`` is ``len(tokenizer)`` after the tokens were added. ``seed`` seeds the tiny
    noise ``transformers`` adds to appended rows (the run stays reproducible).
    """
    emb = model.get_input_embeddings()
    rows = emb.weight.shape[0]
    if vocab_size > rows:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.resize_token_embeddings(vocab_size, mean_resizing=True)
    inside = sorted({int(i) for i in new_ids if int(i) < rows})  # rows that existed already
    if not inside:
        return
    matrices = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not matrices[0]:
        matrices.append(head.weight)
    with torch.no_grad():
        for weight in matrices:
            old = torch.ones(rows, dtype=torch.bool)
            old[inside] = False
            weight[inside] = weight[:rows][old].mean(dim=0).to(weight.dtype)


def extend_vocabulary(
    model: torch.nn.Module, tokenizer, tokens: Sequence[str], special: bool = False, seed: int = 0
) -> list[int]:
    """Add ``tokens`` to ``tokenizer`` and rows for them to ``model``; return the new ids."""
    added = add_tokens(tokenizer, tokens, special=special)
    ids = tokenizer.convert_tokens_to_ids(added)
    init_new_token_rows(model, ids, len(tokenizer), seed=seed)
    return ids


def trainable_token_indices(model: torch.nn.Module, ids: Sequence[int]) -> dict[str, list[int]]:
    """PEFT's ``trainable_token_indices`` for ``ids``: the input embedding, and the output head
    too when it is a separate matrix (a tied head shares the input rows and PEFT ties them)."""
    names = {id(m): n.rsplit(".", 1)[-1] for n, m in model.named_modules()}
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    out = {names[id(emb)]: sorted(int(i) for i in ids)}
    if head is not None and head.weight is not emb.weight and id(head) in names:
        out[names[id(head)]] = sorted(int(i) for i in ids)
    return out
