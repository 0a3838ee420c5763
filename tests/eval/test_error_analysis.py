"""Error analysis on hand-made items (no model): per-class errors and confusions, the confusion
PNG (English and Chinese class names), TF-IDF + k-means clusters of two themes, the report."""

from __future__ import annotations

import json
import sys

import pytest

from lmforge.errors import MissingDependency
from lmforge.eval import error_analysis
from lmforge.eval.error_analysis import (
    NO_TASK,
    OTHER,
    auto_k,
    cjk_terms,
    cluster_errors,
    confusion_png,
    error_report,
    find_font,
    format_error_report,
    per_class_errors,
)

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _items(pairs: list[tuple[str, str]], task: str | None = None) -> list[dict]:
    return [
        {
            "eval": "exact_match",
            "id": f"q{i}",
            "prompt": f"question {i}",
            "reference": gold,
            "prediction": pred,
            "correct": gold.strip(" .!").lower() == pred.strip(" .!").lower(),
            "task": task,
        }
        for i, (gold, pred) in enumerate(pairs)
    ]


# gold -> predictions: positive 5 (2 wrong: negative x2), negative 4 (1 wrong: neutral),
# neutral 3 (2 wrong: positive, "no idea" outside the label set)
SENTIMENT = (
    [("positive", "Positive."), ("positive", "positive"), ("positive", "positive")]
    + [("positive", "negative"), ("positive", "NEGATIVE")]
    + [("negative", "negative")] * 3
    + [("negative", "neutral")]
    + [("neutral", "neutral"), ("neutral", "positive"), ("neutral", "no idea")]
)


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert len(data) > 0 and data[:8] == PNG_SIGNATURE
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


def test_per_class_errors_and_confusions_match_the_hand_count() -> None:
    perplexity_row = {"eval": "perplexity", "id": "doc:1", "nll": 3.0}
    out = per_class_errors([*_items(SENTIMENT), perplexity_row], "reference", "prediction")
    assert out["mode"] == "label"
    assert (out["total"], out["errors"]) == (12, 5)
    assert out["error_rate"] == pytest.approx(5 / 12)
    assert out["names"] == ["negative", "neutral", "positive", OTHER]
    pos, neg, neu = (out["per_class"][n] for n in ("positive", "negative", "neutral"))
    assert (pos["support"], pos["errors"]) == (5, 2)
    assert pos["error_rate"] == pytest.approx(0.4)
    assert pos["confusions"] == [{"gold": "positive", "predicted": "negative", "count": 2}]
    assert (neg["support"], neg["errors"]) == (4, 1)
    assert neg["confusions"] == [{"gold": "negative", "predicted": "neutral", "count": 1}]
    assert (neu["support"], neu["errors"]) == (3, 2)
    # ties by count are ordered by text; the out-of-set answer keeps its text
    assert [c["predicted"] for c in neu["confusions"]] == ["no idea", "positive"]
    # rows gold, columns predicted: negative, neutral, positive, (other)
    assert out["matrix"] == [[3, 1, 0, 0], [0, 1, 1, 1], [2, 0, 3, 0], [0, 0, 0, 0]]
    assert out["metrics"]["accuracy"] == pytest.approx(7 / 12)
    assert pos["recall"] == pytest.approx(3 / 5) and pos["precision"] == pytest.approx(3 / 4)


def test_free_form_answers_are_grouped_by_task() -> None:
    items = _items([("42", "41"), ("7", "7"), ("paris", "london")], task="math")
    items += _items([("北京", "上海"), ("东京", "东京")], task="地理")
    items.append({"reference": "x", "prediction": "y", "correct": False})  # no task
    out = per_class_errors(items)
    assert out["mode"] == "task" and out["matrix"] is None and out["metrics"] is None
    assert out["names"] == [NO_TASK, "math", "地理"]
    assert (out["per_class"]["math"]["support"], out["per_class"]["math"]["errors"]) == (3, 2)
    assert out["per_class"]["地理"]["confusions"] == [
        {"gold": "北京", "predicted": "上海", "count": 1}
    ]
    assert per_class_errors(items, mode="label")["mode"] == "label"


def test_confusion_png_is_a_valid_png(tmp_path) -> None:
    out = per_class_errors(_items(SENTIMENT))
    info = confusion_png(out["matrix"], out["names"], tmp_path / "cm.png", "sentiment")
    _assert_png(tmp_path / "cm.png")
    assert info["index_labels"] is False and info["legend"] is None


