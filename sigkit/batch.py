"""The batch path: what ``on_batch`` receives, and the helpers compiled kernels share.

The engine cuts the replay into *pieces* (whole groups of equal timestamp) and, for each piece, writes
its **schedule**: the exact sequence of calls the per-event hooks would receive, as three kinds of step
in event-time order:

* ``OUTCOME``: an outcome whose horizon has passed is delivered (``record_outcome``);
* ``QUERY``: a fill is to be predicted (``predict``);
* ``EVENT``: a market event (trade, book update or market stat) is delivered.

Within a group of equal timestamp ``t`` the outcomes due strictly before ``t`` come first, then the fills
at ``t``, then the events at ``t``, exactly as in the per-event path (see :mod:`sigkit.engine`).  A model
that implements ``on_batch(batch)`` walks ``batch.op``/``batch.ref`` in order and returns its
predictions for the query steps; the engine calls it instead of the per-event hooks, so models of both
kinds mix in one ensemble.  Nothing in a batch lies after the piece: a kernel cannot look ahead further
than a per-event model could.

Columns are plain numpy arrays (no strings): markets are small integer codes from :class:`MarketCodes`,
so a kernel compiled with numba reads them directly.  ``batch.column(name)`` gives a contiguous copy of
an event column, made once per piece and shared by every model that asks for it.
"""

from __future__ import annotations

import threading

import numpy as np

from sigkit.events import BOOK, EVENT_DTYPE, FILL, STAT, TRADE

__all__ = ["EVENT", "QUERY", "OUTCOME", "TRADE", "BOOK", "STAT", "FILL", "Batch", "MarketCodes", "FillSlots",
           "BatchPredictions"]

# The venue and symbol columns lie side by side in a row: their bytes identify a market.
_NAME_START = EVENT_DTYPE.fields["venue"][1]
_NAME_END = EVENT_DTYPE.fields["symbol"][1] + EVENT_DTYPE["symbol"].itemsize
assert _NAME_START + EVENT_DTYPE["venue"].itemsize == EVENT_DTYPE.fields["symbol"][1]
assert (_NAME_END - _NAME_START) % 8 == 0

_LOCK = threading.RLock()

#: Schedule steps (``batch.op``).
EVENT = 0
QUERY = 1
OUTCOME = 2


