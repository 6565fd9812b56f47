"""Testing support for model authors: pytest fixtures and the conformance suite the built-ins pass.

Installed as a pytest plugin (entry point ``sigkit`` of the ``pytest11`` group), so in a plugin's tests::

    from sigkit.testing import assert_conforms

    def test_my_model_conforms():
        assert_conforms(MyModel, params_cls=MyParams)

    def test_my_model_in_a_recipe(register_model, run_recipe):
        registry = register_model(MyModel, name="mine", params=MyParams)
        result, report = run_recipe(RECIPE_TEXT, registry=registry)

Fixtures: ``sigkit_registry``, ``register_model``, ``simulated_stream``, ``run_recipe``.
Functions: :func:`check_model`, :func:`assert_conforms`, :func:`run_recipe`, :func:`simulate_stream`.

The checks of :func:`check_model` (each passes, fails or is skipped, with a reason):

* ``probabilities``: on each world, every ``p_adverse`` and ``confidence`` is finite and in [0, 1].
* ``no_future``: replaying the first half of a world gives the same predictions as the whole world does
  for those fills (a model that reads ahead cannot be prefix invariant).
* ``deterministic``: two runs with the same seed give byte-identical predictions.
* ``empty_input``, ``nan_input``, ``extreme_input``: no events, NaN prices and sizes, and huge, zero or
  crossed values either raise a deliberate :class:`sigkit.SigkitError` (e.g. ``ModelError``) or give
  finite probabilities; any other exception, or a NaN/out-of-range prediction, fails.
* ``params``: every parameter has a doc, durations have a unit, and every parameter has a default
  unless ``params`` supplies it.
* ``batch_equivalence``: if the model has both ``on_batch`` and ``predict``, on each world its batch path
  gives the per-event path's predictions to within 1e-12, also with the events cut into small pieces.
* ``state``: if the model has ``state_dict()`` and ``load_state_dict(state)``, saving mid-run (through the
  checkpoint file's encoding) and restoring into a fresh instance gives identical subsequent predictions;
  otherwise skipped ("not supported").
"""

from __future__ import annotations

import copy
import math
import tempfile
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

import sigkit
from sigkit.context import Market, RunContext
from sigkit.checkpoint import decode_state, encode_state
from sigkit.engine import Labelling, Replay, RunResult
from sigkit.errors import ModelError, SigkitError
from sigkit.events import BOOK, STAT, TRADE, new_rows
from sigkit.params import build_params, declared_fields, describe_params
from sigkit.plugins import ModelSpec, Registry, build_registry
from sigkit.units import parse_duration

try:  # the fixtures need pytest; the checks do not
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

__all__ = [
    "CheckResult", "ConformanceReport", "EQUIVALENCE_TOLERANCE", "MemorySource", "assert_conforms",
    "batch_difference", "check_batch_equivalence", "check_model", "make_registry", "rechunk", "run_recipe",
    "simulate_stream",
]

#: The simulator's target market, whose fills are scored.
TARGET = Market("sim", "BTC-PERP")
_LEADER = Market("simlead", "BTC-PERP")
_START_NS = 1_767_225_600_000_000_000
PASS, FAIL, SKIP = "pass", "fail", "skip"


# --- helpers usable outside pytest -------------------------------------------------------------------


class MemorySource:
    """A data source over chunks held in memory."""

    def __init__(self, chunks: Iterable[np.ndarray]):
        self._chunks = list(chunks)

    def chunks(self):
        return iter(self._chunks)


def _ns(value: str | int) -> int:
    return value if isinstance(value, int) else parse_duration(value)


def simulate_stream(world: str, duration: str | int = "2m", seed: int = 0, horizon: str | int = "1s") -> list[np.ndarray]:
    """The chunks of a simulated world (see :func:`sigkit.sim.simulate`), as a list."""
    from sigkit.sim import simulate

    return list(simulate(world, seed=seed, duration_ns=_ns(duration), horizon_ns=_ns(horizon)))


