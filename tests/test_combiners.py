"""The built-in combiners' arithmetic and learning."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import sigkit
from sigkit.plugins import build_registry

REGISTRY = build_registry()
Q = sigkit.FillQuery(0, "v", "X", 1, 100.0, 1.0)


def make(name, members=("a", "b"), **params):
    spec = REGISTRY.combiners[name]
    ctx = sigkit.RunContext(sigkit.Market("v", "X"), 10**9, members=members)
    return spec.factory(spec.params(**params) if spec.params else None, ctx)


def preds(*ps, conf=1.0):
    return [sigkit.Prediction(p, conf) for p in ps]


def outcome(adverse):
    return sigkit.Outcome(Q, 10**9, 100.0, -1.0 if adverse else 1.0, adverse, 1.0 if adverse else -1.0)


def test_mean_weighted_and_logit_pools():
    assert make("mean").combine(Q, preds(0.2, 0.6)).p_adverse == pytest.approx(0.4)
    assert make("weighted", weights=(3.0, 1.0)).combine(Q, preds(0.2, 0.6)).p_adverse == pytest.approx(0.3)
    logit = make("logit").combine(Q, preds(0.2, 0.8)).p_adverse
    assert logit == pytest.approx(0.5)
    sharp = make("logit", extremize=2.0).combine(Q, preds(0.7, 0.7)).p_adverse
    assert sharp == pytest.approx(1 / (1 + math.exp(-2 * math.log(0.7 / 0.3))))


def test_weighted_needs_one_weight_per_member():
    with pytest.raises(sigkit.ModelError, match="1 weights for 2 members"):
        make("weighted", weights=(1.0,))


def test_hedge_moves_weight_to_the_better_member_and_fixed_share_lets_the_other_recover():
    hedge = make("hedge", eta=2.0, share=0.05)
    for _ in range(200):  # member a is right, b is wrong
        hedge.record_outcome(outcome(True), preds(0.9, 0.1))
    assert hedge.weights[0] > 0.9 and hedge.weights[1] >= 0.05 / 2  # fixed share keeps a floor
    for _ in range(200):  # the regime flips
        hedge.record_outcome(outcome(True), preds(0.1, 0.9))
    assert hedge.weights[1] > 0.9


def test_stacking_learns_which_member_to_trust():
    stack = make("stacking")
    before = stack.combine(Q, preds(0.8, 0.5)).p_adverse
    for _ in range(300):
        stack.record_outcome(outcome(True), preds(0.8, 0.5))
        stack.record_outcome(outcome(False), preds(0.2, 0.5))
    after_adverse = stack.combine(Q, preds(0.8, 0.5)).p_adverse
    after_benign = stack.combine(Q, preds(0.2, 0.5)).p_adverse
    assert after_adverse > before and after_benign < 0.2
    assert stack.model.weights[0] > stack.model.weights[1]


def _book(ts, mid, spread=1.0):
    return sigkit.BookUpdate(ts, "v", "X", mid - spread / 2, 1.0, mid + spread / 2, 1.0)


def test_regime_tracker_sees_volatility_and_spread_rise():
    tracker = sigkit.RegimeTracker("v", "X", fast_halflife_ns=10**9, slow_halflife_ns=60 * 10**9)
    t = 0
    for i in range(600):  # ten calm minutes: one tick a second
        t += 10**9
        tracker.on_book_update(_book(t, 100.0 + (i % 2)))
    assert tracker.state(t) == 0
    for i in range(20):  # a burst: five ticks every 100 ms
        t += 10**8
        tracker.on_book_update(_book(t, 100.0 + 5 * (i % 2)))
    assert tracker.state(t) & 1  # volatility high
    for i in range(20):
        t += 10**8
        tracker.on_book_update(_book(t, 100.0, spread=3.0))
    assert tracker.state(t) & 2  # spread wide
    other = sigkit.RegimeTracker("v", "Y")
    other.on_book_update(_book(1, 100.0))
    assert other.state(2) == 0  # another market's books are ignored


def test_unknown_regime_dimension_is_refused_at_validation():
    from sigkit.params import ParamError, build_params

    spec = REGISTRY.combiners["stacking"]
    with pytest.raises(ParamError, match="did you mean 'volatility'"):
        build_params(spec.params, {"regimes": ["volatilty"]}, owner="combiner 'stacking'")


def test_regime_stacking_learns_different_weights_per_regime():
    stack = make("stacking", regimes=("volatility",), regime_fast_ns=10**9, regime_slow_ns=60 * 10**9)
    t = 0

    def query_at(ts):
        return sigkit.FillQuery(ts, "v", "X", 1, 100.0, 1.0)

    def teach(trusted: int, n: int):
        nonlocal t
        for _ in range(n):
            for adverse in (True, False):
                t += 10**8
                q = query_at(t)
                good = 0.8 if adverse else 0.2
                members = preds(good, 0.5) if trusted == 0 else preds(0.5, good)
                stack.combine(q, members)
                stack.record_outcome(sigkit.Outcome(q, 10**9, 100.0, 0.0, adverse, 0.0), members)

    for i in range(600):  # calm: member a is the informative one
        t += 10**9
        stack.on_book_update(_book(t, 100.0 + (i % 2)))
        if i % 3 == 0:
            teach(0, 1)
    calm = stack.tracker.state(t)
    for i in range(400):  # volatile: member b is
        t += 10**8
        stack.on_book_update(_book(t, 100.0 + 5 * (i % 2)))
        if i % 2 == 0:
            teach(1, 1)
    volatile = stack.tracker.state(t)
    assert calm == 0 and volatile == 1
    assert stack.models[0].weights[0] > stack.models[0].weights[1]
    assert stack.models[1].weights[1] > stack.models[1].weights[0]


def test_regime_hedge_keeps_one_weight_vector_per_state():
    hedge = make("hedge", regimes=("volatility", "spread"))
    assert len(hedge.by_state) == 4


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_stacking_on_real_binance_btc_is_no_worse_than_its_best_member(tmp_path):
    import json

    from click.testing import CliRunner

    from sigkit.cli import main

    data = SHARED_DATA / "hftbacktest_binance_hyperliquid"
    if not (data / "spot_btcusdt_20240808.gz").exists():
        pytest.skip(f"the shared data folder {SHARED_DATA} is not here")
    recipe = tmp_path / "btc.yaml"
    recipe.write_text(f"""
