"""Deterministic synthetic finance text (English + Simplified Chinese) for the vocabulary
extension tests and benchmark: short company reports dense in domain terms that a tokenizer
trained on general text splits into many pieces ("EBITDA", "市盈率", "资产负债表").

    docs = make_finance_corpus(200, seed=0)   # [{"id", "text", "lang"}, ...]
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# the domain vocabulary the templates use; FINANCE_TERMS is what a user would add
FINANCE_TERMS = [
    "EBITDA",
    "amortization",
    "depreciation",
    "receivables",
    "liabilities",
    "dividend",
    "市盈率",
    "市净率",
    "资产负债表",
    "现金流量表",
    "净利润",
    "营业收入",
    "毛利率",
    "应收账款",
]

_COMPANIES_EN = ["Northwind", "Contoso", "Fabrikam", "Litware", "Tailspin", "Adatum", "Proseware"]
_COMPANIES_ZH = ["华信科技", "东方制造", "长江能源", "南山医药", "远航物流", "新禾食品", "天成银行"]
_EN = [
    "{c} reported EBITDA of {m} million dollars, up {p} percent from last year.",
    "EBITDA margin at {c} rose to {p} percent as costs fell.",
    "Depreciation and amortization at {c} reached {m} million dollars this quarter.",
    "{c} wrote off {m} million dollars of receivables, and its liabilities grew by {p} percent.",
    "The board of {c} raised the dividend by {p} percent after EBITDA beat forecasts.",
    "Analysts said the liabilities of {c} are small compared with its EBITDA.",
    "{c} expects receivables to fall by {p} percent once customers pay on time.",
    "Higher depreciation cut the profit of {c}, but EBITDA was steady at {m} million dollars.",
]
_ZH = [
    "{c}的市盈率为{n}倍，市净率为{k}倍。",
    "{c}公布资产负债表，应收账款增加了{p}%。",
    "根据现金流量表，{c}的经营现金流为{m}亿元。",
    "{c}本季度营业收入为{m}亿元，净利润同比增长{p}%。",
    "{c}的毛利率提高到{p}%，市盈率降至{n}倍。",
    "分析师认为{c}的资产负债表稳健，净利润将继续增长。",
    "{c}的应收账款占营业收入的{p}%，现金流量表显示回款变慢。",
    "受成本上升影响，{c}的毛利率下降了{k}个百分点，净利润减少{p}%。",
]


def _sentence(rng: random.Random, zh: bool) -> str:
    template = rng.choice(_ZH if zh else _EN)
    company = rng.choice(_COMPANIES_ZH if zh else _COMPANIES_EN)
    return template.format(
        c=company,
        m=rng.randint(2, 950),
        p=rng.randint(1, 60),
        n=rng.randint(5, 80),
        k=rng.randint(1, 9),
    )


def make_finance_corpus(n_docs: int, seed: int = 0) -> list[dict]:
    """``n_docs`` documents of 3-6 sentences each, alternating English and Chinese."""
    rng = random.Random(seed)
    docs = []
    for i in range(n_docs):
        zh = i % 2 == 1
        sentences = [_sentence(rng, zh) for _ in range(rng.randint(3, 6))]
        text = ("" if zh else " ").join(sentences)
        docs.append({"id": f"fin-{i:06d}", "text": text, "lang": "zh" if zh else "en"})
    return docs


def write_finance_corpus(path: str | Path, n_docs: int, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = make_finance_corpus(n_docs, seed)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path
