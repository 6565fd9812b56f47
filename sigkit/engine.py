"""The causal replay engine: merge sources by time, ask models before each fill is revealed, and deliver
every outcome once its horizon has passed in event time.

Ordering rules (what "causal" means here, and what the no-look-ahead tests check):

* Sources are merged by ``ts_ns``.  Ties keep a fixed order: source order in the recipe, then row order
  within the source.  The same input therefore always replays in the same order.
* Events are handled in groups of equal timestamp.  At a group's time ``t`` the engine first delivers
  the outcomes whose horizon ended strictly before ``t`` (their label mid is final), then asks every
  model to ``predict`` each fill of the group, and only then delivers the group's market events.  A
  model asked about a fill at ``t`` has therefore seen exactly the events with timestamps before ``t``.
* With the ``public`` fill model, each trade on the target market is a fill of our quote resting on the
  passive side at the trade price (an aggressive buy fills our ask).  ``FILL`` rows from a source (the
  user's own fills) are fills too.
* Every outcome reaches every model and every combiner, whatever their confidence.
* Several ensembles (the arms of an A/B comparison) can pool the same model instances in one pass.
* Checkpoints (:mod:`sigkit.checkpoint`) are taken between chunks, so never inside a group of equal
  timestamp: a run resumed from one taken at ``T`` skips the events at or before ``T`` and predicts every
  later fill exactly as the run that never stopped.
"""

from __future__ import annotations

import math
import sys
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from sigkit.context import Market
from sigkit.errors import DataError, ModelError, PluginError, SigkitError
from sigkit.batch import EVENT, QUERY, Batch, BatchPredictions, MarketCodes
from sigkit.events import (
    BOOK, EVENT_DTYPE, FILL, STAT, SYMBOL_CHARS, TRADE, VENUE_CHARS, BookUpdate, FillQuery, MarketStat, Outcome, Prediction, Trade,
)
from sigkit.learn import capture_state, restore_state
from sigkit.plugins import resolve_hooks


@attrs.frozen
class Labelling:
    """How fills become outcomes: the primary horizon that labels them and the markout horizons scored."""

    horizon_ns: int
    threshold_bps: float = 0.0
    markout_horizons_ns: tuple[int, ...] = ()

    @property
    def all_horizons_ns(self) -> tuple[int, ...]:
        return tuple(sorted({self.horizon_ns, *self.markout_horizons_ns}))


@attrs.define
class RunResult:
    """What a replay produced: one row per fill plus counts.  Scoring happens in :mod:`sigkit.report`."""

    model_ids: list[str]
    fills: dict[str, np.ndarray]  # ts_ns, venue, symbol, side, price, size, mid, p_ref, truth, labelled,
    #                               was_adverse, realized_as_bps, markout_<h>
    predictions: dict[str, dict[str, np.ndarray]]  # id -> {p, confidence, cost_bps}; "ensemble" included
    markout_horizons_ns: tuple[int, ...]
    events: dict[str, int]
    first_ts_ns: int | None
    last_ts_ns: int | None
    states: dict[str, dict]  # id (or "ensemble") -> what describe() said at the end
    state_history: list[dict]  # [{"ts_ns": t, "states": {...}}] every state_interval_ns of event time
    dropped: dict[str, dict]  # model id -> {hook, ts_ns, error} for models dropped under on_error: drop
    completed: bool
    stop_reason: str | None
    elapsed_s: float
    resumed_from_ts_ns: int | None = None  # the event time of the checkpoint this run resumed from
    checkpoints: list[dict] = attrs.field(factory=list)  # {ts_ns, bytes, save_s} of each checkpoint written
    paths: dict[str, str] = attrs.field(factory=dict)  # model or ensemble -> "batch" or "per-event"
    # The interval of state_history: the recipe's snapshot_interval, doubled as often as the run's length
    # needed to keep at most max_snapshots (None: no snapshots).
    state_interval_ns: int | None = None
    threads: int = 1  # threads the batch models ran in


class _Stopped(Exception):
    pass


def merge_chunks(sources: Sequence[tuple[str, Iterable[np.ndarray]]]) -> Iterator[np.ndarray]:
    """Merge per-source chunk streams into time-ordered chunks.

    Each yielded chunk ends at a timestamp boundary: all events sharing a timestamp arrive in one chunk.
    Raises :class:`DataError` if a source goes back in time.
    """
    if len(sources) == 1:
        yield from _single_source(*sources[0])
        return
    iters = [iter(chunks) for _, chunks in sources]
    buffers: list[np.ndarray | None] = [None] * len(sources)
    last_seen = [None] * len(sources)
    done = [False] * len(sources)

    def refill(k: int) -> None:
        for chunk in iters[k]:
            if chunk.dtype != EVENT_DTYPE:
                raise PluginError(f"source {sources[k][0]!r} yielded an array that is not of sigkit.EVENT_DTYPE")
            if len(chunk) == 0:
                continue
            ts = chunk["ts_ns"]
            back = np.flatnonzero(ts[1:] < ts[:-1])
            if len(back) or (last_seen[k] is not None and ts[0] < last_seen[k]):
                at = int(ts[back[0] + 1]) if len(back) else int(ts[0])
                raise DataError(f"source {sources[k][0]!r} goes back in time at ts_ns={at}; "
                                "events must be sorted by time")
            last_seen[k] = int(ts[-1])
            buffers[k] = chunk if buffers[k] is None or len(buffers[k]) == 0 else np.concatenate([buffers[k], chunk])
            return
        done[k] = True

    for k in range(len(sources)):
        refill(k)
    while True:
        live = [k for k in range(len(sources)) if not done[k]]
        if not live:
            rest = [(k, b) for k, b in enumerate(buffers) if b is not None and len(b)]
            if rest:
                yield _interleave(rest)
            return
        # Every live source's future lies at or after its buffer's last timestamp, so rows before the
        # smallest of those are final.
        cut = min(int(buffers[k]["ts_ns"][-1]) for k in live)
        out = []
        for k, buf in enumerate(buffers):
            if buf is None or not len(buf):
                continue
            n = int(np.searchsorted(buf["ts_ns"], cut, side="left"))
            if n:
                out.append((k, buf[:n]))
                buffers[k] = buf[n:]
        if out:
            yield _interleave(out)
        # A source whose buffer holds only the cut timestamp (or nothing) must read ahead to move on.
        for k in live:
            buf = buffers[k]
            if buf is None or not len(buf) or int(buf["ts_ns"][-1]) <= cut:
                refill(k)


#: A chunk of at least this many rows is held whole until the next shows where its last group ends; a
#: smaller one (a live feed's) is passed on at once but for its last group, which alone waits.
_WHOLE_ROWS = 1024


