"""``lmforge evaluate``'s task kinds end to end on a tiny model: multiple choice by
log-likelihood gives lm-evaluation-harness's numbers item by item on the shipped tasks (both run
offline in one evaluation), generation is scored with exact match, BLEU, chrF and ROUGE, every
report carries its efficiency figures, and bad rows and settings give the expected errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.eval import text_metrics
from lmforge.eval.local_tasks import TASKS, task_rows, write_tasks

pytest.importorskip("lm_eval")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def _write(path: Path, rows: list) -> Path:
    path.write_text(
        "".join(
            (r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows
        ),
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory):
    """A tiny Llama whose random weights are far from uniform: its choices differ by item."""
    from lmforge.config.groups import ModelConfig
    from lmforge.models.load import build_model, save_pretrained

    cfg = ModelConfig(preset="tiny-llama", tokenizer="unused", overrides={"initializer_range": 0.3})
    model = build_model(cfg, tokenizer, seed=5)
    return save_pretrained(model, tokenizer, tmp_path_factory.mktemp("kinds") / "model")


def test_shipped_tasks_are_the_generator_rows_in_both_languages(tmp_path) -> None:
    folder = write_tasks(tmp_path / "tasks")
    assert {p.stem for p in folder.glob("*.yaml")} == set(TASKS)
    rows = _jsonl(folder / "lmforge_parity_zh.jsonl")
    assert rows == task_rows("lmforge_parity_zh") and len(rows) == 60
    assert rows[0]["choices"] == ["奇数", "偶数"] and "奇数还是偶数" in rows[0]["question"]
    assert {r["answer"] for r in rows} == {0, 1}


@pytest.mark.parametrize("chat", [False, True], ids=["raw", "chat-template"])
def test_multiple_choice_equals_lm_eval_on_the_same_items(model_dir, tmp_path, chat) -> None:
    shipped = write_tasks(tmp_path / "data")
    names = ["lmforge_parity_en", "lmforge_sentiment_zh"]
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            f"model.path={model_dir}",
            f"multiple_choice.files=[{','.join(str(shipped / f'{n}.jsonl') for n in names)}]",
            f"harness.tasks=[{','.join(names)}]",
            f"multiple_choice.chat={str(chat).lower()}",
            f"harness.chat={str(chat).lower()}",
            f"output_dir={out}",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    items = _jsonl(out / "items.jsonl")
    ours = {i["id"]: i for i in items if i["eval"] == "multiple_choice"}
    theirs = {(i["task"], i["id"]): i for i in items if i["eval"].startswith("harness:")}
    assert len(ours) == 120 and len(theirs) == 120
    for name in names:
        mine = [ours[r["id"]] for r in task_rows(name)]
        other = [theirs[(name, r["id"])] for r in task_rows(name)]
        assert [float(m["correct"]) for m in mine] == [o["acc"] for o in other], name
        assert [float(m["correct_norm"]) for m in mine] == [o["acc_norm"] for o in other], name
        lls = [[ll for ll, _ in o["response"]] for o in other]
        for m, theirs_ll in zip(mine, lls, strict=True):
            assert m["loglikelihoods"] == pytest.approx(theirs_ll, rel=1e-5, abs=1e-5)
        acc = sum(m["correct"] for m in mine) / len(mine)
        assert metrics["harness"][name]["acc,none"] == pytest.approx(acc)
    # a far-from-uniform random model still prefers some choices over others, item by item
    assert 0 < metrics["multiple_choice"]["acc"] < 1
    if chat:  # the prompt went through the chat template (ChatML)
        assert all("<|im_start|>assistant" in m["prompt"] for m in ours.values())
    # the task folder lm-eval read is kept with the run, for lm_eval --include_path
    assert (out / "harness_tasks" / "lmforge_parity_en.yaml").is_file()
    eff = metrics["efficiency"]
    assert eff["params_total"] > 0 and eff["peak_rss_mib"] > 0
    assert eff["multiple_choice"]["ms_per_item"] > 0 and eff["harness"]["seconds"] > 0


def test_generation_is_scored_with_text_metrics(model_dir, tmp_path) -> None:
    rows = [
        {"prompt": "数字3是奇数还是偶数？", "reference": "奇数"},
        {"prompt": "Spell 12 in words.", "reference": "twelve"},
        {"prompt": "这家餐厅怎么样？", "reference": "这家餐厅的菜很好吃"},
    ]
    out = tmp_path / "gen"
    code = main(
        [
            "evaluate",
            f"model.path={model_dir}",
            f"exact_match.files=[{_write(tmp_path / 'gen.jsonl', rows)}]",
            "exact_match.metrics=[exact_match,bleu,chrf,rouge]",
            "generation.max_new_tokens=8",
            f"output_dir={out}",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())["exact_match"]
    items = _jsonl(out / "items.jsonl")
    predictions, references = [i["prediction"] for i in items], [i["reference"] for i in items]
    assert metrics["bleu_tokenize"] == "zh"  # Chinese references
    assert metrics["bleu"] == pytest.approx(text_metrics.bleu(predictions, references)["bleu"])
    rouge = text_metrics.rouge(predictions, references)
    assert metrics["rougeL"] == pytest.approx(rouge["rougeL"])
    assert [i["rouge1"] for i in items] == pytest.approx([r["rouge1"] for r in rouge["per_item"]])
    assert all({"bleu", "chrf", "rouge2", "new_tokens"} <= i.keys() for i in items)
    eff = json.loads((out / "metrics.json").read_text())["efficiency"]
    assert eff["exact_match"]["ms_per_token"] > 0
    assert eff["params_trainable_source"] == "all parameters"  # a folder no run wrote


def test_bad_rows_and_settings(model_dir, tmp_path, capsys) -> None:
    rows = [
        {"question": "Is 4 odd or even?", "choices": ["odd", "even"], "answer": "even"},
        {"question": "Is 5 odd or even?", "choices": ["odd", "even"], "answer": "neither"},
        {"question": "Is 6 odd?", "choices": ["yes"], "answer": 0},
        {"choices": ["a", "b"], "answer": 0},
        "{broken",
    ]
    out = tmp_path / "mc"
    code = main(
        [
            "evaluate",
            f"model.path={model_dir}",
            f"multiple_choice.files=[{_write(tmp_path / 'mc.jsonl', rows)}]",
            f"output_dir={out}",
        ]
    )
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["multiple_choice"] == {
        "read": 5, "used": 1, "rejected": 4, "skipped": 0
    }  # fmt: skip
    reasons = " | ".join(r["reason"] for r in _jsonl(out / "rejects.jsonl"))
    assert "not one of the choices" in reasons and "at least two" in reasons
    assert "no 'question'" in reasons
    capsys.readouterr()
    code = main(["evaluate", f"model.path={model_dir}", "harness.tasks=[no_such_task]",
                 f"output_dir={tmp_path / 'bad'}"])  # fmt: skip
    assert code != 0
    err = capsys.readouterr().err
    assert "unknown task(s) no_such_task" in err and "lmforge_parity_en" in err
    assert "Traceback" not in err
    code = main(["evaluate", f"model.path={model_dir}", f"output_dir={tmp_path / 'none'}"])
    assert code != 0 and "nothing to evaluate" in capsys.readouterr().err


def test_robustness_and_error_analysis_in_one_evaluation(model_dir, tmp_path) -> None:
    shipped = write_tasks(tmp_path / "data")
    gen_rows = [
        {"prompt": r["question"], "reference": r["answer"], "lang": "zh"}
        for r in task_rows("lmforge_numerals_zh")[:6]
    ] + [{"prompt": "Is the number 14 odd or even?", "reference": "even", "lang": "en"}]
    out = tmp_path / "robust"
    code = main(
        [
            "evaluate",
            f"model.path={model_dir}",
            f"exact_match.files=[{_write(tmp_path / 'gen.jsonl', gen_rows)}]",
            f"multiple_choice.files=[{shipped / 'lmforge_parity_en.jsonl'}]",
            "robustness.perturbations=[typos,casing,zh_char_noise]",
            "robustness.rate=0.5",
            "generation.max_new_tokens=4",
            f"output_dir={out}",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    items = _jsonl(out / "items.jsonl")
    mc = metrics["robustness"]["multiple_choice"]
    assert mc["clean_accuracy"] == pytest.approx(metrics["multiple_choice"]["acc"])
    for name in ("typos", "casing"):
        rows = [i for i in items if i["eval"] == f"robustness:multiple_choice:{name}"]
        assert len(rows) == 60 and all(r["changed"] for r in rows)  # every question has words
        perturbed = sum(r["correct"] for r in rows) / len(rows)
        assert mc[name]["all"]["perturbed"] == pytest.approx(perturbed)
        assert mc[name]["all"]["drop"] == pytest.approx(mc["clean_accuracy"] - perturbed)
    # Chinese noise leaves the English questions as they are; it changes the Chinese prompts
    assert mc["zh_char_noise"]["changed"] == 0
    assert metrics["robustness"]["exact_match"]["zh_char_noise"]["changed"] == 6
    # every wrong answer is analysed, per kind
    for kind in ("exact_match", "multiple_choice"):
        summary = json.loads((out / "errors" / kind / "errors.json").read_text())
        wrong = sum(not i["correct"] for i in items if i["eval"] == kind)
        assert metrics["error_analysis"][kind]["errors"] == wrong
        assert "per_class" in summary
    assert (out / "errors" / "multiple_choice" / "confusion.png").is_file()  # odd/even labels


def test_shard_folders_get_distinct_item_ids_and_runs_compare(model_dir, tmp_path, capsys):
    """A prepared split is a folder of part-* shards whose line numbers restart per shard: every
    document still gets its own id, so two evaluate runs pair up in ``compare``."""
    folder = tmp_path / "validation"
    folder.mkdir()
    for shard in range(2):
        _write(
            folder / f"part-0000{shard}.jsonl",
            [{"text": f"shard {shard} line {i}"} for i in range(3)],
        )
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["evaluate", f"model.path={model_dir}", f"perplexity.files=[{folder}]",
                     f"output_dir={out}"]) == 0  # fmt: skip
        runs.append(out)
    ids = [i["id"] for i in _jsonl(runs[0] / "items.jsonl")]
    assert sorted(ids) == sorted(f"part-0000{s}.jsonl:{n}" for s in range(2) for n in (1, 2, 3))
    capsys.readouterr()
    assert main(["evaluate", "compare", str(runs[0]), str(runs[1]), "--output",
                 str(tmp_path / "cmp"), "--resamples", "200"]) == 0  # fmt: skip
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert result["verdict"] == "no significant difference"  # the same model twice
