"""Metadata equality filters, the same rule the vector store applies in SQL."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def matches(metadata: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    """Every filter key must equal the metadata value, or be contained in a list value."""
    for key, wanted in filters.items():
        if key not in metadata:
            return False
        value = metadata[key]
        if isinstance(value, list):
            if wanted not in value:
                return False
        elif value != wanted or isinstance(value, bool) != isinstance(wanted, bool):
            return False
    return True