def _single_source(label: str, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """:func:`merge_chunks` of one source: its chunks as they are, except that a group of equal timestamp
    cut by a chunk boundary is joined (only that group is copied).  A large chunk is held until the next one
    shows whether its last group goes on there, so that it is passed on whole, not as its rows and then a
    piece of its last group alone (every piece costs each model a call); a small one, as a live feed gives,
    is passed on at once but for its last group."""
    held = None  # rows read and not passed on yet: a whole chunk, or a chunk's last group
    last = None  # their last timestamp
    for chunk in chunks:
        if chunk.dtype != EVENT_DTYPE:
            raise PluginError(f"source {label!r} yielded an array that is not of sigkit.EVENT_DTYPE")
        if len(chunk) == 0:
            continue
        ts = chunk["ts_ns"]
        back = np.flatnonzero(ts[1:] < ts[:-1])
        if len(back) or (last is not None and ts[0] < last):
            at = int(ts[back[0] + 1]) if len(back) else int(ts[0])
            raise DataError(f"source {label!r} goes back in time at ts_ns={at}; events must be sorted by time")
        if held is not None:
            same = int(np.searchsorted(ts, last, side="right"))
            if not same:
                yield held
            else:  # the held rows' last group goes on in this chunk: join that group
                cut = int(np.searchsorted(held["ts_ns"], last, side="left"))
                if cut:
                    yield held[:cut]
                group = np.concatenate([held[cut:], chunk[:same]])
                chunk = chunk[same:]
                if not len(chunk):
                    held = group  # (it may go on in the next chunk too)
                    continue
                yield group
                ts = chunk["ts_ns"]
        last = int(ts[-1])
        if len(chunk) >= _WHOLE_ROWS:
            held = chunk
        else:
            cut = int(np.searchsorted(ts, last, side="left"))
            if cut:
                yield chunk[:cut]
            held = chunk[cut:]
    if held is not None:
        yield held


def _interleave(parts: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """One chunk of the sorted ``parts`` (given in source order), sorted by ``ts_ns``; equal times keep the
    source order, then the row order."""
    if len(parts) == 1:
        return parts[0][1]
    ts = np.concatenate([p["ts_ns"] for _, p in parts])
    where = np.empty(ts.size, dtype=np.int64)
    where[np.argsort(ts, kind="stable")] = np.arange(ts.size)  # stable: source order, then row order
    # Each row is copied once, as raw bytes: several times faster than indexing the structured array.
    width = EVENT_DTYPE.itemsize
    merged = np.empty(ts.size, dtype=EVENT_DTYPE)
    out = merged.view(np.uint8).reshape(ts.size, width)
    start = 0
    for _, part in parts:
        out[where[start: start + part.size]] = np.ascontiguousarray(part).view(np.uint8).reshape(part.size, width)
        start += part.size
    return merged


class Replay:
    """One run: sources, model instances and any number of ensembles, replayed causally.

    ``sources`` are ``(label, source_object)``; ``models`` are ``(model_id, model_object)`` in recipe
    order; ``ensembles`` are ``(name, combiner_object, member_ids)``, each scored under its name (a
    plain recipe has one, named ``ensemble``; an A/B run has one per arm).  ``provenance`` maps model ids
    to where they came from (plugin, distribution, version), for error messages.  ``on_error="drop"``
    turns a model that raises into the causal base rate with confidence 0 from then on (so ensembles keep
    their members) and records why in the result, instead of stopping the run.
    """

    def __init__(self, *, sources: Sequence[tuple[str, Any]], models: Sequence[tuple[str, Any]],
                 ensembles: Sequence[tuple[str, Any, Sequence[str]]] = (), target: Market, labelling: Labelling,
                 public_fills: bool = True, snapshot_interval_ns: int | None = None, max_snapshots: int = 256,
                 provenance: dict[str, str] | None = None, on_error: str = "stop", identity: dict | None = None,
                 path: str = "batch", spill_rows: int = 1 << 16, threads: int | None = None):
        self.target = target
        # Batch models run side by side in this many threads (their compiled kernels release the GIL), at most
        # one per batch model; None: 1.  Results do not depend on it.
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise SigkitError(f"threads must be a whole number >= 1, not {threads!r}")
        self.threads = threads
        self.spill_rows = spill_rows  # settled fills kept in memory before they move to disk (see _Columns)
        if path not in ("batch", "per-event"):
            raise SigkitError(f"path must be 'batch' or 'per-event', not {path!r}")
        self.path = path  # "per-event": call the per-event hooks even of models that have on_batch
        self.labelling = labelling
        self.public_fills = public_fills
        self.snapshot_interval_ns = snapshot_interval_ns  # how often describe() is recorded (None: only at the end)
        if max_snapshots < 2:
            raise SigkitError(f"max_snapshots must be at least 2, not {max_snapshots!r}")
        # More snapshots than this, and every other one goes and the interval doubles (see _State._snapshot).
        self.max_snapshots = max_snapshots
        if on_error not in ("stop", "drop"):
            raise SigkitError(f"on_error must be 'stop' or 'drop', not {on_error!r}")
        self.on_error = on_error
        self.sources = [(label, resolve_hooks(obj, "source", f"source {label!r}")) for label, obj in sources]
        self.model_ids = [mid for mid, _ in models]
        if len(set(self.model_ids)) != len(self.model_ids):
            raise SigkitError("model ids must be unique")
        self._owner = {}  # instance -> label, for error messages
        self._hooks = []
        for mid, obj in models:
            self._hooks.append(resolve_hooks(obj, "model", f"model {mid!r}"))
            where = (provenance or {}).get(mid)
            self._owner[id(obj)] = f"model {mid!r}" + (f" ({where})" if where else "")
        self.ensembles = []  # (name, hooks, member indices)
        for name, obj, members in ensembles:
            unknown = [m for m in members if m not in self.model_ids]
            if unknown:
                raise SigkitError(f"ensemble {name!r}: member {unknown[0]!r} is not a model id")
            if name in self.model_ids:
                raise SigkitError(f"ensemble name {name!r} is also a model id")
            label = f"combiner of {name!r}"
            self.ensembles.append((name, resolve_hooks(obj, "combiner", label),
                                   [self.model_ids.index(m) for m in members]))
            self._owner[id(obj)] = label
        self._instances = {mid: obj for mid, obj in models}
        self._instances.update({name: obj for name, obj, _ in ensembles})
        # What a checkpoint must match to be resumed here (recipe hash, models, params: see sigkit.checkpoint).
        self.identity = identity if identity is not None else {
            "target": str(target), "horizon_ns": labelling.horizon_ns, "threshold_bps": labelling.threshold_bps,
            "markout_horizons_ns": list(labelling.markout_horizons_ns),
            "models": [{"id": mid, "model": type(obj).__qualname__, "params": None} for mid, obj in models],
            "ensembles": [{"name": name, "combiner": type(obj).__qualname__, "members": list(members), "params": None}
                          for name, obj, members in ensembles]}

    def describe_sources(self) -> list[dict]:
        return [hooks["describe"]() if "describe" in hooks else {"source": label} for label, hooks in self.sources]

    def span_ns(self) -> tuple[int, int] | None:
        spans = [hooks["span_ns"]() for _, hooks in self.sources if "span_ns" in hooks]
        spans = [s for s in spans if s]
        if not spans:
            return None
        return min(s[0] for s in spans), max(s[1] for s in spans)

    def run(self, *, progress: Callable[[int, int], None] | None = None,
            should_stop: Callable[[], str | None] | None = None, checkpoint_path: str | Path | None = None,
            checkpoint_every_ns: int | None = None, checkpoint_every_s: float | None = None,
            resume_from: str | Path | None = None, until_ns: int | None = None,
            on_interval: Callable[[RunResult], None] | None = None, interval_s: float = 30.0) -> RunResult:
        """Replay everything.  ``progress(events_done, last_ts_ns)`` is called after each chunk;
        ``should_stop()`` returning a reason ends the run early (results cover what was processed).

        ``checkpoint_path``: save every model's, combiner's and the engine's state there every
        ``checkpoint_every_ns`` of event time and/or ``checkpoint_every_s`` of wall time (between chunks,
        never inside a group of equal timestamp), and once more when the run ends, however it ends, unless
        a Ctrl-C interrupted a chunk half-way (the previous checkpoint then stands).  ``resume_from``: start
        from a checkpoint of the same recipe taken at event time ``T`` (refused with a
        :class:`sigkit.checkpoint.CheckpointError` otherwise), skipping every event with ``ts_ns <= T``; the
        result then covers the whole run, the fills before ``T`` included.  ``until_ns``: stop after the
        last event at or before that event time (the run is then marked stopped, not completed).
        ``on_interval(result_so_far)`` is called every ``interval_s`` of wall time, between chunks, with the
        results up to the last event processed (marked not completed): live mode rewrites its report and
        redraws its table from it.
        """
        started = time.perf_counter()
        state = _State(self)
        if checkpoint_path is not None:
            self._check_checkpointable()
        skip_until = None
        resumed_from = None
        if resume_from is not None:
            resumed_from = skip_until = state.resume(resume_from)
        stop_reason = None
        consistent = True  # False while a chunk is half-processed: no checkpoint can be taken then
        checkpoints: list[dict] = []
        every_ns = checkpoint_every_ns if checkpoint_path is not None and checkpoint_every_ns else None
        next_ns = None  # event time of the next periodic checkpoint (on the grid first_ts + k * every_ns)
        next_wall = time.monotonic() + checkpoint_every_s if checkpoint_path is not None and checkpoint_every_s else None
        next_report = time.monotonic() + interval_s
        streams = [(label, self._source_chunks(label, hooks)) for label, hooks in self.sources]
        try:
            for chunk in merge_chunks(streams):
                if skip_until is not None:
                    ts = chunk["ts_ns"]
                    if ts[-1] <= skip_until:
                        continue
                    chunk = chunk[int(np.searchsorted(ts, skip_until, side="right")):]
                    skip_until = None
                # Cut the chunk at the limits below (whole groups of equal timestamp stay together).
                while len(chunk):
                    ts = chunk["ts_ns"]
                    if until_ns is not None and ts[0] > until_ns:
                        raise _Stopped(f"reached until_ns={until_ns}")
                    if every_ns and next_ns is None:
                        first = state.first_ts if state.first_ts is not None else int(ts[0])
                        done = state.last_ts if state.last_ts is not None else first
                        next_ns = first + ((done - first) // every_ns + 1) * every_ns
                    if next_ns is not None and ts[0] > next_ns:
                        checkpoints.append(state.save(checkpoint_path))
                        next_ns += ((int(ts[0]) - next_ns) // every_ns + 1) * every_ns
                    cut = min(x for x in (next_ns, until_ns, int(ts[-1])) if x is not None)
                    n = int(np.searchsorted(ts, cut, side="right"))
                    piece, chunk = chunk[:n], chunk[n:]
                    consistent = False
                    state.process(piece)
                    consistent = True
                    if progress is not None:
                        progress(state.events_total, state.last_ts)
                    if should_stop is not None:
                        reason = should_stop()
                        if reason:
                            raise _Stopped(reason)
                    if next_wall is not None and time.monotonic() >= next_wall:
                        checkpoints.append(state.save(checkpoint_path))
                        next_wall = time.monotonic() + checkpoint_every_s
                    if on_interval is not None and time.monotonic() >= next_report:
                        on_interval(state.result(completed=False, stop_reason="running",
                                                 elapsed_s=time.perf_counter() - started))
                        next_report = time.monotonic() + interval_s
        except _Stopped as stop:
            stop_reason = str(stop)
        except KeyboardInterrupt:
            stop_reason = "interrupted (Ctrl-C)"
        if checkpoint_path is not None and consistent:
            # Before the final delivery below: a resumed run delivers those outcomes itself, at its next event.
            checkpoints.append(state.save(checkpoint_path))
        if state.last_ts is not None:
            # Outcomes whose horizon ended at or before the last event are final; later ones are unknown.
            state.deliver_due(state.last_ts + 1)
        result = state.result(completed=stop_reason is None, stop_reason=stop_reason,
                              elapsed_s=time.perf_counter() - started, final=True)
        result.resumed_from_ts_ns = resumed_from
        result.checkpoints = [{k: c[k] for k in ("ts_ns", "bytes", "save_s")} for c in checkpoints]
        return result

    def warm_up(self) -> float:
        """Hand every batch model and combiner an empty batch, so their kernels are compiled (or loaded from
        numba's disk cache) before the replay starts; returns the seconds it took.  Nothing is learned."""
        started = time.perf_counter()
        state = _State(self)
        if state.batch_models or state.batch_ensembles:
            from sigkit import fast

            # The engine's own compiled helpers (market codes, slot tables, prediction checks)...
            probe, row = MarketCodes(), np.zeros(1, dtype=EVENT_DTYPE)
            probe.of_chunk(row)  # (the first sight of a market numbers it; the second matches it, compiled)
            probe.of_chunk(row)
            fast.release_slots(np.full(1, -1, dtype=np.int64), 0, 0)
            fast.first_invalid(np.zeros(1), np.zeros(1))
            # ... and every model's and combiner's kernels, on an empty batch.
            none = np.empty(0, dtype=np.int64)
            state._steps(state._plan(_NO_EVENTS, np.empty(0, dtype=np.int32), none, none, none, np.empty(0), 0,
                                     none, none)[0])
        return time.perf_counter() - started

    def _check_checkpointable(self) -> None:
        for name, obj in self._instances.items():
            if not all(callable(getattr(obj, m, None)) for m in ("state_dict", "load_state_dict")):
                owner = self._owner.get(id(obj), name)
                raise ModelError(f"{owner} cannot be checkpointed: it has no state_dict()/load_state_dict() "
                                 "(see docs/checkpoints.md)")

    def _source_chunks(self, label: str, hooks: dict) -> Iterator[np.ndarray]:
        try:
            yield from hooks["chunks"]()
        except SigkitError:
            raise
        except Exception as err:
            raise DataError(f"source {label!r} failed: {type(err).__name__}: {err}") from err


class _Columns:
    """One row per fill: the run's results and what outcomes need, in growable numpy columns.

    Rows whose every outcome is settled are final.  Once more than ``spill_rows`` of them pile up they are
    appended to files in a temporary folder and leave memory, so a long replay streams: its memory does
    not grow with the data.  The result then maps those files (``numpy.memmap``) instead of copying them.
    Indexes are the fills' run-wide numbers; ``base`` is the first still in memory (``local(i) = i - base``).
    """

    def __init__(self, n_horizons: int, n_models: int, n_ensembles: int, spill_rows: int = 1 << 16):
        self.n = 0  # fills so far
        self.base = 0  # fills before this one are on disk
        self.cap = 0
        self.spill_rows = spill_rows
        self.shapes = {"ts": (np.int64, ()), "market": (np.int32, ()), "side": (np.int8, ()),
                       "price": (float, ()), "size": (float, ()), "mid": (float, ()), "p_ref": (float, ()),
                       "truth": (float, ()), "was_adverse": (float, ()), "markouts": (float, (n_horizons,)),
                       "p": (float, (n_models,)), "confidence": (float, (n_models,)), "cost": (float, (n_models,)),
                       "ens_p": (float, (n_ensembles,)), "ens_confidence": (float, (n_ensembles,)),
                       "ens_cost": (float, (n_ensembles,))}
        self.cols: dict[str, np.ndarray] = {}
        # Columns made from others when rows go to disk (e.g. venue names from market codes); set by the owner.
        self.derive: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None
        self.derived_dtypes: dict[str, np.dtype] = {}
        self.spill_dir: str | None = None
        self._files: dict = {}
        self.market_range: tuple[int, int] | None = None  # the lowest and highest market code of rows on disk
        self._grow(1024)

    def _grow(self, cap: int) -> None:
        held = self.n - self.base
        for name, (dtype, tail) in self.shapes.items():
            new = np.full((cap, *tail), np.nan) if dtype is float else np.zeros((cap, *tail), dtype=dtype)
            if held:
                new[:held] = self.cols[name][:held]
            self.cols[name] = new
        self.cap = cap

    def append(self, k: int) -> slice:
        """Room for ``k`` more fills; returns their (local) slice."""
        held = self.n - self.base
        if held + k > self.cap:
            cap = self.cap
            while held + k > cap:
                cap *= 2
            self._grow(cap)
        rows = slice(held, held + k)
        self.n += k
        return rows

    def __getitem__(self, name: str) -> np.ndarray:
        """The in-memory rows of a column (index them with :meth:`local` numbers)."""
        return self.cols[name]

    def retire(self, final: int) -> None:
        """Fills before ``final`` are settled: move them to disk if enough have piled up."""
        count = final - self.base
        if count < self.spill_rows:
            return
        import tempfile

        if self.spill_dir is None:
            self.spill_dir = tempfile.mkdtemp(prefix="sigkit-fills-")
        held = self.n - self.base
        self._note_markets(self.cols["market"][:count])
        for name, col in self.cols.items():
            handle = self._files.get(name)
            if handle is None:
                handle = self._files[name] = open(Path(self.spill_dir) / name, "wb")
            np.ascontiguousarray(col[:count]).tofile(handle)
        self._write_derived(count)
        for col in self.cols.values():
            col[:held - count] = col[count:held]
            if col.dtype.kind == "f":
                col[held - count:held] = np.nan
        self.base = final

    def _note_markets(self, market: np.ndarray) -> None:
        """Widen :attr:`market_range` to the codes of rows going to disk (so the result never reads them
        back to learn whether every fill is of one market)."""
        if len(market):
            lo, hi = int(market.min()), int(market.max())
            if self.market_range is not None:
                lo, hi = min(lo, self.market_range[0]), max(hi, self.market_range[1])
            self.market_range = (lo, hi)

    def _write_derived(self, count: int) -> None:
        """Append the derived columns of the first ``count`` rows in memory to their files (so the result
        never reads the mapped columns back to make them)."""
        if self.derive is None:
            return
        for name, values in self.derive({name: col[:count] for name, col in self.cols.items()}).items():
            handle = self._files.get(name)
            if handle is None:
                handle = self._files[name] = open(Path(self.spill_dir) / name, "wb")
            self.derived_dtypes[name] = values.dtype
            np.ascontiguousarray(values).tofile(handle)

    def view(self, name: str) -> np.ndarray:
        """Every row of a column: in memory, or (once spilled) the disk rows and the memory rows joined."""
        held = self.cols[name][:self.n - self.base]
        if not self.base:
            return held
        self._files[name].flush()
        dtype, tail = self.shapes[name]
        disk = np.fromfile(Path(self.spill_dir) / name, dtype=dtype).reshape(self.base, *tail)
        return np.concatenate([disk, held])

    def finish(self) -> dict[str, np.ndarray]:
        """Every column, complete.  Spilled columns come back as read-only maps of their files (written out
        in full first), so the result of a long run costs no memory until it is read."""
        if not self.base:
            return {name: self.view(name).copy() for name in self.shapes}
        out = {}
        self._note_markets(self.cols["market"][:self.n - self.base])
        self._write_derived(self.n - self.base)
        shapes = dict(self.shapes)
        shapes.update({name: (dtype, ()) for name, dtype in self.derived_dtypes.items()})
        for name in shapes:
            handle = self._files.pop(name)
            if name in self.cols:
                np.ascontiguousarray(self.cols[name][:self.n - self.base]).tofile(handle)
            handle.close()
            dtype, tail = shapes[name]
            path = Path(self.spill_dir) / name
            shape = (self.n, *tail)
            out[name] = np.memmap(path, dtype=dtype, mode="r", shape=shape) if math.prod(shape) else \
                np.empty(shape, dtype=dtype)
        import shutil

        shutil.rmtree(self.spill_dir, ignore_errors=True)  # the maps keep the files' data alive
        self.spill_dir = None
        return out


class _State:
    """The mutable state of one replay (kept apart from :class:`Replay` so a run is single-use).

    Each piece of events becomes a :class:`sigkit.Batch` (its schedule of outcome, query and event steps,
    built with numpy); models with ``on_batch`` take it whole, the others hear its steps one by one
    through their per-event hooks, and combiners follow the same way.  Results are kept in columns, one
    row per fill.
    """

    def __init__(self, replay: Replay):
        self.replay = replay
        self.target = replay.target
        self.labelling = replay.labelling
        self.markets = MarketCodes()
        self.target_code = self.markets.code(self.target.venue, self.target.symbol)
        self.dropped: dict[str, dict] = {}
        batch_ok = replay.path == "batch"
        # Models and combiners on the batch path (index, on_batch) and on the per-event path.
        self.batch_models = [(m, h["on_batch"]) for m, h in enumerate(replay._hooks)
                             if "on_batch" in h and (batch_ok or "predict" not in h)]
        on_batch = {m for m, _ in self.batch_models}
        self.event_models = [m for m in range(len(replay._hooks)) if m not in on_batch]
        model_hooks = {m: replay._hooks[m] for m in self.event_models}
        if replay.on_error == "drop":
            model_hooks = {m: {name: self._guarded(replay.model_ids[m], name, fn) for name, fn in h.items()}
                           for m, h in model_hooks.items()}
        self.batch_ensembles = [e for e, (_, chooks, _) in enumerate(replay.ensembles)
                                if "on_batch" in chooks and (batch_ok or "combine" not in chooks)]
        event_ens = [e for e in range(len(replay.ensembles)) if e not in self.batch_ensembles]
        # A combiner may follow the market too (e.g. for regimes); it hears each event after the models.
        hooks = [model_hooks[m] for m in self.event_models] + [replay.ensembles[e][1] for e in event_ens]
        self.trade_handlers = [h["on_trade"] for h in hooks if "on_trade" in h]
        self.book_handlers = [h["on_book_update"] for h in hooks if "on_book_update" in h]
        self.stat_handlers = [h["on_market_stat"] for h in hooks if "on_market_stat" in h]
        self.predictors = [(m, model_hooks[m]["predict"]) for m in self.event_models]
        self.outcome_handlers = [model_hooks[m]["record_outcome"] for m in self.event_models
                                 if "record_outcome" in model_hooks[m]]
        # (index, name, combine, record_outcome or None, member indices) of per-event ensembles
        self.event_ensembles = [(e, replay.ensembles[e][0], replay.ensembles[e][1]["combine"],
                                 replay.ensembles[e][1].get("record_outcome"), replay.ensembles[e][2])
                                for e in event_ens]
        self.per_event = bool(self.event_models or self.event_ensembles)
        # A shared feature read on both paths: the batch readers' rows are computed on a copy of its state, the
        # per-event readers step the live one (sigkit.features).
        # The other shared features the batch models read are computed once per batch before they run.
        on_batch = _shared_states([replay._instances[replay.model_ids[m]] for m, _ in self.batch_models])
        on_event = {id(s) for s in
                    _shared_states([replay._instances[replay.model_ids[m]] for m in self.event_models])}
        self.copied_features = [s for s in on_batch if id(s) in on_event]
        self.batch_features = [s for s in on_batch if id(s) not in on_event]
        self.threads = max(1, min(replay.threads or 1, len(self.batch_models)))
        self.pool = None  # a thread pool, made at the first batch that needs it
        self.wants_fill_objects = bool(self.outcome_handlers or any(r for _, _, _, r, _ in self.event_ensembles))
        self.horizons = self.labelling.all_horizons_ns
        self.primary = self.horizons.index(self.labelling.horizon_ns)
        self.mid = math.nan
        # Fills whose outcome at each horizon is still to come, in fill order (= order of due time).
        self.pending: list[np.ndarray] = [np.empty(0, dtype=np.int64) for _ in self.horizons]
        self.fill_objects: dict[int, FillQuery] = {}  # pending fills, as the objects per-event hooks saw
        self.ref_adverse = 0.0  # the causal reference (RunningBaseRate with its default prior)
        self.ref_total = 0.0
        self.events = {"trade": 0, "book": 0, "stat": 0, "fill": 0}
        self.events_total = 0
        self.first_ts = None
        self.last_ts = None
        self.history: list[dict] = []
        self.next_snapshot = None
        # The snapshot schedule: due times first_ts + k * interval (k >= 1).  Each snapshot covers the due
        # indices [lo, hi] that fell since the one before it (history_due[i] for history[i]).
        self.snapshot_interval = replay.snapshot_interval_ns
        self.history_due: list[tuple[int, int]] = []
        self.fills = _Columns(len(self.horizons), len(replay.model_ids), len(replay.ensembles), replay.spill_rows)
        self.fills.derive = self._derived

    # -- per piece ------------------------------------------------------------------------------------

    def process(self, chunk: np.ndarray) -> None:
        """Replay one piece of events (whole groups of equal timestamp)."""
        n = len(chunk)
        ts = chunk["ts_ns"]
        kind = chunk["kind"]
        if self.first_ts is None:
            self.first_ts = int(ts[0])
            if self.replay.snapshot_interval_ns:
                self.next_snapshot = int(ts[0]) + self.replay.snapshot_interval_ns
        market = self.markets.of_chunk(chunk)
        on_target = market == self.target_code
        is_fill = kind == FILL
        if self.replay.public_fills:
            is_fill = is_fill | ((kind == TRADE) & on_target)
        new_group = np.empty(n, dtype=bool)
        new_group[0] = True
        np.not_equal(ts[1:], ts[:-1], out=new_group[1:])
        starts = np.flatnonzero(new_group)
        group_of_row = np.cumsum(new_group) - 1
        group_ts = ts[starts]
        # The target mid after each row, and so before each group (the mid a fill there is asked at).
        target_book = np.flatnonzero((kind == BOOK) & on_target)
        if len(target_book):
            last = np.full(n, -1, dtype=np.int64)
            last[target_book] = target_book
            np.maximum.accumulate(last, out=last)
            mids = np.full(n, self.mid)
            mids[target_book] = 0.5 * (chunk["bid_px"][target_book] + chunk["ask_px"][target_book])
            mid_after = np.where(last >= 0, mids[np.maximum(last, 0)], self.mid)
            mid_before_group = np.empty(len(starts))
            mid_before_group[0] = self.mid
            mid_before_group[1:] = mid_after[starts[1:] - 1]
            end_mid = float(mid_after[-1])
        else:
            mid_before_group = np.full(len(starts), self.mid)
            end_mid = self.mid
        # The new fills.
        rows = np.flatnonzero(is_fill)
        first_fill = self.fills.n
        new = self.fills.append(len(rows))
        f = self.fills
        f["ts"][new] = ts[rows]
        f["market"][new] = market[rows]
        side = chunk["side"][rows]
        f["side"][new] = np.where(kind[rows] == FILL, side, -side)
        f["price"][new] = chunk["price"][rows]
        f["size"][new] = chunk["size"][rows]
        fill_group = group_of_row[rows]
        f["mid"][new] = mid_before_group[fill_group]
        f["truth"][new] = chunk["truth"][rows]
        event_rows = np.flatnonzero(kind != FILL)
        self._run(self._plan(chunk, market, group_ts, starts, group_of_row, mid_before_group, first_fill,
                             fill_group, event_rows))
        self.mid = end_mid
        self.last_ts = int(ts[-1])
        self._retire()
        counts = np.bincount(kind, minlength=5)
        self.events["trade"] += int(counts[TRADE])
        self.events["book"] += int(counts[BOOK])
        self.events["stat"] += int(counts[STAT])
        self.events["fill"] += int(counts[FILL])
        self.events_total += n

    def _retire(self) -> None:
        """Let the columns move settled fills (every horizon delivered, or never to be) to disk."""
        final = min([int(p[0]) for p in self.pending if len(p)] + [self.fills.n])
        self.fills.retire(final)

    def deliver_due(self, now_ns: int) -> None:
        """Deliver every pending outcome whose horizon ended before ``now_ns`` (at the end of a run)."""
        none = np.empty(0, dtype=np.int64)
        self._run(self._plan(_NO_EVENTS, np.empty(0, dtype=np.int32), np.array([now_ns], dtype=np.int64), none,
                             none, np.array([self.mid]), self.fills.n, none, none), snapshots=False)

    def _plan(self, chunk, market, group_ts, starts, group_of_row, mid_before_group, first_fill, fill_group,
              event_rows):
        """Label what falls due in this piece and lay out its schedule: per group, the outcomes due before
        it, then its fills, then its events.  Returns the batch and, per group, where its queries start."""
        from sigkit import schedule  # (compiled: numba is imported when a replay first needs it)

        f = self.fills
        b = f.base
        n_groups = len(group_ts)
        oldest_pending = int(self.pending[self.primary][0]) if len(self.pending[self.primary]) else first_fill
        new_fills = np.arange(first_fill, f.n, dtype=np.int64)
        out_fill = out_group = None
        for hi, h in enumerate(self.horizons):
            cand = np.concatenate([self.pending[hi], new_fills]) if len(self.pending[hi]) else new_fills
            due = f["ts"][cand - b] + h
            group = np.empty(len(due), dtype=np.int64)
            schedule.search_right(group_ts, due, group)  # the first group later than the due time
            k = int(np.searchsorted(group, n_groups, side="left"))
            done, group, self.pending[hi] = cand[:k], group[:k], cand[k:]
            mid = mid_before_group[group]
            valid = mid == mid  # no target book yet: no markout at this horizon
            if hi == self.primary and self.fill_objects and not valid.all():
                for never in done[~valid].tolist():  # never labelled: no per-event hook will hear of it
                    self.fill_objects.pop(never, None)
            done, group, mid = done[valid], group[valid], mid[valid]
            side = f["side"][done - b]
            price = f["price"][done - b]
            markout = side * (mid - price) / price * 1e4
            f["markouts"][done - b, hi] = markout
            if hi == self.primary:
                adverse = markout < -self.labelling.threshold_bps
                f["was_adverse"][done - b] = adverse
                out_fill, out_group, out_mid, out_markout, out_adverse = done, group, mid, markout, adverse
        # The schedule, and the causal reference at each fill (outcomes delivered at or before its group count).
        n_o, n_f = len(out_fill), len(fill_group)
        steps = n_o + n_f + len(event_rows)
        op = np.empty(steps, dtype=np.int8)
        ref = np.empty(steps, dtype=np.int64)
        query_starts = np.empty(n_groups, dtype=np.int64)
        out_adverse = out_adverse.astype(float)
        laid = schedule.lay_out(n_groups, out_group, fill_group, group_of_row[event_rows], event_rows, out_adverse,
                                self.ref_total, self.ref_adverse, op, ref, query_starts,
                                f["p_ref"][first_fill - b:f.n - b])
        if laid != steps:
            raise RuntimeError(f"sigkit bug: a schedule of {laid} steps for {steps} outcomes, queries and events")
        self.ref_total += float(n_o)
        self.ref_adverse += float(out_adverse.sum())
        new = slice(first_fill - b, f.n - b)
        q = (f["ts"][new], f["market"][new], f["side"][new], f["price"][new], f["size"][new], new_fills)
        lo = out_fill - b
        o = (out_fill, f["ts"][lo], f["market"][lo], f["side"][lo], f["price"][lo], f["size"][lo], out_mid, out_markout,
             out_adverse, -out_markout)
        batch = Batch(op=op, ref=ref, events=chunk, market=market, q=q, o=o, horizon_ns=self.labelling.horizon_ns,
                      markets=self.markets, target=self.target_code, oldest_pending=oldest_pending)
        return batch, group_ts, query_starts

    def _run(self, plan, snapshots: bool = True) -> None:
        """Hand the batch to every model and combiner, taking the snapshots that fall inside it."""
        batch, group_ts, query_starts = plan
        lo = 0
        if snapshots and self.next_snapshot is not None:
            while True:
                g = int(np.searchsorted(group_ts, self.next_snapshot, side="left"))
                if g >= len(group_ts):
                    break
                at = int(query_starts[g])  # after the outcomes due before the group, before its fills
                if at > lo:
                    self._steps(batch.steps(lo, at))
                lo = at
                self._snapshot(int(group_ts[g]))
        if lo == 0:
            self._steps(batch)
        elif lo < len(batch.op):
            self._steps(batch.steps(lo, len(batch.op)))

    def _snapshot(self, t: int) -> None:
        """Record every model's and combiner's ``describe()`` at the group at ``t`` (the first at or after the
        next due time).  The history stays bounded however long the run: past ``max_snapshots`` it keeps the
        snapshots the doubled interval would have taken (those that cover an even due index) and goes on at
        that interval, so what is kept never depends on how the events were cut, and a run of weeks keeps a
        few hundred snapshots, not one a minute."""
        interval = self.snapshot_interval
        lo = (self.next_snapshot - self.first_ts) // interval
        hi = (t - self.first_ts) // interval
        self.history.append({"ts_ns": t, "states": self.describe_all()})
        self.history_due.append((lo, hi))
        self.next_snapshot = self.first_ts + (hi + 1) * interval
        if len(self.history) > self.replay.max_snapshots:
            kept = [(h, (-(-a // 2), b // 2)) for h, (a, b) in zip(self.history, self.history_due)
                    if -(-a // 2) <= b // 2]
            self.history = [h for h, _ in kept]
            self.history_due = [due for _, due in kept]
            self.snapshot_interval = interval = 2 * interval
            self.next_snapshot = self.first_ts + (-(-(self.next_snapshot - self.first_ts) // interval)) * interval

    def _steps(self, batch: Batch) -> None:
        f = self.fills
        q_fill = batch.q_fill - f.base  # rows in memory
        n = len(q_fill)
        if n and int(q_fill[-1]) - int(q_fill[0]) + 1 == n:  # (always so: a batch's fills are consecutive)
            q_fill = slice(int(q_fill[0]), int(q_fill[-1]) + 1)
        replay = self.replay
        for state in self.copied_features:
            batch.precompute(state, state.copy().rows(batch))
        for state in self.batch_features:
            batch.feature(state)
        live = [(m, on_batch) for m, on_batch in self.batch_models if replay.model_ids[m] not in self.dropped]
        if self.pool is not None and len(live) > 1:
            calls = dict(zip((m for m, _ in live), self.pool.map(lambda mo: _call(mo[1], batch), live)))
        else:
            # One after the other: always the first time, when models name the markets they follow (their codes
            # are then numbered in model order, not in whichever order threads get there).
            calls = {m: _call(on_batch, batch) for m, on_batch in live}
            if self.threads > 1 and self.pool is None:
                self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="sigkit-model")
                weakref.finalize(self, self.pool.shutdown, wait=False)
        for m, on_batch in self.batch_models:
            model_id = replay.model_ids[m]
            if model_id in self.dropped:
                out = None
            else:
                try:
                    out, err = calls[m]
                    if err is not None:
                        raise err
                    out = self._checked(out, batch.n_queries, f"model {model_id!r}")
                except Exception as err:
                    at = int(batch.ts[0]) if len(batch.ts) else self.last_ts
                    if replay.on_error != "drop":
                        if isinstance(err, SigkitError) and not isinstance(err, ModelError):
                            raise ModelError(f"{replay._owner[id(replay._instances[model_id])]} failed in "
                                             f"on_batch at ts_ns={at}: {err}") from err
                        if isinstance(err, ModelError):
                            raise
                        raise ModelError(f"{replay._owner[id(replay._instances[model_id])]} raised "
                                         f"{type(err).__name__} in on_batch at ts_ns={at}: {err}") from err
                    self.dropped[model_id] = {"hook": "on_batch", "ts_ns": at, "error": f"{type(err).__name__}: {err}"}
                    out = None
            if out is None:  # dropped: the causal reference, with confidence 0
                f["p"][q_fill, m] = f["p_ref"][q_fill]
                f["confidence"][q_fill, m] = 0.0
                f["cost"][q_fill, m] = math.nan
            else:
                f["p"][q_fill, m], f["confidence"][q_fill, m], f["cost"][q_fill, m] = out
        if self.per_event:
            self._per_event(batch)
        for e in self.batch_ensembles:
            name, chooks, members = replay.ensembles[e]
            preds = BatchPredictions(f["p"][q_fill][:, members].T, f["confidence"][q_fill][:, members].T,
                                     f["cost"][q_fill][:, members].T)
            try:
                out = self._checked(chooks["on_batch"](batch, preds), batch.n_queries, f"the combiner of {name!r}")
            except ModelError:
                raise
            except Exception as err:
                at = int(batch.ts[0]) if len(batch.ts) else self.last_ts
                raise ModelError(f"combiner of {name!r} raised {type(err).__name__} in on_batch at ts_ns={at}: "
                                 f"{err}") from err
            f["ens_p"][q_fill, e], f["ens_confidence"][q_fill, e], f["ens_cost"][q_fill, e] = out

    @staticmethod
    def _checked(out: Any, n: int, who: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not isinstance(out, BatchPredictions):
            raise ModelError(f"{who} returned {type(out).__name__} from on_batch(); expected sigkit.BatchPredictions")
        p, conf, cost = (np.asarray(a, dtype=float) for a in (out.p, out.confidence, out.cost_bps))
        if p.shape != (n,) or conf.shape != (n,) or cost.shape != (n,):
            raise ModelError(f"{who} returned predictions of shape {p.shape}/{conf.shape}/{cost.shape} from "
                             f"on_batch(); expected ({n},) each, one per query")
        from sigkit import fast

        bad = fast.first_invalid(np.ascontiguousarray(p), np.ascontiguousarray(conf)) if n else 0  # (NaN: invalid)
        if bad > 0:
            raise ModelError(f"{who} predicted p_adverse={float(p[bad - 1])!r} in on_batch(); it must be a probability in [0, 1]")
        if bad < 0:
            raise ModelError(f"{who} gave confidence={float(conf[-bad - 1])!r} in on_batch(); it must be in [0, 1]")
        return p, conf, cost

    def _per_event(self, batch: Batch) -> None:
        """The per-event hooks, called in the batch's schedule order."""
        f = self.fills
        chunk = batch.events
        ops = batch.op.tolist()
        refs = batch.ref.tolist()
        names = self.markets.names
        if len(chunk):
            ts = chunk["ts_ns"].tolist()
            exch = chunk["exch_ts_ns"].tolist()
            kind = chunk["kind"].tolist()
            venue = chunk["venue"].tolist()
            symbol = chunk["symbol"].tolist()
            side = chunk["side"].tolist()
            price = chunk["price"].tolist()
            size = chunk["size"].tolist()
            bid_px, bid_sz = chunk["bid_px"].tolist(), chunk["bid_sz"].tolist()
            ask_px, ask_sz = chunk["ask_px"].tolist(), chunk["ask_sz"].tolist()
            depth_rows = set(np.flatnonzero(~(np.isnan(chunk["bids"][:, 0, 0]) & np.isnan(chunk["asks"][:, 0, 0]))).tolist())
            if (chunk["kind"] == STAT).any():
                oi = chunk["open_interest"].tolist()
                funding = chunk["funding_rate"].tolist()
                mark = chunk["mark_price"].tolist()
        q_ts, q_market, q_side = batch.q_ts.tolist(), batch.q_market.tolist(), batch.q_side.tolist()
        q_price, q_size, q_fill = batch.q_price.tolist(), batch.q_size.tolist(), batch.q_fill.tolist()
        o_fill, o_mid, o_markout = batch.o_fill.tolist(), batch.o_mid.tolist(), batch.o_markout_bps.tolist()
        o_adverse = batch.o_adverse.tolist()
        trade_handlers, book_handlers, stat_handlers = self.trade_handlers, self.book_handlers, self.stat_handlers
        predictors, ensembles, outcome_handlers = self.predictors, self.event_ensembles, self.outcome_handlers
        P, C, K = f["p"], f["confidence"], f["cost"]
        b = f.base
        fill_objects = self.fill_objects
        keep_objects = self.wants_fill_objects
        horizon = self.labelling.horizon_ns
        model_ids = self.replay.model_ids
        t = int(batch.ts[0]) if len(batch.ts) else self.last_ts
        try:
            for step, r in zip(ops, refs):
                if step == EVENT:
                    t = ts[r]
                    kd = kind[r]
                    if kd == TRADE:
                        record = Trade(t, venue[r], symbol[r], price[r], size[r], side[r], exch[r])
                        for handler in trade_handlers:
                            handler(record)
                    elif kd == BOOK:
                        if r in depth_rows:
                            record = BookUpdate(t, venue[r], symbol[r], bid_px[r], bid_sz[r], ask_px[r], ask_sz[r],
                                                _levels(chunk["bids"][r]), _levels(chunk["asks"][r]), exch[r])
                        else:
                            record = BookUpdate(t, venue[r], symbol[r], bid_px[r], bid_sz[r], ask_px[r], ask_sz[r],
                                                (), (), exch[r])
                        for handler in book_handlers:
                            handler(record)
                    elif kd == STAT:
                        record = MarketStat(t, venue[r], symbol[r], oi[r], funding[r], mark[r], side[r], price[r],
                                            size[r], exch[r])
                        for handler in stat_handlers:
                            handler(record)
                elif step == QUERY:
                    t = q_ts[r]
                    v, s = names[q_market[r]]
                    query = FillQuery(t, v, s, q_side[r], q_price[r], q_size[r])
                    if keep_objects:
                        fill_objects[q_fill[r]] = query
                    i = q_fill[r] - b
                    self._asking = i
                    for m, predictor in predictors:
                        pred = predictor(query)
                        if not _valid(pred):
                            self._refuse(pred, model_ids[m], t)
                        P[i, m] = pred.p_adverse
                        C[i, m] = pred.confidence
                        K[i, m] = pred.expected_cost_bps
                    if ensembles:
                        preds = [Prediction(p, c, k) for p, c, k in zip(P[i].tolist(), C[i].tolist(), K[i].tolist())]
                        for e, name, combine, _, members in ensembles:
                            pred = combine(query, [preds[j] for j in members])
                            if not _valid(pred):
                                _check_prediction(pred, f"the combiner of {name!r} at ts_ns={t}")
                            f["ens_p"][i, e] = pred.p_adverse
                            f["ens_confidence"][i, e] = pred.confidence
                            f["ens_cost"][i, e] = pred.expected_cost_bps
                else:
                    i = o_fill[r] - b
                    query = fill_objects.pop(o_fill[r], None) if keep_objects else None
                    if query is None:
                        query = self._fill_object(i)
                    markout = o_markout[r]
                    outcome = Outcome(query, horizon, o_mid[r], markout, o_adverse[r] == 1.0, -markout)
                    for handler in outcome_handlers:
                        handler(outcome)
                    if ensembles:
                        preds = [Prediction(p, c, k) for p, c, k in zip(P[i].tolist(), C[i].tolist(), K[i].tolist())]
                        for _, _, _, record_outcome, members in ensembles:
                            if record_outcome is not None:
                                record_outcome(outcome, [preds[j] for j in members])
        except SigkitError as err:
            culprit = self._culprit(err)
            if culprit is None:
                raise
            raise ModelError(f"{culprit[0]} failed in {culprit[1]} at ts_ns={t}: {err}") from err
        except Exception as err:
            culprit = self._culprit(err)
            if culprit is None:
                raise
            raise ModelError(f"{culprit[0]} raised {type(err).__name__} in {culprit[1]} at ts_ns={t}: {err}") from err

    def _derived(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The result's columns made from others as rows leave memory: whether labelled, the realized cost."""
        return {"labelled": ~np.isnan(cols["was_adverse"]), "realized_as_bps": -cols["markouts"][:, self.primary]}

    def _market_names(self, market: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The venue and symbol of each fill, from its market code.  Fills of one market (the usual case: the
        target's) share one name, a read-only broadcast that costs no memory however many fills; otherwise
        the names are written to a file block by block and mapped.  A mapped (spilled) column is read a block
        at a time, each block's pages given back after it, so a long run's result holds none of it in memory."""
        names = self.markets.names
        venues = np.array([v for v, _ in names] or [""], dtype=f"<U{VENUE_CHARS}")
        symbols = np.array([s for _, s in names] or [""], dtype=f"<U{SYMBOL_CHARS}")
        n = len(market)
        spilled = isinstance(market, np.memmap)
        lo, hi = self.fills.market_range if spilled else (int(market.min()), int(market.max())) if n else (0, 0)
        if n and lo == hi:
            return np.broadcast_to(venues[lo:lo + 1], (n,)), np.broadcast_to(symbols[lo:lo + 1], (n,))
        if not spilled:
            return venues[market], symbols[market]
        import tempfile

        out = []
        block = 1 << 20
        for table in (venues, symbols):
            with tempfile.TemporaryFile() as handle:
                for start in range(0, n, block):
                    table[market[start:start + block]].tofile(handle)
                    _release_pages(market)
                handle.flush()
                out.append(np.memmap(handle, dtype=table.dtype, mode="r", shape=(n,)))
        return out[0], out[1]

    def _paths(self) -> dict[str, str]:
        """Which path each model and ensemble runs on: "batch" (on_batch) or "per-event"."""
        batch = {self.replay.model_ids[m] for m, _ in self.batch_models}
        batch |= {self.replay.ensembles[e][0] for e in self.batch_ensembles}
        return {name: "batch" if name in batch else "per-event"
                for name in [*self.replay.model_ids, *(name for name, _, _ in self.replay.ensembles)]}

    def _fill_object(self, i: int) -> FillQuery:
        """The fill in memory row ``i`` as a record (for fills asked before a checkpoint was restored)."""
        f = self.fills
        venue, symbol = self.markets.names[int(f["market"][i])]
        return FillQuery(int(f["ts"][i]), venue, symbol, int(f["side"][i]), float(f["price"][i]), float(f["size"][i]))

    def _culprit(self, err: BaseException) -> tuple[str, str] | None:
        """Which plugin instance raised, and in which hook: the outermost frame whose ``self`` is one."""
        tb = err.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            if owner is not None and id(owner) in self.replay._owner:
                return self.replay._owner[id(owner)], tb.tb_frame.f_code.co_name
            tb = tb.tb_next
        return None

    def _refuse(self, pred: Any, model_id: str, ts_ns: int) -> None:
        """A model's answer is not a valid prediction: stop, naming the model, its plugin and the time."""
        owner = next(label for key, label in self.replay._owner.items()
                     if label.startswith(f"model {model_id!r}"))
        _check_prediction(pred, f"{owner} at ts_ns={ts_ns}")

    def _guarded(self, model_id: str, hook: str, fn: Callable) -> Callable:
        """``fn``, but a raise drops the model: recorded once, and from then on it is the base rate."""

        def call(*args):
            if model_id not in self.dropped:
                try:
                    result = fn(*args)
                    if hook == "predict" and not _valid(result):
                        _check_prediction(result, f"model {model_id!r}")
                    return result
                except Exception as err:  # on_error: drop (an invalid prediction counts as an error)
                    at = getattr(args[0], "ts_ns", None) if args else None
                    if at is None and args and hasattr(args[0], "fill"):
                        at = args[0].fill.ts_ns
                    self.dropped[model_id] = {"hook": hook, "ts_ns": at,
                                              "error": f"{type(err).__name__}: {err}"}
            if hook == "predict":
                return Prediction(self._ref_at(args[0]), 0.0)
            return None

        return call

    def _ref_at(self, query: FillQuery) -> float:
        """The causal reference as it stood when ``query`` was asked (already computed for its piece)."""
        return float(self.fills["p_ref"][self._asking])

    # -- checkpoints ----------------------------------------------------------------------------------

    STATE_VERSION = 3  # 3: the snapshot schedule (interval, due indices) for a bounded history

    def state_dict(self) -> dict:
        """Everything this replay has learned and remembers, as of the end of the last processed chunk."""
        replay = self.replay
        instances = {}
        for name, obj in replay._instances.items():
            if name in self.dropped:
                continue  # a dropped model answers the base rate from then on: nothing of it to keep
            try:
                instances[name] = obj.state_dict()
            except SigkitError:
                raise
            except Exception as err:
                raise ModelError(f"{replay._owner.get(id(obj), name)} failed in state_dict(): "
                                 f"{type(err).__name__}: {err}") from err
        return {
            "version": self.STATE_VERSION,
            "first_ts": self.first_ts, "last_ts": self.last_ts, "mid": self.mid,
            "events": dict(self.events), "events_total": self.events_total, "next_snapshot": self.next_snapshot,
            "snapshot_interval": self.snapshot_interval, "history_due": [list(d) for d in self.history_due],
            "history": capture_state(self.history, "describe()"), "dropped": capture_state(self.dropped),
            "reference": {"adverse": self.ref_adverse, "total": self.ref_total},
            "markets": self.markets.state_dict(),
            "paths": self._paths(),
            "pending": [p.copy() for p in self.pending],
            "fills": {name: np.array(self.fills.view(name)) for name in self.fills.shapes},
            "instances": instances,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` into this fresh replay state (and every model and combiner)."""
        if state.get("version") != self.STATE_VERSION:
            raise ModelError(f"the engine state has layout version {state.get('version')!r}; this sigkit reads "
                             f"version {self.STATE_VERSION}")
        replay = self.replay
        paths = self._paths()
        for name, saved_path in state["paths"].items():
            if paths.get(name, saved_path) != saved_path:
                flag = "with --per-event" if saved_path == "per-event" else "without --per-event"
                raise ModelError(f"{name!r} ran on its {saved_path} path when the checkpoint was taken, and what it "
                                 f"remembers of pending fills belongs to that path: resume {flag}")
        for name, obj in replay._instances.items():
            saved = state["instances"].get(name)
            if saved is None:
                continue
            try:
                obj.load_state_dict(saved)
            except SigkitError as err:
                raise ModelError(f"{replay._owner.get(id(obj), name)} refused its saved state: {err}") from None
            except Exception as err:
                raise ModelError(f"{replay._owner.get(id(obj), name)} failed in load_state_dict(): "
                                 f"{type(err).__name__}: {err}") from err
        self.first_ts, self.last_ts, self.mid = state["first_ts"], state["last_ts"], state["mid"]
        self.events = dict(state["events"])
        self.events_total = state["events_total"]
        self.next_snapshot = state["next_snapshot"]
        self.snapshot_interval = state["snapshot_interval"]
        self.history_due = [tuple(d) for d in state["history_due"]]
        self.history = restore_state(state["history"])
        self.dropped = restore_state(state["dropped"])
        self.ref_adverse = float(state["reference"]["adverse"])
        self.ref_total = float(state["reference"]["total"])
        self.markets.load_state_dict(state["markets"])
        self.target_code = self.markets.code(self.target.venue, self.target.symbol)
        self.pending = [np.asarray(p, dtype=np.int64) for p in state["pending"]]
        if len(self.pending) != len(self.horizons):
            raise ModelError("the engine state has pending outcomes for another set of horizons")
        saved = state["fills"]
        n = len(saved["ts"])
        self.fills.n = self.fills.base = 0
        self.fills.append(n)
        for name in self.fills.shapes:
            self.fills[name][:n] = saved[name]
        self.fill_objects = {}

    def save(self, path: str | Path) -> dict:
        from sigkit.checkpoint import write_checkpoint

        return write_checkpoint(path, identity=self.replay.identity, ts_ns=self.last_ts, state=self.state_dict())

    def resume(self, path: str | Path) -> int | None:
        """Load a checkpoint of this run into this fresh state; returns its event time (None: taken before any
        event)."""
        from sigkit.checkpoint import CheckpointError, check_identity, read_checkpoint

        header, state = read_checkpoint(path)
        check_identity(header, self.replay.identity, path)
        try:
            self.load_state_dict(state)
        except ModelError as err:
            raise CheckpointError(f"cannot resume: {err}", path=str(path)) from None
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise CheckpointError(f"the checkpoint's state is corrupt or incomplete: {type(err).__name__}: {err}",
                                  path=str(path)) from None
        return header.get("ts_ns")

    def describe_all(self) -> dict[str, dict]:
        states = {mid: hooks["describe"]() for mid, hooks in zip(self.replay.model_ids, self.replay._hooks)
                  if "describe" in hooks and mid not in self.dropped}
        for name, chooks, _ in self.replay.ensembles:
            if "describe" in chooks:
                states[name] = chooks["describe"]()
        return states

    def result(self, *, completed: bool, stop_reason: str | None, elapsed_s: float, final: bool = False) -> RunResult:
        """What the run produced so far (``final``: the run is over, and spilled columns may be handed over
        as maps of their files)."""
        cols = self.fills.finish() if final else {name: self.fills.view(name).copy() for name in self.fills.shapes}
        if "labelled" not in cols:  # in memory: make the derived columns here (on disk they were written as rows left)
            cols.update(self._derived(cols))
        cols["venue"], cols["symbol"] = self._market_names(cols["market"])
        markouts = cols["markouts"]
        fills = {
            "ts_ns": cols["ts"],
            "venue": cols["venue"],
            "symbol": cols["symbol"],
            "side": cols["side"],
            "price": cols["price"],
            "size": cols["size"],
            "mid": cols["mid"],
            "p_ref": cols["p_ref"],
            "truth": cols["truth"],
            "was_adverse": cols["was_adverse"],
            "labelled": cols["labelled"],
            "realized_as_bps": cols["realized_as_bps"],
        }
        for hi, h in enumerate(self.horizons):
            fills[f"markout_{h}"] = markouts[:, hi]
        predictions = {}
        for m, mid in enumerate(self.replay.model_ids):
            predictions[mid] = {"p": cols["p"][:, m], "confidence": cols["confidence"][:, m],
                                "cost_bps": cols["cost"][:, m]}
        for e, (name, *_rest) in enumerate(self.replay.ensembles):
            predictions[name] = {"p": cols["ens_p"][:, e], "confidence": cols["ens_confidence"][:, e],
                                 "cost_bps": cols["ens_cost"][:, e]}
        return RunResult(
            paths=self._paths(),
            model_ids=list(self.replay.model_ids), fills=fills, predictions=predictions, states=self.describe_all(),
            state_history=self.history, state_interval_ns=self.snapshot_interval, threads=self.threads, dropped=dict(self.dropped),
            markout_horizons_ns=self.horizons, events=dict(self.events), first_ts_ns=self.first_ts,
            last_ts_ns=self.last_ts, completed=completed, stop_reason=stop_reason, elapsed_s=elapsed_s,
        )


_NO_EVENTS = np.empty(0, dtype=EVENT_DTYPE)


def _release_pages(mapped: np.memmap) -> None:
    """Drop the pages of a read-only file map from this process's memory (they stay in the file)."""
    import mmap

    handle = getattr(mapped, "_mmap", None)
    if handle is not None and hasattr(mmap, "MADV_DONTNEED"):
        handle.madvise(mmap.MADV_DONTNEED)


def _levels(levels: np.ndarray) -> tuple[tuple[float, float], ...]:
    return tuple((float(px), float(sz)) for px, sz in levels.tolist() if px == px)


def _valid(pred: Any) -> bool:
    return isinstance(pred, Prediction) and 0.0 <= pred.p_adverse <= 1.0 and 0.0 <= pred.confidence <= 1.0


def _check_prediction(pred: Any, who: str) -> None:
    if not isinstance(pred, Prediction):
        raise ModelError(f"{who} returned {type(pred).__name__} from predict(); expected sigkit.Prediction")
    if not 0.0 <= pred.p_adverse <= 1.0:
        raise ModelError(f"{who} predicted p_adverse={pred.p_adverse!r}; it must be a probability in [0, 1]")
    if not 0.0 <= pred.confidence <= 1.0:
        raise ModelError(f"{who} gave confidence={pred.confidence!r}; it must be in [0, 1]")


def _call(on_batch, batch) -> tuple[Any, BaseException | None]:
    """``on_batch(batch)``, and what it raised (in a worker thread: raised again in model order)."""
    try:
        return on_batch(batch), None
    except Exception as err:
        return None, err


def _shared_states(instances: list) -> list:
    """The distinct shared feature states (:mod:`sigkit.features`) the instances hold."""
    features = sys.modules.get("sigkit.features")
    if features is None:
        return []  # (no model can hold one unless the module was imported)
    return list({id(s): s for i in instances for s in features.shared_states(i)}.values())


def replay_from_recipe(recipe, *, sources: Sequence[tuple[str, Any]] | None = None, cache_dir=None,
                       cache_warn: Callable[[str], None] | None = None, path: str = "batch",
                       threads: int | None = None) -> Replay:
    """Build the instances a validated :class:`sigkit.recipe.Recipe` names and wire them into a replay.

    ``sources`` replaces the recipe's data sources (live mode passes its one live source).  With
    ``cache_dir``, file sources read from (and write) the binary event cache (:mod:`sigkit.cache`).
    ``path="per-event"`` calls the per-event hooks even of models that have ``on_batch``."""
    from sigkit.checkpoint import recipe_identity
    from sigkit.recipe import instantiate

    built = instantiate(recipe, sources=sources is None)
    if sources is None and cache_dir is not None:
        from sigkit.cache import wrap_sources

        sources = wrap_sources(recipe, built.sources, cache_dir, warn=cache_warn)
    labelling = Labelling(recipe.horizon_ns, recipe.threshold_bps, recipe.evaluation.markout_horizons_ns)
    return Replay(sources=built.sources if sources is None else sources, models=built.models, ensembles=built.ensembles, target=recipe.target,
                  labelling=labelling, public_fills=recipe.fills_path is None,
                  snapshot_interval_ns=recipe.evaluation.snapshot_interval_ns,
                  max_snapshots=recipe.evaluation.max_snapshots,
                  provenance={m.id: f"{m.spec.name} from {m.spec.distribution} {m.spec.version}".rstrip()
                              for m in recipe.models},
                  on_error=recipe.on_error, identity=recipe_identity(recipe), path=path, threads=threads)