def make_registry(model_cls: Callable | ModelSpec, *, name: str | None = None, params: type | None = None,
                  description: str = "") -> Registry:
    """A registry with the installed plugins (built-ins included) and one more model, registered through a
    throwaway plugin module exactly as a third-party plugin would."""
    if isinstance(model_cls, ModelSpec):
        spec = model_cls
    else:
        spec = ModelSpec(name or getattr(model_cls, "__name__", "model"), model_cls, params=params,
                         description=description)
    module = types.ModuleType(f"sigkit_testing_{spec.name}")

    @sigkit.hookimpl
    def register_models(register):
        register(spec)

    module.register_models = register_models
    return build_registry(plugins=[module])


def run_recipe(text_or_path: str | Path, tmp_path: str | Path | None = None,
               registry: Registry | None = None) -> tuple[RunResult, dict]:
    """Load a recipe (YAML text, or a path to one), replay it and build its report: ``(result, report)``.

    Text is written to ``tmp_path/recipe.yaml`` (a new temporary folder if none is given).
    """
    from sigkit.engine import replay_from_recipe
    from sigkit.recipe import load_recipe
    from sigkit.report import build_report, plugins_used

    if isinstance(text_or_path, Path) or ("\n" not in text_or_path and Path(text_or_path).is_file()):
        path = Path(text_or_path)
    else:
        folder = Path(tmp_path) if tmp_path is not None else Path(tempfile.mkdtemp(prefix="sigkit-test-"))
        path = folder / "recipe.yaml"
        path.write_text(text_or_path, encoding="utf-8")
    recipe = load_recipe(path, registry if registry is not None else build_registry())
    replay = replay_from_recipe(recipe)
    result = replay.run()
    report = build_report(result, recipe, sources=replay.describe_sources(), plugins=plugins_used(recipe),
                          version=sigkit.__version__, n_boot=200)
    return result, report


# --- the conformance suite ---------------------------------------------------------------------------


@attrs.frozen
class CheckResult:
    name: str
    status: str  # "pass", "fail" or "skip"
    detail: str = ""


@attrs.define
class ConformanceReport:
    """What :func:`check_model` found, one :class:`CheckResult` per check (and world, where it applies)."""

    model: str
    checks: list[CheckResult] = attrs.Factory(list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == FAIL]

    def status(self, name: str) -> str:
        """``fail`` if any check of that name (any world) failed, else ``skip`` if skipped, else ``pass``."""
        found = [c.status for c in self.checks if c.name == name]
        if not found:
            raise KeyError(name)
        return FAIL if FAIL in found else SKIP if SKIP in found else PASS

    def __str__(self) -> str:
        lines = [f"conformance of model {self.model!r}:"]
        for c in self.checks:
            lines.append(f"  {c.status.upper():4}  {c.name}" + (f": {c.detail}" if c.detail else ""))
        return "\n".join(lines)


class _Setup:
    """How to build fresh instances of the model under test."""

    def __init__(self, spec: ModelSpec, params: Any, seed: int, horizon_ns: int):
        self.spec, self.params, self.seed, self.horizon_ns = spec, params, seed, horizon_ns

    def build(self):
        context = RunContext(target=TARGET, horizon_ns=self.horizon_ns, seed=self.seed, instance_id=self.spec.name)
        return self.spec.factory(self.params, context)

    def run(self, chunks: Sequence[np.ndarray], model: Any = None, path: str = "batch") -> dict[str, np.ndarray]:
        source = MemorySource(chunks)  # built before the model
        model = self.build() if model is None else model
        replay = Replay(sources=[("memory", source)], models=[(self.spec.name, model)], target=TARGET,
                        labelling=Labelling(self.horizon_ns), path=path)
        return replay.run().predictions[self.spec.name]


def _as_spec(spec_or_class: Any, params_cls: type | None) -> ModelSpec:
    if isinstance(spec_or_class, ModelSpec):
        return spec_or_class
    if isinstance(spec_or_class, str):
        return build_registry().lookup("model", spec_or_class)
    return ModelSpec(getattr(spec_or_class, "__name__", "model"), spec_or_class, params=params_cls)


