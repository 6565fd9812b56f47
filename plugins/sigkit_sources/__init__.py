"""Built-in data sources: the seeded market simulator and sigkit's native event files."""

from __future__ import annotations

from pathlib import Path

import attrs

import sigkit



@attrs.frozen
class SimulateParams:
    world: str = sigkit.param("informed", doc="which world: null, informed, leadlag, oi or mixed",
                              choices=("null", "informed", "leadlag", "oi", "mixed"))
    duration_ns: int = sigkit.duration("10m", doc="simulated time span")
    seed: int | None = sigkit.param(None, doc="simulator seed; unset: the recipe's seed")


class Simulate:
    """A seeded simulated market with known ground truth (see ``sigkit simulate --help``).

    The true adverse probability of every fill is computed for the recipe's own horizon and threshold, so
    the report can show the oracle Brier and each model's recovered share of the achievable edge.
    """

    def __init__(self, params: SimulateParams, context: sigkit.RunContext):
        self.params = params
        self.context = context
        self.seed = context.seed if params.seed is None else params.seed

    def chunks(self):
        return sigkit.sim.simulate(self.params.world, seed=self.seed, duration_ns=self.params.duration_ns,
                                   horizon_ns=self.context.horizon_ns, threshold_bps=self.context.threshold_bps)

    def span_ns(self):
        start = sigkit.sim.DEFAULT_START_NS
        return start, start + self.params.duration_ns

    def describe(self):
        return {"source": "simulate", "world": self.params.world, "seed": self.seed,
                "duration": sigkit.format_duration(self.params.duration_ns)}


@attrs.frozen
class NativeParams:
    path: str = sigkit.path(doc="a sigkit native event file (.csv or .csv.gz), e.g. from `sigkit simulate`")


class Native:
    """Reads sigkit's native event CSV (docs/formats.md).

    A file written by ``sigkit simulate`` records the horizon and threshold its true probabilities were
    computed for; if the recipe labels differently, the truth column is dropped (and the report says so).
    """

    def __init__(self, params: NativeParams, context: sigkit.RunContext):
        self.path = context.resolve(params.path)
        self.context = context
        meta = sigkit.native.read_metadata(self.path)
        self.note = None
        self.keep_truth = True
        if "truth_horizon" in meta:
            same = (sigkit.parse_duration(meta["truth_horizon"]) == context.horizon_ns
                    and float(meta.get("truth_threshold_bps", "nan")) == context.threshold_bps)
            if not same:
                self.keep_truth = False
                self.note = (f"true probabilities in the file are for horizon {meta['truth_horizon']} and threshold "
                             f"{meta.get('truth_threshold_bps')} bps, not this recipe's; they are ignored")

    def chunks(self):
        for chunk in sigkit.native.read_native(self.path):
            if not self.keep_truth:
                chunk["truth"] = float("nan")
            yield chunk

    def describe(self):
        out = {"source": "native", "path": str(Path(self.path))}
        if self.note:
            out["note"] = self.note
        return out


@sigkit.hookimpl
def register_sources(register):
    register(sigkit.SourceSpec("simulate", Simulate, params=SimulateParams,
                               description="seeded simulated market with known ground truth"))
    register(sigkit.SourceSpec("native", Native, params=NativeParams,
                               description="sigkit native event CSV (.csv or .csv.gz)"))
