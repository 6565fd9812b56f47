"""Loopback stand-ins for Binance and Hyperliquid that serve real recorded messages, for the live tests.

Each fake replays a slice of an hftbacktest recording (the ``<local_ns>`` prefix stripped, the JSON sent
byte for byte) on a websocket at 127.0.0.1, paced by the recorded receive times divided by ``speed``.  The
feed runs on its own clock from the first subscription: messages sent while no client is connected are
lost, as they would be on a real venue.  Faults on request: drop every connection after the n-th message
(``drop_after``), leave out one depth message (``skip_depth``: a sequence gap).

The fake Binance also answers REST: the depth endpoint returns the file's own snapshot line until the feed
has gone past it, then a snapshot of the book the fake keeps by applying the diffs it served (the real
snapshot plus real diffs, in Binance's format); the open-interest endpoint returns a doc-shaped reply.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

DEPTH_PATH = {"spot": "/api/v3/depth", "usdm": "/fapi/v1/depth", "coinm": "/dapi/v1/depth"}
OI_PATH = {"usdm": "/fapi/v1/openInterest", "coinm": "/dapi/v1/openInterest"}


def read_recording(path: Path, lines: int) -> list[tuple[int, bytes]]:
    out = []
    with gzip.open(path, "rb") as f:
        for raw in f:
            ns, _, body = raw.rstrip(b"\n").partition(b" ")
            out.append((int(ns), body))
            if len(out) >= lines:
                break
    return out


class _Feed:
    """A paced, shared sequence of messages and the clients listening to it."""

    def __init__(self, messages: list[tuple[int, bytes]], speed: float, drop_after: int | None):
        self.messages = messages
        self.speed = speed
        self.drop_after = drop_after
        self.clients: set = set()
        self.started = False
        self.done = threading.Event()
        self.sent = 0  # messages the feed went through (sent, or lost for want of a listener)
        self.delivered = 0  # messages handed to a connected client
        self.dropped_connections = 0
        self.lost_while_down = 50  # messages that go unsent after a dropped connection
        self.lose = 0
        self.joined = asyncio.Event()

    def wanted(self, client, body: bytes, index: int) -> bool:
        raise NotImplementedError

    def on_message(self, index: int, body: bytes) -> bool:
        """Called for every message in order before it is sent; False: do not send it."""
        return True

    async def produce(self) -> None:
        t0_ns = self.messages[0][0]
        start = time.monotonic()
        for index, (ns, body) in enumerate(self.messages):
            delay = start + (ns - t0_ns) / 1e9 / self.speed - time.monotonic()
            if delay > 0.001:
                await asyncio.sleep(delay)
            send = self.on_message(index, body)
            if self.lose:  # the venue goes on without the dropped client for a while ...
                self.lose -= 1
                self.sent += 1
                if not self.lose:  # ... then waits for it to be back, so that there is data after the drop
                    await self.joined.wait()
                    start = time.monotonic() - (ns - t0_ns) / 1e9 / self.speed
                continue
            if not send:
                continue
            text = body.decode()
            for client in list(self.clients):
                if self.wanted(client, body, index):
                    try:
                        await client.send(text)
                        self.delivered += 1
                    except Exception:  # noqa: S110 - a client that went away misses the message
                        pass
            self.sent += 1
            if self.drop_after is not None and self.sent == self.drop_after:
                for client in list(self.clients):
                    self.dropped_connections += 1
                    self.clients.discard(client)
                    client.transport.abort()  # a network drop, not a clean close
                self.joined.clear()
                self.lose = self.lost_while_down
        self.done.set()

    def start(self) -> None:
        self.joined.set()
        if not self.started:
            self.started = True
            asyncio.get_running_loop().create_task(self.produce())


class FakeBinance(_Feed):
    """One Binance market (spot, usdm, coinm) serving one symbol's recording on ``/stream?streams=...``."""

    def __init__(self, path: Path, market: str, *, lines: int = 3000, speed: float = 20.0,
                 drop_after: int | None = None, skip_depth: int | None = None):
        records = read_recording(path, lines)
        self.snapshot_line = next(body for _, body in records if body.startswith(b'{"lastUpdateId"'))
        super().__init__([(ns, body) for ns, body in records if not body.startswith(b'{"lastUpdateId"')],
                         speed, drop_after)
        self.market = market
        self.skip_depth = skip_depth  # the n-th depth message (1-based) is never sent
        snap = json.loads(self.snapshot_line)
        self.snapshot_id = snap["lastUpdateId"]
        self.book = {"bids": {p: q for p, q in snap["bids"]}, "asks": {p: q for p, q in snap["asks"]}}
        self.last = None  # (u, E, T) of the last diff applied past the snapshot
        self.lock = threading.Lock()
        self.depth_seen = 0
        self.skipped = 0
        self.snapshot_requests = 0
        self.open_interest_requests = 0
        self.subscriptions: list[tuple[str, ...]] = []
        self.http = None

    def wanted(self, client, body: bytes, index: int) -> bool:
        stream = body[11: body.index(b'"', 11)].decode()  # {"stream":"<name>",...
        return stream in client.streams

    def on_message(self, index: int, body: bytes) -> bool:
        if b'"depthUpdate"' not in body[:80]:
            return True
        data = json.loads(body)["data"]
        with self.lock:
            if data["u"] >= self.snapshot_id:
                for side, key in (("bids", "b"), ("asks", "a")):
                    levels = self.book[side]
                    for price, qty in data[key]:
                        if float(qty) == 0:
                            levels.pop(price, None)
                        else:
                            levels[price] = qty
                self.last = (data["u"], data["E"], data.get("T"))
        self.depth_seen += 1
        if self.skip_depth is not None and self.depth_seen == self.skip_depth:
            self.skipped += 1
            return False
        return True

    def depth_snapshot(self) -> bytes:
        with self.lock:
            self.snapshot_requests += 1
            if self.last is None:
                return self.snapshot_line
            u, e, t = self.last
            bids = sorted(self.book["bids"].items(), key=lambda kv: -float(kv[0]))[:1000]
            asks = sorted(self.book["asks"].items(), key=lambda kv: float(kv[0]))[:1000]
        reply = {"lastUpdateId": u}
        if self.market != "spot":
            reply.update(E=e, T=t)
        reply.update(bids=[list(kv) for kv in bids], asks=[list(kv) for kv in asks])
        return json.dumps(reply, separators=(",", ":")).encode()

    def open_interest(self, symbol: str) -> bytes:
        self.open_interest_requests += 1
        return json.dumps({"openInterest": f"{70000 + self.sent / 1000:.3f}", "symbol": symbol,
                           "time": int(time.time() * 1000)}, separators=(",", ":")).encode()

    async def handler(self, ws) -> None:
        query = parse_qs(urlparse(ws.request.path).query)
        ws.streams = tuple(query.get("streams", [""])[0].split("/"))
        self.subscriptions.append(ws.streams)
        self.clients.add(ws)
        self.start()
        try:
            async for _ in ws:  # Binance ignores what a combined-stream client sends here
                pass
        except Exception:  # noqa: S110
            pass
        finally:
            self.clients.discard(ws)

    def serve_rest(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                url = urlparse(self.path)
                symbol = parse_qs(url.query).get("symbol", [""])[0]
                if url.path == DEPTH_PATH[fake.market]:
                    body = fake.depth_snapshot()
                elif url.path == OI_PATH.get(fake.market):
                    body = fake.open_interest(symbol)
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.http.server_address[1]}"


