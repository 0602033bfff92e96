"""Sizes and durations the way docker prints them (stdlib only: the daemon and engctl both
use it)."""

from __future__ import annotations


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return f"{n}B"


def human_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 1:
        return "Less than a second"
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    hours = minutes // 60
    if hours < 48:
        return f"{hours} hour{'s' if hours != 1 else ''}"
    days = hours // 24
    return f"{days} days"


_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3, "t": 1024**4,
               "tb": 1024**4, "tib": 1024**4}


def parse_size(text: str) -> int:
    """docker's sizes (``RAMInBytes``): ``10m``, ``1.5g``, ``512k``, ``100`` (bytes); the
    units are powers of 1024. Raises ValueError naming the text."""
    raw = text.strip().lower()
    number = raw.rstrip("kmgtib")
    unit = raw[len(number):]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"invalid size {text!r}: use a number with an optional unit (k, m, g)") from None
    if unit not in _SIZE_UNITS or value < 0:
        raise ValueError(f"invalid size {text!r}: use a number with an optional unit (k, m, g)")
    return int(value * _SIZE_UNITS[unit])