def _check_params(spec: ModelSpec, given: Any) -> tuple[list[CheckResult], Any]:
    """The ``params`` check, and the parameter instance to run with (None if it cannot be built)."""
    cls = spec.params
    if cls is None:
        return [CheckResult("params", PASS, "takes no parameters")], None
    problems = []
    try:
        fields = {f.name: f for f in declared_fields(cls)}
        described = {d["name"]: d for d in describe_params(cls)}
    except Exception as err:
        return [CheckResult("params", FAIL, f"{cls.__name__} is not a declared parameter class "
                                             f"(attrs fields made with sigkit.param/sigkit.duration): {err}")], None
    supplied = set(given) if isinstance(given, Mapping) else set()
    for field, d in zip(fields.values(), described.values()):
        key = d["name"]
        if not str(field.metadata.get("doc") or "").strip():
            problems.append(f"{key!r} has no doc (declare it with sigkit.param(..., doc=...))")
        is_duration = field.metadata.get("sigkit_kind") == "duration"
        if (is_duration or field.name.endswith("_ns")) and not (is_duration and d["unit"]):
            problems.append(f"{key!r} looks like a duration but has no unit (declare it with sigkit.duration)")
        if d["required"] and key not in supplied and not (given is not None and not isinstance(given, Mapping)):
            problems.append(f"{key!r} has no default")
    if given is None or isinstance(given, Mapping):
        try:
            instance = build_params(cls, dict(given or {}), owner=f"model {spec.name!r}")
        except Exception as err:
            problems.append(f"cannot build parameters: {err}")
            instance = None
    else:
        instance = given
    check = CheckResult("params", FAIL, "; ".join(problems)) if problems else CheckResult("params", PASS)
    return [check], instance


def _refusal(err: BaseException) -> str | None:
    """None if ``err`` is a deliberate refusal (a SigkitError the model raised), else what went wrong."""
    if isinstance(err, ModelError) and isinstance(err.__cause__, SigkitError):
        return None
    if isinstance(err, ModelError) and err.__cause__ is None:
        return f"invalid prediction: {err}"
    if isinstance(err, SigkitError) and not isinstance(err, ModelError) and err.__cause__ is None:
        return None
    return f"crashed instead of raising sigkit.ModelError: {err}"


