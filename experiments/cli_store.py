"""``featbank store ...`` commands (filled in by the store work)."""

from __future__ import annotations


def register(sub, groups) -> None:
    pass
