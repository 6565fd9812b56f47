"""The built-in combiners' arithmetic and learning."""

from __future__ import annotations

import math

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
    stack = make("stacking", learning_rate=0.05)
    before = stack.combine(Q, preds(0.8, 0.5)).p_adverse
    for _ in range(300):
        stack.record_outcome(outcome(True), preds(0.8, 0.5))
        stack.record_outcome(outcome(False), preds(0.2, 0.5))
    after_adverse = stack.combine(Q, preds(0.8, 0.5)).p_adverse
    after_benign = stack.combine(Q, preds(0.2, 0.5)).p_adverse
    assert after_adverse > before and after_benign < 0.2
    assert stack.model.weights[0] > stack.model.weights[1]
