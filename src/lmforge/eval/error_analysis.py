"""Error analysis of evaluation items (``items.jsonl`` rows; rows without the keys asked for,
such as perplexity rows, are skipped): errors per class, a confusion-matrix PNG, error clusters.

- :func:`per_class_errors`: support, errors, error rate and commonest wrong predictions per class,
  labels normalised as exact match does. ``mode="auto"``: the gold labels are the classes
  (``"label"``) when there are at most ``max_classes`` of them, each seen twice on average; else
  (free-form answers) the items' ``task`` is (``"task"``; wrong = ``correct`` false). Label mode
  adds the confusion matrix and P/R/F1 of :mod:`lmforge.eval.classification`; predictions outside
  the gold labels share its ``(other)`` column, and keep their text in the confusions.
- :func:`confusion_png`: heatmap coloured by row share, counts in the cells, headless (Agg). The
  default DejaVu Sans has no Chinese, so a font on the machine with every glyph of the labels is
  looked up (Noto Sans CJK, WenQuanYi, ...); with none, the axes show class indices and
  ``<png>.labels.json`` names them (Chinese would otherwise draw as boxes).
- :func:`cluster_errors`: TF-IDF over the errors' text (CJK characters and character bigrams,
  Latin words whole less scikit-learn's English stop words: :func:`cjk_terms`), seeded k-means
  (``n_init=10``). k, unless given: ``min(8, max(2, round(sqrt(n / 2))))`` for n >= 2 errors,
  capped at the distinct texts; one error is one cluster, none none.
- :func:`error_report` writes errors.json, errors.txt (:func:`format_error_report`) and the PNG.

matplotlib and scikit-learn come with the ``data`` extra and are imported lazily.
"""

from __future__ import annotations

import importlib.util
import json
import math
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

from lmforge.artifacts import atomic_write_json, atomic_write_text
from lmforge.errors import MissingDependency
from lmforge.eval.classification import classification_metrics, confusion_matrix
from lmforge.eval.exact_match import normalize_answer
from lmforge.eval.text_metrics import CJKTokenizer, has_cjk

OTHER = "(other)"
NO_TASK = "(no task)"
TOP_CONFUSIONS = 5
TOP_CLASSES = 20  # rows of the text table, most errors first
TOP_TERMS = 8
EXAMPLES = 3
EMPTY = "<empty>"  # the term of a text with no words (CJKTokenizer never yields "<")
NO_FONT = "no installed font has the class names' glyphs (Chinese would draw as boxes)"
CLIP = 200  # characters of an example's text kept in the report


def _label(value) -> str:
    return normalize_answer(value) if isinstance(value, str) else json.dumps(value)


def _clip(text, n: int = CLIP) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


# ----------------------------------------------------------------------------- per class
def _commonest(kv: tuple) -> tuple:
    return -kv[1], kv[0]


def per_class_errors(
    items: Iterable[dict],
    gold_key: str = "reference",
    pred_key: str = "prediction",
    mode: str = "auto",
    max_classes: int = 20,
    top: int = TOP_CONFUSIONS,
) -> dict:
    """``{"mode", "total", "errors", "error_rate", "names", "per_class", "matrix", "metrics"}``;
    ``per_class[name]``: support, errors, error_rate, confusions (``[{"gold", "predicted",
    "count"}]``, commonest first), plus precision/recall/f1 in label mode. ``matrix`` (rows gold,
    columns predicted, in ``names`` order) and ``metrics`` are None in task mode."""
    if mode not in ("auto", "label", "task"):
        raise ValueError(f"mode must be auto, label or task, not {mode!r}")
    rows = [i for i in items if gold_key in i and pred_key in i]
    gold = [_label(i[gold_key]) for i in rows]
    pred = [_label(i[pred_key]) for i in rows]
    labels = sorted(set(gold))
    if mode == "auto":
        small = len(labels) <= max_classes and 2 * len(labels) <= len(rows)
        mode = "label" if small or not rows else "task"
    if mode == "label":
        classes = gold
        wrong = [g != p for g, p in zip(gold, pred, strict=True)]
    else:
        classes = [i.get("task") if isinstance(i.get("task"), str) else NO_TASK for i in rows]
        wrong = [
            not i["correct"] if "correct" in i else g != p
            for i, g, p in zip(rows, gold, pred, strict=True)
        ]
    confusions: dict[str, Counter] = defaultdict(Counter)
    support: Counter = Counter(classes)
    for c, g, p, w in zip(classes, gold, pred, wrong, strict=True):
        if w:
            confusions[c][(g, p)] += 1
    names = labels if mode == "label" else sorted(support)
    per_class = {}
    for name in names:
        errors = sum(confusions[name].values())
        per_class[name] = {
            "support": support[name],
            "errors": errors,
            "error_rate": errors / support[name],
            "confusions": [
                {"gold": g, "predicted": p, "count": n}
                for (g, p), n in sorted(confusions[name].items(), key=_commonest)[:top]
            ],
        }
    matrix = metrics = None
    if mode == "label":
        known = set(labels)
        if any(p not in known for p in pred):
            names = [*labels, OTHER]
        index = {n: i for i, n in enumerate(names)}
        matrix = confusion_matrix(
            [index[g] for g in gold], [index.get(p, len(labels)) for p in pred], len(names)
        )
        metrics = classification_metrics(matrix, names)
        for name, scores in metrics.pop("per_class").items():
            if name in per_class:
                per_class[name].update({k: scores[k] for k in ("precision", "recall", "f1")})
        metrics.pop("confusion")
    n_wrong, total = sum(wrong), len(rows)
    out = {"mode": mode, "gold_key": gold_key, "pred_key": pred_key, "total": total}
    out.update(errors=n_wrong, error_rate=n_wrong / total if total else 0.0, names=names)
    return {**out, "per_class": per_class, "matrix": matrix, "metrics": metrics}


