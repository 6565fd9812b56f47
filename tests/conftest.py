"""Shared test helpers: hand-built event chunks and in-memory sources."""

from __future__ import annotations

import numpy as np
import pytest

import sigkit
from sigkit.events import BOOK, FILL, STAT, TRADE, empty_chunk

SHARED_DATA = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data"


#: The head of a recipe over one simulated world; format with name, seed, world, duration and append models.
SIM_RECIPE_HEAD = """\
name: {name}
seed: {seed}
data:
  - source: simulate
    world: "{world}"
    duration: {duration}
target: {{venue: sim, symbol: BTC-PERP}}
horizon: 1s
"""


def chunk_of(rows: list[dict]) -> np.ndarray:
    """A chunk from dicts like {"ts_ns": 5, "kind": TRADE, "side": 1, "price": 100.0, ...}."""
    chunk = empty_chunk(len(rows))
    for i, row in enumerate(rows):
        row = {"venue": "v", "symbol": "X", **row}
        row.setdefault("exch_ts_ns", row["ts_ns"])
        for key, value in row.items():
            chunk[key][i] = value
    return chunk


def book(ts, bid, ask, venue="v", symbol="X"):
    return {"ts_ns": ts, "kind": BOOK, "bid_px": bid, "ask_px": ask, "bid_sz": 1.0, "ask_sz": 1.0,
            "venue": venue, "symbol": symbol}


def trade(ts, side, price, size=1.0, venue="v", symbol="X"):
    return {"ts_ns": ts, "kind": TRADE, "side": side, "price": price, "size": size, "venue": venue, "symbol": symbol}


def fill(ts, side, price, size=1.0):
    return {"ts_ns": ts, "kind": FILL, "side": side, "price": price, "size": size}


def stat(ts, oi):
    return {"ts_ns": ts, "kind": STAT, "open_interest": oi}


class ListSource:
    """A source over prepared chunks."""

    def __init__(self, chunks):
        self._chunks = list(chunks)

    def chunks(self):
        return iter(self._chunks)


@pytest.fixture
def target():
    return sigkit.Market("v", "X")
