"""Redis replies as text.

fluxstream's clients never set ``decode_responses``, so replies are bytes; redis-py types them
``bytes | str`` (either setting), hence one conversion instead of ``.decode()`` everywhere.
"""

from __future__ import annotations


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
