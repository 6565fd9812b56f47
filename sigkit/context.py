"""What a model, combiner or source is told about the run it is built for."""

from __future__ import annotations

import zlib
from pathlib import Path

import attrs
import numpy as np


@attrs.frozen
class Market:
    """A venue and symbol, e.g. ``Market("binance-usdm", "BTCUSDT")``."""

    venue: str
    symbol: str

    def __str__(self) -> str:
        return f"{self.venue}:{self.symbol}"


@attrs.frozen
class RunContext:
    """Handed to every factory with the validated parameters.

    ``target`` is the market whose fills are scored; ``horizon_ns`` and ``threshold_bps`` define the
    label (adverse iff the markout at the horizon is below ``-threshold_bps``); ``instance_id`` is the
    recipe id of the thing being built; ``on_bad_line`` tells sources to
    ``stop`` at bad data or ``skip`` and count it (see :class:`sigkit.feeds.BadLines`); ``members`` (combiners only) the model ids it pools; ``base_dir`` is where relative paths in the recipe start.
    """

    target: Market
    horizon_ns: int
    threshold_bps: float = 0.0
    seed: int = 0
    instance_id: str = ""
    members: tuple[str, ...] = ()  # for a combiner: the ids of the models it pools, in order
    base_dir: Path = attrs.field(factory=Path.cwd)
    on_bad_line: str = "stop"  # sources: "stop" at the first bad data line, or "skip" and count it
    # The run's shared features (sigkit.features): every instance built for one run gets the same set.
    features: "sigkit.features.FeatureSet" = attrs.field(  # noqa: F821
        factory=lambda: _feature_set(), eq=False, repr=False)

    def feature(self, spec):
        """Declare a shared feature this instance reads (e.g. :class:`sigkit.Pyramid`) and get its live state:
        the same object for every instance of the run that declares an equal spec, computed once
        (:mod:`sigkit.features`)."""
        return self.features.get(spec)

    def rng(self) -> np.random.Generator:
        """A generator seeded from the run seed and this instance's id: reproducible and independent."""
        return np.random.default_rng([self.seed, zlib.crc32(self.instance_id.encode())])

    def resolve(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.base_dir / path


def _feature_set():
    from sigkit.features import FeatureSet

    return FeatureSet()
