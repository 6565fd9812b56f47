"""Live mode: connect to the venues a recipe names, stamp and record every message, and feed the engine.

This module knows no venue.  Each data entry of a recipe asks its source plugin, through the optional
``live_connections()`` source hook (:class:`sigkit.hookspecs.SourceHooks`), for the connections it needs:
:class:`LiveConnectionPlan` items, each a :class:`Connection` subclass written by the plugin (what to connect
to, what to subscribe, what else to fetch), the name of its recording and the source params that read that
recording.  This module runs them: reconnects with backoff, stamps, records, feeds the readers.  Every
message received, and every other response a connection records (e.g. REST depth snapshots), is stamped with the local receive time from one process-wide, strictly increasing clock
and becomes one line ``<local_ns> <raw json>``: exactly a line of the replayable recording format of the
venue's source plugin.  The same line is (1) written to the connection's recording file, if recording,
and (2) handed to a reader of that source plugin built for that file, whose rows go to the engine.  A
recording therefore replays through the same recipe to the same predictions (:func:`replay_recipe_for`).

Threads: the websockets run in an asyncio loop in a background thread; the engine pulls chunks in the
caller's thread from :meth:`LiveSource.chunks`, which takes the received lines in arrival order, feeds each
to its connection's reader and yields the rows in global time order.  Each reader's ``parse(lines)``
generator runs in a small thread of its own (:class:`_ReaderPump`), because a pull-style generator can
only be handed lines one batch at a time if something can wait for it to ask for more.
"""

from __future__ import annotations

import asyncio
import gzip
import inspect
import json
import logging
import queue
import random
import threading
import time
import urllib.request
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from sigkit.errors import PluginError, RecipeError, SigkitError

log = logging.getLogger("sigkit.live")

__all__ = [
    "CLOCK", "Backoff", "Connection", "ConnectionStats", "Emit", "EmitAt", "LiveClock", "LiveConnectionPlan",
    "LiveFeed", "LiveSource", "PlannedFeed", "http_get", "live_source_for", "plan_feeds", "replay_recipe_for",
]


class LiveClock:
    """Local receive time in ns, strictly increasing across the whole process: lines never tie, and the
    order in which lines are stamped is their time order."""

    def __init__(self) -> None:
        self._last_ns = 0
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        with self._lock:
            self._last_ns = max(self._last_ns + 1, time.time_ns())
            return self._last_ns


CLOCK = LiveClock()


@attrs.define
class Backoff:
    """Exponential reconnect delays, capped and jittered by a seeded generator (reproducible in tests)."""

    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    seed: int = 0
    _attempt: int = 0
    _rng: random.Random = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def next_s(self) -> float:
        delay = min(self.max_s, self.initial_s * self.factor ** self._attempt)
        self._attempt += 1
        return delay * (0.5 + 0.5 * self._rng.random())

    def reset(self) -> None:
        self._attempt = 0


@attrs.define
class ConnectionStats:
    """What one connection did; reported by :meth:`LiveSource.describe`."""

    url: str = ""
    recording: str | None = None
    messages: int = 0
    bytes: int = 0
    connects: int = 0
    reconnects: int = 0  # successful connections after the first
    disconnects: int = 0  # sessions that ended, or connection attempts that failed, before the stop
    gaps: int = 0  # breaks in a sequenced stream seen by the connector (Binance depth U/u/pu)
    gap_list: list = attrs.Factory(list)
    snapshots: int = 0  # REST depth snapshots received and recorded
    snapshot_errors: int = 0
    stale_snapshots: int = 0  # snapshots older than the stream, fetched again
    open_interest_polls: int = 0
    open_interest_errors: int = 0
    pings: int = 0
    lines_rewritten: int = 0  # messages that held a line break (replaced by a space, insignificant in JSON)
    down_s: float = 0.0  # time spent disconnected after the first connection
    last_error: str | None = None

    def as_dict(self) -> dict:
        return attrs.asdict(self)


Emit = Callable[[bytes], int]  # records and queues one message body, returns its stamp
EmitAt = Callable[[int, bytes], None]  # the same with a stamp already taken from CLOCK


def _one_line(body: bytes, stats: ConnectionStats) -> bytes:
    body = body.strip()
    if b"\n" in body or b"\r" in body:
        stats.lines_rewritten += 1
        body = body.replace(b"\r", b" ").replace(b"\n", b" ")
    return body


