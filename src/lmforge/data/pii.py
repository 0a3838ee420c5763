"""``pii``: replace personal data by typed placeholders (``<EMAIL>``, ``<PHONE>``, ``<CN_ID>``...).

Kinds, in the order they claim text (a span claimed by one kind is not looked at again):

- ``URL``: ``http(s)://``, ``ftp://`` and ``www.`` addresses (ASCII characters only, so a URL
  followed by Chinese text without a space ends where the Chinese starts).
- ``EMAIL``: ``name@host.tld``.
- ``IP``: IPv4 with valid octets (no leading zeros) and IPv6 (validated by :mod:`ipaddress`).
- ``BANK_ACCOUNT``: IBANs (country code, check digits, mod-97 checksum).
- ``CN_ID``: Chinese resident identity numbers: 18 characters, a real birth date and the
  ISO 7064 MOD 11-2 check character (``0-9`` or ``X``).
- ``CARD``: payment card numbers: 13-19 digits (plain, or in groups of 4 / 4-6-5 separated by
  spaces or dashes) starting with 2-6 (the issuer ranges in use) and passing the Luhn check.
- ``PHONE``: Chinese mobiles (``1[3-9]`` + 9 digits, optional ``+86``/``0086``, spaces or
  dashes), international numbers (``+`` country code, 8-15 digits), US numbers with separators
  (``(555) 123-4567``, ``555-123-4567``) and European national numbers (leading ``0``, groups
  separated by one consistent space or dash, 9-12 digits).

Digits inside a longer run of digits never match a shorter kind (an 11-digit run inside an order
number is not a phone), and checksums keep random digit runs out (about 1 in 10 random runs of
card length passes Luhn, so an order number can still be taken for a card: the price of recall).
Phone and ID patterns are written here rather than taken from a library: ``phonenumbers`` needs a
region per text and has no Chinese ID or card checks, and Presidio needs spaCy models we cannot
download; these patterns work region-free on mixed Chinese and English text.

Counts per kind go to ``metadata["pii"]`` (``{"EMAIL": 2, "PHONE": 1}``), added to any counts an
earlier ``pii`` block left.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterator

from pydantic import Field, field_validator

from lmforge.config.base import Group
from lmforge.data.blocks import Mapper, register
from lmforge.data.document import Document

KINDS = ("URL", "EMAIL", "IP", "BANK_ACCOUNT", "CN_ID", "CARD", "PHONE")

Span = tuple[int, int]

# ------------------------------------------------------------------ patterns
_URL_RE = re.compile(
    r"(?<![A-Za-z0-9])(?:(?:https?|ftp)://|www\.)[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+",
    re.IGNORECASE,
)
_URL_TRAILING = ".,;:!?'\")]}"
_EMAIL_RE = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9][A-Za-z0-9._%+\-]*@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9\-])"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4_RE = re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d)")
_IPV6_RE = re.compile(
    r"(?<![0-9A-Za-z:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?"
    r"(?![0-9A-Za-z:])"
)
_IBAN_RE = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"
)
_CN_ID_RE = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])")
_CARD_RE = re.compile(
    r"(?<![\d\-])(?:\d{4}([ \-])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{1,3})?"  # 4-4-4-4(-3)
    r"|\d{4}([ \-])\d{6}\2\d{4,5}"  # 4-6-5 (Amex), 4-6-4 (Diners)
    r"|\d{13,19})(?![\d])"
)
_PHONE_RES = (
    # Chinese mobile: optional +86 / 0086 / 86, then 1[3-9]x xxxx xxxx
    re.compile(r"(?<![\d+])(?:(?:\+|00)?86[ \-]?)?1[3-9]\d(?:[ \-]?\d{4}){2}(?!\d)"),
    # international: +CC then groups (parentheses allowed around one group)
    re.compile(r"(?<![\w+])\+[1-9]\d{0,2}(?:[ .\-]?\(?\d{1,5}\)?){1,6}(?<=\d)(?!\d)"),
    # US with separators: (555) 123-4567, 555-123-4567, 1-800-555-1234
    re.compile(
        r"(?<![\w+])(?:1[ .\-])?(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[ .\-])\d{3}[ .\-]\d{4}(?!\d)"
    ),
    # European national: 030 1234567, 06 12 34 56 78, 020-7946-0958
    re.compile(r"(?<![\w+])0\d{1,4}([ \-])\d{2,8}(?:\1\d{2,8}){0,3}(?!\d)"),
)
_PHONE_DIGITS = {0: (11, 13), 1: (8, 15), 2: (10, 11), 3: (9, 12)}

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


# ------------------------------------------------------------------ checks
def luhn_valid(digits: str) -> bool:
    """Luhn (mod 10) check of a digit string: every second digit from the right is doubled."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def cn_id_valid(text: str, today: datetime.date | None = None) -> bool:
    """True for an 18-character Chinese resident ID with a real birth date (1900..today) and a
    correct ISO 7064 MOD 11-2 check character."""
    if len(text) != 18 or not text[:17].isdigit() or text[17] not in "0123456789Xx":
        return False
    if text[0] == "0":  # region codes start at 11 (Beijing)
        return False
    try:
        born = datetime.date(int(text[6:10]), int(text[10:12]), int(text[12:14]))
    except ValueError:
        return False
    if not datetime.date(1900, 1, 1) <= born <= (today or datetime.date.today()):
        return False
    total = sum(int(c) * w for c, w in zip(text[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == text[17].upper()


def iban_valid(text: str) -> bool:
    """ISO 13616 check: move the first 4 characters to the end, letters to 10..35, mod 97 == 1."""
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _card_ok(match: re.Match) -> bool:
    digits = re.sub(r"\D", "", match.group())
    return (
        13 <= len(digits) <= 19
        and digits[0] in "23456"
        and len(set(digits)) > 1
        and luhn_valid(digits)
    )


def _ipv6_ok(match: re.Match) -> bool:
    text = match.group()
    groups = [g for g in re.split(r":+", text) if g]
    if len(groups) < 2 or not any(ch.isdigit() for ch in text):
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------ finders
def _iter_matches(
    pattern: re.Pattern, text: str, ok: Callable[[re.Match], bool] | None = None
) -> Iterator[Span]:
    for match in pattern.finditer(text):
        if ok is None or ok(match):
            yield match.span()


def _find_urls(text: str) -> Iterator[Span]:
    for match in _URL_RE.finditer(text):
        start, end = match.span()
        while end > start and text[end - 1] in _URL_TRAILING:
            # keep a closing bracket that closes one opened inside the URL
            if text[end - 1] == ")" and text.count("(", start, end) >= text.count(")", start, end):
                break
            end -= 1
        yield start, end


def _find_phones(text: str) -> Iterator[Span]:
    for index, pattern in enumerate(_PHONE_RES):
        low, high = _PHONE_DIGITS[index]
        for match in pattern.finditer(text):
            digits = sum(ch.isdigit() for ch in match.group())
            if low <= digits <= high:
                yield match.span()


FINDERS: dict[str, Callable[[str], Iterator[Span]]] = {
    "URL": _find_urls,
    "EMAIL": lambda t: _iter_matches(_EMAIL_RE, t),
    "IP": lambda t: (
        *_iter_matches(_IPV4_RE, t),
        *_iter_matches(_IPV6_RE, t, _ipv6_ok),
    ),
    "BANK_ACCOUNT": lambda t: _iter_matches(_IBAN_RE, t, lambda m: iban_valid(m.group())),
    "CN_ID": lambda t: _iter_matches(_CN_ID_RE, t, lambda m: cn_id_valid(m.group())),
    "CARD": lambda t: _iter_matches(_CARD_RE, t, _card_ok),
    "PHONE": _find_phones,
}


def find_pii(text: str, kinds: tuple[str, ...] | list[str] = KINDS) -> list[tuple[int, int, str]]:
    """``(start, end, kind)`` of every PII span in ``text``, sorted, never overlapping.

    Kinds claim text in the order of :data:`KINDS`; a later kind cannot match inside (or across)
    a span an earlier kind claimed.
    """
    claimed: list[tuple[int, int, str]] = []
    for kind in KINDS:
        if kind not in kinds:
            continue
        for start, end in FINDERS[kind](text):
            if all(end <= s or start >= e for s, e, _ in claimed):
                claimed.append((start, end, kind))
    return sorted(claimed)


def redact(
    text: str, kinds: tuple[str, ...] | list[str] = KINDS, placeholder: str = "<{kind}>"
) -> tuple[str, Counter]:
    """``text`` with every PII span replaced by ``placeholder`` and the count per kind."""
    counts: Counter = Counter()
    pieces: list[str] = []
    last = 0
    for start, end, kind in find_pii(text, kinds):
        pieces.append(text[last:start])
        pieces.append(placeholder.format(kind=kind))
        counts[kind] += 1
        last = end
    pieces.append(text[last:])
    return "".join(pieces), counts


@register("pii")
class RedactPII(Mapper):
    """Replace emails, phones, IPs, URLs, cards, IBANs and Chinese IDs by typed placeholders."""

    class Params(Group):
        kinds: list[str] = Field(
            list(KINDS), description=f"kinds to redact, any of {', '.join(KINDS)}"
        )
        placeholder: str = Field(
            "<{kind}>", description="replacement text; {kind} becomes EMAIL, PHONE, ..."
        )

        @field_validator("kinds")
        @classmethod
        def _known_kinds(cls, value: list[str]) -> list[str]:
            upper = [k.upper() for k in value]
            unknown = sorted(set(upper) - set(KINDS))
            if unknown:
                raise ValueError(f"unknown PII kinds {unknown}; use any of {list(KINDS)}")
            return upper

        @field_validator("placeholder")
        @classmethod
        def _has_kind(cls, value: str) -> str:
            try:
                value.format(kind="EMAIL")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"placeholder may only use {{kind}} ({exc})") from None
            return value

    def map(self, doc: Document) -> bool:
        total: Counter = Counter()

        def rewrite(text: str) -> str:
            new, counts = redact(text, self.params.kinds, self.params.placeholder)
            total.update(counts)
            return new

        changed = doc.map_text(rewrite)
        if total:
            merged = Counter(doc.metadata.get("pii") or {})
            merged.update(total)
            doc.metadata["pii"] = dict(sorted(merged.items()))
        return changed
