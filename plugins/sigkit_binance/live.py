"""``sigkit run --live`` for ``source: binance``: Binance combined streams, REST depth snapshots and polled
open interest, recorded in the layout :class:`sigkit_binance.ws.BinanceWs` reads (see docs/live.md).

Imported only when a live run plans its connections (:meth:`BinanceWs.live_connections`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence

import attrs
import msgspec

import sigkit
from sigkit.live import CLOCK, Connection, Emit, EmitAt, LiveConnectionPlan, http_get

log = logging.getLogger("sigkit.live.binance")

#: Where the public market data lives (no credentials needed for any of it); a data entry's ``ws_url`` and
#: ``rest_url`` replace them.
WS = {"spot": "wss://stream.binance.com:9443", "usdm": "wss://fstream.binance.com", "coinm": "wss://dstream.binance.com"}
REST = {"spot": "https://api.binance.com", "usdm": "https://fapi.binance.com", "coinm": "https://dapi.binance.com"}
DEPTH_PATH = {"spot": "/api/v3/depth", "usdm": "/fapi/v1/depth", "coinm": "/dapi/v1/depth"}
OI_PATH = {"usdm": "/fapi/v1/openInterest", "coinm": "/dapi/v1/openInterest"}

#: Venue names of the Binance source mapped to the market they are read from.
MARKETS = {"binance-spot": "spot", "binance-usdm": "usdm", "binance-futures": "usdm",
           "binance-coinm": "coinm", "binance-delivery": "coinm"}
#: Stream suffixes subscribed per symbol unless a data entry's ``streams`` says otherwise.
STREAMS = ("trade", "bookTicker", "depth@100ms")
FUTURES_STREAMS = (*STREAMS, "forceOrder")

GAPS_LISTED = 50  # gaps listed one by one in describe(); all are counted


class _DepthIds(msgspec.Struct):
    """The cheap part of a Binance diff-depth message: its update ids."""

    U: int
    u: int
    pu: int | None = None


class _DepthEnvelope(msgspec.Struct):
    stream: str
    data: _DepthIds


class _SnapshotId(msgspec.Struct):
    lastUpdateId: int  # noqa: N815 - Binance's name


_DEPTH_IDS = msgspec.json.Decoder(_DepthEnvelope)
_SNAPSHOT_ID = msgspec.json.Decoder(_SnapshotId)


class BinanceConnection(Connection):
    """Binance combined streams for one symbol, its REST depth snapshots and (futures) polled open interest.

    The depth chain (``U``/``u``, futures ``pu``) is checked here cheaply, only to fetch a new snapshot
    when it breaks; the reader does the authoritative book sync from the recorded lines.  A snapshot is
    fetched after the first depth message of every session (after connecting and after each reconnect) and
    after every gap; one older than the stream it must bridge is fetched again.
    """

    def __init__(self, name: str, ws_base_url: str, rest_base_url: str, market: str, symbol: str,
                 streams: Sequence[str] | None = None, *, depth_limit: int = 1000, open_interest_every_s: float = 10.0,
                 rest_timeout_s: float = 10.0, snapshot_retries: int = 5, **kw):
        super().__init__(name, **kw)
        if market not in DEPTH_PATH:
            raise sigkit.SigkitError(f"unknown Binance market {market!r}; expected spot, usdm or coinm")
        self.venue = f"binance-{market}"
        self.ws_base_url, self.rest_base_url = ws_base_url.rstrip("/"), rest_base_url.rstrip("/")
        self.market, self.symbol = market, symbol.upper()
        self.streams = tuple(streams) if streams else (STREAMS if market == "spot" else FUTURES_STREAMS)
        self.depth_limit, self.open_interest_every_s = depth_limit, open_interest_every_s
        self.rest_timeout_s, self.snapshot_retries = rest_timeout_s, snapshot_retries
        self._prev_u: int | None = None
        self._bridge_from: int | None = None  # first U the next snapshot must reach
        self._fetching: asyncio.Task | None = None

    def url(self) -> str:
        low = self.symbol.lower()
        return f"{self.ws_base_url}/stream?streams=" + "/".join(f"{low}@{s}" for s in self.streams)

    def depth_url(self) -> str:
        return f"{self.rest_base_url}{DEPTH_PATH[self.market]}?symbol={self.symbol}&limit={self.depth_limit}"

    def open_interest_url(self) -> str | None:
        path = OI_PATH.get(self.market)
        return None if path is None else f"{self.rest_base_url}{path}?symbol={self.symbol}"

    async def session(self, ws, emit: Emit, emit_at: EmitAt) -> None:
        self._prev_u = self._bridge_from = None
        stats = self.stats
        poller = None
        if self.open_interest_url() and self.open_interest_every_s > 0:
            poller = asyncio.create_task(self._poll_open_interest(emit_at))
        try:
            while True:
                raw = await ws.recv(decode=False)
                stats.messages += 1
                stats.bytes += len(raw)
                line = self.as_line(raw)
                local_ns = emit(line)
                if b"@depth" in line[:64]:
                    self._check_depth(line, local_ns, emit)
        finally:
            for task in (poller, self._fetching):
                if task is not None:
                    task.cancel()
            self._fetching = None

    def _check_depth(self, line: bytes, local_ns: int, emit: Emit) -> None:
        try:
            m = _DEPTH_IDS.decode(line).data
        except Exception:  # not ours to judge: the reader reports bad lines
            return
        prev = self._prev_u
        self._prev_u = m.u
        if prev is None:
            self._bridge_from = m.U
        else:
            broken = m.pu != prev if m.pu is not None else m.U != prev + 1
            if not broken:
                return
            stats = self.stats
            stats.gaps += 1
            if len(stats.gap_list) < GAPS_LISTED:
                stats.gap_list.append({"ts_ns": local_ns, "expected": prev, "got": m.pu if m.pu is not None else m.U - 1})
            log.warning("%s: depth gap (previous u %d, this message %s %d); fetching a new snapshot", self.name, prev,
                        "pu" if m.pu is not None else "U-1", m.pu if m.pu is not None else m.U - 1)
            self._bridge_from = m.U
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.create_task(self._snapshot(emit))

    async def _snapshot(self, emit: Emit) -> None:
        loop = asyncio.get_running_loop()
        futures = self.market != "spot"
        stats = self.stats
        for attempt in range(self.snapshot_retries):
            try:
                body = await loop.run_in_executor(None, http_get, self.depth_url(), self.rest_timeout_s)
            except Exception as err:
                stats.snapshot_errors += 1
                stats.last_error = f"depth snapshot: {type(err).__name__}: {err}"
                await asyncio.sleep(min(0.25 * 2 ** attempt, 5.0))
                continue
            line = self.as_line(body)
            emit(line)
            stats.snapshots += 1
            try:
                last_id = _SNAPSHOT_ID.decode(line).lastUpdateId
            except Exception:
                return
            need = self._bridge_from if futures or self._bridge_from is None else self._bridge_from - 1
            if need is None or last_id >= need:
                return
            stats.stale_snapshots += 1  # older than the first buffered diff: it cannot bridge; try a newer one
            await asyncio.sleep(min(0.25 * 2 ** attempt, 5.0))

    async def _poll_open_interest(self, emit_at: EmitAt) -> None:
        """Poll ``openInterest`` and record it as a line the Binance reader parses (see docs/live.md)."""
        loop = asyncio.get_running_loop()
        stream = f"{self.symbol.lower()}@openInterest"
        while True:
            try:
                body = await loop.run_in_executor(None, http_get, self.open_interest_url(), self.rest_timeout_s)
                reply = json.loads(body)
                local_ns = CLOCK.now_ns()
                data = {"e": "openInterest", "E": local_ns // 1_000_000, "s": reply.get("symbol", self.symbol),
                        "openInterest": reply["openInterest"], "time": reply.get("time")}
                if "pair" in reply:  # COIN-M also names the pair and the contract type
                    data["ps"] = reply["pair"]
                emit_at(local_ns, json.dumps({"stream": stream, "data": data}, separators=(",", ":")).encode())
                self.stats.open_interest_polls += 1
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self.stats.open_interest_errors += 1
                self.stats.last_error = f"open interest: {type(err).__name__}: {err}"
            await asyncio.sleep(self.open_interest_every_s)


def plan(params) -> list[LiveConnectionPlan]:
    """One connection per symbol of a ``source: binance`` data entry (a REST depth snapshot carries no
    symbol, so a recording holds one symbol)."""
    market = MARKETS.get(params.venue)
    if market is None:
        raise sigkit.RecipeError(f"live mode cannot tell the Binance market from venue {params.venue!r}; "
                                 "use venue binance-spot, binance-usdm or binance-coinm")
    if not params.symbols:
        raise sigkit.RecipeError("live mode needs `symbols`, e.g. symbols: [BTCUSDT]")
    ws_url, rest_url = params.ws_url or WS[market], params.rest_url or REST[market]
    out = []
    for symbol in params.symbols:
        symbol = symbol.upper()
        name = f"{params.venue}_{symbol}"
        connection = BinanceConnection(name, ws_url, rest_url, market, symbol, params.streams,
                                       open_interest_every_s=params.open_interest_every_ns / 1e9)
        out.append(LiveConnectionPlan(connection, name, attrs.evolve(params, symbols=(symbol,)), part=symbol))
    return out