def http_get(url: str, timeout_s: float = 10.0) -> bytes:
    """A blocking GET returning the body (run in an executor thread)."""
    request = urllib.request.Request(url, headers={"User-Agent": "sigkit-live", "Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - public market data
        return response.read()


class Connection:
    """One websocket connection, kept up until the run stops: reconnects with backoff, re-subscribes, and
    hands every message to ``emit``.  Subclasses (written by source plugins) say what to connect to
    (:meth:`url`) and what to do once connected (:meth:`session`); sigkit sets ``name`` and ``backoff``
    when it plans a run."""

    venue = ""

    def __init__(self, name: str, *, backoff: Backoff | None = None, open_timeout_s: float = 10.0):
        self.name = name
        self.backoff = backoff or Backoff()
        self.open_timeout_s = open_timeout_s
        self.stats = ConnectionStats()

    def url(self) -> str:
        raise NotImplementedError

    async def session(self, ws, emit: Emit, emit_at: EmitAt) -> None:
        """Talk to the venue over the open websocket ``ws`` until it closes: subscribe, then pass every
        message received to ``emit`` (it stamps, records and queues it, and returns the stamp); a response
        fetched on the side goes to ``emit`` too, or to ``emit_at`` with a stamp already taken from
        :data:`CLOCK`.  Update ``self.stats`` as you go.  Raising (or returning) ends the session; the
        connection is then opened again after a backoff."""
        raise NotImplementedError

    def as_line(self, body: bytes) -> bytes:
        """``body`` as one recording line: stripped, any line break replaced by a space (counted in
        ``stats.lines_rewritten``; insignificant in JSON)."""
        return _one_line(body, self.stats)

    async def run(self, emit: Emit, emit_at: EmitAt, stopping: asyncio.Event) -> None:
        from websockets.asyncio.client import connect

        url = self.url()
        self.stats.url = url
        down_since = None
        while not stopping.is_set():
            received_before = self.stats.messages
            try:
                async with connect(url, open_timeout=self.open_timeout_s, max_size=None, ping_interval=20,
                                   ping_timeout=20, close_timeout=2) as ws:
                    self.stats.connects += 1
                    if self.stats.connects > 1:
                        self.stats.reconnects += 1
                        log.warning("%s: reconnected", self.name)
                    if down_since is not None:
                        self.stats.down_s += time.monotonic() - down_since
                        down_since = None
                    await self.session(ws, emit, emit_at)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # closed, refused, timed out, bad handshake: all mean "try again"
                self.stats.last_error = f"{type(err).__name__}: {err}"
            if stopping.is_set():
                break
            self.stats.disconnects += 1
            if down_since is None:
                down_since = time.monotonic()
            if self.stats.messages > received_before:
                self.backoff.reset()  # the session worked for a while: start again from a short delay
            delay = self.backoff.next_s()
            log.warning("%s: disconnected (%s); reconnecting in %.2f s", self.name, self.stats.last_error, delay)
            try:
                await asyncio.wait_for(stopping.wait(), delay)
            except TimeoutError:
                pass


# --- feeding readers ---------------------------------------------------------------------------------

_END = object()


class _ReaderPump:
    """Runs one reader's ``parse(lines)`` generator in its own thread and feeds it batches of lines.

    :meth:`feed` hands over a batch (ending with ``None``: emit what you hold) and waits until the reader
    has consumed all of it and asks for more; it returns the chunks produced meanwhile.
    """

    def __init__(self, reader: Any, name: str):
        self.reader = reader
        self._cv = threading.Condition()
        self._inbox: deque = deque()
        self._out: list[np.ndarray] = []
        self._hungry = False  # the reader waits for input and the inbox is empty
        self._closed = False
        self._done = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"sigkit-live-reader-{name}", daemon=True)
        self._thread.start()

    def _lines(self) -> Iterator:
        cv = self._cv
        while True:
            with cv:
                while not self._inbox:
                    if self._closed:
                        return
                    self._hungry = True
                    cv.notify_all()
                    cv.wait()
                item = self._inbox.popleft()
            yield item

    def _run(self) -> None:
        try:
            for chunk in self.reader.parse(self._lines()):
                with self._cv:
                    self._out.append(chunk)
        except BaseException as err:  # handed to the engine's thread by feed()/close()
            with self._cv:
                self._error = err
        finally:
            with self._cv:
                self._done = True
                self._cv.notify_all()

    def put(self, items: list) -> None:
        with self._cv:
            self._inbox.extend(items)
            self._hungry = False
            self._cv.notify_all()

    def take(self) -> list[np.ndarray]:
        """Wait until the reader has used everything put and asks for more (or ended); its chunks."""
        with self._cv:
            while not ((self._hungry and not self._inbox) or self._done):
                self._cv.wait()
            out, self._out = self._out, []
            if self._error is not None:
                raise self._error
            return out

    def close(self) -> list[np.ndarray]:
        """End of input: the reader finishes; everything it still held."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join()
        out, self._out = self._out, []
        if self._error is not None:
            raise self._error
        return out


@attrs.frozen
class LiveFeed:
    """One connection and how to read it: ``make_reader(path)`` builds the source plugin's reader for the
    connection's recording file ``file_name`` (the reader is fed lines; the file is only written)."""

    connection: Connection
    make_reader: Callable[[Path], Any]
    file_name: str
    label: str = ""
    entry: dict = attrs.Factory(dict)  # the data entry that replays this file (for the manifest)


class LiveSource:
    """A sigkit source fed by live connections: :meth:`chunks` yields one time-ordered stream of rows.

    ``duration_s`` ends the run after that much wall time; :meth:`stop` ends it early (safe to call from
    a signal handler or another thread), and so does ``should_stop()`` returning a reason (polled every
    ``poll_s``, also while no data arrives).  At the end every line received is still parsed and yielded, and
    every recording file is complete and closed.  Nothing is ever dropped when the engine falls behind: the
    lines wait in memory and :meth:`describe` reports the largest backlog and lag.
    """

    def __init__(self, feeds: Sequence[LiveFeed], *, duration_s: float | None = None,
                 record_dir: str | Path | None = None, flush_every_s: float = 1.0, poll_s: float = 0.05,
                 max_batch_lines: int = 20000, lag_warning_s: float = 5.0, manifest: dict | None = None,
                 should_stop: Callable[[], str | None] | None = None):
        if not feeds:
            raise SigkitError("live mode needs at least one connection")
        names = [f.file_name for f in feeds]
        if len(set(names)) != len(names):
            raise SigkitError(f"two live connections would record to the same file: {names}")
        self.feeds = list(feeds)
        self.duration_s = duration_s
        self.record_dir = Path(record_dir) if record_dir is not None else None
        self.flush_every_s, self.poll_s = flush_every_s, poll_s
        self.max_batch_lines, self.lag_warning_s = max_batch_lines, lag_warning_s
        self.manifest = manifest or {}
        self.should_stop = should_stop  # polled every ``poll_s`` even when no data comes (e.g. the CLI's SIGTERM flag)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._stop_reason: str | None = None
        self.failure: str | None = None  # why the run had to stop (e.g. the recording could not be written)
        self._thread: threading.Thread | None = None
        self._readers: list[Any] = []
        self._pumps: list[_ReaderPump] = []
        self._linenos: list[int] = []
        self._files: list = []
        self._started_ns: int | None = None
        self._ended_ns: int | None = None
        self._closed = False
        self.lines = 0
        self.rows = 0
        self.max_backlog_lines = 0
        self.max_lag_ns = 0
        self.lag_warnings = 0

    # -- control --------------------------------------------------------------------------------------
    def stop(self, reason: str = "stopped") -> None:
        """End the run: connections close, what was received is still yielded, recordings are closed."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop.set()

    def paths(self) -> list[Path]:
        base = self.record_dir if self.record_dir is not None else Path("<live>")
        return [base / f.file_name for f in self.feeds]

    # -- the source hooks -----------------------------------------------------------------------------
    def chunks(self) -> Iterator[np.ndarray]:
        self._start()
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    break
                if batch:
                    yield from self._process(batch)
            tail = [chunk for pump in self._pumps for chunk in pump.close()]
            self._pumps = []
            yield from self._merged(tail)
        finally:
            self.close()

    def describe(self) -> dict:
        connections = []
        for k, feed in enumerate(self.feeds):
            info = {"name": feed.connection.name, "venue": feed.connection.venue, "label": feed.label,
                    **feed.connection.stats.as_dict()}
            if k < len(self._readers) and hasattr(self._readers[k], "describe"):
                info["reader"] = self._readers[k].describe()
            connections.append(info)
        return {"source": "live", "record_dir": None if self.record_dir is None else str(self.record_dir),
                "started_ns": self._started_ns, "ended_ns": self._ended_ns, "duration_s": self.duration_s,
                "stop_reason": self._stop_reason, "lines": self.lines, "rows": self.rows,
                "backlog": {"max_lines": self.max_backlog_lines, "max_lag_ms": round(self.max_lag_ns / 1e6, 3),
                            "lag_warnings": self.lag_warnings},
                "connections": connections}

    # -- internals ------------------------------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is not None:
            raise SigkitError("a LiveSource runs once; build a new one for another run")
        paths = self.paths()
        self._readers = [feed.make_reader(path) for feed, path in zip(self.feeds, paths)]
        for reader, feed in zip(self._readers, self.feeds):
            if not hasattr(reader, "parse"):
                raise SigkitError(f"source of {feed.label or feed.file_name} has no parse(lines) method, so it "
                                  "cannot read a live feed")
        if self.record_dir is not None:
            self.record_dir.mkdir(parents=True, exist_ok=True)
            self._files = [gzip.open(path, "wb", compresslevel=5) for path in paths]
            for feed, path in zip(self.feeds, paths):
                feed.connection.stats.recording = str(path)
        self._linenos = [0] * len(self.feeds)
        self._pumps = [_ReaderPump(reader, feed.file_name) for reader, feed in zip(self._readers, self.feeds)]
        self._started_ns = time.time_ns()
        self._thread = threading.Thread(target=self._thread_main, name="sigkit-live-loop", daemon=True)
        self._thread.start()

    def _next_batch(self) -> list | None:
        """The lines received so far, in arrival order ([] if none yet); None once the run is over."""
        q = self._queue
        if self.should_stop is not None and not self._stop.is_set():
            reason = self.should_stop()
            if reason:
                self.stop(reason)
        try:
            first = q.get(timeout=self.poll_s)
        except queue.Empty:
            return []
        backlog = q.qsize()
        if backlog > self.max_backlog_lines:
            self.max_backlog_lines = backlog
        batch = []
        item = first
        while True:
            if item is _END:
                if batch:
                    q.put(_END)  # seen again on the next call, after this batch is processed
                    return batch
                self._ended_ns = time.time_ns()
                return None
            batch.append(item)
            if len(batch) >= self.max_batch_lines:
                return batch
            try:
                item = q.get_nowait()
            except queue.Empty:
                return batch

    def _process(self, batch: list) -> Iterator[np.ndarray]:
        lag = time.time_ns() - batch[0][1]
        if lag > self.max_lag_ns:
            self.max_lag_ns = lag
        if lag > self.lag_warning_s * 1e9:
            self.lag_warnings += 1
            if self.lag_warnings == 1 or self.lag_warnings % 100 == 0:
                log.warning("the engine is %.1f s behind the live feed (%d lines waiting)", lag / 1e9, len(batch))
        self.lines += len(batch)
        per: dict[int, list] = defaultdict(list)
        linenos = self._linenos
        for k, local_ns, body in batch:
            linenos[k] += 1
            per[k].append((linenos[k], b"%d %s" % (local_ns, body)))
        for k, items in per.items():
            items.append(None)
            self._pumps[k].put(items)
        chunks = [chunk for k in per for chunk in self._pumps[k].take()]
        yield from self._merged(chunks)

    def _merged(self, chunks: list[np.ndarray]) -> Iterator[np.ndarray]:
        chunks = [c for c in chunks if len(c)]
        if not chunks:
            return
        out = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        ts = out["ts_ns"]
        if len(out) > 1 and (ts[1:] < ts[:-1]).any():
            # Rows of different connections never share a time, and each reader's rows are in order, so a
            # stable sort by time restores the arrival order exactly.
            out = out[np.argsort(ts, kind="stable")]
        self.rows += len(out)
        yield out

    def close(self) -> None:
        """Stop everything and close the recordings (idempotent; :meth:`chunks` calls it at its end)."""
        if self._closed:
            return
        self._closed = True
        self.stop("closed")
        if self._thread is not None:
            self._thread.join()
        for pump in self._pumps:
            try:
                pump.close()
            except BaseException:  # noqa: S110 - already failing or abandoned; the files matter more now
                pass
        self._pumps = []
        if self.record_dir is not None:
            self._write_manifest()

    def _write_manifest(self) -> None:
        manifest = {**self.manifest, "files": [{"file": f.file_name, "label": f.label, "data": f.entry}
                                               for f in self.feeds], "live": self.describe()}
        text = json.dumps(manifest, indent=2, default=str)
        (self.record_dir / "live.json").write_text(text + "\n")

    # -- the asyncio side -----------------------------------------------------------------------------
    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # pragma: no cover - a bug in the loop itself
            log.error("live loop failed: %s: %s", type(err).__name__, err)
        finally:
            for f in self._files:
                try:
                    f.close()
                except OSError as err:  # pragma: no cover
                    log.error("could not close a recording: %s", err)
            self._queue.put(_END)

    async def _main(self) -> None:
        stopping = asyncio.Event()
        put = self._queue.put
        files = self._files

        def emitter(k: int):
            f = files[k] if files else None

            def emit_at(local_ns: int, body: bytes) -> None:
                if f is not None:
                    try:
                        f.write(b"%d %s\n" % (local_ns, body))
                    except OSError as err:  # disk full...: stop rather than score lines the recording lacks
                        self.failure = f"cannot write the recording {f.name}: {err}"
                        self.stop(self.failure)
                        return
                put((k, local_ns, body))

            def emit(body: bytes) -> int:
                local_ns = CLOCK.now_ns()
                emit_at(local_ns, body)
                return local_ns

            return emit, emit_at

        tasks = [asyncio.create_task(feed.connection.run(*emitter(k), stopping), name=feed.connection.name)
                 for k, feed in enumerate(self.feeds)]
        started = time.monotonic()
        next_flush = started + self.flush_every_s
        while not self._stop.is_set():
            now = time.monotonic()
            if self.duration_s is not None and now - started >= self.duration_s:
                self.stop("duration reached")
                break
            if now >= next_flush:
                for f in files:
                    f.flush()
                next_flush = now + self.flush_every_s
            await asyncio.sleep(min(0.05, self.poll_s))
        stopping.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --- from a recipe -----------------------------------------------------------------------------------

#: The source hook that gives a data entry's live connections (see :class:`sigkit.hookspecs.SourceHooks`).
LIVE_HOOK = "live_connections"
#: The ``path`` a source is built with, to plan, when its data entry has none (never opened).
PLANNING_PATH = "<live>"


@attrs.frozen
class LiveConnectionPlan:
    """One connection a source's ``live_connections()`` asks for, and how to read what it records.

    ``connection`` is a :class:`Connection` (sigkit renames it after its recording and gives it its
    backoff); ``name`` is the recording's base name, e.g. ``binance-usdm_BTCUSDT`` (made file-safe, with
    ``.gz`` appended, and numbered when two connections would share it); ``params`` are the source's params
    that read the recording (sigkit sets their ``path``); ``part`` tells apart the connections of one data
    entry in the replay's source labels (``<label>:<part>``).
    """

    connection: Connection
    name: str
    params: Any
    part: str = ""


@attrs.frozen
class PlannedFeed:
    """One connection a recipe's data entry asks for, and the data entry that reads its recording."""

    label: str  # source label for the replay, e.g. ``binance#1:BTCUSDT``
    file_name: str
    spec: Any  # the SourceSpec
    params: Any  # the entry's params for this connection; ``path`` is set to the recording file
    connection: Connection
    where: tuple[int, int] | None = None


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


