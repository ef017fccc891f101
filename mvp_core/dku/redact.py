"""Masking secrets in the DKU report without garbling the rest of it.

A report is read by people: a path like ``/tmp/ketter_tmp`` or a database named
``ketter`` must stay readable even when the database password is also ``ketter``. So
only what is *in the place of* a credential is masked, never every occurrence of its text:

- the password inside a URL (``scheme://user:PASSWORD@host``);
- the value after ``Bearer`` (an Authorization header copied into an error);
- the value under a secret-named key (``token``, ``password``, ``secret``, ...);
- a known secret found in text only when it is long enough (``MIN_FREE_TEXT_SECRET``
  characters) not to be an ordinary word: a generated API token pasted into an error
  message is masked; a short password is not hunted across paths and names.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"
# Shorter secrets are masked only where they stand as a credential (URL, Bearer, key).
MIN_FREE_TEXT_SECRET = 16

_URL_PASSWORD = re.compile(
    r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)(?P<password>[^\s@/]+)(?P<tail>@)"
)
_BEARER = re.compile(r"(?P<head>\bBearer\s+)(?P<password>[^\s\"',]+)", re.IGNORECASE)
_SECRET_KEY = re.compile(r"(token|password|passwd|secret|authorization|api_key)", re.IGNORECASE)


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with URL passwords, Bearer values and long known secrets masked."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}{m['tail']}", text)
    text = _BEARER.sub(lambda m: f"{m['head']}{REDACTED}", text)
    for secret in secrets:
        if len(secret) >= MIN_FREE_TEXT_SECRET:
            text = text.replace(secret, REDACTED)
    return text


def redact(value: Any, secrets: tuple[str, ...] = ()) -> Any:
    """``value`` (str, dict, list, tuple; recursively) with its credentials masked."""
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, dict):
        return {
            redact(k, secrets): REDACTED
            if isinstance(k, str) and _SECRET_KEY.search(k) and isinstance(v, str) and v
            else redact(v, secrets)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v, secrets) for v in value]
    return value
