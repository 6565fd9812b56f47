"""What does an A/B cost?  Times one recipe run against an A/B whose two arms share most models.

    python benchmarks/bench_ab.py                   # a simulated hour of the mixed world
    python benchmarks/bench_ab.py --duration 10m

The single run is the quickstart's incumbent arm alone (enhanced_as + prefill_toxicity, stacked); the A/B
adds a candidate arm that stacks the same two models with cross_asset and onchain_oi, in the same pass.
Prints wall time for each and their ratio.  A figure to read, not a test.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _timed(text: str, tmp: Path, name: str) -> tuple[float, int]:
    from sigkit.engine import replay_from_recipe
    from sigkit.plugins import build_registry
    from sigkit.recipe import load_recipe
    from sigkit.report import build_report

    path = tmp / f"{name}.yaml"
    path.write_text(text)
    recipe = load_recipe(path, build_registry())
    started = time.perf_counter()
    replay = replay_from_recipe(recipe)
    result = replay.run()
    build_report(result, recipe, sources=[], plugins=[], version="bench")
    return time.perf_counter() - started, sum(result.events.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", default="1h")
    args = parser.parse_args()
    ab = re.sub(r"(?m)^(\s+duration:).*$", rf"\1 {args.duration}", (ROOT / "recipes/ab_quickstart.yaml").read_text())
    head, _, _ = ab.partition("arms:")
    single = head + "ensemble:\n  combiner: stacking\n  members: [enhanced_as, prefill]\n"
    single = single.replace("  - id: lead_lag\n    model: cross_asset\n    params: {leader_venue: simlead, leader_symbol: BTC-PERP}\n"
                            "  - id: oi\n    model: onchain_oi\n", "")
    candidate_only = head + "ensemble:\n  combiner: stacking\n  members: [enhanced_as, prefill, lead_lag, oi]\n"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t_single, events = _timed(single, tmp, "single")
        t_candidate, _ = _timed(candidate_only, tmp, "candidate")
        t_ab, _ = _timed(ab, tmp, "ab")
    print(f"mixed world, {args.duration}: {events:,} events")
    print(f"  incumbent alone (2 models + stacking)          {t_single:7.2f} s")
    print(f"  candidate alone (4 models + stacking)          {t_candidate:7.2f} s")
    print(f"  A/B of both, one pass, shared models           {t_ab:7.2f} s")
    print(f"  A/B / candidate alone                          {t_ab / t_candidate:7.2f}x")
    print(f"  A/B / (incumbent + candidate run separately)   {t_ab / (t_single + t_candidate):7.2f}x")


if __name__ == "__main__":
    main()
