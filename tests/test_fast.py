"""The batch path: on_batch sees exactly the per-event schedule, mixes with per-event models, fails
cleanly, and every built-in model and combiner gives its per-event predictions on every world and on a
real recording."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sigkit
from sigkit.batch import EVENT, OUTCOME, QUERY, FillSlots
from sigkit.engine import Labelling, Replay, replay_from_recipe
from sigkit.errors import ModelError
from sigkit.plugins import build_registry
from sigkit.recipe import load_recipe
from sigkit.testing import (
    EQUIVALENCE_TOLERANCE, batch_difference, check_batch_equivalence, check_model, rechunk, simulate_stream,
)

from conftest import SHARED_DATA, SIM_RECIPE_HEAD, ListSource, book, chunk_of, stat, trade

H = 10
REPO = Path(__file__).resolve().parents[1]
WORLDS = ("null", "informed", "leadlag", "oi", "mixed")


class EventSpy:
    """Per-event: records every call in order."""

    def __init__(self):
        self.calls = []

    def on_trade(self, trade):
        self.calls.append(("trade", trade.ts_ns))

    def on_book_update(self, book):
        self.calls.append(("book", book.ts_ns))

    def on_market_stat(self, stat):
        self.calls.append(("stat", stat.ts_ns))

    def predict(self, query):
        self.calls.append(("query", query.ts_ns))
        return sigkit.Prediction(0.5, 1.0)

    def record_outcome(self, outcome):
        self.calls.append(("outcome", outcome.fill.ts_ns, outcome.was_adverse, round(outcome.realized_as_bps, 9)))


class BatchSpy:
    """Batch-only: records the schedule it is given, step by step, in the same vocabulary."""

    NAMES = {sigkit.TRADE: "trade", sigkit.BOOK: "book", sigkit.STAT: "stat"}

    def __init__(self):
        self.calls = []
        self.max_event_ts = []  # (query ts, latest event ts seen before it)

    def on_batch(self, batch):
        seen = self.calls
        for step, r in zip(batch.op.tolist(), batch.ref.tolist()):
            if step == EVENT:
                seen.append((self.NAMES[int(batch.kind[r])], int(batch.ts[r])))
            elif step == QUERY:
                seen.append(("query", int(batch.q_ts[r])))
            else:
                assert step == OUTCOME
                seen.append(("outcome", int(batch.o_ts[r]), bool(batch.o_adverse[r]),
                             round(float(batch.o_realized_bps[r]), 9)))
        n = batch.n_queries
        return sigkit.BatchPredictions(np.full(n, 0.5), np.ones(n), np.full(n, np.nan))


def _replay(chunks, models, *, ensembles=(), path="batch", horizons=()):
    return Replay(sources=[("s", ListSource(chunks))], models=models, ensembles=ensembles,
                  target=sigkit.Market("v", "X"), labelling=Labelling(H, 0.0, horizons), path=path)


def _hand_data():
    rows = [book(1, 99, 101), trade(2, 1, 101), trade(2, -1, 99), stat(3, 10.0), book(5, 100, 102),
            trade(12, 1, 102), book(12, 101, 103), trade(13, -1, 101), book(30, 98, 100), trade(30, 1, 100),
            book(41, 99, 101), trade(55, -1, 99)]
    other = dict(trade(4, 1, 50))
    other["venue"] = "w"
    rows.insert(4, other)
    return [chunk_of(rows[:5]), chunk_of(rows[5:9]), chunk_of(rows[9:])]


@pytest.mark.parametrize("rows", [1, 2, 5, 100])
def test_the_batch_schedule_is_the_per_event_call_order_however_the_events_are_cut(rows):
    chunks = rechunk(_hand_data(), rows)
    event_spy, batch_spy = EventSpy(), BatchSpy()
    _replay(chunks, [("e", event_spy), ("b", batch_spy)]).run()
    assert batch_spy.calls == event_spy.calls
    kinds = [c[0] for c in event_spy.calls]
    assert kinds.count("query") == 6 and kinds.count("outcome") == 5  # the last fill's horizon never passes


def test_a_batch_model_sees_no_event_at_or_after_a_fill_and_outcomes_only_after_their_horizon():
    chunks = simulate_stream("informed", "1m", seed=3)
    spy = BatchSpy()
    Replay(sources=[("s", ListSource(chunks))], models=[("b", spy)], target=sigkit.testing.TARGET,
           labelling=Labelling(1_000_000_000)).run()
    last_event = None
    for call in spy.calls:
        if call[0] == "query":
            assert last_event is None or last_event < call[1]
        elif call[0] != "outcome":
            last_event = call[1]
    # An outcome arrives before any event later than its due time, and after every event at or before it.
    events = [c[1] for c in spy.calls if c[0] not in ("query", "outcome")]
    position = 0
    for call in spy.calls:
        if call[0] == "outcome":
            due = call[1] + 1_000_000_000
            before = events[:position]
            assert all(t <= due for t in before)
            assert position == len(events) or events[position] > due
        elif call[0] != "query":
            position += 1
    assert sum(c[0] == "outcome" for c in spy.calls) > 100


class Drifting:
    """Both paths, the batch one off by ``delta``: the conformance check must catch it."""

    def __init__(self, delta):
        self.delta = delta

    def predict(self, query):
        return sigkit.Prediction(0.5, 1.0)

    def on_batch(self, batch):
        n = batch.n_queries
        return sigkit.BatchPredictions(np.full(n, 0.5 + self.delta), np.ones(n), np.full(n, np.nan))


def test_the_equivalence_check_fails_a_batch_path_that_drifts_and_passes_an_equal_one():
    chunks = simulate_stream("informed", "1m", seed=1)

    def run_with(delta):
        def run(stream, path):
            replay = Replay(sources=[("s", ListSource(stream))], models=[("m", Drifting(delta))],
                            target=sigkit.testing.TARGET, labelling=Labelling(1_000_000_000), path=path)
            return replay.run().predictions["m"]
        return run

    assert check_batch_equivalence(run_with(0.0), chunks) is None
    problem = check_batch_equivalence(run_with(1e-9), chunks)
    assert problem is not None and "differs from the per-event path by 1e-09" in problem


def test_batch_and_per_event_models_mix_in_one_ensemble():
    chunks = simulate_stream("informed", "2m", seed=2)
    registry = build_registry()
    from sigkit.context import RunContext

    def build(name, **params):
        spec = registry.lookup("model", name)
        from sigkit.params import build_params
        context = RunContext(target=sigkit.testing.TARGET, horizon_ns=10**9, seed=0, instance_id=name)
        return spec.factory(build_params(spec.params, params, owner=name), context)

    def run(path):
        flow, rate = build("flow"), build("base_rate")
        combiner_spec = registry.lookup("combiner", "mean")
        combiner = combiner_spec.factory(None, sigkit.RunContext(target=sigkit.testing.TARGET, horizon_ns=10**9,
                                                                  seed=0, instance_id="ensemble",
                                                                  members=("flow", "rate", "spy")))
        replay = Replay(sources=[("s", ListSource(chunks))], target=sigkit.testing.TARGET,
                        models=[("flow", flow), ("rate", rate), ("spy", BatchSpy())],
                        ensembles=[("ensemble", combiner, ["flow", "rate", "spy"])],
                        labelling=Labelling(10**9), path=path)
        return replay.run()

    batch, per_event = run("batch"), run("per-event")  # the batch-only spy runs on its batch path in both
    for name in ("flow", "rate", "ensemble"):
        worst, kind = batch_difference(per_event.predictions[name], batch.predictions[name])
        assert kind is None and worst <= EQUIVALENCE_TOLERANCE
    assert len(batch.predictions["spy"]["p"]) == len(batch.fills["ts_ns"]) > 100


class Raising:
    def on_batch(self, batch):
        if batch.n_queries:
            raise ValueError("boom")
        return sigkit.BatchPredictions(np.empty(0), np.empty(0), np.empty(0))


class Invalid:
    def __init__(self, what):
        self.what = what

    def on_batch(self, batch):
        n = batch.n_queries
        if self.what == "shape":
            return sigkit.BatchPredictions(np.full(n + 1, 0.5), np.ones(n + 1), np.ones(n + 1))
        if self.what == "p":
            return sigkit.BatchPredictions(np.full(n, 1.5), np.ones(n), np.ones(n))
        return (np.full(n, 0.5),)


def test_a_batch_model_that_raises_names_itself_its_hook_and_the_time():
    with pytest.raises(ModelError, match=r"model 'bad'.*raised ValueError in on_batch at ts_ns=\d+: boom"):
        Replay(sources=[("s", ListSource(_hand_data()))], models=[("bad", Raising())], target=sigkit.Market("v", "X"),
               labelling=Labelling(H), provenance={"bad": "x from y 1"}).run()


@pytest.mark.parametrize("what,message", [("shape", "expected \\(\\d+,\\) each"), ("p", "p_adverse=1.5"),
                                          ("type", "expected sigkit.BatchPredictions")])
def test_invalid_batch_predictions_are_refused(what, message):
    with pytest.raises(ModelError, match=message):
        _replay(_hand_data(), [("bad", Invalid(what))]).run()


def test_on_error_drop_turns_a_failing_batch_model_into_the_reference():
    replay = Replay(sources=[("s", ListSource(_hand_data()))], models=[("bad", Raising()), ("spy", EventSpy())],
                    target=sigkit.Market("v", "X"), labelling=Labelling(H), on_error="drop")
    result = replay.run()
    assert result.dropped["bad"]["hook"] == "on_batch" and "boom" in result.dropped["bad"]["error"]
    assert np.array_equal(result.predictions["bad"]["p"], result.fills["p_ref"])
    assert (result.predictions["bad"]["confidence"] == 0).all()


def test_fill_slots_grow_without_losing_entries_and_free_fills_that_will_never_be_labelled():
    slots = FillSlots(2, capacity=4)
    for i in range(3):
        slots.values[i % 4] = (i, -i)
        slots.owner[i % 4] = i

    class B:
        n_queries = 1
        q_fill = np.array([9])
        oldest_pending = 1

    slots.ensure(B)
    assert slots.capacity == 16  # fills 1..9 must coexist
    assert slots.owner[0] == -1  # fill 0 is older than anything pending: freed
    assert slots.owner[1 % 16] == 1 and tuple(slots.values[2]) == (2.0, -2.0)
    with pytest.raises(ValueError, match="power of two"):  # (a slot is fill & (capacity - 1))
        FillSlots(2, capacity=12)


def test_run_per_event_flag_gives_the_same_predictions(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(SIM_RECIPE_HEAD.format(name="flag", seed=1, world="informed", duration="2m")
                      + "models:\n  - {id: flow, model: flow}\n  - {id: rate, model: base_rate}\n")
    outs = []
    for flag in ([], ["--per-event"]):
        out = tmp_path / ("pe" if flag else "b")
        done = subprocess.run([sys.executable, "-m", "sigkit.cli", "run", str(recipe), "--out", str(out), "--quiet",
                               *flag], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        outs.append((out / "predictions.csv").read_bytes())
    assert outs[0] == outs[1]


# -- every built-in model and combiner, on every world and on a real recording -----------------------

MODELS = """\
models:
  - {id: base_rate, model: base_rate}
  - {id: rate_30s, model: base_rate, params: {halflife: 30s}}
  - {id: flow, model: flow}
  - {id: enhanced_as, model: enhanced_as}
  - {id: prefill, model: prefill_toxicity}
  - {id: lead_lag, model: cross_asset, params: {leader_venue: simlead, leader_symbol: BTC-PERP}}
  - {id: oi, model: onchain_oi}
