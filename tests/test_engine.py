"""The causal replay engine: merge order, predict-before-reveal, outcome timing and errors."""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest

import sigkit
from sigkit.engine import Labelling, Replay, merge_chunks
from sigkit.errors import DataError, ModelError, PluginError

from conftest import ListSource, book, chunk_of, fill, stat, trade

H = 10  # horizon in ns for hand-built data


class Spy:
    """Records everything it sees and checks causality at every call."""

    def __init__(self, confidence=1.0):
        self.seen = []  # (ts, kind)
        self.queries = []
        self.outcomes = []
        self.confidence = confidence

    def on_trade(self, trade):
        self.seen.append((trade.ts_ns, "trade"))

    def on_book_update(self, book):
        self.seen.append((book.ts_ns, "book"))

    def on_market_stat(self, stat):
        self.seen.append((stat.ts_ns, "stat"))

    def predict(self, query):
        assert all(ts < query.ts_ns for ts, _ in self.seen), "model saw an event at or after the fill"
        self.queries.append(query)
        return sigkit.Prediction(0.5, self.confidence)

    def record_outcome(self, outcome):
        due = outcome.fill.ts_ns + outcome.horizon_ns
        assert all(ts <= due for ts, _ in self.seen), "outcome delivered after an event past its horizon"
        self.outcomes.append((len(self.seen), outcome))


def _replay(chunks_by_source, models, *, public=True, horizons=()):
    sources = [(f"s{i}", ListSource(c)) for i, c in enumerate(chunks_by_source)]
    return Replay(sources=sources, models=models, target=sigkit.Market("v", "X"),
                  labelling=Labelling(H, 0.0, horizons), public_fills=public)


def test_merge_orders_by_time_then_source_then_row_and_never_splits_a_timestamp():
    a = [chunk_of([book(1, 99, 101), trade(3, 1, 101)]), chunk_of([trade(3, -1, 99), book(7, 99, 101)])]
    b = [chunk_of([stat(3, 10.0), stat(5, 11.0)]), chunk_of([stat(7, 12.0)])]
    merged = list(merge_chunks([("a", a), ("b", b)]))
    rows = np.concatenate(merged)
    assert rows["ts_ns"].tolist() == [1, 3, 3, 3, 5, 7, 7]
    # At ts=3: source a's two rows (in their order) before source b's.
    assert rows["kind"].tolist() == [sigkit.BOOK, sigkit.TRADE, sigkit.TRADE, sigkit.STAT, sigkit.STAT,
                                     sigkit.BOOK, sigkit.STAT]
    assert rows["side"].tolist()[1:3] == [1, -1]
    for left, right in zip(merged, merged[1:]):
        assert left["ts_ns"][-1] < right["ts_ns"][0]


def test_one_source_passes_chunks_on_whole_and_joins_only_a_group_cut_by_a_boundary():
    chunks = [chunk_of([book(1, 99, 101), trade(2, 1, 101)]),  # ends with its last group: passed on whole
              chunk_of([trade(3, 1, 101), trade(4, 1, 101)]),  # its last group (ts 4) goes on in the next two
              chunk_of([trade(4, -1, 99)]),
              chunk_of([trade(4, 1, 101), book(6, 99, 101), trade(6, 1, 101)]),
              chunk_of([book(8, 99, 101)])]
    small = list(merge_chunks([("a", chunks)]))  # (as a live feed gives them): all but each last group at once
    assert [p["ts_ns"].tolist() for p in small] == [[1], [2], [3], [4, 4, 4], [6, 6], [8]]
    with mock.patch("sigkit.engine._WHOLE_ROWS", 1):  # large chunks: held until the next shows where they end
        pieces = list(merge_chunks([("a", chunks)]))
    assert [p["ts_ns"].tolist() for p in pieces] == [[1, 2], [3], [4, 4, 4], [6, 6], [8]]
    assert pieces[0].base is chunks[0] or pieces[0] is chunks[0]  # (not copied)
    for got in (small, pieces):
        assert np.concatenate(got)["side"].tolist() == [0, 1, 1, 1, -1, 1, 0, 1, 0]


