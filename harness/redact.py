"""Credentials never leave the process: URLs with passwords are redacted wherever the harness writes them.

    redact("postgresql://user:pw@host/db")  ->  "postgresql://user:***@host/db"
    redact_all(config_dict)                 ->  the same structure, every string redacted

Used for sweep.json (command, storage, config), trial.json (command), Hydra's copies of the command line in
.hydra/, and error messages that name a storage; the report prints only what those records hold.
"""

from __future__ import annotations

import re

_URL_PASSWORD = re.compile(r"(?P<prefix>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):[^@/\s]+@")
_QUERY_PASSWORD = re.compile(r"(?P<prefix>[?&](?:password|passwd|pwd|token|secret)=)[^&\s]+", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with URL passwords (scheme://user:PASSWORD@host) and password query parameters replaced by ***."""
    text = _URL_PASSWORD.sub(r"\g<prefix>:***@", text)
    return _QUERY_PASSWORD.sub(r"\g<prefix>***", text)


def redact_all(value):
    """A JSON-like value (dicts, lists, strings) with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_all(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_all(item) for item in value]
    return value