# ----------------------------------------------------------------------------- confusion PNG
@cache
def _charmap(path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError):
        return frozenset()


_CJK_FONTS = ("Noto Sans CJK", "Source Han", "WenQuanYi", "Microsoft YaHei", "PingFang", "SimHei")


def find_font(text: str) -> tuple[str | None, bool]:
    """(family, covered): ``(None, True)`` when the default font has every glyph of ``text``, the
    first installed family that has them all, or ``(None, False)``. matplotlib's "Last Resort"
    font is skipped: it maps every code point to a box."""
    from matplotlib import font_manager

    needed = {ord(c) for c in text if not c.isspace()}
    if needed <= _charmap(font_manager.findfont(font_manager.FontProperties())):
        return None, True
    fonts = font_manager.fontManager.ttflist
    for font in sorted(fonts, key=lambda f: (not f.name.startswith(_CJK_FONTS), f.name, f.fname)):
        if "last resort" not in font.name.lower() and needed <= _charmap(font.fname):
            return font.name, True
    return None, False


def confusion_png(
    matrix: Sequence[Sequence[int]], names: Sequence[str], path: str | Path, title: str
) -> dict:
    """Write the heatmap; returns ``{"path", "font", "index_labels", "legend"}`` (``legend``: the
    sidecar JSON ``{"index": name}`` written when no font has the labels' glyphs)."""
    try:
        import matplotlib
    except ImportError:
        raise MissingDependency("matplotlib", "data", "the confusion-matrix plot") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmforge.data.report_render import save_figure

    if not names:
        raise ValueError("no classes to plot")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = [_clip(n, 24) for n in names]
    font, covered = find_font("".join(labels) + title)
    legend = path.with_suffix(".labels.json")
    legend.unlink(missing_ok=True)
    if not covered:  # boxes otherwise: show indices, name them in a sidecar file
        labels = [str(i) for i in range(len(names))]
        atomic_write_json(legend, {str(i): n for i, n in enumerate(names)})
        title = title.encode("ascii", "replace").decode("ascii")
        title += f"\n(class names by index: {legend.name})"
    k = len(names)
    rows = [g for g in range(k) if names[g] != OTHER or any(matrix[g])]  # no empty (other) row
    shares = [[v / sum(matrix[g]) if sum(matrix[g]) else 0.0 for v in matrix[g]] for g in rows]
    rc = {"font.family": [font, "DejaVu Sans"]} if font else {}
    with matplotlib.rc_context(rc):
        side = min(14.0, 2.5 + 0.55 * k)
        fig, ax = plt.subplots(figsize=(side + 1.2, side * len(rows) / k + 0.5), dpi=100)
        image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the gold row")
        tilt = {"rotation": 45, "ha": "right"} if k > 3 else {}
        ax.set_xticks(range(k), labels, **tilt)
        ax.set_yticks(range(len(rows)), [labels[g] for g in rows])
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ax.set_title(title)
        for y, g in enumerate(rows if k <= 30 else []):
            for p in range(k):
                colour = "white" if shares[y][p] > 0.5 else "black"
                ax.text(p, y, str(matrix[g][p]), ha="center", va="center", color=colour)
        save_figure(fig, path)
    sidecar = None if covered else str(legend)
    return {"path": str(path), "font": font, "index_labels": not covered, "legend": sidecar}


# ----------------------------------------------------------------------------- clusters
_TOKENIZER = CJKTokenizer()


