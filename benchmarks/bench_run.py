"""How fast is `sigkit run`?  Replays a simulated market through the baseline models and prints figures.

    python benchmarks/bench_run.py                  # a simulated hour, informed world
    python benchmarks/bench_run.py --duration 10m --world mixed

Prints events/second for generation alone, for the replay (engine + models + ensemble), and for scoring,
plus peak resident memory.  A figure to read, not a test: these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

RECIPE = """\
name: bench
seed: 1
data:
  - source: simulate
    world: {world}
    duration: {duration}
target: {{venue: sim, symbol: BTC-PERP}}
horizon: 1s
models:
  - id: base_rate
    model: base_rate
  - id: flow
    model: flow
ensemble:
  combiner: stacking
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", default="1h")
    parser.add_argument("--world", default="informed")
    args = parser.parse_args()

    from sigkit import sim
    from sigkit.engine import replay_from_recipe
    from sigkit.plugins import build_registry
    from sigkit.recipe import load_recipe
    from sigkit.report import build_report
    from sigkit.units import parse_duration

    started = time.perf_counter()
    events = sum(len(c) for c in sim.simulate(args.world, seed=1, duration_ns=parse_duration(args.duration)))
    generate_s = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(RECIPE.format(world=args.world, duration=args.duration))
        recipe = load_recipe(path, build_registry())
        replay = replay_from_recipe(recipe)
        started = time.perf_counter()
        result = replay.run()
        run_s = time.perf_counter() - started
        started = time.perf_counter()
        build_report(result, recipe, sources=replay.describe_sources(), plugins=[], version="bench")
        score_s = time.perf_counter() - started

    fills = len(result.fills["ts_ns"])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"world {args.world}, {args.duration}: {events:,} events, {fills:,} fills")
    print(f"  simulate only          {events / generate_s:>12,.0f} events/s  ({generate_s:.2f} s)")
    print(f"  replay (2 models + stacking, simulate included)"
          f" {events / run_s:>10,.0f} events/s  ({run_s:.2f} s, {run_s / events * 1e6:.2f} us/event)")
    print(f"  scoring + report       {score_s:>12.2f} s")
    print(f"  peak resident memory   {peak_mb:>12.0f} MB")


if __name__ == "__main__":
    main()
