"""Parsing versus reading the event cache: events per second and peak memory.

    python benchmarks/bench_cache.py                 # the real Binance USD-M recording and synthetic tardis trades
    python benchmarks/bench_cache.py --rows 4000000  # size of the synthetic tardis trades file

For each file: a plain parse (no cache), the first cached read (parse + write the entry), and a cached read
(the entry streamed back), each drained chunk by chunk in a fresh process, so the peak resident memory is
its own.  The cached chunks are checked to be bitwise identical to the parsed ones.  A figure to read,
not a test: these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
USDM = DATA / "hftbacktest_binance_hyperliquid" / "usdm_btcusdt_20240808.gz"


def _tardis_trades(path: Path, rows: int) -> Path:
    t0 = 1_583_020_803_145_000  # µs
    with gzip.open(path, "wt", compresslevel=1) as f:
        f.write("exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n")
        f.writelines(f"bitmex,XBTUSD,{t0 + 100 * i},{t0 + 100 * i + 162160},{i},{'sell' if i % 3 else 'buy'},"
                     f"{8531.5 + (i % 7) * 0.5},{2152 + i % 50}\n" for i in range(rows))
    return path


def _drain(source_name: str, params: dict, cache_dir: str | None, out) -> None:
    import sigkit
    from sigkit.cache import CachedSource, source_key
    from sigkit.params import build_params
    from sigkit.plugins import build_registry

    spec = build_registry(builtins_only=True).lookup("source", source_name)
    built = build_params(spec.params, params, owner=source_name)
    context = sigkit.RunContext(target=sigkit.Market("x", "y"), horizon_ns=1)
    source = spec.factory(built, context)
    if cache_dir is not None:
        source = CachedSource(source, source_key(spec, built, context), cache_dir)
    digest = hashlib.blake2b(digest_size=16)
    events, elapsed = 0, 0.0
    started = time.perf_counter()
    for chunk in source.chunks():
        elapsed += time.perf_counter() - started
        events += len(chunk)
        digest.update(chunk.data)  # the check, outside the timing
        started = time.perf_counter()
    out.put({"events": events, "s": elapsed, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             "digest": digest.hexdigest(), "status": getattr(source, "status", "-")})


def _case(source_name: str, params: dict, cache_dir: str | None) -> dict:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_drain, args=(source_name, params, cache_dir, out))
    proc.start()
    result = out.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of the synthetic tardis trades file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = []
        if USDM.exists():
            files.append((f"binance usdm BTC ws ({USDM.stat().st_size / 1e6:.1f} MB .gz)", "binance",
                          {"path": str(USDM)}))
        else:
            print(f"(skipping the real recording: {USDM} is absent)")
        trades = _tardis_trades(tmp / "trades.csv.gz", args.rows)
        files.append((f"tardis trades, {args.rows:,} rows synthetic ({trades.stat().st_size / 1e6:.1f} MB .gz)",
                      "tardis", {"path": str(trades)}))
        print(f"{'file':<58} {'read':<22} {'events':>10} {'s':>7} {'events/s':>12} {'peak MB':>8}")
        for label, name, params in files:
            cache = tmp / f"cache-{name}"
            rows = [("parse (no cache)", _case(name, params, None)),
                    ("parse + write entry", _case(name, params, str(cache))),
                    ("cache read", _case(name, params, str(cache)))]
            entry = sum(p.stat().st_size for p in cache.iterdir())
            for what, r in rows:
                print(f"{label:<58} {what:<22} {r['events']:>10,} {r['s']:>7.2f} {r['events'] / r['s']:>12,.0f} "
                      f"{r['peak_mb']:>8.0f}")
            same = len({r["digest"] for _, r in rows}) == 1
            print(f"{'':<58} entry {entry / 1e6:.1f} MB ({entry / rows[0][1]['events']:.0f} bytes/event), "
                  f"read {rows[0][1]['s'] / rows[2][1]['s']:.0f}x faster than parsing, "
                  f"chunks {'bitwise identical' if same else 'DIFFERENT'} ({rows[2][1]['status']})")


if __name__ == "__main__":
    main()
