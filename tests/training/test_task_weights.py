"""Per-task loss weights (``data.task_weights``): each target's loss times its task's weight,
normalised by the step's summed weights.

Steps run through the real loop with plain SGD at lr 1, so a step's weight change is the
gradient itself (as in ``test_grad_accum``).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import load_config
from lmforge.config.groups import DataConfig, ModelConfig
from lmforge.config.recipes import TrainRecipe
from lmforge.data.readers import Record, Rejects
from lmforge.errors import ConfigError
from lmforge.models.load import build_model
from lmforge.training.cache import ShardWriter, TokenizedUnits
from lmforge.training.collate import IGNORE, Piece, unit_targets, varlen_batch
from lmforge.training.data import cache_key_parts, encode_sft, load_stage_data
from lmforge.training.objectives.causal import CausalLMLoss, linear_cross_entropy

ROWS = [
    ("sentiment", "Is this review good: the soup was lovely", "positive"),
    ("numbers", "Write 42 in words.", "forty-two"),
    ("sentiment", "Is this review good: a dull and slow show", "negative"),
    ("numbers", "Write 7 in words please, thank you.", "seven"),
]


def _records(rows=ROWS) -> list[Record]:
    return [
        Record("mem", i + 1, {"instruction": q, "output": a, "task": t})
        for i, (t, q, a) in enumerate(rows)
    ]


def _units(tokenizer, rows=ROWS, **weights) -> list:
    cfg = DataConfig(max_length=64, task_weights=weights)
    return list(encode_sft(_records(rows), cfg, tokenizer, Rejects()).units)


@pytest.fixture(scope="module")
def base_model(tokenizer):
    return build_model(ModelConfig(preset="tiny-llama", tokenizer="unused"), tokenizer, seed=0)


def _step(base_model, units, tokenizer, tmp_path, sgd_loop, batch_size=None, grad_accum=1):
    """(weight change of one loop step over all ``units``, logged loss)."""
    run = sgd_loop(
        tmp_path,
        tokenizer.pad_token_id,
        max_steps=1,
        lr=1.0,
        batch_size=batch_size or len(units),
        grad_accum=grad_accum,
    )
    model = copy.deepcopy(base_model)
    (row,) = run(model, units)
    before = dict(base_model.named_parameters())
    delta = {n: (before[n] - p).detach() for n, p in model.named_parameters()}
    return delta, row["loss"]


def _assert_same(a: dict, b: dict, exact: bool = False) -> None:
    assert torch.sqrt(sum(d.square().sum() for d in a.values())) > 0.01  # the step moved
    for name in a:
        if exact:
            assert torch.equal(a[name], b[name]), name
        else:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_pieces_carry_their_task_weight(tokenizer) -> None:
    units = _units(tokenizer, sentiment=2.0)
    assert [u[0].weight for u in units] == [2.0, 1.0, 2.0, 1.0]
    batch = varlen_batch(units)
    lengths = [len(u[0]) for u in units]
    expected = torch.cat(
        [torch.full((n,), float(w)) for n, w in zip(lengths, [2, 1, 2, 1], strict=True)]
    )
    assert torch.equal(batch["weights"][0], expected)
    assert "weights" not in varlen_batch(_units(tokenizer))  # unweighted: the batch as before


def test_weights_of_one_are_no_weights_exactly(base_model, tokenizer, tmp_path, sgd_loop):
    plain, plain_loss = _step(base_model, _units(tokenizer), tokenizer, tmp_path / "a", sgd_loop)
    ones = _units(tokenizer, sentiment=1.0, numbers=1.0)
    same, same_loss = _step(base_model, ones, tokenizer, tmp_path / "b", sgd_loop)
    assert same_loss == plain_loss
    _assert_same(plain, same, exact=True)
    # an explicit weights tensor of ones goes through the weighted code and changes nothing
    model = copy.deepcopy(base_model)
    batch = varlen_batch(_units(tokenizer))
    args = (batch["input_ids"], batch["position_ids"], batch["targets"])
    loss, n = CausalLMLoss(model)(*args, **batch["attention"])
    weighted, wn = CausalLMLoss(model)(
        *args, weights=torch.ones_like(batch["targets"], dtype=torch.float), **batch["attention"]
    )
    assert torch.equal(loss, weighted) and wn == n


def test_a_task_of_weight_zero_is_not_learned(base_model, tokenizer, tmp_path, sgd_loop):
    muted = _units(tokenizer, numbers=0.0)
    only = _units(tokenizer, rows=[r for r in ROWS if r[0] == "sentiment"])
    a, a_loss = _step(base_model, muted, tokenizer, tmp_path / "muted", sgd_loop)
    b, b_loss = _step(base_model, only, tokenizer, tmp_path / "only", sgd_loop)
    assert a_loss == pytest.approx(b_loss, rel=1e-6)
    _assert_same(a, b)


def test_weight_two_equals_duplicated_examples(base_model, tokenizer, tmp_path, sgd_loop):
    doubled = _units(tokenizer, numbers=2.0)
    twice = _units(tokenizer, rows=ROWS + [r for r in ROWS if r[0] == "numbers"])
    a, a_loss = _step(base_model, doubled, tokenizer, tmp_path / "w2", sgd_loop)
    b, b_loss = _step(base_model, twice, tokenizer, tmp_path / "dup", sgd_loop)
    assert a_loss == pytest.approx(b_loss, rel=1e-6)
    _assert_same(a, b)
    # and the normaliser is the step's summed weights, however the step is split
    c, c_loss = _step(base_model, doubled, tokenizer, tmp_path / "acc", sgd_loop, 1, 4)
    assert c_loss == pytest.approx(a_loss, rel=1e-6)
    _assert_same(a, c)
    # sensitivity: the unweighted step differs
    plain, _ = _step(base_model, _units(tokenizer), tokenizer, tmp_path / "plain", sgd_loop)
    diff = torch.sqrt(sum((plain[n] - a[n]).square().sum() for n in a))
    assert diff > 0.05 * torch.sqrt(sum(d.square().sum() for d in a.values()))


@pytest.mark.parametrize("bias", [False, True])
def test_fused_weighted_cross_entropy_matches_reference(bias) -> None:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=gen, requires_grad=True)
    weight = torch.randn(50, 16, generator=gen, requires_grad=True)
    b = torch.randn(50, generator=gen, requires_grad=True) if bias else None
    targets = torch.randint(0, 50, (37,), generator=gen)
    w = torch.rand(37, generator=gen) * 3
    w[:5] = 0.0
    ref = (F.cross_entropy(F.linear(hidden, weight, b), targets, reduction="none") * w).sum()
    grads = torch.autograd.grad(ref, [hidden, weight, *([b] if bias else [])])
    fused = linear_cross_entropy(hidden, weight, b, targets, 8, w)
    got = torch.autograd.grad(fused, [hidden, weight, *([b] if bias else [])])
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(got, grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_causal_lm_loss_fused_equals_unfused_with_weights(tokenizer) -> None:
    model = build_model(ModelConfig(preset="tiny-llama", tokenizer="unused"), tokenizer, seed=0)
    batch = varlen_batch(_units(tokenizer, sentiment=2.5, numbers=0.5))
    args = (batch["input_ids"], batch["position_ids"], batch["targets"])
    results = []
    for fused in (True, False):
        objective = CausalLMLoss(copy.deepcopy(model))
        assert objective.fused
        objective.fused = fused
        loss, count = objective(*args, weights=batch["weights"], **batch["attention"])
        loss.backward()
        results.append((loss, count, [p.grad for p in objective.parameters()]))
    (a, na, ga), (b, nb, gb) = results
    keep = batch["targets"] != IGNORE
    assert na == nb == pytest.approx(float(batch["weights"][keep].sum()))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_weights_survive_the_cache_and_key_only_when_set(tokenizer, tmp_path) -> None:
    units = _units(tokenizer, sentiment=0.3)
    writer = ShardWriter(tmp_path, "train", shard_tokens=40)  # several shards
    for unit in units:
        writer.add(unit[0], True)
    writer.close()
    assert len(writer.shards) > 1
    read = TokenizedUnits(tmp_path, writer.shards)
    assert [[(p.ids, p.targets, p.weight) for p in u] for u in read] == [
        [(p.ids, p.targets, p.weight) for p in u] for u in units
    ]
    plain = ShardWriter(tmp_path / "plain", "train", 40)
    (tmp_path / "plain").mkdir()
    for unit in _units(tokenizer):
        plain.add(unit[0], True)
    plain.close()
    assert not any(s.get("weighted") for s in plain.shards)
    assert not list((tmp_path / "plain").glob("*.weights.npy"))
    # the cache key: unchanged without weights (existing entries stay valid), changed with them
    assert "task_weights" not in cache_key_parts("sft", DataConfig(), tokenizer, 0)
    assert cache_key_parts("sft", DataConfig(task_weights={"a": 2}), tokenizer, 0) != (
        cache_key_parts("sft", DataConfig(), tokenizer, 0)
    )


def test_cached_units_equal_uncached_and_validation_is_unweighted(tokenizer, tmp_path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(
        "".join(json.dumps({"instruction": q, "output": a, "task": t}) + "\n" for t, q, a in ROWS)
    )
    out = {}
    for cache in (True, False):
        cfg = DataConfig(
            train=[str(path)],
            validation=[str(path)],
            max_length=64,
            task_weights={"numbers": 3.0},
            cache=cache,
            cache_dir=str(tmp_path / "cache"),
        )
        train, val = load_stage_data("sft", cfg, tokenizer, Rejects(), 0)
        out[cache] = [[(p.ids, p.targets, p.weight) for p in u] for u in train.units]
        assert {p.weight for u in val.units for p in u} == {1.0}
    assert out[True] == out[False]
    assert sorted(w for u in out[True] for _, _, w in u) == [1.0, 1.0, 3.0, 3.0]


def test_weights_are_checked_in_the_config() -> None:
    base = ["model.preset=tiny-llama", "model.tokenizer=t", "data.train=[x.jsonl]"]
    with pytest.raises(ConfigError, match="finite and >= 0"):
        load_config(TrainRecipe, None, [*base, "data.task_weights={a: -1}"])
    with pytest.raises(ConfigError, match="task_weights weighs sft"):
        load_config(TrainRecipe, None, [*base, "stage=pt", "data.task_weights={a: 2}"])
    cfg = load_config(TrainRecipe, None, [*base, "data.task_weights={a: 2, untagged: 0.5}"])
    assert cfg.data.task_weights == {"a": 2.0, "untagged": 0.5}


def test_untagged_rows_take_the_untagged_weight(tokenizer) -> None:
    rows = [Record("mem", 1, {"instruction": "Say hi.", "output": "hi"})]
    cfg = DataConfig(max_length=64, task_weights={"untagged": 0.5})
    (unit,) = encode_sft(rows, cfg, tokenizer, Rejects()).units
    assert unit[0].weight == 0.5
    assert isinstance(Piece([1], [2]).weight, float)
    assert unit_targets(unit) > 0
