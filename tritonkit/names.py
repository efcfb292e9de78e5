"""Suggesting the name a user probably meant ("did you mean llama2-7b?")."""

from __future__ import annotations

import difflib


def nearest(name: str, choices: list[str], n: int = 3) -> list[str]:
    """Names that start like `name` first, then difflib's closest."""
    low = name.lower()
    found = [c for c in choices if c.lower().startswith(low)]
    found += difflib.get_close_matches(low, [c.lower() for c in choices], n=n, cutoff=0.4)
    by_lower = {c.lower(): c for c in choices}
    return list(dict.fromkeys(by_lower[f.lower()] for f in found))[:n]