"""

ENSEMBLES = {
    "stacking": "ensemble:\n  combiner: stacking\n  members: [enhanced_as, prefill, lead_lag, oi]\n"
                "  params: {regimes: [volatility]}\n",
    "mean": "ensemble:\n  combiner: mean\n  members: [flow, enhanced_as, oi]\n",
    "logit": "ensemble:\n  combiner: logit\n  members: [flow, prefill, lead_lag]\n",
    "hedge": "ensemble:\n  combiner: hedge\n  members: [enhanced_as, prefill, lead_lag, oi]\n",
    "weighted": "ensemble:\n  combiner: weighted\n  members: [flow, lead_lag]\n  params: {weights: [0.25, 0.75]}\n",
}


def _both_paths(recipe_path: Path) -> tuple:
    recipe = load_recipe(recipe_path, build_registry())
    return (replay_from_recipe(recipe, path="per-event").run(), replay_from_recipe(recipe, path="batch").run())


def _assert_equivalent(per_event, batch):
    assert per_event.fills["ts_ns"].tolist() == batch.fills["ts_ns"].tolist()
    for name, preds in per_event.predictions.items():
        worst, kind = batch_difference(preds, batch.predictions[name])
        assert kind is None, f"{name}: {kind}"
        assert worst <= EQUIVALENCE_TOLERANCE, f"{name}: batch differs from per-event by {worst:.3g}"
    labelled = per_event.fills["labelled"]
    assert np.array_equal(labelled, batch.fills["labelled"]) and labelled.sum() > 50


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("combiner", sorted(ENSEMBLES))
def test_every_built_in_model_and_combiner_gives_its_per_event_predictions_on_every_world(tmp_path, world, combiner):
    seed = 1 + WORLDS.index(world)
    path = tmp_path / "r.yaml"
    path.write_text(SIM_RECIPE_HEAD.format(name="eq", seed=seed, world=world, duration="6m") + MODELS
                    + ENSEMBLES[combiner])
    _assert_equivalent(*_both_paths(path))


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"needs the shared market recordings in {SHARED_DATA}")
def test_the_batch_path_gives_the_per_event_predictions_on_a_real_recording():
    per_event, batch = _both_paths(REPO / "recipes" / "binance_btc.yaml")
    assert len(batch.fills["ts_ns"]) == 9_757
    _assert_equivalent(per_event, batch)


@pytest.mark.parametrize("name,params,world", [
    ("base_rate", None, "informed"), ("flow", None, "informed"), ("enhanced_as", None, "informed"),
    ("prefill_toxicity", None, "informed"), ("onchain_oi", None, "oi"),
    ("cross_asset", {"leader_venue": "simlead", "leader_symbol": "BTC-PERP"}, "leadlag")])
def test_the_conformance_suite_checks_batch_equivalence_of_built_in_models(name, params, world):
    report = check_model(name, params=params, worlds=(world,), duration="2m")
    assert report.status("batch_equivalence") == "pass", str(report)
    assert report.ok, str(report)


def test_market_codes_number_markets_in_order_of_appearance_and_match_whole_names():
    from sigkit.batch import MarketCodes
    from sigkit.events import empty_chunk

    chunk = empty_chunk(6)
    chunk["venue"] = ["a", "b", "a", "sim", "b", "ab"]
    chunk["symbol"] = ["X", "X", "Y", "BTC", "X", "X"]
    codes = MarketCodes()
    assert codes.code("sim", "BTC") == 0
    assert codes.of_chunk(chunk).tolist() == [1, 2, 3, 0, 2, 4]
    assert codes.names[1:] == [("a", "X"), ("b", "X"), ("a", "Y"), ("ab", "X")]
    assert codes.of_chunk(chunk[::-1]).tolist() == [4, 2, 0, 3, 2, 1]  # a strided view, known markets
    restored = MarketCodes()
    restored.load_state_dict(codes.state_dict())
    assert restored.of_chunk(chunk).tolist() == [1, 2, 3, 0, 2, 4]


def test_settled_fills_move_to_disk_and_the_result_and_checkpoints_are_unchanged(tmp_path):
    chunks = simulate_stream("informed", "3m", seed=4)

    def run(spill_rows, **kwargs):
        registry = build_registry()
        models = [(name, registry.lookup("model", name).factory(_params(registry, name), _context(name)))
                  for name in ("flow", "base_rate")]
        replay = Replay(sources=[("s", ListSource(chunks))], models=models, target=sigkit.testing.TARGET,
                        labelling=Labelling(10**9, 0.0, (10**8, 5 * 10**9)), spill_rows=spill_rows)
        return replay.run(**kwargs)

    memory = run(1 << 30)
    spilled = run(50, checkpoint_path=tmp_path / "c.npz", checkpoint_every_ns=30 * 10**9)
    assert isinstance(spilled.fills["ts_ns"], np.memmap) and not isinstance(memory.fills["ts_ns"], np.memmap)
    for key, values in memory.fills.items():
        assert np.array_equal(values, spilled.fills[key], equal_nan=values.dtype.kind == "f"), key
    for name in memory.predictions:
        for key, values in memory.predictions[name].items():
            assert np.array_equal(values, spilled.predictions[name][key], equal_nan=True)
    resumed = run(50, resume_from=tmp_path / "c.npz")  # a checkpoint taken with fills on disk holds them all
    assert np.array_equal(resumed.predictions["flow"]["p"], memory.predictions["flow"]["p"])


def test_the_fills_market_names_cost_no_memory_for_one_market_and_stream_to_disk_for_several():
    from conftest import fill

    rows = [book(1, 99, 101)]
    for t in range(2, 60):
        row = fill(t, 1 if t % 2 else -1, 100.0)
        if t % 3 == 0:
            row.update(venue="w", symbol="Y")  # our fills on a second market too
        rows.append(row)
    one = [dict(r, venue="v", symbol="X") if r["kind"] == sigkit.FILL else r for r in rows]

    def run(data, spill_rows):
        replay = Replay(sources=[("s", ListSource([chunk_of(data[:30]), chunk_of(data[30:])]))],
                        models=[("rate", build_registry().lookup("model", "base_rate").factory(
                            _params(build_registry(), "base_rate"), _context("rate")))],
                        target=sigkit.Market("v", "X"), labelling=Labelling(H), public_fills=False,
                        spill_rows=spill_rows)
        return replay.run().fills

    single = run(one, 5)
    assert single["venue"].strides == (0,) and set(single["venue"].tolist()) == {"v"}  # one name, broadcast
    assert single["symbol"].dtype == np.dtype(f"<U{sigkit.events.SYMBOL_CHARS}")
    expected = ["w" if t % 3 == 0 else "v" for t in range(2, 60)]
    for spill_rows in (1 << 30, 5):
        fills = run(rows, spill_rows)
        assert isinstance(fills["venue"], np.memmap) == (spill_rows == 5)
        assert fills["venue"].tolist() == expected
        assert fills["symbol"].tolist() == ["Y" if v == "w" else "X" for v in expected]


def _params(registry, name):
    from sigkit.params import build_params

    return build_params(registry.lookup("model", name).params, {}, owner=name)


def _context(name):
    return sigkit.RunContext(target=sigkit.testing.TARGET, horizon_ns=10**9, seed=0, instance_id=name)


def test_a_cached_kernel_is_recompiled_when_a_formula_it_calls_from_another_file_changes(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "formulas.py").write_text("def bump(x):\n    return x + 1.0\n")
    (package / "kern.py").write_text("from sigkit import fast\nfrom pkg import formulas\n\nbump = fast.twin(formulas.bump)\n\n\n"
                                     "@fast.kernel\ndef run(x):\n    return bump(x)\n")

    def run():
        done = subprocess.run([sys.executable, "-c", "from pkg import kern; print(kern.run(1.0))"], cwd=tmp_path,
                              capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
        assert done.returncode == 0, done.stderr
        return float(done.stdout)

    assert run() == 2.0
    assert list((package / "__pycache__").glob("kern.run-*.nbi"))  # compiled once and cached
    (package / "formulas.py").write_text("def bump(x):\n    return x + 5.0\n")
    assert run() == 6.0  # numba alone would have run the cached kernel: 2.0


def test_a_checkpoint_resumes_only_on_the_path_it_was_taken_on(tmp_path):
    from sigkit.checkpoint import CheckpointError

    chunks = simulate_stream("informed", "2m", seed=5)
    registry = build_registry()

    def replay(path):
        flow = registry.lookup("model", "flow").factory(_params(registry, "flow"), _context("flow"))
        return Replay(sources=[("s", ListSource(chunks))], models=[("flow", flow)], target=sigkit.testing.TARGET,
                      labelling=Labelling(10**9), path=path)

    replay("batch").run(checkpoint_path=tmp_path / "c.npz", until_ns=int(chunks[0]["ts_ns"][0]) + 60 * 10**9)
    with pytest.raises(CheckpointError, match="'flow' ran on its batch path .*resume without --per-event"):
        replay("per-event").run(resume_from=tmp_path / "c.npz")
    assert len(replay("batch").run(resume_from=tmp_path / "c.npz").predictions["flow"]["p"]) > 100


def test_a_run_whose_fills_went_to_disk_writes_the_same_report_and_predictions(tmp_path):
    from sigkit.report import build_report, plugins_used, write_outputs

    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", build_registry())
    outputs = []
    for spill_rows in (1 << 30, 300):
        replay = replay_from_recipe(recipe)
        replay.spill_rows = spill_rows
        result = replay.run()
        assert isinstance(result.fills["ts_ns"], np.memmap) == (spill_rows == 300)
        report = build_report(result, recipe, sources=replay.describe_sources(), plugins=plugins_used(recipe),
                              version="test", n_boot=50)
        report.pop("timing")
        out = tmp_path / str(spill_rows)
        write_outputs(out, report, result)
        outputs.append(((out / "predictions.csv").read_bytes(), json.loads((out / "report.json").read_text())))
    assert outputs[0][0] == outputs[1][0]
    assert outputs[0][1] == outputs[1][1]


def test_batch_models_in_threads_give_the_serial_predictions_and_errors(tmp_path):
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", build_registry())
    serial = replay_from_recipe(recipe, threads=1).run()
    threaded = replay_from_recipe(recipe, threads=3).run()
    assert serial.fills["ts_ns"].tobytes() == threaded.fills["ts_ns"].tobytes()
    for name, preds in serial.predictions.items():
        for key in ("p", "confidence", "cost_bps"):
            assert preds[key].tobytes() == threaded.predictions[name][key].tobytes(), (name, key)
    assert serial.state_history == threaded.state_history

    class RaisingLater:
        calls = 0

        def on_batch(self, batch):  # the first call runs serially in any case: fail in a threaded one
            self.calls += 1
            if self.calls == 3:
                raise ValueError("boom")
            n = batch.n_queries
            return sigkit.BatchPredictions(np.full(n, 0.5), np.ones(n), np.full(n, np.nan))

    def failing(threads):
        chunks = rechunk(simulate_stream("informed", "1m", seed=1), 500)
        with pytest.raises(ModelError) as err:
            Replay(sources=[("s", ListSource(chunks))], models=[("spy", BatchSpy()), ("bad", RaisingLater())],
                   target=sigkit.testing.TARGET, labelling=Labelling(10**9), threads=threads).run()
        return str(err.value)

    assert failing(1) == failing(2) and "'bad'" in failing(2)
    with pytest.raises(sigkit.SigkitError, match="threads"):
        Replay(sources=[], models=[], target=sigkit.testing.TARGET, labelling=Labelling(10**9), threads=0)
