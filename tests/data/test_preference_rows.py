"""Preference rows: every input layout becomes (prompt, chosen, rejected) once; bad rows say why."""

from __future__ import annotations

import pytest

from lmforge.data.llamafactory import RowMapper
from lmforge.data.preference import to_preference
from lmforge.data.schema import RowError

USER = {"role": "user", "content": "Is 7 even or odd?"}


def _answers(pref):
    return pref.chosen["content"], pref.rejected["content"]


def test_explicit_prompt_strings() -> None:
    pref = to_preference({"prompt": "Is 7 even or odd?", "chosen": "odd", "rejected": "even"})
    assert pref.prompt == [USER]
    assert _answers(pref) == ("odd", "even")


def test_conversational_answers_with_or_without_the_prompt() -> None:
    system = {"role": "system", "content": "Be brief."}
    row = {
        "prompt": [system, USER],
        "chosen": [system, USER, {"role": "assistant", "content": "odd"}],
        "rejected": [{"role": "assistant", "content": "even"}],
    }
    pref = to_preference(row)
    assert pref.prompt == [system, USER]
    assert _answers(pref) == ("odd", "even")


def test_alpaca_and_messages_rows_with_answers() -> None:
    alpaca = {"instruction": "Is 7 even or odd?", "chosen": "odd", "rejected": "even"}
    assert to_preference(alpaca).prompt == [USER]
    history = {**alpaca, "history": [["hi", "hello"]]}
    assert [m["role"] for m in to_preference(history).prompt] == ["user", "assistant", "user"]
    messages = {
        "messages": [USER],
        "chosen": {"role": "assistant", "content": "odd"},
        "rejected": "x",
    }
    assert _answers(to_preference(messages)) == ("odd", "x")


def test_llamafactory_ranking_rows_map_to_pairs() -> None:
    mapping = RowMapper(
        {
            "ranking": True,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
        },
        "dpo_en_demo",
    )
    row = {
        "conversations": [{"from": "human", "value": "Is 7 even or odd?"}],
        "chosen": {"from": "gpt", "value": "odd"},
        "rejected": {"from": "gpt", "value": "even"},
    }
    pref = to_preference(mapping(row))
    assert pref.prompt == [USER]
    assert _answers(pref) == ("odd", "even")


def test_hh_transcripts_share_their_prompt() -> None:
    prefix = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Is 7 even or odd?"
    row = {"chosen": prefix + "\n\nAssistant: odd", "rejected": prefix + "\n\nAssistant: even"}
    pref = to_preference(row)
    assert pref.prompt == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        USER,
    ]
    assert _answers(pref) == ("odd", "even")


def test_margin_field() -> None:
    row = {"prompt": "q", "chosen": "a", "rejected": "b", "score_gap": 2.5}
    assert to_preference(row, "score_gap").margin == 2.5
    assert to_preference(row).margin == 0.0
    with pytest.raises(RowError, match="margin field 'score_gap' is str"):
        to_preference({**row, "score_gap": "big"}, "score_gap")


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"prompt": "q", "chosen": "a"}, "missing field 'rejected'"),
        ({"prompt": "q", "chosen": "same", "rejected": "same"}, "nothing to prefer"),
        ({"prompt": "q", "chosen": " ", "rejected": "b"}, "chosen answer is empty"),
        ({"chosen": "a", "rejected": "b"}, "needs a prompt"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "empty prompt"),
        (
            {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"},
            "do not share the prompt",
        ),
        (
            {"prompt": "q", "chosen": [{"role": "user", "content": "u"}], "rejected": "b"},
            "one assistant answer",
        ),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_bad_rows_say_why(row, reason) -> None:
    with pytest.raises(RowError, match=reason):
        to_preference(row)


def test_unpaired_kto_rows() -> None:
    from lmforge.data.preference import to_unpaired

    trl = to_unpaired({"prompt": "Is 7 even or odd?", "completion": "odd", "label": True})
    assert trl.prompt == [USER] and trl.completion["content"] == "odd" and trl.desirable
    mapping = RowMapper(
        {"formatting": "sharegpt", "columns": {"messages": "messages", "kto_tag": "label"},
         "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                  "assistant_tag": "assistant"}},
        "kto_en_demo",
    )  # fmt: skip
    row = mapping(
        {
            "messages": [USER, {"role": "assistant", "content": "even"}],
            "label": False,
        }
    )
    lf = to_unpaired(row)
    assert lf.prompt == [USER] and lf.completion["content"] == "even" and not lf.desirable
    with pytest.raises(RowError, match="must be true"):
        to_unpaired({"prompt": "q", "completion": "a", "label": "yes"})
    with pytest.raises(RowError, match="needs its 'prompt'"):
        to_unpaired({"completion": "a", "label": True})