class MarketCodes:
    """Small integer codes for ``(venue, symbol)`` pairs, fixed for the whole run (first come, first
    numbered).  ``code(venue, symbol)`` numbers a market before it appears too, so a model can learn its
    target's code when it starts."""

    def __init__(self) -> None:
        self._codes: dict[tuple[str, str], int] = {}
        self._keys: list[np.ndarray] = []  # the raw bytes of each market's venue and symbol, as words
        self._stacked = np.empty((0, (_NAME_END - _NAME_START) // 8), dtype=np.uint64)  # the keys as one array
        self.names: list[tuple[str, str]] = []

    def code(self, venue: str, symbol: str) -> int:
        key = (venue, symbol)
        code = self._codes.get(key)
        if code is None:
            with _LOCK:  # (batch models may run in threads)
                return self._new_code(key)
        return code

    def _new_code(self, key: tuple[str, str]) -> int:
        venue, symbol = key
        code = self._codes.get(key)
        if code is None:
            code = self._codes[key] = len(self.names)
            self.names.append(key)
            row = np.zeros(1, dtype=EVENT_DTYPE)
            row["venue"], row["symbol"] = venue, symbol
            raw = row.view(np.uint8)[_NAME_START:_NAME_END]
            self._keys.append(np.frombuffer(raw.tobytes(), dtype=np.uint64))
        return code

    def of_chunk(self, chunk: np.ndarray) -> np.ndarray:
        """The code of every row of an event chunk (``int32``).  Markets are matched on the raw bytes of the
        venue and symbol columns, a few integer compares a row."""
        n = len(chunk)
        out = np.full(n, -1, dtype=np.int32)
        if not n:
            return out
        rows = np.ascontiguousarray(chunk).view(np.uint8).reshape(n, EVENT_DTYPE.itemsize)
        words = rows[:, _NAME_START:_NAME_END].view(np.uint64)  # (a strided view: the names are not copied)
        if self._keys:
            from sigkit import fast  # (compiled: a few compares a row)

            if len(self._stacked) != len(self._keys):
                self._stacked = np.vstack(self._keys)
            if not fast.match_markets(words, self._stacked, out):
                return out
        left = out < 0
        while left.any():  # markets not seen before, numbered in order of first appearance
            r = int(np.argmax(left))
            code = self.code(str(chunk["venue"][r]), str(chunk["symbol"][r]))
            hit = (words == self._keys[code]).all(axis=1)
            out[hit] = code
            left &= ~hit
        return out

    def state_dict(self) -> dict:
        return {"names": [list(n) for n in self.names]}

    def load_state_dict(self, state: dict) -> None:
        self._codes.clear()
        self._keys.clear()
        self._stacked = self._stacked[:0]
        self.names.clear()
        for venue, symbol in state["names"]:
            self.code(venue, symbol)


class Batch:
    """One piece of the replay in columns, with its schedule.

    Schedule (``n_steps`` long): ``op[i]`` is ``EVENT``, ``QUERY`` or ``OUTCOME``; ``ref[i]`` indexes the
    event rows, the queries or the outcomes below.

    Events: ``events`` (the chunk, :data:`sigkit.EVENT_DTYPE`), ``market`` (``int32`` code per row),
    ``kind`` (``uint8``) and ``ts`` (``int64``); any other column through :meth:`column`.

    Queries (fills to predict), ``q_*``: ``ts``, ``market``, ``side`` (ours: +1 we bought), ``price``,
    ``size`` and ``fill`` (the fill's index in the run, 0, 1, 2, ... in order).

    Outcomes delivered in this piece, ``o_*``: ``fill`` (the index of the fill it labels), ``ts``
    (the fill's time), ``market``, ``side``, ``price``, ``size``, ``mid`` (the target mid at the horizon),
    ``markout_bps``, ``adverse`` (1.0 or 0.0) and ``realized_bps``; ``horizon_ns`` is the labelling horizon.
    An outcome of a fill queried earlier in the same batch refers to it by ``fill`` like any other.
    """

    __slots__ = ("op", "ref", "events", "market", "kind", "ts", "q_ts", "q_market", "q_side", "q_price",
                 "q_size", "q_fill", "o_fill", "o_ts", "o_market", "o_side", "o_price", "o_size", "o_mid",
                 "o_markout_bps", "o_adverse", "o_realized_bps", "horizon_ns", "markets", "target", "oldest_pending",
                 "_columns", "_features", "_before")

    def __init__(self, *, op, ref, events, market, q, o, horizon_ns: int, markets: MarketCodes, target: int,
                 oldest_pending: int, columns: dict | None = None):
        self.op = op
        self.ref = ref
        self.events = events
        self.market = market
        self._columns = {} if columns is None else columns
        self._features: dict[int, np.ndarray] = {}  # id(feature state) -> its rows at this batch's queries
        self._before = None  # (steps + 1, 3): events, queries and outcomes before each step (made by steps())
        self.kind = self.column("kind")
        self.ts = self.column("ts_ns")
        self.q_ts, self.q_market, self.q_side, self.q_price, self.q_size, self.q_fill = q
        (self.o_fill, self.o_ts, self.o_market, self.o_side, self.o_price, self.o_size, self.o_mid,
         self.o_markout_bps, self.o_adverse, self.o_realized_bps) = o
        self.horizon_ns = horizon_ns
        self.markets = markets
        self.target = target  # the code of the scored market
        # Every fill before this index has had its outcome delivered, or never will (no target mid at its
        # horizon): what a kernel remembers of them can go.
        self.oldest_pending = oldest_pending

    @property
    def n_queries(self) -> int:
        return len(self.q_ts)

    @property
    def n_outcomes(self) -> int:
        return len(self.o_fill)

    def column(self, name: str) -> np.ndarray:
        """A contiguous copy of event column ``name`` (``bids``/``asks`` are ``(n, levels, 2)``), made once
        per piece and shared by every model that asks."""
        col = self._columns.get(name)
        if col is None:
            if name not in EVENT_DTYPE.names:
                raise KeyError(f"no event column {name!r}; columns: {', '.join(EVENT_DTYPE.names)}")
            col = self._columns[name] = np.ascontiguousarray(self.events[name])
        return col

    def feature(self, state) -> np.ndarray:
        """The values of a shared feature (:mod:`sigkit.features`; ``state`` is what ``context.feature(spec)``
        returned) at each query of this batch, one row per query.  Computed over the batch's events the first
        time any model asks, then shared by every model that reads it."""
        rows = self._features.get(id(state))
        if rows is None:
            with _LOCK:  # (batch models may run in threads: the first asks, the others wait for its rows)
                rows = self._features.get(id(state))
                if rows is None:
                    rows = self._features[id(state)] = state.rows(self)
        return rows

    def precompute(self, state, rows: np.ndarray) -> None:
        """Give the batch a feature's rows computed elsewhere (the engine does, on a copy of the state, when a
        per-event model steps the live one)."""
        self._features[id(state)] = rows

    def steps(self, lo: int, hi: int) -> "Batch":
        """The same piece cut to schedule steps ``[lo, hi)`` (queries and outcomes renumbered from 0)."""
        op = self.op[lo:hi]
        # Queries and outcomes are numbered in schedule order: those before step i are counted once per piece.
        if self._before is None:
            self._before = np.zeros((len(self.op) + 1, 3), dtype=np.int64)
            self._before[1 + np.arange(len(self.op)), self.op] = 1
            np.cumsum(self._before, axis=0, out=self._before)
        qlo, olo = (int(v) for v in self._before[lo, (QUERY, OUTCOME)])
        qhi, ohi = (int(v) for v in self._before[hi, (QUERY, OUTCOME)])
        ref = self.ref[lo:hi] - np.array([0, qlo, olo], dtype=np.int64)[op]
        q = tuple(a[qlo:qhi] for a in (self.q_ts, self.q_market, self.q_side, self.q_price, self.q_size,
                                        self.q_fill))
        o = tuple(a[olo:ohi] for a in (self.o_fill, self.o_ts, self.o_market, self.o_side, self.o_price,
                                        self.o_size, self.o_mid, self.o_markout_bps, self.o_adverse,
                                        self.o_realized_bps))
        return Batch(op=op, ref=ref, events=self.events, market=self.market, q=q, o=o, horizon_ns=self.horizon_ns,
                     markets=self.markets, target=self.target, oldest_pending=self.oldest_pending,
                     columns=self._columns)


def slot_put(owner, fill: int) -> int:
    """Claim the :class:`FillSlots` row of ``fill`` (at its query); returns the row to write.  (The table's
    size is a power of two, so ``fill % size`` is ``fill & (size - 1)``: a mask, not a division.)"""
    slot = fill & (owner.size - 1)
    owner[slot] = fill
    return slot


def slot_take(owner, fill: int) -> int:
    """Release the row of ``fill`` (at its outcome) and return it, or -1 if nothing was kept for it (e.g.
    the fill was asked before the model was restored from another path's checkpoint)."""
    slot = fill & (owner.size - 1)
    if owner[slot] != fill:
        return -1
    owner[slot] = -1
    return slot


class BatchPredictions:
    """What ``on_batch`` returns: ``p``, ``confidence`` and ``cost_bps``, one value per query (float64)."""

    __slots__ = ("p", "confidence", "cost_bps")

    def __init__(self, p, confidence, cost_bps):
        self.p, self.confidence, self.cost_bps = p, confidence, cost_bps


class FillSlots:
    """Per-fill memory for a compiled kernel: what it stored at a fill's query (its features, say), kept
    until that fill's outcome.  ``values[slot]`` rows of ``width`` floats; ``owner[slot]`` is the fill index
    held there (-1: free).  A fill's slot is ``fill % capacity`` (a power of two); :meth:`ensure` grows the
    table (keeping every entry) before a batch whose fills would collide with ones still pending, so a
    kernel never has to check.  Kernels claim and release rows with :func:`slot_put` and :func:`slot_take` (compiled as
    ``sigkit.fast.slot_put`` / ``slot_take``) on ``owner`` and read and write ``values`` themselves.
    """

    def __init__(self, width: int, capacity: int = 1024):
        if capacity < 1 or capacity & (capacity - 1):
            raise ValueError(f"FillSlots capacity must be a power of two, not {capacity!r}")
        self.width = width
        self.values = np.zeros((capacity, width))
        self.owner = np.full(capacity, -1, dtype=np.int64)

    @property
    def capacity(self) -> int:
        return len(self.owner)

    def ensure(self, batch: Batch) -> None:
        """Grow so that every fill held now and every fill queried in ``batch`` has a slot of its own."""
        if not batch.n_queries:
            return
        hi = int(batch.q_fill[-1])
        capacity = self.capacity
        if hi - batch.oldest_pending < capacity:
            return  # every fill still to be delivered is at or after oldest_pending: no two can collide
        from sigkit import fast  # (compiled; a batch path needs numba anyway)

        lo = fast.release_slots(self.owner, batch.oldest_pending, int(batch.q_fill[0]))
        while hi - lo + 1 > capacity:
            capacity *= 2
        if capacity != self.capacity:
            values, owner = self.values, self.owner
            self.values = np.zeros((capacity, self.width))
            self.owner = np.full(capacity, -1, dtype=np.int64)
            keep = owner >= 0
            slots = owner[keep] % capacity
            self.values[slots] = values[keep]
            self.owner[slots] = owner[keep]

    def state_dict(self) -> dict:
        return {"version": 1, "values": self.values.copy(), "owner": self.owner.copy()}

    def load_state_dict(self, state: dict) -> None:
        owner = np.array(state["owner"], dtype=np.int64)
        if not len(owner) or len(owner) & (len(owner) - 1):
            raise ValueError(f"a FillSlots table of {len(owner)} rows: the size must be a power of two")
        self.values = np.array(state["values"], dtype=float).reshape(-1, self.width)
        self.owner = owner