def _bad_values(preds: dict[str, np.ndarray]) -> str | None:
    p, c = preds["p"], preds["confidence"]
    for label, values in (("p_adverse", p), ("confidence", c)):
        bad = ~(np.isfinite(values) & (values >= 0.0) & (values <= 1.0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            return f"{label}={values[i]!r} at fill {i} (must be finite, in [0, 1])"
    return None


def _robustness_chunks() -> dict[str, list[np.ndarray]]:
    """Hand-made inputs: NaN and extreme values on the target, the sim's leader and a stat feed."""
    n = 200
    ts = _START_NS + np.arange(n, dtype=np.int64) * 100_000_000  # every 100ms for 20s
    rng = np.random.default_rng(0)

    def stream(kind: str) -> list[np.ndarray]:
        parts = []
        for market, offset in ((TARGET, 0), (_LEADER, 1)):
            books = new_rows(BOOK, market.venue, market.symbol, ts + offset)
            mid = 100.0 + np.cumsum(rng.normal(0, 0.05, n))
            books["bid_px"], books["ask_px"] = mid - 0.01, mid + 0.01
            books["bid_sz"], books["ask_sz"] = 1.0, 1.0
            trades = new_rows(TRADE, market.venue, market.symbol, ts + offset + 50_000_000)
            trades["side"] = np.where(rng.random(n) < 0.5, 1, -1)
            trades["price"] = np.where(trades["side"] > 0, mid + 0.01, mid - 0.01)
            trades["size"] = 1.0
            odd = np.arange(n) % 3 == 1
            if kind == "nan":
                books["bid_px"][odd] = np.nan
                books["ask_sz"][odd] = np.nan
                books["ask_px"][np.arange(n) % 5 == 2] = np.nan
                books["bid_sz"][np.arange(n) % 7 == 3] = np.nan
                trades["size"][odd] = np.nan
            else:
                books["bid_px"][odd] *= 1e12
                books["ask_px"][odd] *= 1e12
                books["bid_sz"][odd] = 1e15
                books["ask_sz"][np.arange(n) % 4 == 1] = 0.0
                crossed = np.arange(n) % 5 == 2  # bid above ask
                books["bid_px"][crossed], books["ask_px"][crossed] = mid[crossed] + 1.0, mid[crossed] - 1.0
                trades["price"][odd] *= 1e12
                trades["size"][np.arange(n) % 4 == 2] = 1e15
                trades["size"][np.arange(n) % 4 == 3] = 0.0
            parts += [books, trades]
        stats = new_rows(STAT, TARGET.venue, TARGET.symbol, ts[::10] + 2)
        stats["open_interest"] = np.nan if kind == "nan" else 1e15
        stats["funding_rate"] = np.nan if kind == "nan" else 10.0
        stats["side"] = -1
        stats["price"] = np.nan if kind == "nan" else 1e12
        stats["size"] = np.nan if kind == "nan" else 1e15
        chunk = np.concatenate(parts + [stats])
        return [chunk[np.argsort(chunk["ts_ns"], kind="stable")]]

    return {"nan_input": stream("nan"), "extreme_input": stream("extreme")}


class _Swapper:
    """Forwards every hook to a model; at the first fill at or after ``switch_ns`` it saves the model's
    state and continues with a fresh instance restored from it."""

    def __init__(self, setup: _Setup, switch_ns: int):
        self.setup, self.switch_ns = setup, switch_ns
        self.inner = setup.build()
        self.switched = False

    def _call(self, hook, arg):
        method = getattr(self.inner, hook, None)
        if method is not None:
            method(arg)

    def on_trade(self, trade):
        self._call("on_trade", trade)

    def on_book_update(self, book):
        self._call("on_book_update", book)

    def on_market_stat(self, stat):
        self._call("on_market_stat", stat)

    def record_outcome(self, outcome):
        self._call("record_outcome", outcome)

    def predict(self, query):
        if not self.switched and query.ts_ns >= self.switch_ns:
            # Through the checkpoint file's encoding, so a state that cannot be saved fails here.
            state = decode_state(encode_state(copy.deepcopy(self.inner.state_dict())))
            fresh = self.setup.build()
            fresh.load_state_dict(state)
            self.inner, self.switched = fresh, True
        return self.inner.predict(query)


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], n: int | None = None) -> str | None:
    for key in ("p", "confidence", "cost_bps"):
        x, y = a[key], b[key]
        if n is not None:
            x, y = x[:n], y[:n]
        if len(x) != len(y):
            return f"{len(x)} vs {len(y)} predictions"
        if x.tobytes() != y.tobytes():
            i = int(np.flatnonzero(~((x == y) | (np.isnan(x) & np.isnan(y))))[0]) if len(x) else 0
            return f"{key} differs first at fill {i}: {x[i]!r} vs {y[i]!r}"
    return None


#: How far the batch path's predictions may be from the per-event path's.
EQUIVALENCE_TOLERANCE = 1e-12


def batch_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, str | None]:
    """The largest absolute difference between two sets of predictions (``p``, ``confidence``,
    ``cost_bps``), and what differs in kind (lengths, or NaN in one but not the other), if anything."""
    worst = 0.0
    for key in ("p", "confidence", "cost_bps"):
        x, y = np.asarray(a[key], dtype=float), np.asarray(b[key], dtype=float)
        if len(x) != len(y):
            return math.inf, f"{len(x)} vs {len(y)} predictions"
        nan_x, nan_y = np.isnan(x), np.isnan(y)
        if not np.array_equal(nan_x, nan_y):
            i = int(np.flatnonzero(nan_x != nan_y)[0])
            return math.inf, f"{key} at fill {i}: {x[i]!r} vs {y[i]!r}"
        if len(x) and not nan_x.all():
            worst = max(worst, float(np.max(np.abs(x[~nan_x] - y[~nan_x]))))
    return worst, None


