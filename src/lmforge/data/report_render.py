"""How a prepare report looks: its sections, the PNG plots (matplotlib), Markdown and HTML.

:mod:`lmforge.data.report` computes the figures (``summary``); this module only presents them.
The sections are built once and rendered twice, so report.md and report.html always agree.
The HTML is one self-contained file: the PNGs are embedded as base64 ``data:`` URIs.
matplotlib is optional and imported lazily with the Agg backend (no display needed).
"""

from __future__ import annotations

import base64
import html
import importlib.util
import json
import warnings
from array import array
from pathlib import Path
from typing import Any

TOP = 20  # rows shown in distribution tables and bars; the rest are summed as "(other)"

Item = tuple  # ("p", text) | ("table", header, rows) | ("img", file name, alt text)
Section = tuple[str, list[Item]]


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


# ----------------------------------------------------------------------------- plots
def write_plots(summary: dict, lengths: dict[str, array], out: Path) -> dict[str, str]:
    """Write the PNGs into ``out``; returns plot name -> file name (only the plots with data)."""
    import matplotlib

    matplotlib.use("Agg")
    plots: dict[str, str] = {}
    drops = {f"{r['block']}: {r['reason']}": r["count"] for r in summary["top_reasons"]}
    drops.update({f"rejected: {r['reason']}": r["count"] for r in summary["rejects"]["reasons"]})
    kept = summary["kept"]
    bars = {
        "drops": (drops, "documents dropped, by block and reason"),
        "languages": (kept["languages"], "kept documents by language"),
        "labels": (kept["labels"], "kept documents by label"),
        "splits": (kept["splits"], "kept documents by split"),
        "duplicate_clusters": (
            {f"size {k}": v for k, v in summary["duplicates"]["size_histogram"].items()},
            "duplicate clusters by size (documents per cluster)",
        ),
    }
    for name, (counts, title) in bars.items():
        if counts and set(counts) != {"(none)"}:
            plots[name] = _bar(_top(counts), title, out / f"{name}.png")
    if any(len(v) for v in lengths.values()):
        plots["lengths"] = _length_histogram(lengths, out / "lengths.png")
    return plots


def _figure(height: float):
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7.0, height), dpi=100)


