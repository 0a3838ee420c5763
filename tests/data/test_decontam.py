"""Decontamination: 13-word and 20-character overlaps flagged or dropped, 12 words / 19
characters not, case and punctuation ignored, short eval texts matched whole."""

from __future__ import annotations

import json
import pickle

import pytest
from pydantic import ValidationError

from lmforge.data.blocks import ShardContext, run_block
from lmforge.data.decontam import Decontaminate
from lmforge.data.document import Document
from lmforge.errors import DataError

EVAL_Q = (
    "A farmer has seventeen sheep and all but nine of them run away into the dark forest "
    "tonight, so how many sheep does the farmer still have left"
)
EVAL_ZH = "小明有十七只羊，除了九只以外都跑进了黑暗的森林里，请问小明还剩下几只羊呢？"
SHORT = "What is the capital city of Burkina Faso"  # 8 words: indexed whole
WORDS = EVAL_Q.split()
SYSTEM = "You are a careful assistant who always answers with a single number only please"


@pytest.fixture
def eval_file(tmp_path):
    path = tmp_path / "eval.jsonl"
    rows = [
        {
            "messages": [
                {
                    "role": "system",
                    "content": SYSTEM,
                },
                {"role": "user", "content": EVAL_Q},
                {"role": "assistant", "content": "9"},
            ]
        },
        {"text": EVAL_ZH},
        {"instruction": SHORT, "output": "Ouagadougou"},
        {"text": "too short"},
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + "{bad\n")
    return path


def run(block, docs):
    ctx = ShardContext(0, seed=0)
    out = list(run_block(block, docs, ctx))
    stats = ctx.stats
    assert stats.seen + stats.added == stats.kept + stats.dropped_total
    return out, ctx


def test_word_overlap_reported(eval_file):
    block = Decontaminate({"eval_files": [str(eval_file)]})
    thirteen = " ".join(WORDS[3:16])
    twelve = " ".join(WORDS[3:15])
    docs = [
        Document("hit", text=f"Blog post. {thirteen.upper()}!!! and then more words follow"),
        Document(
            "punct", text="A farmer, has seventeen -- sheep; and all but nine of them run away?"
        ),
        Document("near", text=f"Blog post. {twelve} and then more words follow"),
        Document(
            "sys",
            text=SYSTEM,
        ),
        Document("clean", text="Nothing to see here at all, just some ordinary training text."),
    ]
    out, ctx = run(block, docs)
    flagged = {d.id: d.metadata.get("contamination") for d in out}
    assert flagged["hit"] == {
        "eval_file": str(eval_file),
        "matches": 1,
        "example": " ".join(w.lower() for w in WORDS[3:16]),
    }
    assert flagged["punct"]["matches"] == 1
    assert flagged["near"] is None and flagged["sys"] is None and flagged["clean"] is None
    assert ctx.stats.to_dict() == {"seen": 5, "kept": 5, "changed": 2, "added": 0, "dropped": {}}


def test_whole_question_counts_every_gram(eval_file):
    block = Decontaminate({"eval_files": [str(eval_file)], "action": "drop"})
    out, ctx = run(block, [Document("copy", text=EVAL_Q), Document("ok", text="hello world")])
    assert [d.id for d in out] == ["ok"]
    entry = ctx.exclusions[0]
    assert entry["reason"] == "contaminated"
    assert entry["detail"]["matches"] == len(WORDS) - 13 + 1
    assert ctx.stats.dropped == {"contaminated": 1}


def test_cjk_character_grams(eval_file):
    block = Decontaminate({"eval_files": [str(eval_file)]})
    chars = "".join(ch for ch in EVAL_ZH if ch.isalnum())
    twenty, nineteen = chars[5:25], chars[5:24]
    docs = [
        Document("zh_hit", text=f"今天的练习题：{twenty[:10]}， {twenty[10:]}。"),
        Document("zh_near", text=f"今天的练习题：{nineteen}。"),
    ]
    out, _ = run(block, docs)
    assert out[0].metadata["contamination"]["example"] == twenty
    assert "contamination" not in out[1].metadata


def test_short_eval_text_matched_whole(eval_file):
    block = Decontaminate({"eval_files": [str(eval_file)]})
    docs = [
        Document("q", text="Quiz: what is the capital city of Burkina Faso? Answer below."),
        Document("partial", text="what is the capital city of Burkina"),
        Document("tiny", text="this is too short to matter"),
    ]
    out, _ = run(block, docs)
    assert out[0].metadata["contamination"]["example"] == SHORT.lower()
    assert "contamination" not in out[1].metadata and "contamination" not in out[2].metadata


def test_min_overlap_fraction_and_count(eval_file):
    text = EVAL_Q + " " + " ".join(f"filler{i}" for i in range(60))
    grams = len(text.split()) - 12
    matches = len(WORDS) - 12
    for min_overlap, flagged in ((matches, True), (matches + 1, False), (0.5, False), (0.1, True)):
        block = Decontaminate({"eval_files": [str(eval_file)], "min_overlap": min_overlap})
        out, _ = run(block, [Document("d", text=text)])
        assert ("contamination" in out[0].metadata) is flagged, (min_overlap, matches / grams)


def test_errors_and_pickling(tmp_path, eval_file):
    with pytest.raises(DataError, match="eval file not found"):
        Decontaminate({"eval_files": [str(tmp_path / "missing.jsonl")]})
    with pytest.raises(ValidationError):
        Decontaminate({"eval_files": []})
    short = tmp_path / "short.txt"
    short.write_text("tiny line\n")
    with pytest.raises(DataError, match="no usable evaluation text"):
        Decontaminate({"eval_files": [str(short)]}).setup()
    block = Decontaminate({"eval_files": [str(eval_file)]})
    block.setup()
    clone = pickle.loads(pickle.dumps(block))
    assert clone._index is None  # rebuilt per worker
    out, _ = run(clone, [Document("copy", text=EVAL_Q)])
    assert out[0].metadata["contamination"]["matches"] == len(WORDS) - 12
