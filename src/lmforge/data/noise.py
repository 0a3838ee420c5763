"""Make a clean generated corpus look like raw crawled data, so ``prepare`` has work to do.

The demo's generator (:mod:`lmforge.data.synthetic`) writes clean documents; raw data never is.
:func:`add_noise` plants, in known and seeded amounts, what a curation pipeline must handle:
exact copies, near copies (a reposting tag added), personal data (emails, Chinese mobile
numbers), boilerplate and mojibake documents, and malformed rows (empty text, a number where text
belongs, a broken JSON line). Every planted row carries ``noise`` so a test or the demo report can
check that each was caught for the right reason.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

BOILERPLATE = [
    "Click here to accept cookies. All rights reserved. Privacy policy | Terms of use.",
    "版权所有 © 2024 保留所有权利。点击这里登录 | 免责声明 | 隐私政策",
]
MOJIBAKE = "Ã©Ã¨Ã  Ã¢â‚¬â„¢ Ã¯Â¿Â½ Ã¤Â¸Â­Ã¦â€“â€¡ " * 4
PII_EN = " Contact Mary at mary.jones@example.com or call +1 415 555 0132."
PII_ZH = "如有问题请联系王先生，手机13812345678，邮箱wang.li@example.cn。"


def add_noise(docs: list[dict], rate: float = 0.03, seed: int = 0) -> tuple[list[dict], list[str]]:
    """Return (rows with planted noise, raw lines that are not valid rows).

    ``docs`` are ``{"id", "text", "lang"}`` rows; about ``rate`` of them each get an exact copy,
    a near copy and personal data; a few junk documents and malformed rows are added. The input
    list is not modified; planted rows have ``noise`` set to what was planted.
    """
    rng = random.Random(seed)
    rows = [dict(d) for d in docs]
    count = max(1, int(len(docs) * rate))
    extra: list[dict] = []
    for doc in rng.sample(docs, count):
        extra.append({**doc, "id": f"{doc['id']}-copy", "noise": "exact_duplicate"})
    for doc in rng.sample(docs, count):
        tag = "（转载）" if doc.get("lang") == "zh" else " (reposted from the archive)"
        repost = {**doc, "id": f"{doc['id']}-repost", "text": doc["text"] + tag}
        extra.append({**repost, "noise": "near_duplicate"})
    for row in rng.sample(rows, count):
        row["text"] += PII_ZH if row.get("lang") == "zh" else PII_EN
        row["noise"] = "pii"
    for k, text in enumerate(BOILERPLATE + [MOJIBAKE]):
        extra.append({"id": f"junk-{k}", "text": text, "noise": "junk"})
    extra.append({"id": "empty-0", "text": "   ", "noise": "malformed"})
    extra.append({"id": "number-0", "text": 12345, "noise": "malformed"})
    for row in extra:
        rows.insert(rng.randrange(len(rows) + 1), row)
    bad_lines = ['{"id": "broken-0", "text": "an unterminated row']
    return rows, bad_lines


def write_noisy_jsonl(path: str | Path, rows: list[dict], bad_lines: list[str], seed: int = 0):
    """Write ``rows`` as JSON Lines with ``bad_lines`` spliced in at seeded positions."""
    rng = random.Random(seed)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    for bad in bad_lines:
        lines.insert(rng.randrange(len(lines) + 1), bad)
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)
