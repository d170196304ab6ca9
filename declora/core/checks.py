"""Small predicates and message helpers shared by the code that validates untrusted input (files, wire headers)."""
from __future__ import annotations

from typing import Any


def is_int(value: Any) -> bool:
    """True for a plain int only.

    Not isinstance: bool is an int subclass, and parsers (msgpack, JSON, TOML) hand booleans over as bools, which
    must not pass as a count, an id or a port; other int subclasses are no wire or file type either.
    """
    return type(value) is int


def short_list(values, limit: int = 8) -> str:
    """`values` as `[a, b, ...]`, cut after `limit` items so that an error message stays one readable line."""
    values = list(values)
    shown = ", ".join(str(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"