name: btc
data:
  - {{source: binance, path: {data / "spot_btcusdt_20240808.gz"}, venue: binance-spot}}
  - {{source: binance, path: {data / "usdm_btcusdt_20240808.gz"}, venue: binance-usdm}}
target: {{venue: binance-spot, symbol: BTCUSDT}}
fills: public
horizon: 1s
models:
  - {{id: enhanced_as, model: enhanced_as}}
  - {{id: prefill, model: prefill_toxicity}}
  - {{id: usdm_lead, model: cross_asset, params: {{leader_venue: binance-usdm, leader_symbol: BTCUSDT}}}}
ensemble: {{combiner: stacking}}
""")
    result = CliRunner().invoke(main, ["run", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "out" / "report.json").read_text())["scores"]
    log_loss = {name: s["log_loss"] for name, s in scores.items()}
    best = min(v for name, v in log_loss.items() if name != "ensemble")
    assert log_loss["ensemble"] <= best + 0.01, log_loss


# -- the batch path ------------------------------------------------------------------------------------

def test_combiner_formulas_reproduce_learn_py_bit_for_bit():
    """The kernels' formulas (and their compiled twins) give the very bits of NewtonLogistic and
    RegimeTracker in sigkit.learn, and ``power`` those of Python's ``**``."""
    import random

    import numpy as np
    from sigkit_combiners import kernel
    from sigkit import learn as kernel_learn

    from sigkit import fast

    rng = random.Random(5)
    k = 3
    reference = sigkit.NewtonLogistic([1.0] * k, prior_precision=10.0, l2=0.5, halflife_outcomes=30.0)
    theta, curvature = list(reference.theta), [[0.0] * (k + 1) for _ in range(k + 1)]
    theta_c, curvature_c = np.array(theta), np.zeros((k + 1, k + 1))
    prior, precision = np.array(reference.prior), np.array(reference.prior_precision)
    scratch = [np.zeros((k + 1, k + 1)), np.zeros((k + 1, k + 1)), np.zeros(k + 1), np.zeros(k + 1), np.zeros(k + 1)]
    step = fast.newton_step
    for _ in range(300):
        x = [rng.gauss(0.0, rng.choice((0.1, 1.0, 5.0))) for _ in range(k)]
        y, offset = float(rng.random() < 0.4), rng.gauss(0.0, 0.5)
        p = sigkit.sigmoid(kernel_learn.newton_decision(theta, x, offset))
        assert p == reference.predict(x, offset)
        kernel_learn.newton_step(theta, curvature, x, y, p, reference.prior, reference.prior_precision, reference.keep,
                           [[0.0] * (k + 1) for _ in range(k + 1)], [[0.0] * (k + 1) for _ in range(k + 1)],
                           [0.0] * (k + 1), [0.0] * (k + 1), [0.0] * (k + 1))
        step(theta_c, curvature_c, np.array(x), y, p, prior, precision, reference.keep, *scratch)
        reference.update(x, y, offset)
        assert theta == reference.theta == theta_c.tolist()
        assert curvature == reference.curvature == curvature_c.tolist()

    for dims in (("volatility",), ("spread",), ("volatility", "spread")):
        tracker = sigkit.RegimeTracker("v", "X", dimensions=dims, fast_halflife_ns=10**9, slow_halflife_ns=30 * 10**9)
        tf, ti = np.zeros(7), np.zeros(5, dtype=np.int64)
        rates = np.array(tracker._rates)
        codes = np.array([kernel.DIMENSION_CODES[d] for d in dims], dtype=np.int64)
        t = 10**15
        for i in range(3000):
            t += rng.choice((0, 0, 10**6, 10**8, 10**9))
            if rng.random() < 0.05:  # a one-sided book: no mid
                book = sigkit.BookUpdate(t, "v", "X", math.nan, 1.0, 100.0, 1.0)
            else:
                mid = 100.0 + rng.gauss(0.0, 3.0 if (i // 500) % 2 else 0.3)
                half = abs(rng.gauss(0.0, 0.5 if (i // 700) % 2 else 0.05)) + 0.01
                book = sigkit.BookUpdate(t, "v", "X", mid - half, 1.0, mid + half, 1.0)
            tracker.on_book_update(book)
            kernel._tracker_book(tf, ti, rates, t, book.bid_px, book.ask_px)
            if rng.random() < 0.3:
                assert kernel._tracker_state(tf, ti, rates, tracker.ratio, codes, t) == tracker.state(t)
            assert tf.tolist() == [*tracker._var, *tracker._spread, *tracker._weight, tracker._last_mid or 0.0]

    values = [rng.gauss(0.0, 10.0) for _ in range(20000)]
    square = fast.twin(kernel.hedge_step)  # brier losses go through power()
    for v in values:
        assert kernel_learn.power(v, 2.0) == v ** 2
    losses, weights = np.zeros(2), np.array([0.5, 0.5])
    for v in values[:2000]:
        p = min(abs(v) / 30.0, 1.0)
        expected = list(weights)
        kernel.hedge_step(expected, [p, 1.0 - p], 1.0, 2.0, 0.01, False, [0.0, 0.0])
        square(weights, np.array([p, 1.0 - p]), 1.0, 2.0, 0.01, False, losses)
        assert weights.tolist() == expected


ARMS = [("stacking_vol", "stacking", {"regimes": ("volatility",), "regime_fast_ns": 10**9, "regime_slow_ns": 30 * 10**9}),
        ("stacking_both", "stacking", {"regimes": ("volatility", "spread"), "mix_members": False, "halflife": 40.0,
                                       "regime_fast_ns": 10**9, "regime_slow_ns": 30 * 10**9}),
        ("stacking_logodds", "stacking", {"pool": "logodds", "l2": 1.0}),
        ("mean", "mean", {}), ("weighted", "weighted", {"weights": (3.0, 1.0, 0.5)}),
        ("logit", "logit", {"extremize": 1.5}), ("hedge", "hedge", {}),
        ("hedge_log", "hedge", {"loss": "log", "regimes": ("volatility", "spread"), "regime_fast_ns": 10**9,
                                "regime_slow_ns": 30 * 10**9})]


def _combiner_run(chunks, path: str):
    """Every combiner of ARMS over the baselines (flow, a 30 s base rate, the base rate) on ``path``: the
    predictions, and the combiners."""
    from sigkit.engine import Labelling, Replay
    from sigkit.testing import MemorySource

    target = sigkit.Market("sim", "BTC-PERP")
    members = ("flow", "br30", "base_rate")

    def build(kind, name, registry_kind, params):
        spec = REGISTRY.lookup(kind, registry_kind)
        ctx = sigkit.RunContext(target, 10**9, seed=1, instance_id=name, members=members)
        return spec.factory(spec.params(**params) if spec.params else None, ctx)

    source = MemorySource(chunks)
    models = [("base_rate", build("model", "base_rate", "base_rate", {})),
              ("br30", build("model", "br30", "base_rate", {"halflife_ns": 30 * 10**9})),
              ("flow", build("model", "flow", "flow", {}))]
    combiners = {name: build("combiner", name, kind, params) for name, kind, params in ARMS}
    replay = Replay(sources=[("memory", source)], models=models, target=target, labelling=Labelling(10**9),
                    ensembles=[(name, obj, members) for name, obj in combiners.items()], path=path)
    result = replay.run()
    return {name: result.predictions[name] for name in combiners}, combiners


def test_every_combiner_gives_the_same_on_the_batch_path():
    """The batch path (whole pieces, and 97-row pieces) predicts what the per-event path does, to the bit,
    and leaves the combiners in the same learned state."""
    from sigkit.testing import rechunk, simulate_stream

    chunks = simulate_stream("mixed", "4m", seed=2)
    reference, ref_combiners = _combiner_run(chunks, "per-event")
    assert len(reference["mean"]["p"]) > 500
    for stream in (chunks, rechunk(chunks, 97)):
        predictions, combiners = _combiner_run(stream, "batch")
        for name, _, _ in ARMS:
            for key in ("p", "confidence", "cost_bps"):
                a, b = reference[name][key], predictions[name][key]
                assert a.tobytes() == b.tobytes(), f"{name} {key} differs on the batch path"
            if hasattr(combiners[name], "describe"):
                assert combiners[name].describe() == ref_combiners[name].describe(), name
    stacking = ref_combiners["stacking_both"]
    assert len({m.n_updates for m in stacking.models}) > 1  # the regimes were exercised
    assert stacking.tracker.state_dict() == combiners["stacking_both"].tracker.state_dict()


def test_pools_stay_probabilities_when_rounding_would_step_past_one():
    from sigkit_combiners.kernel import linear_pool, mixture_pool

    # Weights summing to one whose weighted sum of ones rounds to 1.0000000000000002 (the case a busy
    # simulated day hit in the stacking ensemble).
    weights = [0.36506899198262255, 0.5787927773682225, 0.05613823064915503]
    assert weights[0] * 1.0 + weights[1] * 1.0 + weights[2] * 1.0 == 1.0000000000000002
    assert linear_pool(weights, [1.0, 1.0, 1.0]) == 1.0
    assert mixture_pool(weights, 1.0, [1.0, 1.0]) == 1.0
    assert linear_pool([0.5, 0.5], [0.2, 0.4]) == pytest.approx(0.3)
