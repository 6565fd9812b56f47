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

import heapq
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from sigkit.context import Market
from sigkit.errors import DataError, ModelError, PluginError, SigkitError
from sigkit.events import (
    BOOK, EVENT_DTYPE, FILL, STAT, TRADE, BookUpdate, FillQuery, MarketStat, Prediction, Trade,
)
from sigkit.labels import label_outcome, markout_bps
from sigkit.learn import RunningBaseRate, capture_state, restore_state
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
    state_history: list[dict]  # [{"ts_ns": t, "states": {...}}] every snapshot interval of event time
    dropped: dict[str, dict]  # model id -> {hook, ts_ns, error} for models dropped under on_error: drop
    completed: bool
    stop_reason: str | None
    elapsed_s: float
    resumed_from_ts_ns: int | None = None  # the event time of the checkpoint this run resumed from
    checkpoints: list[dict] = attrs.field(factory=list)  # {ts_ns, bytes, save_s} of each checkpoint written


class _Stopped(Exception):
    pass


def merge_chunks(sources: Sequence[tuple[str, Iterable[np.ndarray]]]) -> Iterator[np.ndarray]:
    """Merge per-source chunk streams into time-ordered chunks.

    Each yielded chunk ends at a timestamp boundary: all events sharing a timestamp arrive in one chunk.
    Raises :class:`DataError` if a source goes back in time.
    """
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
                 public_fills: bool = True, snapshot_interval_ns: int | None = None,
                 provenance: dict[str, str] | None = None, on_error: str = "stop", identity: dict | None = None):
        self.target = target
        self.labelling = labelling
        self.public_fills = public_fills
        self.snapshot_interval_ns = snapshot_interval_ns  # how often describe() is recorded (None: only at the end)
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
                              elapsed_s=time.perf_counter() - started)
        result.resumed_from_ts_ns = resumed_from
        result.checkpoints = [{k: c[k] for k in ("ts_ns", "bytes", "save_s")} for c in checkpoints]
        return result

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