def _planner(recipe, entry) -> Callable[[], Any] | None:
    """The bound ``live_connections`` of the source a data entry builds, or None if it has none."""
    factory, params = entry.spec.factory, entry.params
    if isinstance(factory, type) and inspect.getattr_static(factory, LIVE_HOOK, None) is None:
        return None  # known without building it
    if attrs.has(type(params)) and getattr(params, "path", PLANNING_PATH) is None:
        params = attrs.evolve(params, path=PLANNING_PATH)
    return getattr(factory(params, recipe.context(entry.label)), LIVE_HOOK, None)


def plan_feeds(recipe) -> list[PlannedFeed]:
    """The connections a recipe's data section asks for, one per recording file, in recipe order.

    Each data entry's source is built (with a placeholder ``path`` if it has none) and asked for its
    ``live_connections()``; a source without that hook has no live mode.  Every entry must read on the
    ``local`` clock (live mode stamps the receive time).
    """
    planned: list[PlannedFeed] = []
    for entry in recipe.sources:
        name, params = entry.spec.name, entry.params
        where = f"{recipe.path}: data entry {entry.label!r}"
        if getattr(params, "clock", "local") != "local":
            raise RecipeError(f"{where}: live mode reads on the local receive clock; remove `clock: exchange`")
        planner = _planner(recipe, entry)
        if planner is None:
            raise RecipeError(f"{where}: source {name!r} has no live mode (it does not implement "
                              f"{LIVE_HOOK}())")
        try:
            plans = list(planner())
        except SigkitError as err:
            raise RecipeError(f"{where}: {err}") from None
        if not plans:
            raise RecipeError(f"{where}: source {name!r} asks for no live connection")
        for plan in plans:
            if not (isinstance(plan, LiveConnectionPlan) and isinstance(plan.connection, Connection)):
                raise PluginError(f"source {name!r}: {LIVE_HOOK}() must return sigkit.live.LiveConnectionPlan "
                                  f"items holding a sigkit.live.Connection; got {plan!r}")
            label = f"{entry.label}:{plan.part}" if plan.part else entry.label
            planned.append(PlannedFeed(label, f"{_safe(plan.name)}.gz", entry.spec, plan.params, plan.connection,
                                       entry.where))
    seen: dict[str, int] = {}
    out = []
    for p in planned:  # the same venue and symbol twice: number the files
        n = seen[p.file_name] = seen.get(p.file_name, 0) + 1
        p = p if n == 1 else attrs.evolve(p, file_name=p.file_name.replace(".gz", f"_{n}.gz"))
        p.connection.name = p.file_name[:-3]
        out.append(p)
    return out


