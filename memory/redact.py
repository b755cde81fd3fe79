"""Optional redaction before anything is stored (off by default): a hook `str -> str`."""

from __future__ import annotations

import re
from collections.abc import Callable

Redactor = Callable[[str], str]

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
# International or national numbers with 7+ digits, allowing spaces, dots, dashes and parentheses.
_PHONE = re.compile(r"(?<![\w])(?:\+?\d[\d\s().-]{5,}\d)(?![\w])")


def regex_redactor(text: str) -> str:
    text = _EMAIL.sub("[email]", text)

    def phone(match: re.Match[str]) -> str:
        digits = sum(ch.isdigit() for ch in match.group(0))
        return "[phone]" if digits >= 7 else match.group(0)

    return _PHONE.sub(phone, text)
