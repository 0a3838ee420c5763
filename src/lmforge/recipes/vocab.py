"""``lmforge tokenizer extend CONFIG``: add domain terms to a model's vocabulary, then continue
training on domain text with the result.

    lmforge tokenizer extend model.path=runs/pt terms=[EBITDA,市盈率,资产负债表] output_dir=runs/fin
    lmforge tokenizer extend configs/vocab_extend.yaml      # terms_file: one term per line
    lmforge train configs/pretrain.yaml model.preset=null model.tokenizer=null \\
        model.path=runs/fin data.train=[finance.jsonl]      # continue pretraining

Run directory: ``model/`` (the resized model and the extended tokenizer together, a plain
Hugging Face folder; ``tokenizer/`` instead when only a tokenizer was given), ``report.json``
(for each term: the token added, how the old tokenizer split it, the rows averaged into its
row) and ``manifest.json``. See ``lmforge.models.vocab`` for how terms are matched and rows
initialised.
"""

from __future__ import annotations

from pathlib import Path

from lmforge.artifacts import Run, atomic_write_json, recorded
from lmforge.config import to_dict
from lmforge.config.groups import ModelConfig
from lmforge.config.vocab import VocabExtendRecipe
from lmforge.errors import ConfigError, DataError, UserError
from lmforge.models.load import (
    MODEL_SUBDIR,
    TOKENIZER_SUBDIR,
    build_model,
    load_tokenizer,
    resolve_dir,
    save_pretrained,
)
from lmforge.models.vocab import add_terms, clean_terms


def _read_terms(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"terms_file not found: {p}")
    return p.read_text(encoding="utf-8").splitlines()


def extend(cfg: VocabExtendRecipe) -> Run:
    inputs: dict = {"terms": cfg.terms_file}
    if cfg.model.path:
        inputs["base_model"] = str(resolve_dir(cfg.model.path))
    if cfg.model.tokenizer:
        inputs["tokenizer"] = str(resolve_dir(cfg.model.tokenizer, "tokenizer"))
    run = Run.start("vocab", to_dict(cfg), cfg.output_dir, inputs=inputs)
    if not cfg.force and run.finished_before():
        print(f"lmforge: reusing finished vocabulary extension {run.dir}")
        return run
    with recorded(run):
        terms = clean_terms(cfg.terms + (_read_terms(cfg.terms_file) if cfg.terms_file else []))
        if not terms:
            raise DataError(f"no terms to add in terms or {cfg.terms_file}")
        tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path)
        model = None
        if cfg.model.path:
            source = ModelConfig(path=cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
            model = build_model(source, tokenizer)
            rows = model.get_input_embeddings().weight.shape[0]
            if len(tokenizer) > rows:
                raise ConfigError(
                    f"the tokenizer has {len(tokenizer)} tokens but the model's embedding has "
                    f"{rows} rows: use the model's own tokenizer"
                )
        report = add_terms(tokenizer, model, terms, cfg.init, cfg.seed)
        folder = save_pretrained(
            model, tokenizer, run.dir / (MODEL_SUBDIR if model is not None else TOKENIZER_SUBDIR)
        )
        report_path = atomic_write_json(run.dir / "report.json", report.to_dict())
        statuses = [t.status for t in report.tokens]
        run.counts.update(
            terms=len(terms),
            tokens_added=len(report.added),
            already_one_token=len(statuses) - len(report.added),
        )
        run.metrics.update(
            vocab_before=report.old_size,
            vocab_after=report.new_size,
            embedding_rows=list(report.embedding_rows),
            init=report.init if model is not None else None,
        )
        run.add_output(folder, "model" if model is not None else "tokenizer")
        run.add_output(report_path, "report")
    for t in report.tokens:
        pieces = " ".join(t.before)
        print(f"lmforge: {t.token!r}: {len(t.before)} tokens ({pieces}) -> {t.status}")
    print(
        f"lmforge: vocabulary {report.old_size} -> {report.new_size} tokens "
        f"({len(report.added)} added{', rows ' + cfg.init + '-initialised' if model else ''}); "
        f"saved to {folder}"
    )
    return run
