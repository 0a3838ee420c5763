"""PII redaction: every kind found in English and Chinese text, checksums enforced, digit runs
and look-alikes (versions, times, dates, order numbers) left alone, counts in metadata."""

from __future__ import annotations

import pickle

import pytest
from pydantic import ValidationError

from lmforge.data.blocks import REGISTRY, ShardContext, run_block
from lmforge.data.document import Document
from lmforge.data.pii import KINDS, RedactPII, cn_id_valid, find_pii, iban_valid, luhn_valid, redact

# Known-valid numbers. The ID check characters were computed by hand with the GB 11643 weights
# (7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2, sum mod 11 -> "10X98765432"):
# 11010519491231002X: sum 167, 167 % 11 = 2 -> X (the standard's own example)
# 44030419900307123X: sum 244, 244 % 11 = 2 -> X;  440304199003071248: sum 246 % 11 = 4 -> 8
VALID_IDS = ["11010519491231002X", "44030419900307123X", "440304199003071248"]
INVALID_IDS = [
    "110105194912310021",  # wrong check digit
    "44030419900307123x0",  # 19 characters
    "440304199002301238",  # 30 February
    "440304230003071231",  # born in 2300
    "123456789012345678",  # a digit run
]
VALID_CARDS = [
    "4111 1111 1111 1111",
    "5500-0000-0000-0004",
    "3782 822463 10005",
    "6200000000000005",
]
INVALID_CARDS = ["4111 1111 1111 1112", "1234567890123456", "0000000000000000", "4111111111111"]


@pytest.mark.parametrize("number", VALID_IDS)
def test_valid_cn_ids_are_redacted(number):
    assert cn_id_valid(number)
    assert redact(f"身份证号{number}，请核对。")[0] == "身份证号<CN_ID>，请核对。"


@pytest.mark.parametrize("number", INVALID_IDS)
def test_invalid_cn_ids_survive(number):
    assert not cn_id_valid(number)
    text = f"编号 {number} 已登记"
    assert redact(text)[0] == text


@pytest.mark.parametrize("number", VALID_CARDS)
def test_luhn_valid_cards_are_redacted(number):
    assert luhn_valid(number.replace(" ", "").replace("-", ""))
    assert redact(f"card: {number}.") == ("card: <CARD>.", {"CARD": 1})


@pytest.mark.parametrize("number", INVALID_CARDS)
def test_card_lookalikes_survive(number):
    text = f"ref {number} end"
    assert redact(text)[0] == text


def test_iban():
    assert iban_valid("GB82 WEST 1234 5698 7654 32")
    assert not iban_valid("GB83 WEST 1234 5698 7654 32")
    out = redact("pay to DE89 3704 0044 0532 0130 00 or DE88 3704 0044 0532 0130 00")[0]
    assert out == "pay to <BANK_ACCOUNT> or DE88 3704 0044 0532 0130 00"


@pytest.mark.parametrize(
    "phone",
    [
        "13812345678",
        "138 1234 5678",
        "138-1234-5678",
        "+86 138 1234 5678",
        "+8613912345678",
        "(555) 123-4567",
        "555-123-4567",
        "1-800-555-1234",
        "+44 20 7946 0958",
        "+1 (415) 555-2671",
        "+49 30 1234567",
        "030 1234567",
        "06 12 34 56 78",
    ],
)
def test_phones(phone):
    assert redact(f"电话：{phone}。") == ("电话：<PHONE>。", {"PHONE": 1})
    assert redact(f"call {phone} now")[0] == "call <PHONE> now"


@pytest.mark.parametrize(
    "text",
    [
        "订单号 99138123456789 已发货",  # a mobile inside a longer digit run
        "order 202311150012 shipped",
        "version 1.2.3.4.5 and 10.0.0.256",
        "meet at 12:30:45 on 05-12-2023",
        "std::vector and a::b",
        "pi is 3.14159265358979",
        "1381234567",  # 10 digits: too short for a mobile
        "x 1234567 y",
    ],
)
def test_lookalikes_survive(text):
    assert redact(text) == (text, {})


def test_ips_emails_urls():
    text = (
        "Server 192.168.1.10 and 2001:db8::1 and fe80::1ff:fe23:4567:890a; "
        "mail 张三 zhang.san+ml@example.com.cn，看 https://example.com/a?b=1) "
        "或 www.example.org/路径 and http://foo.cn/x谢谢"
    )
    out, counts = redact(text)
    assert out == (
        "Server <IP> and <IP> and <IP>; mail 张三 <EMAIL>，看 <URL>) 或 <URL>路径 and <URL>谢谢"
    )
    assert counts == {"IP": 3, "EMAIL": 1, "URL": 3}


def test_url_claims_before_email_and_ip():
    spans = find_pii("see http://user@10.0.0.1/x and 10.0.0.2")
    assert [kind for _, _, kind in spans] == ["URL", "IP"]


def test_kinds_and_placeholder():
    text = "a@b.io 13812345678 http://x.org"
    assert redact(text, ["EMAIL"])[0] == "<EMAIL> 13812345678 http://x.org"
    assert redact(text, ["PHONE"], "[{kind}]")[0] == "a@b.io [PHONE] http://x.org"
    with pytest.raises(ValidationError, match="unknown PII kinds"):
        RedactPII({"kinds": ["email", "SSN"]})
    with pytest.raises(ValidationError, match="placeholder"):
        RedactPII({"placeholder": "<{name}>"})
    assert RedactPII({"kinds": ["email"]}).params.kinds == ["EMAIL"]


def test_block_counts_in_metadata_and_messages():
    assert REGISTRY["pii"] is RedactPII
    block = RedactPII()
    assert set(block.params.kinds) == set(KINDS)
    docs = [
        Document("1", text="no pii here"),
        Document(
            "2",
            messages=[
                {"role": "user", "content": "我的手机 13812345678，邮箱 a@b.cn"},
                {"role": "assistant", "content": "Noted a@b.cn and card 4111111111111111"},
            ],
            metadata={"pii": {"EMAIL": 1}},
        ),
        Document(
            "3",
            fields={"prompt": "ip 8.8.8.8", "chosen": "ok", "rejected": "id 11010519491231002X"},
        ),
    ]
    block = pickle.loads(pickle.dumps(block))
    ctx = ShardContext(0, seed=0)
    out = list(run_block(block, docs, ctx))
    assert ctx.stats.to_dict() == {"seen": 3, "kept": 3, "changed": 2, "added": 0, "dropped": {}}
    assert out[0].metadata == {}
    assert out[1].metadata["pii"] == {"CARD": 1, "EMAIL": 3, "PHONE": 1}
    assert out[1].messages[0]["content"] == "我的手机 <PHONE>，邮箱 <EMAIL>"
    assert out[2].fields == {"prompt": "ip <IP>", "chosen": "ok", "rejected": "id <CN_ID>"}
    assert out[2].metadata["pii"] == {"CN_ID": 1, "IP": 1}
