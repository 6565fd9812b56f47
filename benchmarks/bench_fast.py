"""The fast path against the per-event path and a plain-numpy reference pass, on one simulated day.

    python benchmarks/bench_fast.py                      # the quickstart world over 24h: 1, 2 (A/B) and 4 models
    python benchmarks/bench_fast.py --duration 6h        # shorter
    python benchmarks/bench_fast.py --per-event-limit 2h # the per-event path on the first 2h only
    python benchmarks/bench_fast.py --models 4 --pairs 5 # and five back-to-back numpy/quickstart pairs

The day is simulated once (the quickstart's ``mixed`` world, seed 7) and kept as a raw file of
``sigkit.EVENT_DTYPE`` rows in ``--data-dir``; every pass then reads it in 16,384-row chunks from disk, so
no pass holds the whole day and each can be compared on the same bytes.  Each pass runs in a fresh
process, which reports its events/second and its peak resident memory (``ru_maxrss``); the numpy and batch
passes run ``--repeat`` times (3) and the fastest counts, since a shared machine only ever slows one down:

* ``per-event``: the engine calling every model's per-event hooks (``sigkit run --per-event``);
* ``batch``: the engine calling each model's compiled ``on_batch`` kernel (``sigkit run``);
* ``numpy``: no engine and no model: whole-array numpy over the same columns, computing what a toxicity
  pass must at least compute (target mid, every fill's label at the horizon, causal trade-flow, volume
  and return sums over 100 ms / 1 s / 10 s windows at every fill, book imbalance and spread at every fill,
  the running base rate).  This is the memory-speed floor of this machine for a pass over these columns.

"1" is ``enhanced_as``; "ab" is two ``enhanced_as`` variants (other learning rates), which declare the same
pyramid of the target (``sigkit.features``) and so share one computation of it; "4" is the quickstart
recipe: enhanced_as, prefill_toxicity, cross_asset and onchain_oi, the base-rate reference and the stacking
ensemble.  Batch passes run with each of ``--threads`` (default 1; 2 runs the models two by two side by side).  Figures to read, not a
test: these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import attrs
import numpy as np

REPO = Path(__file__).resolve().parents[1]
CHUNK_ROWS = 16_384
HORIZON_NS = 1_000_000_000
WINDOWS_NS = (100_000_000, 1_000_000_000, 10_000_000_000)
ONE_MODEL = """\
  - id: enhanced_as
    model: enhanced_as
"""
# Two enhanced_as variants, as an A/B comparison would run them: they declare the same pyramid of the target
# (sigkit.features), which is computed once for both.
AB_PAIR = ONE_MODEL + """\
  - id: enhanced_as_fast
    model: enhanced_as
    params: {learning_rate: 0.02, calibration_learning_rate: 0.05}