def cjk_terms(text: str, stop: frozenset[str] = frozenset()) -> list[str]:
    """TF-IDF terms: :class:`CJKTokenizer` tokens less CJK punctuation and ``stop`` words, plus
    bigrams of adjacent CJK letters."""
    tokens = _TOKENIZER.tokenize(unicodedata.normalize("NFKC", text))
    kinds = [unicodedata.category(t)[0] if len(t) == 1 and has_cjk(t) else "" for t in tokens]
    terms = [t for t, c in zip(tokens, kinds, strict=True) if c not in ("P", "S", "Z")]
    pairs = zip(tokens, tokens[1:], kinds, kinds[1:], strict=False)
    return [t for t in terms if t not in stop] + [a + b for a, b, x, y in pairs if x == y == "L"]


def auto_k(n: int) -> int:
    """``min(8, max(2, round(sqrt(n / 2))))`` clusters for n >= 2 errors (2 up to 12 errors, 8
    from 113), 1 for one error, 0 for none."""
    return min(8, max(2, round(math.sqrt(n / 2)))) if n >= 2 else n


def _text(item: dict, text_key: str | Sequence[str]) -> str:
    keys = [text_key] if isinstance(text_key, str) else list(text_key)
    return "\n".join(str(item[k]) for k in keys if item.get(k) is not None)


def _example(item: dict, index: int, text: str) -> dict:
    out = {"id": item.get("id", index), "text": _clip(text)}
    for key in ("reference", "prediction", "gold", "pred", "task"):
        if key in item:
            out[key] = _clip(item[key])
    return out


def cluster_errors(
    items: Iterable[dict],
    text_key: str | Sequence[str] = "prompt",
    k: int | None = None,
    seed: int = 0,
) -> dict:
    """Cluster the items whose ``correct`` is false. ``{"errors", "k", "k_rule", "clusters",
    "items"}``: each cluster ``{"cluster", "size", "top_terms": [{"term", "weight"}],
    "examples"}`` (examples closest to the centroid first; clusters largest first), ``items``
    ``[{"id", "cluster"}]`` for every error in input order. ``text_key``: one key or several
    (joined by newlines)."""
    errors = [(i, it) for i, it in enumerate(items) if "correct" in it and not it["correct"]]
    texts = [_text(it, text_key) for _, it in errors]
    n = len(errors)
    rule = "given" if k is not None else "min(8, max(2, round(sqrt(n / 2))))" if n > 1 else "n < 2"
    out = {"errors": n, "k": 0, "k_rule": rule, "clusters": [], "items": []}
    if n == 0:
        return out
    try:
        import numpy as np
        from sklearn.cluster import KMeans
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer
        from sklearn.metrics.pairwise import euclidean_distances
    except ImportError:
        raise MissingDependency("scikit-learn", "data", "error clustering") from None

    def terms(text: str) -> list[str]:  # a text without words still gets a (shared) term
        return cjk_terms(text, ENGLISH_STOP_WORDS) or [EMPTY]

    vectorizer = TfidfVectorizer(analyzer=terms)
    vectors = vectorizer.fit_transform(texts)
    vocab = vectorizer.get_feature_names_out()
    vectors.sort_indices()
    distinct = {(tuple(r.indices), tuple(np.round(r.data, 9))) for r in vectors}
    k = auto_k(n) if k is None else max(1, int(k))
    out["k"] = k = min(k, len(distinct))  # k-means cannot find more clusters than points
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(vectors)
    labels, centres = km.labels_, km.cluster_centers_
    # relabel: largest cluster first, ties by first member, so ids do not depend on k-means order
    order = sorted(range(k), key=lambda c: (-int((labels == c).sum()), int(np.argmax(labels == c))))
    relabel = {old: new for new, old in enumerate(order)}
    for old in order:
        members = np.flatnonzero(labels == old)
        centre = centres[old]
        dist = euclidean_distances(vectors[members], centre[None, :]).ravel()
        members = members[np.argsort(dist, kind="stable")]
        top = [t for t in np.argsort(-centre, kind="stable")[:TOP_TERMS] if centre[t] > 0]
        cluster = {
            "cluster": relabel[old],
            "size": int(members.size),
            "top_terms": [
                {"term": str(vocab[t]), "weight": round(float(centre[t]), 4)} for t in top
            ],
        }
        cluster["examples"] = [
            _example(errors[m][1], errors[m][0], texts[m]) for m in members[:EXAMPLES]
        ]
        out["clusters"].append(cluster)
    out["items"] = [
        {"id": it.get("id", i), "cluster": relabel[int(c)]}
        for (i, it), c in zip(errors, labels, strict=True)
    ]
    return out


