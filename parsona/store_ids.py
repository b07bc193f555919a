"""The ids and API keys :mod:`parsona.store` hands out, and :class:`NotFound`, what any bad id raises.

Ids are generated here (``secrets.token_hex``) and checked against a strict pattern before any query
or path is built, so a request string never becomes a path; a malformed, missing or someone else's
id all raise the same :class:`NotFound`, so a caller learns nothing about other users' data.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

# fullmatch, never `$`: `$` also matches before a trailing newline.
_ID_RE = re.compile(r"(usr|adp|job|itm|exp)_[0-9a-f]{32}")
KEY_PREFIX = "psk_"


class NotFound(LookupError):
    """No such record *for this user*: missing, someone else's and malformed ids look the same."""

    def __init__(self, field: str):
        self.field = field
        super().__init__(f"{field}: not found for this user. Use an id this user was given.")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def check_id(field: str, value: Any, prefix: str) -> str:
    """Return ``value`` if it is a well-formed id of this type; otherwise raise NotFound."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value) or value[:3] != prefix:
        raise NotFound(field)
    return value


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)  # 32 random bytes


def hash_key(api_key: str) -> str:
    """What the store keeps of an API key (the key itself is never stored)."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()
