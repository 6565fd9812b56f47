"""Hyperliquid data: raw websocket recordings (``source: hyperliquid``) and the flattened CSV layout of
the djienne Hyperliquid collector (``source: hyperliquid_csv``)."""

import sigkit

from . import collector, ws


@sigkit.hookimpl
def register_sources(register):
    register(ws.SOURCE)
    register(collector.SOURCE)