def test_confusion_png_with_chinese_class_names(tmp_path) -> None:
    names = ["正面", "负面", "中性"]
    matrix = [[5, 1, 0], [2, 6, 1], [0, 0, 3]]
    info = confusion_png(matrix, names, tmp_path / "zh.png", "情感分类")
    _assert_png(tmp_path / "zh.png")
    if info["index_labels"]:  # no CJK font here: indices on the axes, names in the sidecar
        legend = json.loads((tmp_path / "zh.labels.json").read_text(encoding="utf-8"))
        assert legend == {"0": "正面", "1": "负面", "2": "中性"}
    else:
        assert info["font"] is not None and not (tmp_path / "zh.labels.json").exists()


def test_a_font_with_the_glyphs_is_used_when_one_is_found(tmp_path, monkeypatch) -> None:
    assert find_font("positive (other) 3") == (None, True)
    font, covered = find_font("正面")
    assert covered == (font is not None)  # this machine: DejaVu only, so (None, False)
    monkeypatch.setattr(error_analysis, "find_font", lambda text: ("DejaVu Sans", True))
    (tmp_path / "zh.labels.json").write_text("{}")  # from an earlier run without the font
    info = confusion_png([[1, 1], [0, 2]], ["正面", "负面"], tmp_path / "zh.png", "情感")
    assert info["font"] == "DejaVu Sans" and info["legend"] is None
    assert not (tmp_path / "zh.labels.json").exists()
    _assert_png(tmp_path / "zh.png")


def _themes() -> tuple[list[dict], list[dict]]:
    english = [
        {
            "id": f"en{i}",
            "prompt": f"What is {i + 3} plus {2 * i + 5}? Give the sum of the numbers.",
            "prediction": str(i),
            "reference": str(3 * i + 8),
            "correct": False,
        }
        for i in range(12)
    ]
    reviews = [
        "这家餐厅的服务很差，菜也不好吃，评价一下情感",
        "商品质量太差了，非常失望，评价一下情感",
        "快递很慢，包装破损，很不满意，评价一下情感",
        "电影剧情无聊，演员演技很差，评价一下情感",
        "酒店房间干净，服务热情，非常满意，评价一下情感",
        "这本书写得很好，推荐大家阅读，评价一下情感",
        "手机电池耐用，拍照清晰，很喜欢，评价一下情感",
        "客服态度很好，问题解决得很快，评价一下情感",
        "衣服尺码不对，颜色也不好看，评价一下情感",
        "音乐会非常精彩，值得一听，评价一下情感",
        "外卖送得很快，味道也不错，评价一下情感",
        "软件经常闪退，体验很差，评价一下情感",
    ]
    chinese = [
        {"id": f"zh{i}", "prompt": t, "prediction": "正面", "reference": "负面", "correct": False}
        for i, t in enumerate(reviews)
    ]
    return english, chinese


def _interleave(a: list, b: list) -> list:
    return [x for pair in zip(a, b, strict=True) for x in pair]


def test_two_themes_fall_into_separate_clusters() -> None:
    english, chinese = _themes()
    right = {"id": "ok", "prompt": "What is 1 plus 1?", "correct": True}
    items = [right, *_interleave(english, chinese)]
    out = cluster_errors(items, k=2)
    assert out["errors"] == 24 and out["k"] == 2
    assert sorted(c["size"] for c in out["clusters"]) == [12, 12]
    by_id = {row["id"]: row["cluster"] for row in out["items"]}
    assert "ok" not in by_id and len(by_id) == 24
    assert len({by_id[x["id"]] for x in english}) == 1
    assert len({by_id[x["id"]] for x in chinese}) == 1
    assert by_id["en0"] != by_id["zh0"]
    en_cluster = out["clusters"][by_id["en0"]]
    zh_cluster = out["clusters"][by_id["zh0"]]
    en_terms = [t["term"] for t in en_cluster["top_terms"]]
    zh_terms = [t["term"] for t in zh_cluster["top_terms"]]
    assert "plus" in en_terms and "sum" in en_terms
    assert any(t in zh_terms for t in ("评价", "情感", "评", "情"))
    assert all(not t.isascii() for t in zh_terms)
    assert all(ex["id"].startswith("en") for ex in en_cluster["examples"])
    assert all(ex["id"].startswith("zh") for ex in zh_cluster["examples"])
    assert 1 <= len(en_cluster["examples"]) <= 3


