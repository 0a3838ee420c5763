"""``lmforge tokenizer CONFIG``: train a tokenizer from txt/jsonl and save it in the HF layout.

    lmforge tokenizer configs/tokenizer.yaml data.files=[corpus.jsonl] tokenizer.vocab_size=4000

Writes ``OUTPUT_DIR/tokenizer/`` (loadable with ``AutoTokenizer.from_pretrained``),
``OUTPUT_DIR/rejects.jsonl`` and ``OUTPUT_DIR/manifest.json``.
"""

from __future__ import annotations

from collections.abc import Iterator

from lmforge.artifacts import Run, recorded
from lmforge.config import to_dict
from lmforge.config.recipes import TokenizerRecipe
from lmforge.data.readers import Rejects, iter_records
from lmforge.data.schema import RowError, to_text
from lmforge.errors import DataError
from lmforge.models.load import TOKENIZER_SUBDIR, save_pretrained
from lmforge.tokenizer.templates import check_eos_template
from lmforge.tokenizer.train import train_tokenizer


def run(cfg: TokenizerRecipe) -> Run:
    run = Run.start("tokenizer", to_dict(cfg), cfg.output_dir, inputs={"corpus": cfg.data.files})
    if not cfg.force and run.finished_before():
        print(f"lmforge: reusing finished tokenizer run {run.dir}")
        return run
    with recorded(run):
        rejects = Rejects()
        counts = {"used": 0}

        def texts() -> Iterator[str]:
            for record in iter_records(cfg.data.files, rejects):
                if cfg.data.max_docs and counts["used"] >= cfg.data.max_docs:
                    return
                try:
                    text = to_text(record.row, cfg.data.text_field)
                except RowError as exc:
                    rejects.add_record(record, str(exc))
                    continue
                counts["used"] += 1
                yield text

        tokenizer = train_tokenizer(texts(), cfg.tokenizer)
        if counts["used"] == 0:
            raise DataError(f"no usable text in {cfg.data.files} ({len(rejects)} rows rejected)")
        check_eos_template(tokenizer)
        folder = save_pretrained(None, tokenizer, run.dir / TOKENIZER_SUBDIR)
        rejects_path = rejects.write(run.dir / "rejects.jsonl")
        # read = used + rejected: reader-level rejects (bad JSON, bad UTF-8) are rows too
        run.counts.update(
            read=counts["used"] + len(rejects),
            used=counts["used"],
            rejected=len(rejects),
            rejected_by_reason=rejects.by_reason(),
            rejects_file=str(rejects_path),
        )
        run.metrics["vocab_size"] = len(tokenizer)
        run.add_output(folder, "tokenizer")
    print(f"lmforge: tokenizer ({len(tokenizer)} tokens) saved to {folder}")
    return run
