"""Binance data: raw websocket recordings (spot, USD-M, COIN-M; ``source: binance``) and the public
archive CSVs of data.binance.vision (``source: binance_archive``)."""

import sigkit

from . import archive, ws


@sigkit.hookimpl
def register_sources(register):
    register(ws.SOURCE)
    register(archive.SOURCE)