class _State:
    """The mutable state of one replay (kept apart from :class:`Replay` so a run is single-use)."""

    def __init__(self, replay: Replay):
        self.replay = replay
        self.target = replay.target
        self.labelling = replay.labelling
        self.reference = RunningBaseRate()
        self.dropped: dict[str, dict] = {}
        model_hooks = replay._hooks
        if replay.on_error == "drop":
            model_hooks = [{name: self._guarded(mid, name, fn) for name, fn in h.items()}
                           for mid, h in zip(replay.model_ids, replay._hooks)]
        # A combiner may follow the market too (e.g. for regimes); it hears each event after the models.
        hooks = model_hooks + [chooks for _, chooks, _ in replay.ensembles]
        self.trade_handlers = [h["on_trade"] for h in hooks if "on_trade" in h]
        self.book_handlers = [h["on_book_update"] for h in hooks if "on_book_update" in h]
        self.stat_handlers = [h["on_market_stat"] for h in hooks if "on_market_stat" in h]
        self.predictors = [h["predict"] for h in model_hooks]
        self.outcome_handlers = [h["record_outcome"] for h in model_hooks if "record_outcome" in h]
        # (name, combine, record_outcome or None, member indices) per ensemble
        self.ensembles = [(name, chooks["combine"], chooks.get("record_outcome"), members)
                          for name, chooks, members in replay.ensembles]
        self.horizons = self.labelling.all_horizons_ns
        self.primary = self.horizons.index(self.labelling.horizon_ns)
        self.mid = math.nan
        self.pending: list[tuple[int, int, int, int]] = []  # (due_ts, seq, fill index, horizon index)
        self.seq = 0
        self.events = {"trade": 0, "book": 0, "stat": 0, "fill": 0}
        self.events_total = 0
        self.first_ts = None
        self.last_ts = None
        self.history: list[dict] = []
        self.next_snapshot = None
        # One entry per fill.
        self.queries: list[FillQuery] = []
        self.mid_at_fill: list[float] = []
        self.p_ref: list[float] = []
        self.truth: list[float] = []
        n_models = len(replay.model_ids)
        self.p = [[] for _ in range(n_models)]
        self.conf = [[] for _ in range(n_models)]
        self.cost = [[] for _ in range(n_models)]
        self.ens_p = [[] for _ in self.ensembles]
        self.ens_conf = [[] for _ in self.ensembles]
        self.ens_cost = [[] for _ in self.ensembles]
        self.markouts = [[] for _ in self.horizons]
        self.was_adverse: list[float] = []
        self.member_preds: dict[int, list[Prediction]] = {}

    # -- per chunk ------------------------------------------------------------------------------------

    def process(self, chunk: np.ndarray) -> None:
        n = len(chunk)
        ts_arr = chunk["ts_ns"]
        kind_arr = chunk["kind"]
        on_target = (chunk["venue"] == self.target.venue) & (chunk["symbol"] == self.target.symbol)
        is_fill = kind_arr == FILL
        if self.replay.public_fills:
            is_fill = is_fill | ((kind_arr == TRADE) & on_target)
        new_group = np.empty(n, dtype=bool)
        new_group[0] = True
        np.not_equal(ts_arr[1:], ts_arr[:-1], out=new_group[1:])
        starts = np.flatnonzero(new_group)
        ends = np.append(starts[1:], n)
        group_end = np.repeat(ends, ends - starts).tolist()
        fill_rows = np.flatnonzero(is_fill).tolist()
        fill_rows.append(n)  # sentinel

        ts = ts_arr.tolist()
        exch = chunk["exch_ts_ns"].tolist()
        kind = kind_arr.tolist()
        venue = chunk["venue"].tolist()
        symbol = chunk["symbol"].tolist()
        side = chunk["side"].tolist()
        price = chunk["price"].tolist()
        size = chunk["size"].tolist()
        bid_px, bid_sz = chunk["bid_px"].tolist(), chunk["bid_sz"].tolist()
        ask_px, ask_sz = chunk["ask_px"].tolist(), chunk["ask_sz"].tolist()
        truth = chunk["truth"].tolist()
        target_flags = on_target.tolist()
        new_group_l = new_group.tolist()
        has_depth = ~(np.isnan(chunk["bids"][:, 0, 0]) & np.isnan(chunk["asks"][:, 0, 0]))
        depth_rows = set(np.flatnonzero(has_depth).tolist())
        stat_rows = kind_arr == STAT
        oi = chunk["open_interest"].tolist() if stat_rows.any() else None
        funding = chunk["funding_rate"].tolist() if oi is not None else None
        mark = chunk["mark_price"].tolist() if oi is not None else None

        trade_handlers, book_handlers, stat_handlers = self.trade_handlers, self.book_handlers, self.stat_handlers
        fp = 0
        if self.first_ts is None:
            self.first_ts = ts[0]
            if self.replay.snapshot_interval_ns:
                self.next_snapshot = ts[0] + self.replay.snapshot_interval_ns
        k = 0
        t = ts[0]
        try:
            for k in range(n):
                t = ts[k]
                if new_group_l[k]:
                    if self.pending and self.pending[0][0] < t:
                        self.deliver_due(t)
                    if self.next_snapshot is not None and t >= self.next_snapshot:
                        self.snapshot(t)
                    end = group_end[k]
                    while fill_rows[fp] < end:
                        f = fill_rows[fp]
                        fill_side = side[f] if kind[f] == FILL else -side[f]
                        self.predict(FillQuery(t, venue[f], symbol[f], fill_side, price[f], size[f]), truth[f])
                        fp += 1
                kd = kind[k]
                if kd == TRADE:
                    record = Trade(t, venue[k], symbol[k], price[k], size[k], side[k], exch[k])
                    for handler in trade_handlers:
                        handler(record)
                elif kd == BOOK:
                    if k in depth_rows:
                        record = BookUpdate(t, venue[k], symbol[k], bid_px[k], bid_sz[k], ask_px[k], ask_sz[k],
                                            _levels(chunk["bids"][k]), _levels(chunk["asks"][k]), exch[k])
                    else:
                        record = BookUpdate(t, venue[k], symbol[k], bid_px[k], bid_sz[k], ask_px[k], ask_sz[k],
                                            (), (), exch[k])
                    if target_flags[k]:
                        self.mid = 0.5 * (bid_px[k] + ask_px[k])
                    for handler in book_handlers:
                        handler(record)
                elif kd == STAT:
                    record = MarketStat(t, venue[k], symbol[k], oi[k], funding[k], mark[k], side[k], price[k],
                                        size[k], exch[k])
                    for handler in stat_handlers:
                        handler(record)
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
        self.last_ts = ts[-1]
        counts = np.bincount(kind_arr, minlength=5)
        self.events["trade"] += int(counts[TRADE])
        self.events["book"] += int(counts[BOOK])
        self.events["stat"] += int(counts[STAT])
        self.events["fill"] += int(counts[FILL])
        self.events_total += n

    def _culprit(self, err: BaseException) -> tuple[str, str] | None:
        """Which plugin instance raised, and in which hook: the outermost frame whose ``self`` is one."""
        tb = err.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            if owner is not None and id(owner) in self.replay._owner:
                return self.replay._owner[id(owner)], tb.tb_frame.f_code.co_name
            tb = tb.tb_next
        return None

    # -- fills and outcomes --------------------------------------------------------------------------

    def predict(self, query: FillQuery, truth: float) -> None:
        index = len(self.queries)
        preds = []
        for m, predictor in enumerate(self.predictors):
            pred = predictor(query)
            if not _valid(pred):
                self._refuse(pred, self.replay.model_ids[m], query.ts_ns)
            preds.append(pred)
            self.p[m].append(pred.p_adverse)
            self.conf[m].append(pred.confidence)
            self.cost[m].append(pred.expected_cost_bps)
        for e, (name, combine, _, member_index) in enumerate(self.ensembles):
            pred = combine(query, [preds[i] for i in member_index])
            if not _valid(pred):
                _check_prediction(pred, f"the combiner of {name!r} at ts_ns={query.ts_ns}")
            self.ens_p[e].append(pred.p_adverse)
            self.ens_conf[e].append(pred.confidence)
            self.ens_cost[e].append(pred.expected_cost_bps)
        if self.ensembles:
            self.member_preds[index] = preds
        self.queries.append(query)
        self.mid_at_fill.append(self.mid)
        self.p_ref.append(self.reference.rate)
        self.truth.append(truth)
        self.was_adverse.append(math.nan)
        for hi, h in enumerate(self.horizons):
            self.markouts[hi].append(math.nan)
            heapq.heappush(self.pending, (query.ts_ns + h, self.seq, index, hi))
            self.seq += 1

    def deliver_due(self, now_ns: int) -> None:
        """Label and deliver every pending outcome whose horizon ended before ``now_ns``."""
        pending = self.pending
        mid = self.mid
        while pending and pending[0][0] < now_ns:
            _due, _seq, index, hi = heapq.heappop(pending)
            query = self.queries[index]
            if mid != mid:  # no target book yet: no markout at this horizon
                if hi == self.primary:
                    self.member_preds.pop(index, None)
                continue
            if hi != self.primary:
                self.markouts[hi][index] = markout_bps(query.side, query.price, mid)
                continue
            outcome = label_outcome(query, mid, self.labelling.horizon_ns, self.labelling.threshold_bps)
            self.markouts[hi][index] = outcome.markout_bps
            self.was_adverse[index] = 1.0 if outcome.was_adverse else 0.0
            for handler in self.outcome_handlers:
                handler(outcome)
            preds = self.member_preds.pop(index, None)
            for _, _, combiner_outcome, member_index in self.ensembles:
                if combiner_outcome is not None:
                    combiner_outcome(outcome, [preds[i] for i in member_index])
            self.reference.update(outcome.was_adverse, query.ts_ns)

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
                return Prediction(self.reference.rate, 0.0)
            return None

        return call

    # -- checkpoints ----------------------------------------------------------------------------------

    STATE_VERSION = 1

    def state_dict(self) -> dict:
        """Everything this replay has learned and remembers, as of the end of the last processed chunk."""
        replay = self.replay
        n = len(self.queries)
        q = self.queries
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
        preds_index = np.array(sorted(self.member_preds), dtype=np.int64)
        n_models, n_ens = len(replay.model_ids), len(self.ensembles)
        member = np.array([[(p.p_adverse, p.confidence, p.expected_cost_bps) for p in self.member_preds[i]]
                           for i in preds_index.tolist()], dtype=float).reshape(len(preds_index), n_models, 3)
        return {
            "version": self.STATE_VERSION,
            "first_ts": self.first_ts, "last_ts": self.last_ts, "mid": self.mid, "seq": self.seq,
            "events": dict(self.events), "events_total": self.events_total, "next_snapshot": self.next_snapshot,
            "history": capture_state(self.history, "describe()"), "dropped": capture_state(self.dropped),
            "reference": self.reference.state_dict(),
            "pending": np.array(self.pending, dtype=np.int64).reshape(-1, 4),
            "fills": {"ts_ns": np.array([x.ts_ns for x in q], dtype=np.int64),
                      "venue": [x.venue for x in q], "symbol": [x.symbol for x in q],
                      "side": np.array([x.side for x in q], dtype=np.int64),
                      "price": np.array([x.price for x in q], dtype=float),
                      "size": np.array([x.size for x in q], dtype=float),
                      "mid": np.array(self.mid_at_fill, dtype=float), "p_ref": np.array(self.p_ref, dtype=float),
                      "truth": np.array(self.truth, dtype=float),
                      "was_adverse": np.array(self.was_adverse, dtype=float),
                      "markouts": np.array(self.markouts, dtype=float).reshape(len(self.horizons), n)},
            "predictions": {"p": np.array(self.p, dtype=float).reshape(n_models, n),
                            "confidence": np.array(self.conf, dtype=float).reshape(n_models, n),
                            "cost_bps": np.array(self.cost, dtype=float).reshape(n_models, n),
                            "ens_p": np.array(self.ens_p, dtype=float).reshape(n_ens, n),
                            "ens_confidence": np.array(self.ens_conf, dtype=float).reshape(n_ens, n),
                            "ens_cost_bps": np.array(self.ens_cost, dtype=float).reshape(n_ens, n)},
            "member_preds": {"index": preds_index, "values": member},
            "instances": instances,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` into this fresh replay state (and every model and combiner)."""
        if state.get("version") != self.STATE_VERSION:
            raise ModelError(f"the engine state has layout version {state.get('version')!r}; this sigkit reads "
                             f"version {self.STATE_VERSION}")
        replay = self.replay
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
        self.first_ts, self.last_ts, self.mid, self.seq = state["first_ts"], state["last_ts"], state["mid"], state["seq"]
        self.events = dict(state["events"])
        self.events_total = state["events_total"]
        self.next_snapshot = state["next_snapshot"]
        self.history = restore_state(state["history"])
        self.dropped = restore_state(state["dropped"])
        self.reference.load_state_dict(state["reference"])
        self.pending = [tuple(row) for row in np.asarray(state["pending"]).tolist()]
        heapq.heapify(self.pending)
        f = state["fills"]
        self.queries = [FillQuery(*row) for row in zip(f["ts_ns"].tolist(), f["venue"], f["symbol"],
                                                       f["side"].tolist(), f["price"].tolist(), f["size"].tolist())]
        self.mid_at_fill, self.p_ref = f["mid"].tolist(), f["p_ref"].tolist()
        self.truth, self.was_adverse = f["truth"].tolist(), f["was_adverse"].tolist()
        self.markouts = [row.tolist() for row in f["markouts"]]
        pr = state["predictions"]
        self.p, self.conf, self.cost = ([row.tolist() for row in pr[k]] for k in ("p", "confidence", "cost_bps"))
        self.ens_p, self.ens_conf, self.ens_cost = ([row.tolist() for row in pr[k]]
                                                    for k in ("ens_p", "ens_confidence", "ens_cost_bps"))
        mp = state["member_preds"]
        self.member_preds = {i: [Prediction(*v) for v in values]
                             for i, values in zip(mp["index"].tolist(), mp["values"].tolist())}

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

    def snapshot(self, now_ns: int) -> None:
        """Record what every model and combiner says of itself, as of just before ``now_ns``."""
        self.history.append({"ts_ns": now_ns, "states": self.describe_all()})
        interval = self.replay.snapshot_interval_ns
        self.next_snapshot += ((now_ns - self.next_snapshot) // interval + 1) * interval

    def result(self, *, completed: bool, stop_reason: str | None, elapsed_s: float) -> RunResult:
        q = self.queries
        fills = {
            "ts_ns": np.array([x.ts_ns for x in q], dtype=np.int64),
            "venue": np.array([x.venue for x in q], dtype=str),
            "symbol": np.array([x.symbol for x in q], dtype=str),
            "side": np.array([x.side for x in q], dtype=np.int8),
            "price": np.array([x.price for x in q], dtype=float),
            "size": np.array([x.size for x in q], dtype=float),
            "mid": np.array(self.mid_at_fill, dtype=float),
            "p_ref": np.array(self.p_ref, dtype=float),
            "truth": np.array(self.truth, dtype=float),
            "was_adverse": np.array(self.was_adverse, dtype=float),
        }
        fills["labelled"] = ~np.isnan(fills["was_adverse"])
        primary = np.array(self.markouts[self.primary], dtype=float)
        fills["realized_as_bps"] = -primary
        for h, values in zip(self.horizons, self.markouts):
            fills[f"markout_{h}"] = np.array(values, dtype=float)
        predictions = {}
        for m, mid in enumerate(self.replay.model_ids):
            predictions[mid] = {"p": np.array(self.p[m], dtype=float), "confidence": np.array(self.conf[m], dtype=float),
                                "cost_bps": np.array(self.cost[m], dtype=float)}
        for e, (name, *_rest) in enumerate(self.ensembles):
            predictions[name] = {"p": np.array(self.ens_p[e], dtype=float),
                                 "confidence": np.array(self.ens_conf[e], dtype=float),
                                 "cost_bps": np.array(self.ens_cost[e], dtype=float)}
        return RunResult(
            model_ids=list(self.replay.model_ids), fills=fills, predictions=predictions, states=self.describe_all(),
            state_history=self.history, dropped=dict(self.dropped),
            markout_horizons_ns=self.horizons, events=dict(self.events), first_ts_ns=self.first_ts,
            last_ts_ns=self.last_ts, completed=completed, stop_reason=stop_reason, elapsed_s=elapsed_s,
        )


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


def replay_from_recipe(recipe, *, sources: Sequence[tuple[str, Any]] | None = None, cache_dir=None,
                       cache_warn: Callable[[str], None] | None = None) -> Replay:
    """Build the instances a validated :class:`sigkit.recipe.Recipe` names and wire them into a replay.

    ``sources`` replaces the recipe's data sources (live mode passes its one live source).  With
    ``cache_dir``, file sources read from (and write) the binary event cache (:mod:`sigkit.cache`)."""
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
                  provenance={m.id: f"{m.spec.name} from {m.spec.distribution} {m.spec.version}".rstrip()
                              for m in recipe.models},
                  on_error=recipe.on_error, identity=recipe_identity(recipe))
