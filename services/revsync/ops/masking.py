"""What the dead-letter tools show: payloads and headers with customer data masked, and
every text safe for a terminal."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from revsync.ops.dead_letters import DeadLetter

MASK = "***"
SECRET_NAMES = re.compile(r"(authorization|token|secret|password|api[-_]?key|cookie)", re.I)
SHORTEST_SOUGHT = 4
"""A masked value shorter than this is not sought in other text: it would match anywhere
(a state code, a house number) and tell no one apart."""
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""Characters a terminal acts on rather than shows (tab and newline are shown)."""


def masked_letter(
    letter: DeadLetter, document: Any, fields: frozenset[str]
) -> tuple[Any, list[tuple[str, str]]]:
    """``letter``'s payload (``document``, as :func:`payload` reads it) and headers as the
    tools show them, secrets and the configured PII fields masked.

    In the payload, a field is named case-insensitively, by its own name (``email``) or by
    its path from the top (``BillingAddress.Street``); naming a compound field
    (``BillingAddress``) masks it whole. A header's value is masked when its name is such a
    field (a dotted name read as a path) or names a secret. Every other header, the error
    message and stack among them, has each value masked in the payload masked wherever it
    appears: an error another system wrote, or one written before revsync stopped quoting
    data, may carry the address the payload has."""
    names = frozenset(name.lower() for name in fields)
    hidden: set[str] = set()
    shown = _masked(document, names, "", hidden)
    sought = sorted((text for text in hidden if len(text) >= SHORTEST_SOUGHT), key=len)
    headers = []
    for name, value in letter.headers:
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        if _names_hidden(name, names):
            text = MASK
        else:
            for found in reversed(sought):  # the longest first: a street before its number
                text = text.replace(found, MASK)
        headers.append((printable(name), printable(text)))
    return shown, headers


def _names_hidden(name: str, fields: frozenset[str]) -> bool:
    """Whether a field or header named ``name`` (a path when dotted) is masked."""
    lowered = name.lower()
    return bool(
        lowered in fields or lowered.rsplit(".", 1)[-1] in fields or SECRET_NAMES.search(name)
    )


def _masked(document: Any, fields: frozenset[str], path: str, hidden: set[str]) -> Any:
    """``document`` masked; what it hid, as text, added to ``hidden``."""
    if isinstance(document, Mapping):
        shown = {}
        for key, value in document.items():
            name = str(key)
            here = f"{path}.{name}" if path else name
            if _names_hidden(here, fields) or name.lower() in fields:
                hidden.update(_texts(value))
                shown[key] = MASK
            else:
                shown[key] = _masked(value, fields, here, hidden)
        return shown
    if isinstance(document, list):
        return [_masked(value, fields, path, hidden) for value in document]
    return document


def _texts(value: Any) -> Iterator[str]:
    """Every scalar in ``value``, as text."""
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
    elif value is not None:
        yield str(value)


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (escape sequences among them) written
    as ``\\xNN``, so nothing a foreign system wrote can move the cursor or recolour the screen."""
    return CONTROL.sub(lambda match: f"\\x{ord(match[0]):02x}", text)
