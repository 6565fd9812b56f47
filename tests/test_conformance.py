"""sigkit.testing: every built-in model passes the conformance suite, and the suite catches bad models."""

import random
from importlib.metadata import entry_points

import attrs
import numpy as np
import pytest

import sigkit
from sigkit.plugins import build_registry

# Once sigkit is installed with its ``pytest11`` entry point the plugin is already loaded; naming it again
# would register it twice.  (sigkit.testing is imported lazily below so pytest can rewrite its asserts.)
if not any(ep.value == "sigkit.testing" for ep in entry_points(group="pytest11")):
    pytest_plugins = ["sigkit.testing"]


def check_model(*args, **kwargs):
    from sigkit.testing import check_model

    return check_model(*args, **kwargs)


def assert_conforms(*args, **kwargs):
    from sigkit.testing import assert_conforms

    return assert_conforms(*args, **kwargs)

BUILTINS = {"base_rate": ("informed", "null"), "flow": ("informed", "null"), "enhanced_as": ("informed", "null"),
            "prefill_toxicity": ("informed", "null"), "cross_asset": ("leadlag", "null"), "onchain_oi": ("oi", "null")}


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_model_conforms(name):
    report = assert_conforms(build_registry().lookup("model", name), worlds=BUILTINS[name])
    assert report.status("state") == "pass"  # every built-in saves and restores its learned state


# --- models the suite must refuse ---------------------------------------------------------------------


class Half:
    def __init__(self, params, context):
        pass

    def predict(self, query):
        return sigkit.Prediction(0.5, confidence=0.5)


class TooSure(Half):
    def predict(self, query):
        return sigkit.Prediction(1.7)


class Noisy(Half):
    def predict(self, query):
        return sigkit.Prediction(random.random(), confidence=0.5)


@attrs.frozen
class SloppyParams:
    scale: float = attrs.field(default=1.0)  # no doc
    window_ns: int = sigkit.param(1_000_000_000, doc="a duration without a unit")


class Sloppy(Half):
    pass


class _SpySource:
    """An in-memory source that lets Peeker read the whole replay when it is built."""

    latest = None

    def __init__(self, chunks):
        self._chunks = list(chunks)
        _SpySource.latest = np.concatenate(self._chunks) if self._chunks else None

    def chunks(self):
        return iter(self._chunks)


class Peeker(Half):
    """Reads the data it is replayed on ahead of time: says 'adverse' if the next target trade moves
    against the fill."""

    def __init__(self, params, context):
        rows = _SpySource.latest
        self.target = context.target
        if rows is None:
            self.ts = np.zeros(0, dtype=np.int64)
            return
        mine = (rows["kind"] == sigkit.TRADE) & (rows["venue"] == context.target.venue) \
            & (rows["symbol"] == context.target.symbol)
        self.ts, self.px = rows["ts_ns"][mine], rows["price"][mine]

    def predict(self, query):
        k = int(np.searchsorted(self.ts, query.ts_ns + 1_000_000_000))
        if k >= len(self.ts):
            return sigkit.Prediction(0.5)
        return sigkit.Prediction(0.9 if (self.px[k] - query.price) * query.side < 0 else 0.1)


def test_peeking_model_fails_no_future(monkeypatch):
    import sigkit.testing

    monkeypatch.setattr(sigkit.testing, "MemorySource", _SpySource)
    report = check_model(Peeker, worlds=("informed",), duration="90s")
    assert report.status("no_future") == "fail", report
    assert report.status("deterministic") == "pass"
    with pytest.raises(AssertionError, match="no_future"):
        assert_conforms(Peeker, worlds=("informed",), duration="90s")


def test_out_of_range_probability_fails():
    report = check_model(TooSure, worlds=("null",), duration="90s")
    assert report.status("probabilities") == "fail"
    assert "1.7" in next(c.detail for c in report.failures if c.name == "probabilities")
    with pytest.raises(AssertionError, match="probabilities"):
        assert_conforms(TooSure, worlds=("null",), duration="90s")