def test_source_going_back_in_time_is_a_data_error():
    bad = [chunk_of([book(5, 99, 101)]), chunk_of([book(4, 99, 101)])]
    with pytest.raises(DataError, match="goes back in time at ts_ns=4"):
        list(merge_chunks([("a", bad)]))


def test_predict_sees_only_strictly_earlier_events_and_outcomes_arrive_after_horizon():
    rows = [book(0, 99.5, 100.5), book(5, 99.5, 100.5), trade(5, 1, 100.5),  # same-ts book is not visible
            book(12, 100.5, 101.5), trade(14, -1, 100.5), book(15, 100.5, 101.5), book(30, 98.5, 99.5)]
    spy = Spy()
    result = _replay([[chunk_of(rows)]], [("spy", spy)]).run()
    assert [q.ts_ns for q in spy.queries] == [5, 14]
    # The buy at 5 filled our ask at 100.5 (side -1).  Mid at 15 (= 5 + H) is 101.0: we lost.
    first = spy.outcomes[0][1]
    assert first.fill.side == -1 and first.mid_at_horizon == 101.0
    assert first.markout_bps == pytest.approx(-1 * (101.0 - 100.5) / 100.5 * 1e4)
    assert first.was_adverse and first.realized_as_bps == pytest.approx(-first.markout_bps)
    # Delivered only after all events at ts <= 15 were seen, before the event at 30.
    assert spy.outcomes[0][0] == 6
    # The sell at 14 filled our bid at 100.5; mid at 24 is 101.0 (the book at 30 is later): made money.
    second = spy.outcomes[1][1]
    assert second.fill.side == 1 and not second.was_adverse and second.mid_at_horizon == 101.0
    assert result.fills["was_adverse"].tolist() == [1.0, 0.0]


def test_outcome_past_the_end_of_data_is_not_invented():
    rows = [book(0, 99.5, 100.5), trade(5, 1, 100.5), book(8, 100.5, 101.5)]
    spy = Spy()
    result = _replay([[chunk_of(rows)]], [("spy", spy)]).run()
    assert spy.outcomes == []
    assert result.fills["labelled"].tolist() == [False]


def test_every_outcome_reaches_every_model_whatever_its_confidence():
    rows = [book(0, 99.5, 100.5)] + [trade(t, 1 if t % 2 else -1, 100.5 if t % 2 else 99.5) for t in range(1, 40)]
    rows.append(book(100, 99.5, 100.5))
    sure, unsure = Spy(1.0), Spy(0.0)
    _replay([[chunk_of(rows)]], [("sure", sure), ("unsure", unsure)]).run()
    assert len(unsure.outcomes) == len(sure.outcomes) == 39


def test_own_fills_are_fills_and_public_trades_are_not_when_fills_come_from_a_file():
    rows = [book(0, 99.5, 100.5), trade(3, 1, 100.5), fill(4, 1, 99.5), book(20, 99.5, 100.5)]
    spy = Spy()
    _replay([[chunk_of(rows)]], [("spy", spy)], public=False).run()
    assert [(q.ts_ns, q.side) for q in spy.queries] == [(4, 1)]
    assert (3, "trade") in spy.seen  # the public trade is still market data


def test_markouts_at_several_horizons():
    rows = [book(0, 99.5, 100.5), trade(5, -1, 99.5), book(6, 100.5, 101.5), book(9, 101.5, 102.5),
            book(40, 90.5, 91.5)]
    result = _replay([[chunk_of(rows)]], [("spy", Spy())], horizons=(2, 20)).run()
    fills = result.fills
    assert fills["markout_2"][0] == pytest.approx((101.0 - 99.5) / 99.5 * 1e4)
    assert fills["markout_10"][0] == pytest.approx((102.0 - 99.5) / 99.5 * 1e4)
    assert fills["markout_20"][0] == pytest.approx((102.0 - 99.5) / 99.5 * 1e4)


