import pytest

from sigkit.errors import DurationError
from sigkit.units import format_duration, parse_duration


@pytest.mark.parametrize("text,ns", [("500ms", 500_000_000), ("45m", 2_700_000_000_000), ("1.5s", 1_500_000_000),
                                     ("2h", 7_200_000_000_000), ("10us", 10_000), ("3ns", 3), ("1d", 86_400 * 10**9),
                                     ("250 ms", 250_000_000), ("5min", 300_000_000_000)])
def test_durations_with_units(text, ns):
    assert parse_duration(text) == ns


@pytest.mark.parametrize("bad", [5, 5.0, "5", " 12 ", "5 lightyears", "ms", "", True, None, "1.5ns"])
def test_durations_without_a_known_unit_are_refused(bad):
    with pytest.raises(DurationError):
        parse_duration(bad)


def test_unitless_message_suggests_units():
    with pytest.raises(DurationError, match="has no unit.*'45m'"):
        parse_duration(45)


@pytest.mark.parametrize("ns", [1, 1000, 250_000_000, 2_700_000_000_000, 1_500_000_000])
def test_format_round_trips(ns):
    assert parse_duration(format_duration(ns)) == ns