def rechunk(chunks: Sequence[np.ndarray], rows: int) -> list[np.ndarray]:
    """The same events cut into chunks of about ``rows`` rows, never splitting a group of equal timestamp."""
    if not chunks:
        return []
    every = np.concatenate(list(chunks))
    out, start = [], 0
    ts = every["ts_ns"]
    while start < len(every):
        end = min(start + rows, len(every))
        end = int(np.searchsorted(ts, ts[end - 1], side="right"))
        out.append(every[start:end])
        start = end
    return out


def check_batch_equivalence(run: Callable[[Sequence[np.ndarray], str], dict[str, np.ndarray]],
                            chunks: Sequence[np.ndarray], *, tolerance: float = EQUIVALENCE_TOLERANCE,
                            small_chunk_rows: int = 97) -> str | None:
    """None if ``run(chunks, path)`` gives the same predictions on the ``"batch"`` path as on the
    ``"per-event"`` path (to ``tolerance``), also with the events cut into small pieces; else what differs."""
    reference = run(chunks, "per-event")
    for label, stream in (("", chunks), (f" in {small_chunk_rows}-row pieces", rechunk(chunks, small_chunk_rows))):
        worst, kind = batch_difference(reference, run(stream, "batch"))
        if kind:
            return f"batch path{label}: {kind}"
        if worst > tolerance:
            return f"batch path{label}: differs from the per-event path by {worst:.3g} (> {tolerance:g})"
    return None