def test_nondeterministic_model_fails():
    report = check_model(Noisy, worlds=("null",), duration="90s")
    assert report.status("deterministic") == "fail"
    assert report.status("probabilities") == "pass"


def test_undocumented_parameter_fails():
    report = check_model(Sloppy, params_cls=SloppyParams, worlds=("null",), duration="90s")
    assert report.status("params") == "fail"
    detail = report.failures[0].detail
    assert "'scale' has no doc" in detail and "'window_ns' looks like a duration" in detail
    assert [c.name for c in report.failures] == ["params"]


def test_a_well_behaved_class_passes_and_failures_are_all_listed():
    assert_conforms(Half, worlds=("null",), duration="90s")
    with pytest.raises(AssertionError) as info:
        assert_conforms(Noisy, params_cls=SloppyParams, worlds=("null",), duration="90s")
    assert "params" in str(info.value) and "deterministic" in str(info.value)


# --- state save/restore --------------------------------------------------------------------------------


class Counting(Half):
    """Predicts from how many target trades it has seen; can save and restore that."""

    def __init__(self, params, context):
        self.n = 0

    def on_trade(self, trade):
        self.n += 1

    def predict(self, query):
        return sigkit.Prediction((self.n % 100) / 100)

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


class ForgetfulCounting(Counting):
    def load_state_dict(self, state):
        pass


def test_state_restore_checked_when_supported():
    assert check_model(Counting, worlds=("null",), duration="90s").status("state") == "pass"
    report = check_model(ForgetfulCounting, worlds=("null",), duration="90s")
    assert report.status("state") == "fail" and [c.name for c in report.failures] == ["state"]


# --- robustness ------------------------------------------------------------------------------------------


class Crashes(Half):
    def on_book_update(self, book):
        if book.bid_px != book.bid_px:
            raise ZeroDivisionError("oops")


class Refuses(Half):
    def on_book_update(self, book):
        if book.bid_px != book.bid_px:
            raise sigkit.ModelError("NaN bid price")


class PassesNaNThrough(Half):
    def __init__(self, params, context):
        self.last = 100.0

    def on_trade(self, trade):
        self.last = trade.size

    def predict(self, query):
        return sigkit.Prediction(min(1.0, max(0.0, self.last / 2)) if self.last == self.last else float("nan"))


def test_bad_inputs_need_a_clean_refusal_or_finite_probabilities():
    assert check_model(Crashes, worlds=("null",), duration="90s").status("nan_input") == "fail"
    assert check_model(Refuses, worlds=("null",), duration="90s").status("nan_input") == "pass"
    assert check_model(PassesNaNThrough, worlds=("null",), duration="90s").status("nan_input") == "fail"


# --- fixtures ----------------------------------------------------------------------------------------------


def test_fixtures_register_simulate_and_run(sigkit_registry, register_model, simulated_stream, run_recipe):
    assert {p.distribution for p in sigkit_registry.plugins} == {"sigkit"} and "flow" in sigkit_registry.models
    registry = register_model(Half, name="half")
    assert "half" in registry.models and "flow" in registry.models
    chunks = simulated_stream("informed", duration="30s", seed=3)
    assert all(c.dtype == sigkit.EVENT_DTYPE for c in chunks) and sum(map(len, chunks)) > 100
    recipe = """\
name: t
seed: 1
data:
  - source: simulate
    world: informed
    duration: 1m
target: {venue: sim, symbol: BTC-PERP}
horizon: 1s
models:
  - id: half
    model: half
  - id: flow
    model: flow
"""
    result, report = run_recipe(recipe, registry=registry)
    assert len(result.predictions["half"]["p"]) == report["data"]["fills"] > 0
    assert set(result.predictions["half"]["p"]) == {0.5}
