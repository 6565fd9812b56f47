"""Shared features (sigkit.features): a feature declared by several models is one object, applied once per
event, read the same on both paths, with the predictions each model gives alone, and saved in checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

import sigkit
from sigkit.engine import Labelling, Replay, replay_from_recipe
from sigkit.features import Pyramid, PyramidState
from sigkit.plugins import build_registry
from sigkit.recipe import instantiate, load_recipe
from sigkit.testing import TARGET, simulate_stream

from conftest import SIM_RECIPE_HEAD

AB_MODELS = """\
models:
  - id: slow
    model: enhanced_as
  - id: fast
    model: enhanced_as
    params: {learning_rate: 0.02, calibration_learning_rate: 0.05}
"""


def _recipe(tmp_path, models: str, name: str = "ab"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(SIM_RECIPE_HEAD.format(name=name, seed=3, world="informed", duration="3m") + models)
    return load_recipe(path, build_registry())


def _alone(models: str, keep: str) -> str:
    """The recipe's models section with only the model ``keep``."""
    lines = models.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() == f"- id: {keep}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("- id:")), len(lines))
    return "models:\n" + "".join(lines[start:end])


def _target_events(recipe) -> int:
    """Target trades with a positive size plus usable target touches: what a pyramid applies."""
    n = 0
    for _, source in instantiate(recipe).sources:
        for chunk in source.chunks():
            target = (chunk["venue"] == "sim") & (chunk["symbol"] == "BTC-PERP")
            trades = target & (chunk["kind"] == sigkit.TRADE) & (chunk["size"] > 0)
            bid, ask = chunk["bid_px"], chunk["ask_px"]
            books = target & (chunk["kind"] == sigkit.BOOK) & (bid > 0) & (ask >= bid) & (chunk["bid_sz"] >= 0) \
                & (chunk["ask_sz"] >= 0)
            n += int(trades.sum() + books.sum())
    return n


@pytest.mark.parametrize("path", ["batch", "per-event"])
def test_two_models_declaring_one_pyramid_share_it_and_each_predicts_as_it_does_alone(tmp_path, path):
    recipe = _recipe(tmp_path, AB_MODELS)
    replay = replay_from_recipe(recipe, path=path)
    slow, fast = replay._instances["slow"], replay._instances["fast"]
    assert slow.pyramid is fast.pyramid  # one feature, declared by both
    together = replay.run()
    assert slow.pyramid.n_events == _target_events(recipe) > 1000  # each event applied once, not once a reader
    for name in ("slow", "fast"):
        alone = replay_from_recipe(_recipe(tmp_path, _alone(AB_MODELS, name), name), path=path).run()
        assert alone.fills["ts_ns"].tobytes() == together.fills["ts_ns"].tobytes()
        for key in ("p", "confidence", "cost_bps"):
            assert alone.predictions[name][key].tobytes() == together.predictions[name][key].tobytes(), (name, key)
    # The two really are different models reading one feature.
    assert not np.array_equal(together.predictions["slow"]["p"], together.predictions["fast"]["p"])


