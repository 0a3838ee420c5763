"""The demo end to end at a tiny size: every stage runs, the report exists, lineage is complete.

(The full-size demo's accuracy is measured by `make demo`, not here: it takes minutes.)
"""

from __future__ import annotations

import json

from lmforge.artifacts import format_lineage, lineage
from lmforge.cli import main


def test_small_demo_runs_and_traces_back_to_data(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(
        [
            "demo",
            f"output_dir={out}",
            "n_docs=200",
            "n_per_task=20",
            "vocab_size=500",
            "pt_steps=12",
            "sft_steps=6",
            "dpo_steps=4",
            "progress=false",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "lmforge demo report" in printed
    report = json.loads((out / "report.json").read_text())
    figures = report["figures"]
    # pretraining must lower held-out perplexity from the random-init model's
    assert figures["perplexity_pretrained"] < figures["perplexity_random_init"]
    for key in (
        "accuracy_before_sft",
        "accuracy_after_sft_merged",
        "accuracy_after_dpo",
        "dpo_pair_accuracy_before",
        "dpo_pair_accuracy_after",
    ):
        assert 0.0 <= figures[key] <= 1.0
    assert "then DPO" in report["text"]
    # the promotion rule decided between the SFT and the DPO model, from their evaluations
    assert figures["promotion_verdict"] in ("promote B", "keep A", "no significant difference")
    assert f"**{figures['promotion_verdict']}**" in report["text"]
    compared = lineage(out / "compare-sft-dpo")
    assert {"evaluate", "dpo"} <= {n["stage"] for n in compared if n["kind"] == "run"}

    # the aligned model traces back through the DPO run, the pairs and SFT to the raw data
    dpo_nodes = lineage(out / "dpo" / "model")
    dpo_stages = {n["stage"] for n in dpo_nodes if n["kind"] == "run"}
    assert {"dpo", "pairs", "sft", "pt", "prepare", "data"} <= dpo_stages, dpo_stages

    nodes = lineage(out / "merged" / "model")
    stages = {n["stage"] for n in nodes if n["kind"] == "run"}
    assert {"export_merge", "sft", "pt", "tokenizer", "prepare", "data"} <= stages
    files = {n["path"] for n in nodes if n["kind"] == "file"}
    assert str((out / "data" / "raw" / "corpus.jsonl").resolve()) in files
    assert str((out / "data" / "raw" / "tasks.jsonl").resolve()) in files
    text = format_lineage(nodes)
    assert str((out / "data" / "tasks" / "data" / "train").resolve()) in text
    # the curation step ran on the planted noise and says what it removed, by block and reason
    corpus = json.loads((out / "data" / "corpus" / "stats.json").read_text())
    dropped = {b["name"]: b["dropped"] for b in corpus["blocks"]}
    assert dropped["exact_dedup"].get("exact_duplicate", 0) >= 1
    assert dropped["minhash_dedup"].get("near_duplicate", 0) >= 1
    assert corpus["totals"]["rejected"] == 3  # empty text, a number as text, a broken line
    assert (out / "data" / "corpus" / "report" / "report.md").is_file()
    assert "What lmforge prepare did" in printed