class FakeHyperliquid(_Feed):
    """Hyperliquid's ``/ws``: acknowledges subscriptions, answers pings, serves the recorded messages."""

    def __init__(self, path: Path, *, lines: int = 10_000, speed: float = 20.0, drop_after: int | None = None):
        super().__init__(read_recording(path, lines), speed, drop_after)
        self.pings = 0
        self.subscribe_messages = 0

    def wanted(self, client, body: bytes, index: int) -> bool:
        msg = json.loads(body)
        data = msg["data"]
        coin = data[0]["coin"] if isinstance(data, list) else data.get("coin")
        return (msg["channel"], coin) in client.subs

    async def handler(self, ws) -> None:
        ws.subs = set()
        self.clients.add(ws)
        try:
            async for text in ws:
                msg = json.loads(text)
                if msg.get("method") == "ping":
                    self.pings += 1
                    await ws.send('{"channel":"pong"}')
                elif msg.get("method") == "subscribe":
                    self.subscribe_messages += 1
                    sub = msg["subscription"]
                    ws.subs.add((sub["type"], sub["coin"]))
                    await ws.send(json.dumps({"channel": "subscriptionResponse", "data": msg}, separators=(",", ":")))
                    self.start()
        except Exception:  # noqa: S110
            pass
        finally:
            self.clients.discard(ws)


class FakeVenues:
    """Runs fakes on 127.0.0.1 in a background asyncio loop; a context manager."""

    def __init__(self, *fakes):
        self.fakes = fakes
        self.urls: list[str] = []
        self.rest_urls: list[str | None] = []
        self._loop = asyncio.new_event_loop()
        self._servers = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> FakeVenues:
        from websockets.asyncio.server import serve

        self._thread.start()
        for fake in self.fakes:
            async def start(handler=fake.handler):
                return await serve(handler, "127.0.0.1", 0)

            server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
            self._servers.append(server)
            self.urls.append(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}")
            self.rest_urls.append(fake.serve_rest() if isinstance(fake, FakeBinance) else None)
        return self

    def wait_done(self, timeout_s: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout_s
        return all(fake.done.wait(max(0.0, deadline - time.monotonic())) for fake in self.fakes)

    def __exit__(self, *exc) -> None:
        async def shutdown():
            for server in self._servers:
                server.close()
                await server.wait_closed()
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:  # a feed stopped mid-stream (the client went away first)
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        for fake in self.fakes:
            if getattr(fake, "http", None) is not None:
                fake.http.shutdown()
                fake.http.server_close()
