"""The document every data block sees: ``id``, ``text`` or ``messages``, ``fields``, ``metadata``.

- ``text``: plain text (pretraining, classification inputs).
- ``messages``: a conversation in the example schema (see :mod:`lmforge.data.schema`).
- ``fields``: the rest of the example schema, kept as the user wrote it: ``label``, ``chosen`` /
  ``rejected`` (preference pairs), ``kto_label``, ``tools``, ...
- ``metadata``: what the pipeline learned about the document (``source``, ``file``, ``line``,
  ``lang``, scores, ``split``, ``augmented``, ``dup_cluster`` ...).

Blocks read :attr:`Document.content` (all of the document's text as one string) and change text
through :meth:`Document.map_text`, so a filter or a redactor works the same on plain text, on
conversations and on preference pairs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lmforge.data.schema import RowError, alpaca_to_messages, detect_format, to_messages

# columns of a row that hold text a block may read and rewrite, besides text / messages
TEXT_FIELDS = ("prompt", "chosen", "rejected")


@dataclass
class Document:
    id: str
    text: str | None = None
    messages: list[dict] | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ reading
    @property
    def content(self) -> str:
        """All text of the document, parts joined by newlines (what filters and dedup look at)."""
        parts: list[str] = []
        if self.text is not None:
            parts.append(self.text)
        for message in self.messages or ():
            if isinstance(message.get("content"), str):
                parts.append(message["content"])
        for key in TEXT_FIELDS:
            parts.extend(_strings(self.fields.get(key)))
        return "\n".join(parts)

    def get(self, key: str, default: Any = None) -> Any:
        """A field (``label``, ``chosen`` ...) or, failing that, a metadata value."""
        if key in self.fields:
            return self.fields[key]
        return self.metadata.get(key, default)

    def fingerprint(self) -> str:
        """sha256 of the row as written (id excluded): what ``data diff`` compares."""
        row = self.to_row()
        row.pop("id", None)
        row.pop("metadata", None)
        import json

        blob = json.dumps(row, ensure_ascii=False, sort_keys=True).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()[:16]

    # ------------------------------------------------------------------ writing
    def map_text(self, fn: Callable[[str], str]) -> bool:
        """Apply ``fn`` to every piece of text (text, message contents, prompt/chosen/rejected).

        Returns True when anything changed.
        """
        changed = False
        if self.text is not None:
            new = fn(self.text)
            changed |= new != self.text
            self.text = new
        if self.messages:
            changed |= _map_messages(self.messages, fn)
        for key in TEXT_FIELDS:
            value = self.fields.get(key)
            if isinstance(value, str):
                new = fn(value)
                changed |= new != value
                self.fields[key] = new
            elif isinstance(value, list):
                changed |= _map_messages(value, fn)
            elif isinstance(value, dict) and isinstance(value.get("content"), str):
                changed |= _map_messages([value], fn)
        return changed

    def to_row(self) -> dict:
        """The output row: ``id``, ``text`` or ``messages``, the fields, then ``metadata``."""
        row: dict[str, Any] = {"id": self.id}
        if self.text is not None:
            row["text"] = self.text
        if self.messages is not None:
            row["messages"] = self.messages
        row.update(self.fields)
        row["metadata"] = self.metadata
        return row

    @classmethod
    def from_stored(cls, row: dict) -> Document:
        """Inverse of :meth:`to_row` for rows the pipeline wrote itself (no validation)."""
        rest = dict(row)
        return cls(
            id=rest.pop("id"),
            text=rest.pop("text", None),
            messages=rest.pop("messages", None),
            metadata=rest.pop("metadata", None) or {},
            fields=rest,
        )

    @classmethod
    def from_row(cls, row: Any, default_id: str, metadata: dict | None = None) -> Document:
        """Build a document from a raw row (plain string, text, messages, sharegpt or alpaca).

        An ``id`` in the row wins over ``default_id``; a ``metadata`` dict in the row is kept.
        Raises :class:`RowError` with the reason when the row cannot be used.
        """
        meta = dict(metadata or {})
        if isinstance(row, str):
            if not row.strip():
                raise RowError("empty text")
            return cls(id=default_id, text=row, metadata=meta)
        fmt = detect_format(row)  # raises RowError on non-objects / unknown keys
        rest = dict(row)
        doc_id = rest.pop("id", None)
        if doc_id is not None and not isinstance(doc_id, (str, int)):
            raise RowError(f"field 'id' is {type(doc_id).__name__}, expected a string or number")
        own_meta = rest.pop("metadata", None)
        if isinstance(own_meta, dict):
            meta = {**own_meta, **meta}
        doc = cls(id=str(doc_id) if doc_id is not None else default_id, metadata=meta)
        if fmt == "text":
            text = rest.pop("text")
            if not isinstance(text, str):
                raise RowError(f"field 'text' is {type(text).__name__}, expected a string")
            if not text.strip():
                raise RowError("empty text")
            doc.text = text
        elif fmt == "alpaca":
            doc.messages = alpaca_to_messages(row)
            for key in ("instruction", "input", "output", "system", "history"):
                rest.pop(key, None)
        else:
            doc.messages = to_messages(row, fmt)
            rest.pop("messages", None)
            rest.pop("conversations", None)
        doc.fields = rest
        return doc


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return [value["content"]]
    if isinstance(value, list):
        return [
            m["content"] for m in value if isinstance(m, dict) and isinstance(m.get("content"), str)
        ]
    return []


def _map_messages(messages: list[dict], fn: Callable[[str], str]) -> bool:
    changed = False
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            new = fn(content)
            changed |= new != content
            message["content"] = new
    return changed
