"""How the library writes quantities for people."""

from __future__ import annotations


def format_bytes(n: float) -> str:
    """Bytes in SI units, as every message and report prints them: '812 B', '4.2 MB', '1.7 GB'."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