def test_the_batch_rows_are_the_live_pyramid_at_each_fill():
    chunks = simulate_stream("informed", "1m", seed=5)
    spec = Pyramid(TARGET, (100_000_000, 1_000_000_000, 10_000_000_000))

    class Reader:
        """Per-event: the live pyramid's values at each fill."""

        def __init__(self, state):
            self.state, self.seen = state, []

        def on_trade(self, trade):
            self.state.on_trade(trade)

        def on_book_update(self, book):
            self.state.on_book_update(book)

        def predict(self, query):
            s = self.state
            s.advance(query.ts_ns)
            self.seen.append(np.concatenate([s.sums.ravel(), s.means.ravel(), s.levels, s.touch, [s.mid],
                                             [1.0 if s.has_book else 0.0]]))
            return sigkit.Prediction(0.5, 0.0)

    class BatchReader:
        def __init__(self, state):
            self.state, self.rows = state, []

        def on_batch(self, batch):
            self.rows.append(batch.feature(self.state).copy())
            assert batch.feature(self.state) is batch.feature(self.state)  # computed once per batch
            n = batch.n_queries
            return sigkit.BatchPredictions(np.full(n, 0.5), np.zeros(n), np.full(n, np.nan))

    live, batch = Reader(PyramidState(spec)), BatchReader(PyramidState(spec))
    for model in (live, batch):
        Replay(sources=[("s", _List(chunks))], models=[("m", model)], target=TARGET, labelling=Labelling(10**9)).run()
    rows = np.vstack(batch.rows)
    assert rows.shape == (len(live.seen), spec.width) and len(live.seen) > 100
    assert rows.tobytes() == np.vstack(live.seen).tobytes()
    assert np.isfinite(rows[:, spec.offsets()["sums"]:spec.offsets()["levels"]]).all()


class _List:
    def __init__(self, chunks):
        self._chunks = chunks

    def chunks(self):
        return iter(self._chunks)


class PerEventOnly:
    """A model's per-event hooks only (so the engine runs it per event beside batch models)."""

    def __init__(self, model):
        self.model = model
        self.pyramid = model.pyramid

    def on_trade(self, trade):
        self.model.on_trade(trade)

    def on_book_update(self, book):
        self.model.on_book_update(book)

    def predict(self, query):
        return self.model.predict(query)

    def record_outcome(self, outcome):
        self.model.record_outcome(outcome)


def test_a_pyramid_read_on_both_paths_at_once_gives_each_reader_its_own_predictions(tmp_path):
    recipe = _recipe(tmp_path, AB_MODELS)
    reference = replay_from_recipe(recipe).run()
    replay = replay_from_recipe(recipe)
    slow = replay._instances["slow"]
    mixed = Replay(sources=instantiate(recipe).sources, models=[("slow", PerEventOnly(slow)), ("fast", replay._instances["fast"])],
                   target=TARGET, labelling=replay.labelling).run()
    assert mixed.paths == {"slow": "per-event", "fast": "batch"}
    for name in ("slow", "fast"):
        assert mixed.predictions[name]["p"].tobytes() == reference.predictions[name]["p"].tobytes(), name
    assert slow.pyramid.n_events == _target_events(recipe)


def test_a_run_sharing_a_pyramid_resumes_from_a_checkpoint_bit_for_bit(tmp_path):
    recipe = _recipe(tmp_path, AB_MODELS)
    full = replay_from_recipe(recipe).run()
    stop_at = int(full.fills["ts_ns"][len(full.fills["ts_ns"]) // 2])
    checkpoint = tmp_path / "ab.ckpt"
    replay_from_recipe(recipe).run(until_ns=stop_at, checkpoint_path=checkpoint)
    resumed = replay_from_recipe(recipe).run(resume_from=checkpoint)
    later = full.fills["ts_ns"] > resumed.resumed_from_ts_ns
    assert later.sum() > 100
    for name in ("slow", "fast"):
        assert full.predictions[name]["p"].tobytes() == resumed.predictions[name]["p"].tobytes(), name


def test_a_pyramid_needs_positive_timescales_and_equal_specs_are_one_feature():
    with pytest.raises(ValueError, match="positive timescales"):
        Pyramid(TARGET, (0,))
    context = sigkit.RunContext(target=TARGET, horizon_ns=1)
    a = context.feature(Pyramid(TARGET, [1_000_000, 10**9]))
    assert context.feature(Pyramid(TARGET, (1_000_000, 10**9))) is a
    assert context.feature(Pyramid(TARGET, (1_000_000, 10**9), impact_window_ns=5)) is not a
    assert sigkit.RunContext(target=TARGET, horizon_ns=1).feature(Pyramid(TARGET, (1_000_000,))) is not a
