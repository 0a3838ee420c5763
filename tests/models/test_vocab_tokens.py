"""Growing a vocabulary: new tokens are single tokens, new embedding rows start at the mean of
the old ones (input and untied output), old rows are untouched, and under LoRA only the new
rows of the embeddings train."""

from __future__ import annotations

import pytest
import torch

from lmforge.config.groups import ModelConfig
from lmforge.config.training import AdapterConfig
from lmforge.models.adapters import Task, add_lora
from lmforge.models.load import build_model, load_tokenizer
from lmforge.models.vocab import (
    add_tokens,
    extend_vocabulary,
    init_new_token_rows,
    trainable_token_indices,
)

NEW = ["<|eot_id|>", "<|tool|>"]


def _model(tokenizer, tied: bool = True):
    overrides = {} if tied else {"tie_word_embeddings": False}
    cfg = ModelConfig(preset="tiny-llama", tokenizer="unused", overrides=overrides)
    return build_model(cfg, tokenizer, seed=0)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_new_rows_start_at_the_mean(tokenizer_dir, tied) -> None:
    tok = load_tokenizer(tokenizer_dir)
    model = _model(tok, tied)
    rows = len(tok)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    ids = extend_vocabulary(model, tok, NEW, special=True)
    assert ids == [rows, rows + 1] and len(tok) == rows + 2
    assert [tok(t, add_special_tokens=False)["input_ids"] for t in NEW] == [[i] for i in ids]
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] == head.shape[0] == rows + 2 == model.config.vocab_size
    assert (head is emb) == tied
    assert torch.equal(emb[:rows], old_in) and torch.equal(head[:rows], old_out)
    for weight, old in ((emb, old_in), (head, old_out)):
        for i in ids:
            torch.testing.assert_close(weight[i], old.mean(0), atol=1e-4, rtol=0)
    assert add_tokens(tok, NEW) == []  # already there: nothing added


def test_ids_inside_a_padded_matrix_are_set_to_the_mean(tokenizer_dir) -> None:
    tok = load_tokenizer(tokenizer_dir)
    model = _model(tok, tied=False)
    model.resize_token_embeddings(len(tok) + 8, mean_resizing=False)  # a padded vocabulary
    rows = len(tok) + 8
    before = model.get_input_embeddings().weight.detach().clone()
    ids = tok.convert_tokens_to_ids(add_tokens(tok, NEW, special=True))
    init_new_token_rows(model, ids, len(tok))
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == rows  # no growth: the ids fit
    keep = [i for i in range(rows) if i not in ids]
    assert torch.equal(emb[keep], before[keep])
    torch.testing.assert_close(emb[ids[0]], before[keep].mean(0))


def test_trainable_token_indices_name_the_matrices(tokenizer) -> None:
    assert trainable_token_indices(_model(tokenizer), [5, 3]) == {"embed_tokens": [3, 5]}
    untied = trainable_token_indices(_model(tokenizer, tied=False), [3])
    assert untied == {"embed_tokens": [3], "lm_head": [3]}


def test_lora_trains_only_the_new_rows_of_the_embeddings(tokenizer_dir) -> None:
    tok = load_tokenizer(tokenizer_dir)
    model = _model(tok, tied=False)
    ids = extend_vocabulary(model, tok, NEW, special=True)
    old_emb = model.get_input_embeddings().weight.detach().clone()
    old_head = model.get_output_embeddings().weight.detach().clone()
    peft = add_lora(model, AdapterConfig(type="lora", rank=4), Task(new_token_ids=tuple(ids)))
    optimizer = torch.optim.SGD([p for p in peft.parameters() if p.requires_grad], lr=1.0)
    inputs = torch.tensor([[5, 6, ids[0], 7, ids[1]]])
    loss = peft(input_ids=inputs, labels=inputs).loss
    loss.backward()
    optimizer.step()
    merged = peft.merge_and_unload()
    emb, head = merged.get_input_embeddings().weight, merged.get_output_embeddings().weight
    others = [i for i in range(len(tok)) if i not in ids]
    assert torch.equal(emb[others], old_emb[others]) and torch.equal(head[others], old_head[others])
    assert not torch.equal(emb[ids], old_emb[ids]) and not torch.equal(head[ids], old_head[ids])