class Boom:
    def on_book_update(self, book):
        if book.ts_ns >= 12:
            raise ZeroDivisionError("division by zero")

    def predict(self, query):
        return sigkit.Prediction(0.5)


def test_a_model_that_raises_is_named_with_hook_and_event_time():
    rows = [book(0, 99.5, 100.5), book(12, 99.5, 100.5)]
    with pytest.raises(ModelError, match=r"model 'boom' raised ZeroDivisionError in on_book_update at ts_ns=12"):
        _replay([[chunk_of(rows)]], [("ok", Spy()), ("boom", Boom())]).run()


class NotAProbability:
    def predict(self, query):
        return sigkit.Prediction(math.nan)


def test_a_prediction_that_is_not_a_probability_is_refused():
    rows = [book(0, 99.5, 100.5), trade(3, 1, 100.5)]
    with pytest.raises(ModelError, match="model 'bad' at ts_ns=3 predicted p_adverse=nan"):
        _replay([[chunk_of(rows)]], [("bad", NotAProbability())]).run()


class Misspelled:
    def on_trades(self, trade):
        pass

    def predict(self, query):
        return sigkit.Prediction(0.5)


class WrongArgument:
    def on_trade(self, trd):
        pass

    def predict(self, query):
        return sigkit.Prediction(0.5)


def test_misspelled_hooks_and_wrong_arguments_are_refused_when_the_run_is_built():
    with pytest.raises(PluginError, match="unknown hook 'on_trades', did you mean 'on_trade'"):
        _replay([[]], [("m", Misspelled())])
    with pytest.raises(PluginError, match="trd"):
        _replay([[]], [("m", WrongArgument())])
    with pytest.raises(PluginError, match="does not implement predict"):
        _replay([[]], [("m", object())])


def test_on_interval_hands_over_the_results_so_far(tmp_path):
    """Live mode rewrites its report from these: each is a prefix of the final result, marked running."""
    from conftest import SIM_RECIPE_HEAD
    from sigkit.engine import replay_from_recipe
    from sigkit.plugins import build_registry
    from sigkit.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(SIM_RECIPE_HEAD.format(name="iv", seed=2, world="informed", duration="2m")
                    + "models:\n  - id: flow\n    model: flow\n")
    from sigkit.testing import rechunk, simulate_stream

    class Chunked:  # the simulated events in chunks of about 200 rows: an interval after each
        def chunks(self):
            return iter(rechunk(list(simulate_stream("informed", "2m", seed=2)), 200))

    seen = []
    replay = replay_from_recipe(load_recipe(path, build_registry()), sources=[("sim", Chunked())])
    result = replay.run(on_interval=seen.append, interval_s=0.0)
    assert len(seen) >= 2
    assert all(not r.completed and r.stop_reason == "running" for r in seen)
    sizes = [len(r.fills["ts_ns"]) for r in seen]
    assert sizes == sorted(sizes) and 0 < sizes[-1] <= len(result.fills["ts_ns"])
    last = seen[-1]
    n = sizes[-1]
    assert (last.fills["ts_ns"] == result.fills["ts_ns"][:n]).all()
    assert (last.predictions["flow"]["p"] == result.predictions["flow"]["p"][:n]).all()


def test_the_state_history_stays_bounded_and_keeps_what_the_doubled_interval_would_take():
    from sigkit.plugins import build_registry
    from sigkit.testing import TARGET, rechunk, simulate_stream

    chunks = simulate_stream("informed", "3m", seed=1)
    spec = build_registry().lookup("model", "base_rate")

    def run(stream, interval_ns, cap):
        model = spec.factory(spec.params(), sigkit.RunContext(target=TARGET, horizon_ns=10**9, instance_id="rate"))
        return Replay(sources=[("s", ListSource(stream))], models=[("rate", model)], target=TARGET,
                      labelling=Labelling(10**9), snapshot_interval_ns=interval_ns, max_snapshots=cap).run()

    bounded = run(chunks, 10**9, 16)
    # 180 one-second snapshots halve to 90, 45, 22, 11: the interval doubled four times.
    assert len(bounded.state_history) == 11 and bounded.state_interval_ns == 16 * 10**9
    wide = run(chunks, 16 * 10**9, 10**6)
    assert bounded.state_history == wide.state_history
    assert run(rechunk(chunks, 53), 10**9, 16).state_history == bounded.state_history
    assert run(chunks, 10**9, 1000).state_interval_ns == 10**9
    with pytest.raises(sigkit.SigkitError, match="max_snapshots"):
        run(chunks, 10**9, 1)