def check_model(spec_or_class: Any, *, params: Any = None, params_cls: type | None = None,
                worlds: Sequence[str] = ("informed", "null"), duration: str | int = "2m", seed: int = 0,
                horizon: str | int = "1s") -> ConformanceReport:
    """Run the conformance checks on a model and report each one.

    ``spec_or_class`` is a :class:`sigkit.ModelSpec`, a registered model name, or a model class (whose
    parameter class, if any, is ``params_cls``).  ``params`` is a mapping of recipe values or a parameter
    instance; by default the declared defaults are used.
    """
    spec = _as_spec(spec_or_class, params_cls)
    report = ConformanceReport(spec.name)
    add = report.checks.append
    checks, instance = _check_params(spec, params)
    report.checks += checks
    if spec.params is not None and instance is None:
        add(CheckResult("run", FAIL, "cannot build the model's parameters; no other check ran"))
        return report
    horizon_ns, duration_ns = _ns(horizon), _ns(duration)
    setup = _Setup(spec, instance, seed, horizon_ns)
    state_supported = all(callable(getattr(setup.build(), m, None)) for m in ("state_dict", "load_state_dict"))
    has_both = all(callable(getattr(setup.build(), m, None)) for m in ("on_batch", "predict"))

    for world in worlds:
        full = simulate_stream(world, duration_ns, seed, horizon_ns)
        try:
            first = setup.run(full)
        except Exception as err:
            add(CheckResult("probabilities", FAIL, f"{world}: {err}"))
            continue
        n_fills = len(first["p"])
        bad = _bad_values(first)
        add(CheckResult("probabilities", FAIL if bad else PASS, f"{world}: " + (bad or f"{n_fills} fills")))
        if n_fills == 0:
            add(CheckResult("probabilities", FAIL, f"{world}: no fills were predicted"))
        # Determinism.
        try:
            diff = _same(first, setup.run(full))
        except Exception as err:
            diff = f"second run failed: {err}"
        add(CheckResult("deterministic", FAIL if diff else PASS, f"{world}: " + (diff or "identical bytes")))
        # No future: the first half replayed alone predicts the same as within the whole.
        try:
            half = setup.run(simulate_stream(world, duration_ns // 2, seed, horizon_ns))
            diff = _same(half, first, n=len(half["p"]))
            if diff is None and not len(half["p"]):
                diff = "no fills in the first half"
        except Exception as err:
            diff = f"the first-half run failed: {err}"
        add(CheckResult("no_future", FAIL if diff else PASS,
                        f"{world}: " + (f"predictions depend on later events: {diff}" if diff else
                                        f"{len(half['p'])} fills prefix invariant")))
        # The batch path (on_batch) gives the per-event path's predictions.
        if has_both:
            try:
                diff = check_batch_equivalence(lambda chunks, path: setup.run(chunks, path=path), full)
            except Exception as err:
                diff = f"failed: {type(err).__name__}: {err}"
            add(CheckResult("batch_equivalence", FAIL if diff else PASS,
                            f"{world}: " + (diff or f"{n_fills} fills equal to {EQUIVALENCE_TOLERANCE:g}")))
        # State save/restore.
        if not state_supported:
            continue
        try:
            switch_ns = _START_NS + duration_ns // 2
            diff = _same(first, setup.run(full, model=_Swapper(setup, switch_ns)))
        except Exception as err:
            diff = f"save/restore failed: {type(err).__name__}: {err}"
        add(CheckResult("state", FAIL if diff else PASS, f"{world}: " + (diff or "restored state predicts identically")))
    if not state_supported:
        add(CheckResult("state", SKIP, "not supported (no state_dict()/load_state_dict())"))
    if not has_both:
        add(CheckResult("batch_equivalence", SKIP, "the model does not have both on_batch() and predict()"))

    # Empty input: nothing at all, then a fill with nothing before it.
    cold = new_rows(TRADE, TARGET.venue, TARGET.symbol, np.array([_START_NS], dtype=np.int64))
    cold["side"], cold["price"], cold["size"] = 1, 100.0, 1.0
    problems = []
    for label, chunks in (("no events", []), ("a fill before any other event", [cold])):
        try:
            preds = setup.run(chunks)
            bad = _bad_values(preds)
            if bad:
                problems.append(f"{label}: {bad}")
        except Exception as err:
            why = _refusal(err)
            if why:
                problems.append(f"{label}: {why}")
    add(CheckResult("empty_input", FAIL if problems else PASS, "; ".join(problems)))

    for name, chunks in _robustness_chunks().items():
        try:
            preds = setup.run(chunks)
            bad = _bad_values(preds)
            add(CheckResult(name, FAIL if bad else PASS, bad or f"{len(preds['p'])} finite predictions"))
        except Exception as err:
            why = _refusal(err)
            add(CheckResult(name, FAIL if why else PASS, why or f"refused cleanly: {err}"))
    return report


def assert_conforms(spec_or_class: Any, **kwargs) -> ConformanceReport:
    """:func:`check_model`, raising ``AssertionError`` listing every failed check."""
    report = check_model(spec_or_class, **kwargs)
    if not report.ok:
        failed = "\n".join(f"  {c.name}: {c.detail}" for c in report.failures)
        raise AssertionError(f"model {report.model!r} failed {len(report.failures)} conformance check(s):\n{failed}")
    return report


# --- pytest fixtures ---------------------------------------------------------------------------------

if pytest is not None:

    @pytest.fixture
    def sigkit_registry() -> Registry:
        """A fresh registry with sigkit's built-ins and no third-party plugins."""
        return build_registry(builtins_only=True)

    @pytest.fixture
    def register_model() -> Callable[..., Registry]:
        """``register_model(ModelClass, name=..., params=ParamsClass)``: the installed plugins plus that model."""
        return make_registry

    @pytest.fixture
    def simulated_stream() -> Callable[..., list[np.ndarray]]:
        """``simulated_stream(world, duration="2m", seed=0, horizon="1s")``: the chunks of a simulated world."""
        return simulate_stream

    @pytest.fixture(name="run_recipe")
    def run_recipe_fixture(tmp_path) -> Callable[..., tuple[RunResult, dict]]:
        """``run_recipe(text_or_path, registry=None) -> (result, report)``, writing text under ``tmp_path``."""

        def run(text_or_path, tmp_path=tmp_path, registry=None):
            return run_recipe(text_or_path, tmp_path=tmp_path, registry=registry)

        return run