def _entry_plain(p: PlannedFeed, path: Path) -> dict:
    fields = attrs.asdict(p.params, recurse=False)
    fields["path"] = str(path)
    return {"source": p.spec.name, **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}


def live_source_for(recipe, *, record_dir: str | Path | None = None, duration_s: float | None = None,
                    backoff: Backoff | None = None, **source_kw) -> LiveSource:
    """The :class:`LiveSource` for a recipe's data section (see :func:`plan_feeds`).

    Each connection's reader is built through the source plugin's own factory, with the connection's params
    and ``path`` set to the connection's recording file.  Where to connect and what to subscribe are the
    data entries' own parameters (e.g. ``ws_url``).  ``backoff`` replaces the default reconnect delays (each
    connection gets its own seed); ``source_kw`` go to :class:`LiveSource`.
    """
    feeds = []
    base = Path(record_dir) if record_dir is not None else Path("<live>")
    for k, p in enumerate(plan_feeds(recipe)):
        p.connection.backoff = attrs.evolve(backoff, seed=k) if backoff is not None else Backoff(seed=k)
        feeds.append(LiveFeed(p.connection, _reader_factory(recipe, p), p.file_name, p.label,
                              _entry_plain(p, base / p.file_name)))
    manifest = {"recipe": str(recipe.path), "recipe_sha256": recipe.sha256}
    return LiveSource(feeds, duration_s=duration_s, record_dir=record_dir, manifest=manifest, **source_kw)


def _reader_factory(recipe, p: PlannedFeed) -> Callable[[Path], Any]:
    def make(path: Path):
        return p.spec.factory(attrs.evolve(p.params, path=str(path)), recipe.context(p.label))

    return make


def replay_recipe_for(recipe, record_dir: str | Path):
    """``recipe`` reading the recording a live run of it wrote to ``record_dir`` (one data entry per file)."""
    from sigkit.recipe import SourceEntry

    record_dir = Path(record_dir).resolve()
    sources, plain = [], []
    for p in plan_feeds(recipe):
        path = record_dir / p.file_name
        if not path.exists():
            raise RecipeError(f"{path}: no such recording; was {record_dir} written by a live run of "
                              f"{recipe.path.name}?")
        sources.append(SourceEntry(p.label, p.spec, attrs.evolve(p.params, path=str(path)), p.where))
        plain.append(_entry_plain(p, path))
    return attrs.evolve(recipe, sources=tuple(sources), plain=dict(recipe.plain, data=plain))
