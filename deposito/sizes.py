"""Byte counts for people."""

from __future__ import annotations


def human_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KiB``; whole bytes below 1 KiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