def save_figure(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        # labels in scripts the default font lacks (Chinese) draw as boxes; don't warn per glyph
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.tight_layout()
        fig.savefig(path, format="png", metadata={"Software": None})  # no version: stable bytes
    plt.close(fig)
    return path.name


def _bar(counts: dict[str, int], title: str, path: Path) -> str:
    labels = list(counts)[::-1]  # largest at the top
    fig, ax = _figure(1.2 + 0.3 * len(labels))
    ax.barh(labels, [counts[k] for k in labels], color="#4878a8")
    ax.xaxis.get_major_locator().set_params(integer=True)  # counts: no 0.5 ticks
    ax.set_title(title)
    ax.set_xlabel("documents")
    return save_figure(fig, path)


def _length_histogram(lengths: dict[str, array], path: Path) -> str:
    """Kept vs dropped lengths on log-spaced bins (lengths span several orders of magnitude)."""
    import numpy as np

    values = {k: np.frombuffer(v, dtype=np.int64) for k, v in lengths.items() if len(v)}
    top = max(int(v.max()) for v in values.values())
    bins = np.unique(np.geomspace(1, max(top + 1, 2), 40).round())
    fig, ax = _figure(3.5)
    for name, v in values.items():
        ax.hist(np.maximum(v, 1), bins=bins, alpha=0.6, label=f"{name} ({v.size})")
    ax.set_xscale("log")
    ax.set_xlabel("characters per document")
    ax.set_ylabel("documents")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title("document length, kept vs dropped")
    ax.legend()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- sections
def report_sections(summary: dict, plots: dict[str, str] | None) -> list[Section]:
    """The report as sections of paragraphs, tables and images (``plots`` None: no matplotlib)."""
    plots = plots or {}
    kept = summary["kept"]
    sections = [
        ("Counts", _counts(summary)),
        ("Blocks", _blocks(summary["blocks"]) + _img(plots, "drops")),
        ("Top reasons", _reasons(summary)),
        ("Lengths (characters)", _lengths(summary) + _img(plots, "lengths")),
        ("Languages", _distribution(kept["languages"], "language") + _img(plots, "languages")),
        ("Labels", _distribution(kept["labels"], "label") + _img(plots, "labels")),
        (
            "Splits",
            _distribution(kept["splits"], "split") + _img(plots, "splits"),
        ),
        ("Global block reports", _global(summary)),
        ("Duplicates", _duplicates(summary["duplicates"]) + _img(plots, "duplicate_clusters")),
        ("Missing fields", _missing(kept)),
        ("Diversity", _diversity(summary["diversity"])),
        ("PII and augmentation", _pii_augmented(kept)),
    ]
    if summary.get("plots") is None:
        sections.append(
            (
                "Plots",
                [
                    (
                        "p",
                        "matplotlib is not installed, so this report has no plots "
                        "(pip install matplotlib).",
                    )
                ],
            )
        )
    return sections


def _img(plots: dict[str, str], name: str) -> list[Item]:
    return [("img", plots[name], name)] if name in plots else []


def _counts(summary: dict) -> list[Item]:
    totals = summary["totals"]
    keys = ("read", "added", "kept", "dropped", "rejected")
    main = summary["checks"][0]
    flag = "ok" if main["ok"] else "**MISMATCH**"
    items: list[Item] = [
        ("table", list(keys), [[totals.get(k, 0) for k in keys]]),
        ("p", f"{main['check']}: {main['left']} = {main['right']} ({flag})"),
    ]
    failed = [c for c in summary["checks"] if not c["ok"]]
    if failed:
        rows = [[c["check"], c["left"], c["right"]] for c in failed]
        items.append(("p", f"**{len(failed)} count check(s) failed:**"))
        items.append(("table", ["check", "expected", "found"], rows))
    else:
        items.append(("p", f"All {len(summary['checks'])} count checks hold."))
    shards = summary["shard_checks"]
    bad = [s for s in shards if not s["ok"]]
    if bad:
        items.append(("table", ["shard", "problem"], [[s["shard"], s["problem"]] for s in bad]))
    elif shards:
        items.append(("p", f"All {len(shards)} shards match the docs and sha256 in stats.json."))
    return items


def _blocks(blocks: list[dict]) -> list[Item]:
    header = ["#", "block", "seen", "kept", "changed", "added", "dropped", "drop reasons"]
    rows = []
    for b in blocks:
        dropped = b.get("dropped") or {}
        if not isinstance(dropped, dict):
            dropped = {"dropped": dropped}
        reasons = ", ".join(
            f"{r} {n}" for r, n in sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0]))
        )
        row = [
            b.get("index"),
            b.get("name"),
            b.get("seen", 0),
            b.get("kept", 0),
            b.get("changed", 0),
        ]
        rows.append(row + [b.get("added", 0), sum(dropped.values()), reasons])
    return [("table", header, rows)]


def _reasons(summary: dict) -> list[Item]:
    items: list[Item] = []
    if summary["top_reasons"]:
        rows = [
            [r["block"], r["reason"], r["count"], ", ".join(r["examples"])]
            for r in summary["top_reasons"]
        ]
        items.append(("table", ["block", "reason", "dropped", "example ids"], rows))
    else:
        items.append(("p", "No document was dropped."))
    if summary["rejects"]["reasons"]:
        rows = [
            [r["reason"], r["count"], ", ".join(r["examples"])]
            for r in summary["rejects"]["reasons"]
        ]
        items.append(("p", "Rejected input rows (rejects.jsonl):"))
        items.append(("table", ["reason", "rows", "examples (file:line)"], rows))
    return items


def _lengths(summary: dict) -> list[Item]:
    kept, dropped = summary["kept"]["length_chars"], summary["dropped"]["length_chars"]
    keys = [k for k in kept if k != "count"] or [k for k in dropped if k != "count"]
    rows = [["kept", kept.get("count", 0)] + [kept.get(k, "") for k in keys]]
    rows.append(["dropped", dropped.get("count", 0)] + [dropped.get(k, "") for k in keys])
    return [("table", ["", "docs"] + keys, rows)]


def _top(counts: dict[str, int]) -> dict[str, int]:
    top = dict(list(counts.items())[:TOP])
    rest = sum(list(counts.values())[TOP:])
    return {**top, "(other)": rest} if rest else top


def _distribution(counts: dict[str, int], what: str) -> list[Item]:
    if not counts or set(counts) == {"(none)"}:
        return [("p", f"No {what} in the kept rows.")]
    total = sum(counts.values())
    rows = [[k, n, f"{n / total:.2%}"] for k, n in _top(counts).items()]
    return [("table", [what, "docs", "share"], rows)]


