"""Durations: the one place where a number becomes time.  Every duration carries its unit."""

from __future__ import annotations

import re

from sigkit.errors import DurationError

NS_PER = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "min": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zµ]+)\s*$")
# Largest unit first, so formatting prefers "45m" over "2700s".
_FORMAT_UNITS = [("d", NS_PER["d"]), ("h", NS_PER["h"]), ("m", NS_PER["m"]), ("s", NS_PER["s"]),
                 ("ms", NS_PER["ms"]), ("us", NS_PER["us"]), ("ns", 1)]


def parse_duration(value: object) -> int:
    """Turn ``'500ms'``, ``'45m'``, ``'1.5s'`` into integer nanoseconds.

    A bare number (``5`` or ``'5'``) is refused: the unit is what stops minutes being read as seconds.

    >>> parse_duration("250ms")
    250000000
    """
    if isinstance(value, bool) or isinstance(value, (int, float)):
        raise DurationError(
            f"duration {value!r} has no unit",
            hint=f"write it with one, e.g. '{value}ms', '{value}s' or '{value}m'",
        )
    if not isinstance(value, str):
        raise DurationError(f"duration must be a string such as '500ms', got {type(value).__name__}")
    match = _DURATION.match(value)
    if not match:
        if re.fullmatch(r"\s*[\d.]+\s*", value):
            raise DurationError(f"duration {value!r} has no unit",
                                hint=f"write e.g. '{value.strip()}ms', '{value.strip()}s' or '{value.strip()}m'")
        raise DurationError(f"cannot read {value!r} as a duration", hint="use e.g. '500ms', '5s', '45m', '2h'")
    number, unit = match.groups()
    if unit not in NS_PER:
        raise DurationError(f"unknown time unit {unit!r} in {value!r}",
                            hint="units are ns, us, ms, s, m (or min), h, d")
    ns = float(number) * NS_PER[unit]
    if ns != int(ns):
        raise DurationError(f"duration {value!r} is not a whole number of nanoseconds")
    return int(ns)


def format_duration(ns: int) -> str:
    """The shortest exact spelling of ``ns`` in one unit: 2_700_000_000_000 -> '45m'."""
    if ns == 0:
        return "0s"
    for unit, size in _FORMAT_UNITS:
        if ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns}ns"
