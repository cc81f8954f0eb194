"""Durations written the way engineers write them in YAML: `30s`, `5m`, `1h30m`, `2d`."""

from __future__ import annotations

import math
import re
from datetime import timedelta

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | int | float) -> timedelta:
    """Parse `90s`, `5m`, `1h30m`; a bare number is seconds.

    Raises ValueError with the accepted forms when the text is not a duration.
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration; write e.g. 30s, 5m, 1h30m")
    if isinstance(text, int | float):
        if not math.isfinite(text) or text < 0:
            raise ValueError(f"duration {text} is not a finite, non-negative number of seconds")
        try:
            return timedelta(seconds=text)
        except OverflowError:
            raise ValueError(f"duration {text} seconds is too long") from None
    s = text.strip().replace(" ", "")
    try:
        seconds = float(s)
    except ValueError:
        seconds = None
    if seconds is not None:
        return parse_duration(seconds)
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f"{text!r} is not a duration; write e.g. 30s, 5m, 1h30m, 2d")
    return parse_duration(total)


def format_duration(td: timedelta) -> str:
    """The shortest of `parse_duration`'s forms that means `td` (whole seconds)."""
    secs = int(td.total_seconds())
    if secs == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, secs = divmod(secs, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)