# ----------------------------------------------------------------------------- report
def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def error_report(
    items: Iterable[dict],
    out_dir: str | Path,
    gold_key: str = "reference",
    pred_key: str = "prediction",
    text_key: str | Sequence[str] = "prompt",
    k: int | None = None,
    seed: int = 0,
) -> dict:
    """Write ``out_dir/errors.json`` (``{"per_class", "clusters", "plots", "notes"}``), its text
    form errors.txt and, in label mode, ``confusion.png``; returns the summary. Without
    matplotlib there is no PNG, without scikit-learn no clusters (``None``); ``notes`` says so."""
    items = list(items)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"per_class": per_class_errors(items, gold_key, pred_key), "notes": []}
    if _available("sklearn"):
        summary["clusters"] = cluster_errors(items, text_key, k, seed)
    else:
        summary["clusters"] = None
        summary["notes"].append("no error clusters: pip install 'lmforge[data]' (scikit-learn)")
    (out / "confusion.png").unlink(missing_ok=True)  # a rerun in task mode leaves no stale plot
    (out / "confusion.labels.json").unlink(missing_ok=True)
    pc, summary["plots"] = summary["per_class"], {}
    if pc["matrix"] and not _available("matplotlib"):
        summary["notes"].append("no confusion plot: pip install 'lmforge[data]' (matplotlib)")
    elif pc["matrix"]:
        title = f"confusion: {pc['gold_key']} vs {pc['pred_key']} ({pc['total']} items)"
        png = confusion_png(pc["matrix"], pc["names"], out / "confusion.png", title)
        legend = Path(png["legend"]).name if png["legend"] else None
        summary["plots"]["confusion"] = {
            "file": "confusion.png",
            "font": png["font"],
            "legend": legend,
        }
        if legend:
            summary["notes"].append(f"{NO_FONT}: the plot shows class indices, named in {legend}")
    atomic_write_json(out / "errors.json", summary)
    atomic_write_text(out / "errors.txt", format_error_report(summary) + "\n")
    return summary


def _width(text: str) -> int:  # terminal columns: CJK characters are two wide
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _confusion(x: dict, label: bool) -> str:
    gold = "" if label else f" for {_clip(x['gold'], 20)!r}"
    return f"{_clip(x['predicted'], 30)!r}{gold} x{x['count']}"


def format_error_report(summary: dict) -> str:
    pc = summary["per_class"]
    label = pc["mode"] == "label"
    by = f"gold {pc['gold_key']}" if label else "task"
    lines = [f"errors: {pc['errors']} of {pc['total']} items ({pc['error_rate']:.1%}), by {by}"]
    names = sorted(pc["per_class"], key=lambda n: (-pc["per_class"][n]["errors"], n))
    names, rest = names[:TOP_CLASSES], names[TOP_CLASSES:]
    width = max([_width(_clip(n, 30)) for n in names] + [5])
    header = "support  errors  rate    top wrong predictions"
    lines += [f"  class{' ' * (width - 5)}  {header}"] if names else []
    for name in names:
        c, short = pc["per_class"][name], _clip(name, 30)
        wrong = ", ".join(_confusion(x, label) for x in c["confusions"])
        lines.append(
            f"  {short}{' ' * (width - _width(short))}  {c['support']:>7}  {c['errors']:>6}  "
            f"{c['error_rate']:>6.1%}  {wrong or '-'}"
        )
    if rest:
        hidden = sum(pc["per_class"][n]["errors"] for n in rest)
        lines.append(f"  ... {len(rest)} more classes, {hidden} errors")
    if pc["metrics"]:
        m = pc["metrics"]
        lines.append(f"  accuracy {m['accuracy']:.3f}, macro F1 {m['macro_f1']:.3f}")
    for name, plot in summary.get("plots", {}).items():
        legend = f" (class names in {plot['legend']})" if plot["legend"] else ""
        lines.append(f"{name} plot: {plot['file']}{legend}")
    cl = summary.get("clusters")
    if cl and cl["clusters"]:
        lines.append(f"clusters of the {cl['errors']} errors: k={cl['k']} ({cl['k_rule']})")
        for c in cl["clusters"]:
            terms = ", ".join(t["term"] for t in c["top_terms"][:6]) or "-"
            lines.append(f"  #{c['cluster']} ({c['size']}): {terms}")
            for ex in c["examples"][:2]:
                got = f" -> {_clip(ex['prediction'], 40)!r}" if "prediction" in ex else ""
                lines.append(f"      {_clip(ex['text'], 70)!r}{got}")
    lines += [f"note: {n}" for n in summary.get("notes", [])]
    return "\n".join(lines)