def _numpy_lay_out(n_groups, out_group, fill_group, event_group, event_rows, out_adverse, ref_total, ref_adverse):
    """The schedule as whole-array numpy computes it (what sigkit.schedule.lay_out replaced)."""
    from sigkit.batch import EVENT, OUTCOME, QUERY

    n_out = np.bincount(out_group, minlength=n_groups)
    n_q = np.bincount(fill_group, minlength=n_groups)
    n_ev = np.bincount(event_group, minlength=n_groups)
    total = n_out + n_q + n_ev
    offset = np.cumsum(total) - total
    op = np.empty(int(total.sum()), dtype=np.int8)
    ref = np.empty(len(op), dtype=np.int64)
    for kind, group, n, before, refs in ((OUTCOME, out_group, n_out, 0, np.arange(len(out_group))),
                                         (QUERY, fill_group, n_q, n_out, np.arange(len(fill_group))),
                                         (EVENT, event_group, n_ev, n_out + n_q, event_rows)):
        pos = offset[group] + (before[group] if np.ndim(before) else 0) + (np.arange(len(group))
                                                                            - (np.cumsum(n) - n)[group])
        op[pos] = kind
        ref[pos] = refs
    seen = np.cumsum(n_out)[fill_group] + ref_total
    bad = np.cumsum(np.bincount(out_group, weights=out_adverse, minlength=n_groups))[fill_group] + ref_adverse
    return op, ref, offset + n_out, (bad + 1.0) / (seen + 2.0)


@pytest.mark.parametrize("seed", range(6))
def test_the_compiled_schedule_is_the_numpy_one(seed):
    from sigkit import schedule

    rng = np.random.default_rng(seed)
    n_groups = int(rng.integers(0, 40))
    draw = lambda k: np.sort(rng.integers(0, max(n_groups, 1), size=k if n_groups else 0))  # noqa: E731
    out_group, fill_group, event_group = draw(int(rng.integers(0, 30))), draw(int(rng.integers(0, 30))), draw(50)
    event_rows = np.sort(rng.choice(1000, size=len(event_group), replace=False)).astype(np.int64)
    out_adverse = rng.integers(0, 2, size=len(out_group)).astype(float)
    ref_total, ref_adverse = float(rng.integers(0, 100)), float(rng.integers(0, 50))
    want = _numpy_lay_out(n_groups, out_group, fill_group, event_group, event_rows, out_adverse, ref_total,
                          ref_adverse)
    steps = len(out_group) + len(fill_group) + len(event_group)
    op, ref = np.empty(steps, dtype=np.int8), np.empty(steps, dtype=np.int64)
    starts, p_ref = np.empty(n_groups, dtype=np.int64), np.empty(len(fill_group))
    assert schedule.lay_out(n_groups, out_group, fill_group, event_group, event_rows, out_adverse, ref_total,
                            ref_adverse, op, ref, starts, p_ref) == steps
    for got, expected in zip((op, ref, starts, p_ref), want):
        assert got.tobytes() == np.asarray(expected, dtype=got.dtype).tobytes()
    # The merge search is numpy's searchsorted(side="right"), for sorted keys and for any others.
    a = np.sort(rng.integers(0, 100, size=int(rng.integers(0, 60))))
    for keys in (np.sort(rng.integers(-5, 105, size=80)), rng.integers(-5, 105, size=80)):
        out = np.empty(len(keys), dtype=np.int64)
        schedule.search_right(a, keys, out)
        assert out.tolist() == np.searchsorted(a, keys, side="right").tolist()
