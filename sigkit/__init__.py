"""sigkit: toxicity signals for market makers, as plugins, replayed causally and scored honestly.

This module is the public API.  Plugins (the built-in ones included) import only names listed here.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

from sigkit.batch import Batch, BatchPredictions, FillSlots, MarketCodes
from sigkit.context import Market, RunContext
from sigkit.errors import DataError, DurationError, ModelError, PluginError, RecipeError, SigkitError
from sigkit.events import (
    ASK, BID, BOOK, BUY, DEPTH_LEVELS, EVENT_DTYPE, FILL, SELL, STAT, TRADE, BookUpdate, FillQuery,
    MarketStat, Outcome, Prediction, Trade, empty_chunk, new_rows, row_to_record,
)
from sigkit.hookspecs import hookimpl
from sigkit.labels import label_outcome, markout_bps
from sigkit.learn import (
    REGIME_DIMENSIONS, ConditionalCost, LearnedState, NewtonLogistic, OnlineLogistic, PendingFills, RegimeTracker, RunningBaseRate,
    evidence_confidence, logit, sigmoid,
)
from sigkit.params import duration, param, path
from sigkit.plugins import PLUGIN_API_VERSION, CombinerSpec, ModelSpec, SourceSpec
from sigkit.units import format_duration, parse_duration

try:
    __version__ = _version("sigkit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"



def __getattr__(name: str):
    # Public subpackages imported on first use, so `import sigkit` stays light: `sigkit.live` (the machinery
    # a source plugin's live connections build on), `sigkit.feeds` and `sigkit.csvblocks` (what data readers
    # are built from: docs/data.md), `sigkit.sim`, `sigkit.native`.
    import importlib

    if name in ("sim", "native", "live", "feeds", "csvblocks", "features"):
        return importlib.import_module(f"sigkit.{name}")
    if name in ("Pyramid", "PyramidState", "FeatureSet"):  # shared features (they compile with numba)
        return getattr(importlib.import_module("sigkit.features"), name)
    if name == "merge_chunks":  # the one causal merge of sorted chunk streams (readers of several files use it)
        return importlib.import_module("sigkit.engine").merge_chunks
    raise AttributeError(f"module 'sigkit' has no attribute {name!r}")

__all__ = [
    "PLUGIN_API_VERSION", "REGIME_DIMENSIONS", "ASK", "BID", "BOOK", "BUY", "DEPTH_LEVELS", "EVENT_DTYPE", "FILL", "SELL", "STAT",
    "TRADE", "Batch", "BatchPredictions", "BookUpdate", "CombinerSpec", "ConditionalCost", "DataError", "DurationError", "FeatureSet", "FillQuery", "FillSlots",
    "LearnedState", "Market", "MarketCodes", "NewtonLogistic", "MarketStat", "ModelError", "ModelSpec", "OnlineLogistic", "Outcome", "PendingFills", "PluginError",
    "Prediction", "Pyramid", "PyramidState", "RecipeError", "RegimeTracker", "RunContext", "RunningBaseRate", "SigkitError", "SourceSpec", "Trade",
    "duration", "empty_chunk", "evidence_confidence", "format_duration", "hookimpl", "label_outcome",
    "logit", "markout_bps", "new_rows", "param", "parse_duration", "path", "row_to_record", "sigmoid",
]
