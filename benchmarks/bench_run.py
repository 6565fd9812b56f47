"""How fast is `sigkit run`?  Replays a simulated market through models and prints figures.

    python benchmarks/bench_run.py                  # a simulated hour, informed world, baseline models
    python benchmarks/bench_run.py --duration 10m --world mixed
    python benchmarks/bench_run.py --recipe recipes/quickstart.yaml --duration 1h   # any recipe

Prints events/second for generation alone, for the replay (engine + models + ensemble), and for scoring,
plus peak resident memory.  A figure to read, not a test: these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import re
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
    parser.add_argument("--recipe", type=Path, default=None,
                        help="a recipe with one simulate source; --duration replaces its duration")
    args = parser.parse_args()

    from sigkit import sim
    from sigkit.engine import replay_from_recipe
    from sigkit.plugins import build_registry
    from sigkit.recipe import load_recipe
    from sigkit.report import build_report

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        if args.recipe:
            text = re.sub(r"(?m)^(\s+duration:).*$", rf"\1 {args.duration}", args.recipe.read_text())
        else:
            text = RECIPE.format(world=args.world, duration=args.duration)
        path.write_text(text)
        recipe = load_recipe(path, build_registry())
        source = recipe.sources[0].params
        started = time.perf_counter()
        events = sum(len(c) for c in sim.simulate(source.world, seed=recipe.seed if source.seed is None else source.seed,
                                                  duration_ns=source.duration_ns, horizon_ns=recipe.horizon_ns))
        generate_s = time.perf_counter() - started
        replay = replay_from_recipe(recipe)
        started = time.perf_counter()
        result = replay.run()
        run_s = time.perf_counter() - started
        started = time.perf_counter()
        build_report(result, recipe, sources=replay.describe_sources(), plugins=[], version="bench")
        score_s = time.perf_counter() - started

    fills = len(result.fills["ts_ns"])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    models = ", ".join(m.id for m in recipe.models) + (f" + {recipe.ensemble.spec.name}" if recipe.ensemble else "")
    print(f"{recipe.name}: world {source.world}, {args.duration}: {events:,} events, {fills:,} fills")
    print(f"  models                    {models}")
    print(f"  simulate only             {events / generate_s:>9,.0f} events/s  ({generate_s:.2f} s)")
    print(f"  replay, simulate included {events / run_s:>9,.0f} events/s  ({run_s:.2f} s, "
          f"{run_s / events * 1e6:.1f} us/event)")
    print(f"  scoring + report          {score_s:>9.2f} s")
    print(f"  peak resident memory      {peak_mb:>9.0f} MB")


if __name__ == "__main__":
    main()
