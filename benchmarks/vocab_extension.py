"""Domain vocabulary extension on generated en+zh finance text: tokens per document before and
after adding the finance terms, and validation loss while continuing pretraining with the new
rows initialised to the mean of their old sub-token rows vs. randomly (vs. not extending).

    .venv/bin/python benchmarks/vocab_extension.py              # ~5 min on 2 CPU cores
    .venv/bin/python benchmarks/vocab_extension.py --steps 20   # a smoke run (writes nothing)

What runs, all through the lmforge CLI in this process and all seeded:

1. a byte-level BPE tokenizer (vocab 2000) trained on the *general* demo corpus only, so the
   finance terms are split into many pieces;
2. a base ``tiny-llama`` pretrained on the general corpus plus 200 finance documents (it has
   seen the terms, in pieces), ``--base-steps`` steps;
3. ``lmforge tokenizer extend`` with ``FINANCE_TERMS``: ``init=mean`` and ``init=random``;
4. continued pretraining of each (and of the unextended base) on 800 other finance documents,
   ``--steps`` steps, validated every ``--eval-every`` steps on 100 held-out ones.

Loss per token is not comparable across tokenizers (an extended tokenizer has fewer, harder
tokens), so the table also gives bits per byte of the held-out text (``lmforge evaluate``), which
is. Results: ``benchmarks/results/vocab_extension.json``; figures in docs/vocabulary.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, BenchError, machine_info, run_main  # noqa: E402

QUIET = ["track.progress=false", "track.tensorboard=off"]


def _cli(args: list[str]) -> None:
    from lmforge.cli import main

    code = main(args)
    if code != 0:
        raise BenchError(f"lmforge {' '.join(args[:2])} failed with exit code {code}")


def _bits_per_byte(work: Path, model: Path, data: Path, name: str) -> dict:
    out = work / f"eval-{name}"
    _cli(
        ["evaluate", f"model.path={model}", f"perplexity.files=[{data}]"]
        + ["perplexity.window=128", f"output_dir={out}"]
    )
    p = json.loads((out / "metrics.json").read_text())["perplexity"]
    return {"bits_per_byte": p["bits_per_byte"], "token_ppl": p["token_perplexity"]}


def _tokens_per_doc(tokenizer_dir: Path, data: Path) -> dict[str, float]:
    from lmforge.models.load import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    by_lang: dict[str, list[int]] = {}
    for line in data.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        n = len(tok(row["text"], add_special_tokens=False)["input_ids"])
        by_lang.setdefault(row["lang"], []).append(n)
    out = {lang: statistics.mean(v) for lang, v in sorted(by_lang.items())}
    out["all"] = statistics.mean(n for v in by_lang.values() for n in v)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-steps", type=int, default=400)
    parser.add_argument("--steps", type=int, default=150, help="continued-pretraining steps")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--work", type=Path, default=None, help="keep the working folder here")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="lmforge-vocab-"))
    work.mkdir(parents=True, exist_ok=True)

    import torch

    torch.set_num_threads(2)
    from lmforge.data.synthetic import write_demo_data
    from lmforge.data.synthetic_finance import FINANCE_TERMS, write_finance_corpus

    general = write_demo_data(work / "general", n_docs=2000, n_per_task=20, seed=0)["corpus"]
    fin_base = write_finance_corpus(work / "fin-base.jsonl", 200, seed=3)
    fin_train = write_finance_corpus(work / "fin-train.jsonl", 800, seed=1)
    fin_val = write_finance_corpus(work / "fin-val.jsonl", 100, seed=2)

    _cli(
        ["tokenizer", f"data.files=[{general}]", "tokenizer.vocab_size=2000"]
        + [f"output_dir={work / 'tok'}"]
    )
    common = ["stage=pt", "data.max_length=128", "train.batch_size=16", "train.seed=0", *QUIET]
    _cli(
        ["train", *common, "model.preset=tiny-llama", f"model.tokenizer={work / 'tok'}"]
        + [f"data.train=[{general},{fin_base}]", f"train.max_steps={args.base_steps}"]
        + ["train.lr=3e-3", f"output_dir={work / 'base'}"]
    )
    terms = work / "terms.txt"
    terms.write_text("\n".join(FINANCE_TERMS) + "\n", encoding="utf-8")
    for init in ("mean", "random"):
        _cli(
            ["tokenizer", "extend", f"model.path={work / 'base'}", f"terms_file={terms}"]
            + [f"init={init}", f"output_dir={work / f'ext-{init}'}"]
        )

    results: dict = {
        "machine": machine_info(),
        "settings": vars(args) | {"work": str(work), "results": None},
        "terms": FINANCE_TERMS,
        "tokens_per_doc": {
            "before": _tokens_per_doc(work / "tok" / "tokenizer", fin_val),
            "after": _tokens_per_doc(work / "ext-mean" / "model", fin_val),
        },
        "sides": {},
    }
    sides = {"no extension": work / "base", "mean init": work / "ext-mean"}
    sides["random init"] = work / "ext-random"
    for name, model in sides.items():
        side = name.split()[0]
        before = _bits_per_byte(work, model, fin_val, f"{side}-0")
        out = work / f"cont-{side}"
        _cli(
            ["train", *common, f"model.path={model}", f"data.train=[{fin_train}]"]
            + [f"data.validation=[{fin_val}]", f"train.max_steps={args.steps}", "train.lr=1e-3"]
            + [f"train.eval_every={args.eval_every}", f"output_dir={out}"]
        )
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        evals = {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r}
        after = _bits_per_byte(work, out, fin_val, f"{side}-{args.steps}")
        results["sides"][name] = {
            "step0": before,
            "eval_loss_by_step": evals,
            "final": after,
            "train_loss": json.loads((out / "manifest.json").read_text())["metrics"]["train_loss"],
        }

    tpd = results["tokens_per_doc"]
    print("\ntokens per held-out finance document (100 docs):")
    for lang in tpd["before"]:
        b, a = tpd["before"][lang], tpd["after"][lang]
        print(f"  {lang:>4}: {b:7.1f} -> {a:7.1f}  ({a / b:.2f}x)")
    steps = sorted(next(iter(results["sides"].values()))["eval_loss_by_step"])
    print(f"\n| side | bits/byte step 0 | eval loss at {steps} | bits/byte step {args.steps} |")
    for name, r in results["sides"].items():
        losses = ", ".join(f"{r['eval_loss_by_step'][s]:.3f}" for s in steps)
        print(
            f"| {name} | {r['step0']['bits_per_byte']:.4f} | {losses} | "
            f"{r['final']['bits_per_byte']:.4f} |"
        )
    full_length = args.steps == 150 and args.base_steps == 400
    path = args.results or (RESULTS_DIR / "vocab_extension.json" if full_length else None)
    if path is not None:
        path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    run_main(main)
