"""Domain vocabulary extension: terms become single tokens, their rows are the mean of their old
sub-token rows (input and untied output head), nothing changes for text without them, and the
extended model continues pretraining with lmforge train and reloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.config.groups import ModelConfig
from lmforge.config.vocab import VocabExtendRecipe
from lmforge.data.synthetic_finance import FINANCE_TERMS, write_finance_corpus
from lmforge.errors import ConfigError
from lmforge.models.load import build_model, load_for_inference, load_tokenizer
from lmforge.models.vocab import add_terms

IN_CONTEXT = "The EBITDA margin rose (EBITDA, not EBIT). 公司的市盈率很高，资产负债表稳健。"
PLAIN = "The number 42 is written forty-two. 数字32写作三十二。 the cat"
TERMS = ["EBITDA", "市盈率", "资产负债表", "the"]


def _model(tokenizer, tied: bool):
    overrides = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    overrides["tie_word_embeddings"] = tied
    cfg = ModelConfig(preset="tiny-llama", tokenizer="unused", overrides=overrides)
    return build_model(cfg, tokenizer, seed=0).eval()


def _logits(model, tokenizer, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return ids, model(ids).logits


def test_terms_get_one_token_and_mean_rows_and_other_text_is_unchanged(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    model = _model(tokenizer, tied=False)
    old_ids, old_logits = _logits(model, tokenizer, PLAIN)
    old_embed = model.get_input_embeddings().weight.detach().clone()
    old_head = model.get_output_embeddings().weight.detach().clone()
    old_size = len(tokenizer)

    report = add_terms(tokenizer, model, [*TERMS, "EBITDA", "  ", "# a comment"])

    added = {t.token: t for t in report.added}
    assert sorted(added) == sorted([" EBITDA", "EBITDA", "市盈率", "资产负债表"])
    assert all(len(t.before) > 1 for t in added.values())  # they were split before
    # "the" alone splits (t + he), but " the" is one token: adding "the" would make " the"
    # a space token + "the", so it is left out
    (the,) = [t for t in report.tokens if t.term == "the" and t.token == "the"]
    assert the.status == "already one token after a space"
    assert report.new_size == old_size + 4 == len(tokenizer)
    assert report.embedding_rows == (old_size, old_size + 4) and not report.tied_head

    pieces = tokenizer.convert_ids_to_tokens(tokenizer(IN_CONTEXT)["input_ids"])
    assert pieces.count(" EBITDA") == 1 and pieces.count("EBITDA") == 1  # after "(" : plain
    assert "市盈率" in pieces and "资产负债表" in pieces
    assert tokenizer.decode(tokenizer(IN_CONTEXT)["input_ids"]) == IN_CONTEXT

    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    for t in added.values():
        torch.testing.assert_close(embed[t.id], old_embed[t.before_ids].mean(0), rtol=0, atol=0)
        torch.testing.assert_close(head[t.id], old_head[t.before_ids].mean(0), rtol=0, atol=0)
    assert torch.equal(embed[:old_size], old_embed) and torch.equal(head[:old_size], old_head)

    new_ids, new_logits = _logits(model, tokenizer, PLAIN)
    assert torch.equal(new_ids, old_ids)  # text without the terms: the same tokens ...
    assert new_logits.shape[-1] == old_size + 4
    assert torch.equal(new_logits[..., :old_size], old_logits)  # ... and the same outputs


def test_random_init_is_seeded_and_a_tied_head_follows_the_embedding(tokenizer_dir):
    rows = {}
    for init, seed in [("random", 0), ("random", 0), ("random", 1), ("mean", 0)]:
        tokenizer = load_tokenizer(tokenizer_dir)
        model = _model(tokenizer, tied=True)
        report = add_terms(tokenizer, model, ["市盈率"], init=init, seed=seed)
        (t,) = report.added
        assert report.tied_head
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
        rows.setdefault((init, seed), []).append(model.get_input_embeddings().weight[t.id].clone())
    assert torch.equal(*rows[("random", 0)])
    assert not torch.equal(rows[("random", 0)][0], rows[("random", 1)][0])
    assert not torch.equal(rows[("random", 0)][0], rows[("mean", 0)][0])


def test_a_padded_embedding_uses_its_spare_rows(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    model = _model(tokenizer, tied=True)
    model.resize_token_embeddings(len(tokenizer) + 8)  # as checkpoints padded to a multiple
    before = model.get_input_embeddings().weight.detach().clone()
    report = add_terms(tokenizer, model, ["资产负债表"])
    (t,) = report.added
    assert report.embedding_rows == (len(tokenizer) + 7, len(tokenizer) + 7)  # no resize
    row = model.get_input_embeddings().weight[t.id]
    torch.testing.assert_close(row, before[t.before_ids].mean(0), rtol=0, atol=0)


def test_extend_then_continue_pretraining_then_reload(tiny_model_dir, tmp_path, capsys):
    ext = tmp_path / "ext"
    terms = tmp_path / "terms.txt"
    terms.write_text("# finance terms\n" + "\n".join(FINANCE_TERMS) + "\n", encoding="utf-8")
    code = main(
        ["tokenizer", "extend", f"model.path={tiny_model_dir}", f"terms_file={terms}"]
        + [f"output_dir={ext}"]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((ext / "report.json").read_text(encoding="utf-8"))
    assert report["added"] >= len(FINANCE_TERMS)  # + spaced variants of the English ones
    assert {t["term"] for t in report["tokens"]} == set(FINANCE_TERMS)
    manifest = json.loads((ext / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["stage"] == "vocab"

    data = write_finance_corpus(tmp_path / "finance.jsonl", 80, seed=1)
    cont = tmp_path / "cont"
    code = main(
        [
            "train",
            "stage=pt",
            f"model.path={ext}",
            f"data.train=[{data}]",
            "data.max_length=64",
            "train.batch_size=8",
            "train.max_steps=12",
            "train.lr=3e-3",
            "train.log_every=4",
            "track.progress=false",
            "track.tensorboard=off",
            f"output_dir={cont}",
        ]
    )
    assert code == 0, capsys.readouterr().err
    losses = [json.loads(x)["loss"] for x in (cont / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] - 0.3, losses

    model, tokenizer = load_for_inference(ModelConfig(path=str(cont)))
    assert len(tokenizer) == report["new_size"]
    for text, token in [("The EBITDA rose", " EBITDA"), ("公司的市盈率很高", "市盈率")]:
        pieces = tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
        assert token in pieces, pieces
    plain = AutoModelForCausalLM.from_pretrained(str(cont / "model")).eval()
    ids = tokenizer("EBITDA 与 市盈率", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, model(ids).logits, atol=1e-6, rtol=0)
    # the trained model knows where its vocabulary came from
    inputs = json.loads((cont / "manifest.json").read_text())["inputs"]
    (base,) = [i for i in inputs if i["role"] == "base_model"]
    assert Path(base["manifest"]) == ext / "manifest.json"


def test_config_errors():
    with pytest.raises(ConfigError, match="extend the tokenizer alone"):
        load_config(VocabExtendRecipe, None, ["model.preset=tiny-llama", "terms=[EBITDA]"])
    with pytest.raises(ConfigError, match="give the terms to add"):
        load_config(VocabExtendRecipe, None, ["model.path=somewhere"])