def test_automatic_k_keeps_the_themes_apart_and_is_deterministic() -> None:
    english, chinese = _themes()
    items = _interleave(english, chinese)
    assert auto_k(24) == 3  # round(sqrt(12)) = 3
    out = cluster_errors(items, seed=1)
    assert out["k"] == 3 and out["k_rule"].startswith("min(8")
    by_id = {row["id"]: row["cluster"] for row in out["items"]}
    en, zh = {by_id[x["id"]] for x in english}, {by_id[x["id"]] for x in chinese}
    assert en.isdisjoint(zh)  # a theme may split in two, but no cluster mixes them
    assert cluster_errors(items, seed=1) == out
    assert cluster_errors(list(items), seed=7)["k"] == 3


def test_k_rule_and_small_error_sets() -> None:
    assert [auto_k(n) for n in (0, 1, 2, 12, 13, 50, 112, 113, 10_000)] == [
        0,
        1,
        2,
        2,
        3,
        5,
        7,
        8,
        8,
    ]
    empty = cluster_errors([{"prompt": "fine", "correct": True}])
    assert empty["errors"] == 0 and empty["clusters"] == [] and empty["items"] == []
    one = cluster_errors([{"id": "a", "prompt": "What is 2 plus 2?", "correct": False}])
    assert one["k"] == 1 and one["clusters"][0]["size"] == 1
    assert one["clusters"][0]["examples"][0]["id"] == "a"
    assert one["items"] == [{"id": "a", "cluster": 0}]
    same = [{"id": i, "prompt": "同一个问题", "correct": False} for i in range(4)]
    assert cluster_errors(same)["k"] == 1  # never more clusters than distinct texts
    # the same words in another order are the same TF-IDF point: one cluster, no k-means warning
    shuffled = [{"prompt": p, "correct": False} for p in ("apple banana", "banana apple")]
    assert cluster_errors(shuffled)["k"] == 1
    blank = cluster_errors([{"prompt": "", "correct": False}, {"prompt": "!", "correct": False}])
    assert blank["k"] == 1 and blank["clusters"][0]["size"] == 2


def test_cjk_terms_are_characters_bigrams_and_words() -> None:
    assert cjk_terms("很差 GPT-4 ok") == ["很", "差", "gpt", "4", "ok", "很差"]


def test_error_report_writes_files_that_reload(tmp_path) -> None:
    items = _items(SENTIMENT)
    summary = error_report(items, tmp_path / "errors")
    folder = tmp_path / "errors"
    reloaded = json.loads((folder / "errors.json").read_text(encoding="utf-8"))
    assert reloaded == json.loads(json.dumps(summary))
    assert reloaded["per_class"]["per_class"]["positive"]["errors"] == 2
    assert reloaded["clusters"]["errors"] == 5
    assert reloaded["plots"]["confusion"]["file"] == "confusion.png"
    _assert_png(folder / "confusion.png")
    text = format_error_report(summary)
    assert text == (folder / "errors.txt").read_text(encoding="utf-8").rstrip("\n")
    assert "5 of 12 items" in text and "'negative' x2" in text and "k=" in text
    # a rerun on free-form answers has no matrix: no stale plot is left behind
    rerun = error_report(_items([("42", "41"), ("7", "8")], task="math"), folder)
    assert rerun["plots"] == {} and not (folder / "confusion.png").exists()
    assert "by task" in format_error_report(rerun)


def test_error_report_with_chinese_labels(tmp_path) -> None:
    items = _items([("正面", "正面"), ("正面", "负面"), ("负面", "负面"), ("负面", "负面")])
    summary = error_report(items, tmp_path)
    _assert_png(tmp_path / "confusion.png")
    plot = summary["plots"]["confusion"]
    if plot["legend"]:  # no CJK font on this machine
        assert (tmp_path / plot["legend"]).exists() and "glyphs" in summary["notes"][-1]
    else:
        assert plot["font"] is not None
    assert "正面" in format_error_report(summary)


def test_without_the_data_extra(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)
    with pytest.raises(MissingDependency, match=r"lmforge\[data\]"):
        cluster_errors([{"prompt": "x", "correct": False}])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependency, match="matplotlib"):
        confusion_png([[1]], ["a"], tmp_path / "x.png", "t")
    monkeypatch.setattr(error_analysis, "_available", lambda module: False)
    summary = error_report(_items(SENTIMENT), tmp_path)
    assert summary["clusters"] is None and summary["plots"] == {}
    assert len(summary["notes"]) == 2 and not (tmp_path / "confusion.png").exists()
    assert json.loads((tmp_path / "errors.json").read_text(encoding="utf-8"))["clusters"] is None
    assert "note: no error clusters" in format_error_report(summary)
