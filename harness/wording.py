"""Small wording helpers shared by every user-facing line of the harness."""

from __future__ import annotations


def plural(count: int, word: str) -> str:
    """``plural(1, "seed") == "1 seed"``, ``plural(3, "seed") == "3 seeds"``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"