"""
MODEL_SETS = {"1": ONE_MODEL, "ab": AB_PAIR}


class RawFile:
    """A source reading a raw ``EVENT_DTYPE`` file chunk by chunk (``limit``: rows up to that time)."""

    def __init__(self, path: Path, limit_ns: int | None = None):
        self.path, self.limit_ns = path, limit_ns

    def chunks(self):
        from sigkit.events import EVENT_DTYPE

        with open(self.path, "rb") as handle:
            while True:
                chunk = np.fromfile(handle, dtype=EVENT_DTYPE, count=CHUNK_ROWS)
                if not len(chunk):
                    return
                if self.limit_ns is not None and chunk["ts_ns"][-1] > self.limit_ns:
                    yield chunk[:int(np.searchsorted(chunk["ts_ns"], self.limit_ns, side="right"))]
                    return
                yield chunk
                if len(chunk) < CHUNK_ROWS:
                    return


def simulate_day(data_dir: Path, duration: str, seed: int, trade_rate: float = 8.0,
                 start_price: float = 50_000.0) -> tuple[Path, dict]:
    """The simulated data file (made once), and its description."""
    from sigkit import sim
    from sigkit.units import parse_duration

    data_dir.mkdir(parents=True, exist_ok=True)
    rate = "" if trade_rate == 8.0 else f"-{trade_rate:g}tps"
    rate += "" if start_price == 50_000.0 else f"-at{start_price:g}"
    path = data_dir / f"mixed-seed{seed}-{duration}{rate}.events"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return path, json.loads(meta_path.read_text())
    print(f"simulating {duration} of the mixed world (once; kept in {path}) ...", flush=True)
    started = time.perf_counter()
    rows = 0
    first = last = None
    partial = path.with_suffix(".partial")
    world = attrs.evolve(sim.world_spec("mixed", trade_rate_per_s=trade_rate), start_price=start_price)
    with open(partial, "wb") as out:
        for chunk in sim.simulate(world, seed=seed, duration_ns=parse_duration(duration)):
            chunk.tofile(out)
            rows += len(chunk)
            first = int(chunk["ts_ns"][0]) if first is None else first
            last = int(chunk["ts_ns"][-1])
    partial.rename(path)
    meta = {"world": "mixed", "trade_rate_per_s": trade_rate, "start_price": start_price, "seed": seed,
            "duration": duration, "events": rows,
            "first_ts_ns": first,
            "last_ts_ns": last, "simulated_in_s": round(time.perf_counter() - started, 1)}
    meta_path.write_text(json.dumps(meta))
    return path, meta


def recipe_text(models: str, duration: str) -> str:
    text = (REPO / "recipes" / "quickstart.yaml").read_text()
    text = re.sub(r"(?m)^(\s+duration:).*$", rf"\1 {duration}", text)
    models = str(models)
    if models in MODEL_SETS:
        head, _, _ = text.partition("models:")
        text = head + "models:\n" + MODEL_SETS[models]
    return text


def engine_pass(path: Path, models: str, mode: str, duration: str, limit_ns: int | None,
                threads: int | None = None) -> dict:
    import tempfile

    from sigkit.engine import replay_from_recipe
    from sigkit.plugins import build_registry
    from sigkit.recipe import load_recipe

    with tempfile.TemporaryDirectory() as tmp:
        recipe_path = Path(tmp) / "bench.yaml"
        recipe_path.write_text(recipe_text(models, duration))
        recipe = load_recipe(recipe_path, build_registry())
    replay = replay_from_recipe(recipe, sources=[("day", RawFile(path, limit_ns))], path=mode, threads=threads)
    replay.warm_up()  # compile (or load from numba's cache) outside the timing: a first run pays it once
    started = time.perf_counter()
    result = replay.run()
    elapsed = time.perf_counter() - started
    events = sum(result.events.values())
    return {"events": events, "fills": int(len(result.fills["ts_ns"])), "seconds": elapsed,
            "threads": result.threads}


def numpy_pass(path: Path, limit_ns: int | None) -> dict:
    """Whole-array numpy over the same columns; see the module doc."""
    from sigkit.events import BOOK, STAT, TRADE

    started = time.perf_counter()
    venue, symbol = "sim", "BTC-PERP"
    tail_ts = np.empty(0, dtype=np.int64)  # target trades of the last 10 s (for the windows)
    tail_flow = np.empty((0, 2))
    last_mid_ts, last_mid = np.empty(0, dtype=np.int64), np.empty(0)
    pending_ts = np.empty(0, dtype=np.int64)  # fills waiting for their label
    pending = np.empty((0, 2))  # side, price
    adverse = seen = 0.0
    events = fills = 0
    checksum = 0.0
    for chunk in RawFile(path, limit_ns).chunks():
        events += len(chunk)
        ts, kind = chunk["ts_ns"], chunk["kind"]
        target = (chunk["venue"] == venue) & (chunk["symbol"] == symbol)
        stats = kind == STAT
        checksum += float(np.nansum(chunk["open_interest"][stats])) * 0.0
        book = target & (kind == BOOK)
        trade = target & (kind == TRADE)
        bid, ask = chunk["bid_px"][book], chunk["ask_px"][book]
        bid_sz, ask_sz = chunk["bid_sz"][book], chunk["ask_sz"][book]
        mid_ts = np.concatenate([last_mid_ts, ts[book]])
        mid = np.concatenate([last_mid, 0.5 * (bid + ask)])
        imbalance = (bid_sz - ask_sz) / np.maximum(bid_sz + ask_sz, 1e-12)
        spread = (ask - bid) / np.maximum(0.5 * (bid + ask), 1e-12) * 1e4
        # Fills: every target trade, asked at the mid before it.
        f_ts = ts[trade]
        f_side = -chunk["side"][trade].astype(float)
        f_price = chunk["price"][trade]
        before = np.searchsorted(mid_ts, f_ts, side="left") - 1
        f_mid = np.where(before >= 0, mid[np.maximum(before, 0)], np.nan)
        at_book = np.searchsorted(ts[book], f_ts, side="left") - 1
        f_imb = np.where(at_book >= 0, imbalance[np.maximum(at_book, 0)], 0.0) * -f_side
        f_spread = np.where(at_book >= 0, spread[np.maximum(at_book, 0)], 0.0)
        # Causal window sums of signed volume, volume and trade count (strictly before each fill).
        all_ts = np.concatenate([tail_ts, f_ts])
        signed = chunk["side"][trade] * chunk["size"][trade]
        flow = np.concatenate([tail_flow, np.column_stack([signed, chunk["size"][trade]])])
        csum = np.vstack([np.zeros((1, 2)), np.cumsum(flow, axis=0)])
        here = np.searchsorted(all_ts, f_ts, side="left")
        features = [f_imb, f_spread]
        for window in WINDOWS_NS:
            start = np.searchsorted(all_ts, f_ts - window, side="left")
            sums = csum[here] - csum[start]
            features.append(-f_side * sums[:, 0] / np.maximum(sums[:, 1], 1e-12))
            features.append(here - start)
        # Mid return over each window before the fill.
        for window in WINDOWS_NS:
            back = np.searchsorted(mid_ts, f_ts - window, side="left") - 1
            then = np.where(back >= 0, mid[np.maximum(back, 0)], np.nan)
            features.append((f_mid - then) / then * 1e4 * -f_side)
        # Labels: the mid at each pending fill's horizon, for those whose horizon has passed.
        p_ts = np.concatenate([pending_ts, f_ts])
        p = np.concatenate([pending, np.column_stack([-f_side, f_price])])
        due = p_ts + HORIZON_NS
        done = due < ts[-1]
        at = np.searchsorted(mid_ts, due[done], side="right") - 1
        label_mid = np.where(at >= 0, mid[np.maximum(at, 0)], np.nan)
        markout = p[done, 0] * (label_mid - p[done, 1]) / p[done, 1] * 1e4
        was_adverse = markout < 0
        rate = (adverse + np.cumsum(was_adverse) + 1.0) / (seen + np.arange(1, len(markout) + 1) + 2.0)
        adverse += float(was_adverse.sum())
        seen += float(len(markout))
        checksum += float(np.nansum(np.vstack(features))) * 0.0 + float(rate[-1] if len(rate) else 0.0) * 0.0
        pending_ts, pending = p_ts[~done], p[~done]
        fills += len(f_ts)
        keep = all_ts >= ts[-1] - WINDOWS_NS[-1]
        tail_ts, tail_flow = all_ts[keep], flow[keep]
        keep = mid_ts >= ts[-1] - WINDOWS_NS[-1]
        keep[-1:] = True
        last_mid_ts, last_mid = mid_ts[keep], mid[keep]
    return {"events": events, "fills": fills, "seconds": time.perf_counter() - started, "checksum": checksum}


def child(args) -> None:
    path = Path(args.data)
    limit_ns = args.limit_ns if args.limit_ns > 0 else None
    if args.mode == "numpy":
        out = numpy_pass(path, limit_ns)
    else:
        out = engine_pass(path, args.models, args.mode, args.duration, limit_ns, args.threads or None)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run_child(data: Path, mode: str, models: str, duration: str, limit_ns: int | None, repeat: int = 1,
              threads: int | None = None) -> dict:
    """The pass in fresh processes, ``repeat`` times: the fastest run's figures (a shared machine only ever
    slows a pass down), with the largest peak memory of them all."""
    cmd = [sys.executable, __file__, "--child", mode, "--data", str(data), "--models", str(models),
           "--duration", duration, "--limit-ns", str(limit_ns or 0), "--threads", str(threads or 0)]
    runs = []
    for _ in range(repeat):
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        if done.returncode:
            raise SystemExit(f"{mode} pass failed:\n{done.stderr}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "runs": len(runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", default="24h", help="simulated span, with a unit")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--trade-rate", type=float, default=8.0,
                        help="target trades per second of the simulated market (the quickstart's world has 8: "
                             "1.7 million events a day; 40 gives about 100,000 events per 30 minutes).  The "
                             "simulator computes every fill's exact truth at about 10-25k events/s.  Each informed trade "
                             "moves the mid a tick, so the price walks further the busier the market: at 200/s it "
                             "ranged 46,240-54,771 from 50,000 in 20 minutes and reaches zero within hours, which "
                             "the simulator refuses in one line")
    parser.add_argument("--start-price", type=float, default=50_000.0,
                        help="the simulated market's first price, in ticks of 1 (the quickstart's world: 50,000).  "
                             "A busier market walks further (see --trade-rate): a finer grid, e.g. 5,000,000, "
                             "keeps a day at 200 trades/s (about 20 million events) away from zero")
    parser.add_argument("--per-event-limit", default=None,
                        help="run the per-event path on this much of the data only (it is the slow one)")
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "sigkit" / "bench")
    parser.add_argument("--models", default="1,ab,4",
                        help="which model sets to run, comma-separated: 1 (enhanced_as), ab (two enhanced_as "
                             "variants sharing one pyramid, as an A/B comparison runs them), 4 (the quickstart)")
    parser.add_argument("--threads", default="1",
                        help="thread counts of the batch passes, comma-separated, e.g. 1,2 (at most one per model; "
                             "see sigkit run --threads)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="run the numpy and batch passes this many times and keep the fastest (the per-event "
                             "pass runs once)")
    parser.add_argument("--streaming", action="store_true",
                        help="also run the batch path on a quarter and on half of the data, to show peak memory")
    parser.add_argument("--pairs", type=int, default=0,
                        help="then run the numpy reference and the batch path of the last model set one after the "
                             "other this many times, and print each pair's ratio and their median (a noisy "
                             "machine slows passes at random; a pair run back to back shares its moment)")
    parser.add_argument("--child", choices=["per-event", "batch", "numpy"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--limit-ns", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mode = args.child
        args.threads = int(args.threads)
        child(args)
        return

    from sigkit.units import parse_duration

    model_sets = args.models.split(",")
    thread_counts = [int(t) for t in args.threads.split(",")]
    unknown = [m for m in model_sets if m not in (*MODEL_SETS, "4")]
    if unknown:
        raise SystemExit(f"--models: unknown set {unknown[0]!r}; choose from 1, ab, 4")
    data, meta = simulate_day(args.data_dir, args.duration, args.seed, args.trade_rate, args.start_price)
    first = meta["first_ts_ns"]
    print(f"data: {meta['events']:,} events, {args.duration} of the mixed world at {args.trade_rate:g} trades/s, "
          f"seed {args.seed} "
          f"({data.stat().st_size / 1e9:.2f} GB raw; simulated in {meta['simulated_in_s']} s)")
    per_event_limit = first + parse_duration(args.per_event_limit) if args.per_event_limit else None
    rows = []
    numpy_ref = run_child(data, "numpy", "0", args.duration, None, args.repeat)
    rows.append(("numpy reference", "-", numpy_ref))
    for models in model_sets:
        per_event = run_child(data, "per-event", models, args.duration, per_event_limit, threads=1)
        rows.append(("per-event", models, per_event))
        for threads in thread_counts:
            rows.append(("batch", models, run_child(data, "batch", models, args.duration, None, args.repeat,
                                                    threads=threads)))
        if args.streaming:
            span = meta["last_ts_ns"] - first
            for share in (4, 2):
                part = run_child(data, "batch", models, args.duration, first + span // share, args.repeat,
                                 threads=thread_counts[-1])
                rows.append((f"batch, 1/{share} of the data", models, part))
    print(f"\n{'pass':<26} {'models':>6} {'threads':>7} {'events':>12} {'fills':>10} {'seconds':>9} "
          f"{'events/s':>12} {'peak MB':>8} {'runs':>5}")
    for name, models, r in rows:
        rate = r["events"] / r["seconds"]
        print(f"{name:<26} {models!s:>6} {r.get('threads', 1)!s:>7} {r['events']:>12,} {r['fills']:>10,} "
              f"{r['seconds']:>9.2f} {rate:>12,.0f} {r['peak_rss_mb']:>8.0f} {r['runs']:>5}")
    print()
    ref_rate = numpy_ref["events"] / numpy_ref["seconds"]
    names = {"1": "1 model (enhanced_as)", "ab": "2 models sharing a pyramid (enhanced_as A/B)",
             "4": "4 models + stacking (quickstart)"}
    for models in model_sets:
        pe = next(r for n, m, r in rows if n == "per-event" and m == models)
        pe_rate = pe["events"] / pe["seconds"]
        for b in (r for n, m, r in rows if n == "batch" and m == models):
            b_rate = b["events"] / b["seconds"]
            print(f"{names[models]}, {b['threads']} thread{'s' if b['threads'] > 1 else ''}: batch is "
                  f"{b_rate / pe_rate:.1f}x the per-event path and {ref_rate / b_rate:.1f}x the numpy reference's time")
    if args.pairs:
        models = model_sets[-1]
        ratios = []
        for _ in range(args.pairs):
            ref = run_child(data, "numpy", "0", args.duration, None)
            run = run_child(data, "batch", models, args.duration, None, threads=thread_counts[0])
            ratios.append(run["seconds"] / ref["seconds"])
            print(f"pair {len(ratios)}: numpy {ref['seconds']:.2f} s, batch ({names[models]}) {run['seconds']:.2f} s: "
                  f"{ratios[-1]:.2f}x", flush=True)
        print(f"{names[models]}: median of {len(ratios)} pairs {float(np.median(ratios)):.2f}x the numpy reference's "
              f"time (range {min(ratios):.2f}x-{max(ratios):.2f}x)")

if __name__ == "__main__":
    main()
