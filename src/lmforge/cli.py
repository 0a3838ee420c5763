"""The ``lmforge`` command: ``lmforge <recipe> [verb] [CONFIG.yaml] [key.sub=value ...]``.

Each subcommand maps to one recipe function in ``lmforge.recipes``; a Python user calls the same
function with a config object. Exit codes: 0 success, 1 the work failed, 2 a user error.
"""

from __future__ import annotations

import importlib
import sys
import textwrap

from lmforge.errors import LmforgeError, UserError

# subcommand -> (module in lmforge.recipes, one-line summary)
RECIPES: dict[str, tuple[str, str]] = {
    "prepare": ("prepare", "curate raw data: filters, dedup, PII, splits, mixing (pipeline.yaml)"),
    "data diff": ("", "data diff A B: documents added/removed and distribution shifts"),
    "data dvc": ("", "data dvc PIPELINE.yaml... [-o dvc.yaml]: DVC stages for prepare runs"),
    "tokenizer": ("tokenizer", "train a tokenizer (byte-level BPE, Unigram, WordPiece)"),
    "tokenizer extend": ("vocab", "add domain terms to a model's vocabulary (mean-init rows)"),
    "train": (
        "train",
        "pretrain (stage: pt: clm, mlm, plm, contrastive), fine-tune (sft) or classify (cls): "
        "full, freeze, lora, qlora, ia3, prefix, prompt or p-tuning (adapter.type)",
    ),
    "generate": ("generate", "prompts file -> outputs file"),
    "chat": ("chat", "talk to a model in the terminal"),
    "evaluate": (
        "evaluate",
        "perplexity, generation (exact match, BLEU, ROUGE), multiple choice, lm-eval tasks",
    ),
    "evaluate compare": ("", "RUN_A RUN_B: paired bootstrap, McNemar, the promotion verdict"),
    "export merge": ("export", "merge a LoRA, DoRA, IA3 or QLoRA adapter into a plain model"),
    "sweep": ("sweep", "search config keys with Optuna (TPE, pruning): results table, best.yaml"),
    "demo": ("demo", "the whole path on CPU: data, tokenizer, pretrain, LoRA, eval, merge"),
    "lineage": ("", "lineage PATH: the chain of runs and files behind an artifact"),
}

USAGE = "usage: lmforge <command> [CONFIG.yaml] [key.sub=value ...]   (lmforge <command> --help)"


def _overview() -> str:
    rows = "\n".join(f"  {name:<14} {summary}" for name, (_, summary) in RECIPES.items())
    return f"{USAGE}\n\ncommands:\n{rows}\n"


def _recipe_help(name: str) -> str:
    from lmforge.config import RECIPE_CONFIGS, describe

    rows = describe(RECIPE_CONFIGS[name])
    width = max(len(r[0]) for r in rows)
    lines = [
        f"usage: lmforge {name} [CONFIG.yaml] [key.sub=value ...]",
        "",
        RECIPES[name][1],
        "",
        "config keys (type, default: help):",
    ]
    for key, typ, default, help_text in rows:
        if typ == "group":
            lines.append(f"  {key + ':':<{width + 1}} {help_text}")
        else:
            detail = f"{typ} = {default}"
            lines.append(f"  {key:<{width}}  {help_text}")
            lines.append(textwrap.indent(detail, " " * (width + 4)))
    return "\n".join(lines) + "\n"


def _split_command(argv: list[str]) -> tuple[str, list[str]]:
    if len(argv) >= 2 and f"{argv[0]} {argv[1]}" in RECIPES:
        return f"{argv[0]} {argv[1]}", argv[2:]
    if argv[0] in RECIPES:
        return argv[0], argv[1:]
    if argv[0] in ("export", "data"):
        verbs = [k.split()[1] for k in RECIPES if k.startswith(argv[0] + " ")]
        raise UserError(f"lmforge {argv[0]} needs a verb: {', '.join(verbs)}")
    import difflib

    close = difflib.get_close_matches(argv[0], list(RECIPES), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise UserError(f"unknown command '{argv[0]}'{hint}\n{USAGE}")


def run_command(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(_overview())
        return 0
    if argv[0] in ("-V", "--version"):
        from lmforge import __version__

        print(__version__)
        return 0
    name, rest = _split_command(argv)
    if name.startswith("data "):  # tools with their own arguments, not config recipes
        from lmforge.recipes import data

        return getattr(data, name.split()[1])(rest)
    if name == "evaluate compare":  # its own arguments, like the data tools
        from lmforge.eval.compare import main as compare

        return compare(rest)
    if "-h" in rest or "--help" in rest:
        if name == "lineage":
            print("usage: lmforge lineage PATH\n\n" + RECIPES[name][1])
        else:
            sys.stdout.write(_recipe_help(name))
        return 0
    if name == "lineage":
        if len(rest) != 1:
            raise UserError("usage: lmforge lineage PATH")
        from lmforge.artifacts import format_lineage, lineage

        print(format_lineage(lineage(rest[0])))
        return 0

    from lmforge.config import RECIPE_CONFIGS, load_config

    config_path = None
    if rest and "=" not in rest[0]:
        config_path, rest = rest[0], rest[1:]
    bad = [a for a in rest if "=" not in a]
    if bad:
        raise UserError(f"expected key.sub=value overrides after the config file, got {bad}")
    cfg = load_config(RECIPE_CONFIGS[name], config_path, rest)
    module = importlib.import_module(f"lmforge.recipes.{RECIPES[name][0]}")
    entry = name.split()[1] if " " in name else "run"  # "export merge" -> export.merge
    result = getattr(module, entry)(cfg)
    return int(result) if isinstance(result, int) else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run_command(argv)
    except LmforgeError as exc:
        print(f"lmforge: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
