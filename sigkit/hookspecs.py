"""The contract between sigkit and its plugins: the registration hooks and the hooks of a model instance.

Two kinds of hooks live here.

*Registration hooks* (``register_models``, ``register_sources``, ``register_combiners``) are module-level
pluggy hooks.  A plugin distribution points its ``sigkit`` entry point at a module implementing them::

    # pyproject.toml:  [project.entry-points.sigkit]  my_models = "my_models"
    import sigkit

    @sigkit.hookimpl
    def register_models(register):
        register(sigkit.ModelSpec("my_model", MyModel, params=MyParams, description="..."))

*Instance hooks* are plain methods of the objects those specs build (see :class:`ModelHooks`,
:class:`CombinerHooks`, :class:`SourceHooks`).  A model implements only the ones it needs.  When a run is
built, sigkit checks each instance's methods against these specs once (a misspelled ``on_trades`` or a
wrongly named argument is refused) and then calls the bound methods directly for every event, because a
pluggy call costs about ten times a plain method call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pluggy

if TYPE_CHECKING:
    from sigkit.batch import Batch, BatchPredictions
    from sigkit.events import BookUpdate, FillQuery, MarketStat, Outcome, Prediction, Trade

PROJECT = "sigkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# Instance hooks use their own pluggy project so they cannot be confused with registration hooks.
INSTANCE_PROJECT = "sigkit_instance"
instance_hookspec = pluggy.HookspecMarker(INSTANCE_PROJECT)


# --- registration hooks -------------------------------------------------------------------------


@hookspec
def register_models(register: Callable) -> None:
    """Register model classes: call ``register(ModelSpec(...))`` once per model.

    Called once when the plugin manager is built.  ``ModelSpec.factory`` is called as
    ``factory(params, context)`` with the validated parameters (an instance of ``ModelSpec.params``) and a
    :class:`sigkit.RunContext`; the object it returns implements :class:`ModelHooks`.

    Example::

        @sigkit.hookimpl
        def register_models(register):
            register(sigkit.ModelSpec("base_rate", BaseRate, params=BaseRateParams))
    """


@hookspec
def register_sources(register: Callable) -> None:
    """Register data sources: call ``register(SourceSpec(...))`` once per source.

    ``SourceSpec.factory(params, context)`` returns an object implementing :class:`SourceHooks`.  A recipe
    names it in its ``data`` section (``- source: simulate``).

    Example::

        @sigkit.hookimpl
        def register_sources(register):
            register(sigkit.SourceSpec("native", NativeSource, params=NativeParams))
    """


@hookspec
def register_combiners(register: Callable) -> None:
    """Register ensemble combiners: call ``register(CombinerSpec(...))`` once per combiner.

    ``CombinerSpec.factory(params, context)`` returns an object implementing :class:`CombinerHooks`.
    A recipe names it as ``ensemble: {combiner: hedge}``.

    Example::

        @sigkit.hookimpl
        def register_combiners(register):
            register(sigkit.CombinerSpec("mean", MeanCombiner))
    """


# --- instance hooks ------------------------------------------------------------------------------


class ModelHooks:
    """The methods a model instance may implement.  ``predict`` is required (or, for a batch-only model,
    ``on_batch``).

    Every market event of every source reaches the model in event-time order, whatever its venue or
    symbol; the model filters what it needs (``context.target`` names the market whose fills are scored).
    """

    @instance_hookspec
    def on_trade(self, trade: Trade) -> None:
        """A public trade happened (any venue or symbol).

        At a fill, ``predict`` is called *before* the trade that caused it is delivered here, and before
        any other event with the same timestamp.
        """

    @instance_hookspec
    def on_book_update(self, book: BookUpdate) -> None:
        """The top of a book (and optionally its depth) changed."""

    @instance_hookspec
    def on_market_stat(self, stat: MarketStat) -> None:
        """Open interest, funding, mark price or a liquidation was published."""

    @instance_hookspec(firstresult=True)
    def predict(self, query: FillQuery) -> Prediction:
        """One of our quotes was filled: return a :class:`sigkit.Prediction` for it.

        The model has seen every event with a timestamp strictly before ``query.ts_ns`` and nothing else.
        Example::

            def predict(self, query):
                return sigkit.Prediction(p_adverse=0.5, confidence=0.0)
        """

    @instance_hookspec
    def record_outcome(self, outcome: Outcome) -> None:
        """A fill's outcome is known: its horizon has passed in event time.

        Called for *every* fill the model was asked about (a confidence filter only changes what is
        scored), before any event later than ``outcome.fill.ts_ns + outcome.horizon_ns`` is delivered.
        """


    @instance_hookspec(firstresult=True)
    def on_batch(self, batch: Batch) -> BatchPredictions:
        """The batch path: handle one piece of the replay at once and predict its fills.

        ``batch`` (:class:`sigkit.Batch`) holds the piece's events, fill queries and delivered outcomes in
        columns, with the schedule (``batch.op``/``batch.ref``) of the per-event calls they stand for, in
        event-time order.  Return a :class:`sigkit.BatchPredictions` with one ``p``, ``confidence`` and
        ``cost_bps`` per query.  When a model has this hook the engine calls it *instead of* every
        per-event hook above (unless the run asks for the per-event path), so the two paths must give the
        same predictions: the conformance suite checks it (docs/fast.md).
        """

    @instance_hookspec(firstresult=True)
    def describe(self) -> dict:
        """A JSON-ready summary of what the model has learned (weights, an estimated lag, ...).

        Called once at the end of a run; the report records it under ``models.<id>.state``.
        """


class CombinerHooks:
    """The methods of an ensemble combiner instance.  ``combine`` is required (or, batch-only, ``on_batch``).

    A combiner may also follow the market, e.g. to weight members by regime: it receives every event
    through the same ``on_trade``, ``on_book_update`` and ``on_market_stat`` as a model, after the models.
    """

    @instance_hookspec
    def on_trade(self, trade: Trade) -> None:
        """A public trade happened (as for a model)."""

    @instance_hookspec
    def on_book_update(self, book: BookUpdate) -> None:
        """The top of a book changed (as for a model)."""

    @instance_hookspec
    def on_market_stat(self, stat: MarketStat) -> None:
        """A market statistic was published (as for a model)."""

    @instance_hookspec(firstresult=True)
    def combine(self, query: FillQuery, predictions: Sequence[Prediction]) -> Prediction:
        """Pool the member predictions (in the recipe's member order) for one fill."""

    @instance_hookspec
    def record_outcome(self, outcome: Outcome, predictions: Sequence[Prediction]) -> None:
        """A fill's outcome, with the member predictions that were issued for that fill."""

    @instance_hookspec(firstresult=True)
    def on_batch(self, batch: Batch, members: BatchPredictions) -> BatchPredictions:
        """The batch path of a combiner: ``members`` holds the member predictions for the batch's queries
        (arrays of shape ``(n_members, n_queries)``, recipe order); return the pooled ones.  Called instead
        of every per-event hook above, after all models have handled the batch."""

    @instance_hookspec(firstresult=True)
    def describe(self) -> dict:
        """A JSON-ready summary of the combiner's state (e.g. member weights), recorded in the report."""


class SourceHooks:
    """The methods of a data source instance.  ``chunks`` is required."""

    @instance_hookspec(firstresult=True)
    def chunks(self) -> Iterator[np.ndarray]:
        """Yield chunks of :data:`sigkit.EVENT_DTYPE`, each sorted by ``ts_ns``, in time order.

        Memory must not grow with the length of the data: read and yield as you go.
        """

    @instance_hookspec(firstresult=True)
    def span_ns(self) -> tuple[int, int] | None:
        """The (first, last) event time if known cheaply in advance (drives the progress bar)."""

    @instance_hookspec(firstresult=True)
    def describe(self) -> dict:
        """A JSON-ready description of where the data came from, recorded in the report."""

    @instance_hookspec(firstresult=True)
    def live_connections(self) -> list:
        """Optional: the connections ``sigkit run --live`` opens for this data entry.  A source without
        this hook has no live mode.

        sigkit builds the source from the data entry only to ask this (an unset ``path`` is replaced by a
        placeholder, never opened) and expects a list of :class:`sigkit.live.LiveConnectionPlan`, one per
        recording file: ``LiveConnectionPlan(connection, name, params, part="")``.

        - ``connection`` is an instance of a :class:`sigkit.live.Connection` subclass: ``url()`` says where
          to connect and ``session(ws, emit, emit_at)`` subscribes, then hands every message to ``emit``
          (which stamps it with the local receive time, records it and queues it for the engine).  sigkit
          reconnects with backoff, counts, and names the connection after its recording.
        - ``name`` is the recording's base name (``<name>.gz``, e.g. ``binance-usdm_BTCUSDT``).
        - ``params`` are this source's params that read that recording: sigkit builds one reader per
          connection with them (``path`` set to the recording) and feeds it the recorded lines through its
          ``parse(lines)`` method, so the recording replays to the same rows.  ``parse`` takes
          ``(lineno, line)`` items, or ``None`` for "nothing more for now: yield what you hold".
        - ``part`` tells apart the connections of one data entry (replay label ``<label>:<part>``).

        Raise :class:`sigkit.RecipeError` for an entry that cannot run live (sigkit adds where it is).
        Example::

            def live_connections(self):
                from my_source.live import MyConnection  # a sigkit.live.Connection subclass

                name = f"myvenue_{self.params.symbol}"
                return [sigkit.live.LiveConnectionPlan(MyConnection(name, self.params.ws_url), name, self.params)]
        """


INSTANCE_SPECS = {"model": ModelHooks, "combiner": CombinerHooks, "source": SourceHooks}
# Each entry: hooks one of which an instance must implement (a model may be batch-only).
REQUIRED_HOOKS = {"model": (("predict", "on_batch"),), "combiner": (("combine", "on_batch"),),
                  "source": (("chunks",),)}