def _global(summary: dict) -> list[Item]:
    items: list[Item] = []
    for name, value in sorted(summary["global"].items()):
        rows = [[k, v] for k, v in _flatten(value)]
        items += [("p", f"`{name}`:"), ("table", ["key", "value"], rows)]
    return items or [("p", "No global block reported anything (stats.json `global`).")]


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        return [kv for k, v in sorted(value.items()) for kv in _flatten(v, f"{prefix}{k}.")]
    text = value if isinstance(value, (int, float, str)) else json.dumps(value, sort_keys=True)
    return [(prefix.rstrip(".") or "value", text)]


def _duplicates(dups: dict) -> list[Item]:
    if not dups["clusters"]:
        return [("p", "No duplicate clusters (no exclusion names a `cluster` or `duplicate_of`).")]
    line = (
        f"{dups['clusters']} cluster(s) holding {dups['docs_in_clusters']} documents; "
        f"the largest has {dups['largest']}."
    )
    rows = [[size, n] for size, n in dups["size_histogram"].items()]
    return [("p", line), ("table", ["cluster size", "clusters"], rows)]


def _missing(kept: dict) -> list[Item]:
    rows = [[k, f"{r:.2%}"] for k, r in kept["missing_ratio"].items()]
    if not rows:
        return [("p", "No kept rows.")]
    return [
        ("p", "Share of kept rows without each key (seen in at least one row)."),
        ("table", ["key", "missing"], rows),
    ]


def _diversity(div: dict) -> list[Item]:
    rows = [
        ["sampled documents (lowest id hashes)", div["sample_docs"]],
        ["words", div["words"]],
        ["distinct words", div["distinct_words"]],
        ["distinct / total words", div["distinct_ratio"]],
        ["mean pairwise TF-IDF cosine distance", div["tfidf_mean_cosine_distance"]],
        ["TF-IDF computed with", div["tfidf_backend"]],
    ]
    return [("table", ["figure", "value"], rows)]


def _pii_augmented(kept: dict) -> list[Item]:
    pii, aug = kept["pii"], kept["augmented"]
    items: list[Item] = [("p", f"Kept rows with PII found (metadata.pii): {pii['docs']}.")]
    if pii["by_kind"]:
        items.append(
            ("table", ["PII kind", "occurrences"], [[k, n] for k, n in pii["by_kind"].items()])
        )
    items.append(("p", f"Augmented rows (metadata.augmented): {aug['rows']}."))
    if aug["by_kind"]:
        items.append(
            ("table", ["augmentation", "rows"], [[k, n] for k, n in aug["by_kind"].items()])
        )
    return items


# ----------------------------------------------------------------------------- rendering
def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def render_markdown(sections: list[Section], title: str) -> str:
    lines = [f"# {title}", ""]
    for name, items in sections:
        lines += [f"## {name}", ""]
        for item in items:
            if item[0] == "p":
                lines += [item[1], ""]
            elif item[0] == "img":
                lines += [f"![{item[2]}]({item[1]})", ""]
            else:
                lines += _md_table(item[1], item[2]) + [""]
    return "\n".join(lines).rstrip() + "\n"


def _md_table(header: list, rows: list[list]) -> list[str]:
    def line(cells: list) -> str:
        return (
            "| " + " | ".join(_cell(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
        )

    return [line(header), "|" + "---|" * len(header)] + [line(r) for r in rows]


_CSS = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;"
    "text-align:left}th{background:#eee}img{max-width:100%}"
)


def render_html(sections: list[Section], folder: Path, title: str) -> str:
    """One self-contained page; images are read from ``folder`` and embedded as base64."""
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    out.append(f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>")
    for name, items in sections:
        out.append(f"<h2>{html.escape(name)}</h2>")
        for item in items:
            if item[0] == "p":
                out.append(f"<p>{_inline(item[1])}</p>")
            elif item[0] == "img":
                data = base64.b64encode((folder / item[1]).read_bytes()).decode("ascii")
                out.append(f"<img alt='{html.escape(item[2])}' src='data:image/png;base64,{data}'>")
            else:
                out.append(_html_table(item[1], item[2]))
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escape, then render the two Markdown marks the sections use: **bold** and `code`."""
    parts = html.escape(text).split("**")
    text = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html_table(header: list, rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(_cell(c))}</th>" for c in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"
