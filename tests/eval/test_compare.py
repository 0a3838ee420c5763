"""``lmforge evaluate compare`` on constructed items.jsonl files (no model needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.errors import DataError
from lmforge.eval.compare import compare_metric, compare_runs, mcnemar, verdict

FAST = {"resamples": 2000, "seed": 0}


def em_rows(correct: list[bool], prefix: str = "q") -> list[dict]:
    return [
        {"eval": "exact_match", "id": f"{prefix}{i}", "correct": c, "source_line": i + 1}
        for i, c in enumerate(correct)
    ]


def ppl_rows(nll_per_token: list[float], tokens: int = 50) -> list[dict]:
    return [
        {"eval": "perplexity", "id": f"doc.jsonl:{i + 1}", "nll": x * tokens, "tokens": tokens}
        for i, x in enumerate(nll_per_token)
    ]


def write_run(folder: Path, rows: list[dict], manifest: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
    )
    if manifest:
        (folder / "manifest.json").write_text(
            json.dumps({"stage": "evaluate", "status": "completed", "inputs": []})
        )
    return folder


def pattern(n_both: int, n_only_a: int, n_only_b: int, n_neither: int):
    """Correct flags for A and B with the given concordant / discordant counts."""
    a = [True] * n_both + [True] * n_only_a + [False] * n_only_b + [False] * n_neither
    b = [True] * n_both + [False] * n_only_a + [True] * n_only_b + [False] * n_neither
    return a, b


def test_clear_win_promotes_b_and_writes_outputs(tmp_path, capsys):
    a, b = pattern(40, 3, 33, 24)
    run_a = write_run(tmp_path / "eval-a", em_rows(a))
    run_b = write_run(tmp_path / "eval-b", em_rows(b))
    out = tmp_path / "cmp"
    code = main(["evaluate", "compare", str(run_a), str(run_b), "-o", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "verdict: promote B" in printed and "exact_match/correct" in printed
    result = json.loads((out / "compare.json").read_text())
    assert result["verdict"] == "promote B"
    [m] = result["metrics"]
    assert m["mean_a"] == pytest.approx(0.43) and m["mean_b"] == pytest.approx(0.73)
    assert m["diff"] == pytest.approx(0.30) and m["ci"][0] > 0 and m["p_b_better"] < 0.01
    assert m["mcnemar"]["b"] == 3 and m["mcnemar"]["c"] == 33
    assert m["mcnemar"]["test"].startswith("chi-square") and m["mcnemar"]["p_value"] < 0.05
    assert (m["win_rate"], m["tie_rate"], m["loss_rate"]) == pytest.approx((0.33, 0.64, 0.03))
    assert (out / "compare.md").read_text().count("| exact_match/correct |") == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "compare" and manifest["status"] == "completed"
    assert {i["role"]: i["manifest"] for i in manifest["inputs"]} == {
        "run_a": str((run_a / "manifest.json").resolve()),
        "run_b": str((run_b / "manifest.json").resolve()),
    }
    assert manifest["metrics"]["verdict"] == "promote B"


def test_clear_loss_keeps_a(tmp_path):
    a, b = pattern(40, 33, 3, 24)
    result = compare_runs(
        write_run(tmp_path / "a", em_rows(a)), write_run(tmp_path / "b", em_rows(b)), **FAST
    )
    assert result["verdict"] == "keep A"
    [m] = result["metrics"]
    assert m["ci"][1] < 0 and m["significant"] == "A" and m["p_b_better"] > 0.99


@pytest.mark.parametrize("n_diff", [0, 1])
def test_identical_or_near_identical_is_no_difference(tmp_path, n_diff):
    a, b = pattern(50, 0, n_diff, 50 - n_diff)
    result = compare_runs(
        write_run(tmp_path / "a", em_rows(a)), write_run(tmp_path / "b", em_rows(b)), **FAST
    )
    assert result["verdict"] == "no significant difference"
    [m] = result["metrics"]
    assert m["significant"] is None and m["ci"][0] <= 0 <= m["ci"][1]
    assert m["mcnemar"]["p_value"] == 1.0
    if n_diff == 0:
        assert m["ci"] == [0.0, 0.0] and m["tie_rate"] == 1.0 and m["p_b_better"] == 1.0


def test_mixed_metrics_are_not_promoted(tmp_path):
    a, b = pattern(40, 3, 33, 24)  # B much better on exact match ...
    ppl_a = [2.0 + 0.01 * (i % 7) for i in range(60)]
    ppl_b = [x + 0.3 for x in ppl_a]  # ... but much worse perplexity
    result = compare_runs(
        write_run(tmp_path / "a", em_rows(a) + ppl_rows(ppl_a)),
        write_run(tmp_path / "b", em_rows(b) + ppl_rows(ppl_b)),
        **FAST,
    )
    sig = {m["name"]: m["significant"] for m in result["metrics"]}
    assert sig == {"exact_match/correct": "B", "perplexity/nll_per_token": "A"}
    assert result["verdict"] == "keep A" and "perplexity/nll_per_token" in result["reason"]
    # better on one metric, indistinguishable on the other: still not promoted
    result = compare_runs(
        write_run(tmp_path / "a2", em_rows(a) + ppl_rows(ppl_a)),
        write_run(tmp_path / "b2", em_rows(b) + ppl_rows(ppl_a)),
        **FAST,
    )
    assert result["verdict"] == "no significant difference"
    assert "1 of 2" in result["reason"]


def test_lower_nll_is_better_and_corpus_level(tmp_path):
    ppl_a = [2.0 + 0.05 * (i % 5) for i in range(40)]
    rows_a, rows_b = ppl_rows(ppl_a), ppl_rows([x - 0.2 for x in ppl_a])
    for row, per_token in ((rows_a[0], 4.0), (rows_b[0], 3.8)):  # a long document weighs more
        row.update(tokens=500, nll=per_token * 500)
    result = compare_runs(write_run(tmp_path / "a", rows_a), write_run(tmp_path / "b", rows_b))
    [m] = result["metrics"]  # tokens are a count, not a metric
    assert m["name"] == "perplexity/nll_per_token" and m["direction"] == "lower"
    total_a = sum(r["nll"] for r in rows_a) / sum(r["tokens"] for r in rows_a)
    assert m["mean_a"] == pytest.approx(total_a)
    assert m["mean_a"] > sum(r["nll"] / r["tokens"] for r in rows_a) / 40 + 0.1  # not per doc
    assert m["diff"] == pytest.approx(-0.2) and m["ci"][1] < 0 and m["significant"] == "B"
    assert m["win_rate"] == 1.0 and m["p_b_better"] < 0.001 and "mcnemar" not in m
    assert result["verdict"] == "promote B" and result["notes"] == []


def test_mcnemar_hand_values():
    exact = mcnemar(10, 2)
    assert exact["test"] == "exact binomial"
    assert exact["p_value"] == pytest.approx(2 * (1 + 12 + 66) / 4096)  # 0.0386
    assert round(exact["p_value"], 4) == 0.0386
    assert mcnemar(2, 10)["p_value"] == exact["p_value"]
    chi = mcnemar(30, 10)  # chi2 = (|30 - 10| - 1)^2 / 40 = 9.025
    assert chi["statistic"] == pytest.approx(9.025)
    assert chi["p_value"] == pytest.approx(0.0026631, abs=1e-6)
    assert mcnemar(0, 0)["p_value"] == 1.0 and mcnemar(3, 3)["p_value"] == 1.0


def test_bootstrap_is_seeded_and_verdict_rule():
    xa, xb = [0.1 * (i % 10) for i in range(30)], [0.1 * ((i + 3) % 10) for i in range(30)]
    one = compare_metric(xa, xb, resamples=500, seed=7)
    assert one == compare_metric(xa, xb, resamples=500, seed=7)
    assert one["ci"] != compare_metric(xa, xb, resamples=500, seed=8)["ci"]
    assert verdict([{"name": "x", "significant": "B"}])[0] == "promote B"
    both = [{"name": "x", "significant": "B"}, {"name": "y", "significant": "A"}]
    assert verdict(both)[0] == "keep A"
    assert verdict([{"name": "x", "significant": None}])[0] == "no significant difference"


def test_numeric_fields_of_new_eval_kinds_are_metrics(tmp_path):
    rows_a = [{"eval": "translate", "id": i, "bleu": 20.0 + i % 3, "ter": 0.5} for i in range(30)]
    rows_b = [{**r, "bleu": r["bleu"] + 5, "ter": 0.4} for r in rows_a]
    del rows_b[0]["ter"]  # a missing value is left out of that metric, and said so
    rows_a += [{"eval": "multiple_choice", "id": i, "answer": 2, "prediction": 1, "acc": 0.0}
               for i in range(30)]  # fmt: skip
    rows_b += [{**r, "prediction": 2, "acc": 1.0} for r in rows_a[30:]]
    result = compare_runs(write_run(tmp_path / "a", rows_a), write_run(tmp_path / "b", rows_b))
    by_name = {m["name"]: m for m in result["metrics"]}
    assert set(by_name) == {"multiple_choice/acc", "translate/bleu", "translate/ter"}
    assert by_name["multiple_choice/acc"]["mcnemar"]["c"] == 30  # 0/1 floats are binary
    assert "mcnemar" not in by_name["translate/bleu"]
    assert by_name["translate/bleu"]["direction"] == "higher"
    assert by_name["translate/ter"]["direction"] == "lower" and by_name["translate/ter"]["n"] == 29
    assert result["notes"] == ["translate/ter: 1 paired item(s) lack a value"]
    assert result["verdict"] == "promote B"


def test_unpaired_items_are_counted(tmp_path, capsys):
    a, b = pattern(20, 2, 2, 6)
    rows_a = em_rows(a) + em_rows([True] * 5, prefix="extra-a") + ppl_rows([2.0] * 4)
    rows_b = em_rows(b) + em_rows([True] * 3, prefix="extra-b")
    run_a, run_b = write_run(tmp_path / "a", rows_a), write_run(tmp_path / "b", rows_b)
    assert main(["evaluate", "compare", str(run_a), str(run_b), "--resamples", "200",
                 "--output", str(tmp_path / "out")]) == 0  # fmt: skip
    assert "left out: 9 only in A, 3 only in B" in capsys.readouterr().out
    pairing = json.loads((tmp_path / "out" / "compare.json").read_text())["pairing"]
    assert (pairing["paired"], pairing["only_a"], pairing["only_b"]) == (30, 9, 3)
    assert pairing["by_eval"]["perplexity"] == {"paired": 0, "only_a": 4, "only_b": 0}
    assert pairing["by_eval"]["exact_match"] == {"paired": 30, "only_a": 5, "only_b": 3}


def test_no_shared_items_is_an_error(tmp_path):
    run_a = write_run(tmp_path / "a", em_rows([True, False], prefix="a"))
    run_b = write_run(tmp_path / "b", em_rows([True], prefix="b"))
    with pytest.raises(DataError, match="share no items.*2 items only in A, 1 only in B"):
        compare_runs(run_a, run_b)


def bad_input(tmp_path: Path, case: str) -> tuple[list[str], str]:
    good = write_run(tmp_path / "good", em_rows([True, False]))
    if case == "missing":
        return [str(tmp_path / "nope"), str(good)], "run not found"
    if case == "no_items":
        (tmp_path / "empty").mkdir()
        return [str(good), str(tmp_path / "empty")], "no items.jsonl in"
    if case == "malformed":
        bad = write_run(tmp_path / "bad", em_rows([True, False]))
        lines = ["{not json", '{"eval": "exact_match"}', '{"eval": "exact_match", "id": "q0"}']
        with open(bad / "items.jsonl", "a", encoding="utf-8") as fh:
            fh.write("\n".join([*lines, '{"eval": "perplexity", "id": 1, "nll": 3.0}']) + "\n")
        return [str(good), str(bad)], "4 malformed row.s. of 6; line 3: malformed JSON"
    if case == "disjoint":
        other = write_run(tmp_path / "other", em_rows([True], prefix="z"))
        return [str(good), str(other)], "share no items"
    if case == "output_is_input":
        return [str(good), str(good), "-o", str(good)], "refusing to write into"
    assert case == "bad_flag"
    return [str(good), str(good), "--resamples", "many"], "invalid int value"


@pytest.mark.parametrize(
    "case", ["missing", "no_items", "malformed", "disjoint", "output_is_input", "bad_flag"]
)
def test_bad_input_through_cli(tmp_path, capsys, case):
    args, message = bad_input(tmp_path, case)
    code = main(["evaluate", "compare", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("lmforge: error:") and "Traceback" not in err
    assert re.search(message, err), err


def test_help_and_overview(capsys):
    assert main(["evaluate", "compare", "--help"]) == 0
    assert "RUN_A" in capsys.readouterr().out.upper()
    assert main(["--help"]) == 0
    assert "evaluate compare" in capsys.readouterr().out
