"""``sigkit run --live`` for ``source: hyperliquid``: one websocket per data entry, subscribed to every
channel of each coin, recorded in the layout :class:`sigkit_hyperliquid.ws.Hyperliquid` reads (see
docs/live.md).

Imported only when a live run plans its connections (:meth:`Hyperliquid.live_connections`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import sigkit
from sigkit.live import Connection, Emit, EmitAt, LiveConnectionPlan

#: The public websocket (no credentials needed); a data entry's ``ws_url`` replaces it.
WS = "wss://api.hyperliquid.xyz/ws"
CHANNELS = ("l2Book", "trades", "bbo", "activeAssetCtx")


class HyperliquidConnection(Connection):
    """Hyperliquid: one subscription per coin and channel; ``{"method":"ping"}`` every ``ping_every_s``
    (the server closes a connection that has been silent for 60 s)."""

    venue = "hyperliquid"

    def __init__(self, name: str, url: str, coins: Sequence[str], channels: Sequence[str] = CHANNELS,
                 *, ping_every_s: float = 50.0, **kw):
        super().__init__(name, **kw)
        self._url, self.coins, self.channels, self.ping_every_s = url, tuple(coins), tuple(channels), ping_every_s

    def url(self) -> str:
        return self._url

    async def session(self, ws, emit: Emit, emit_at: EmitAt) -> None:
        for coin in self.coins:
            for channel in self.channels:
                await ws.send(json.dumps({"method": "subscribe", "subscription": {"type": channel, "coin": coin}}))
        pinger = asyncio.create_task(self._ping(ws))
        stats = self.stats
        try:
            while True:
                raw = await ws.recv(decode=False)
                stats.messages += 1
                stats.bytes += len(raw)
                emit(self.as_line(raw))
        finally:
            pinger.cancel()

    async def _ping(self, ws) -> None:
        while True:
            await asyncio.sleep(self.ping_every_s)
            await ws.send('{"method":"ping"}')
            self.stats.pings += 1


def plan(params) -> list[LiveConnectionPlan]:
    """One connection for all the coins of a ``source: hyperliquid`` data entry."""
    if not params.coins:
        raise sigkit.RecipeError("live mode needs `coins`, e.g. coins: [BTC]")
    name = f"{params.venue}_{'-'.join(params.coins)}"
    return [LiveConnectionPlan(HyperliquidConnection(name, params.ws_url or WS, params.coins), name, params)]
