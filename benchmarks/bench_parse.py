"""How fast do the data readers parse?  Events per second for every reader, on the real samples and on
large synthetic copies of the compact (CSV) formats.

    python benchmarks/bench_parse.py                 # every reader
    python benchmarks/bench_parse.py --only tardis   # readers whose label contains "tardis"
    python benchmarks/bench_parse.py --rows 2000000  # size of the largest synthetic CSV files

Each reader is built through the plugin registry exactly as a recipe builds it and drained chunk by chunk
(the same path `sigkit run` takes), so the figure includes decompression, parsing, book building and
chunk assembly.  Every case runs in a fresh process, so its peak resident memory is its own; the tardis
trades file is read at a quarter and at the full size to show that memory does not grow with the file.  Needs ../shared/data next to the repository.  A figure to read, not a test: these machines
are shared and noisy.
"""

from __future__ import annotations

import argparse
import gzip
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HFT = DATA / "hftbacktest_binance_hyperliquid"


def _synthetic_csvs(tmp: Path, rows: int) -> dict[str, Path]:
    """Large CSV files in the compact formats, made by repeating real-looking rows with rising times."""
    out = {}
    t0 = 1_583_020_803_145_000  # µs, the bitmex sample's first trade
    for n in (rows // 4, rows):
        path = tmp / f"tardis_trades_{n}.csv.gz"
        with gzip.open(path, "wt", compresslevel=1) as f:
            f.write("exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n")
            f.writelines(f"bitmex,XBTUSD,{t0 + 100 * i},{t0 + 100 * i + 162160},{i},{'sell' if i % 3 else 'buy'},"
                         f"{8531.5 + (i % 7) * 0.5},{2152 + i % 50}\n" for i in range(n))
        out[f"tardis trades {n:,} rows (synthetic)"] = path
    path = tmp / "tardis_quotes.csv.gz"
    with gzip.open(path, "wt", compresslevel=1) as f:
        f.write("exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,bid_price,bid_amount\n")
        f.writelines(f"huobi-dm-swap,BTC-USD,{t0 + 100 * i},{t0 + 100 * i + 135268},{5494 + i % 9},"
                     f"{8629.3 + (i % 5) * 0.1:.1f},{8629.2 + (i % 5) * 0.1:.1f},{806 + i % 11}\n" for i in range(rows))
    out["tardis quotes (synthetic)"] = path
    path = tmp / "BTCUSDT-trades-2024-08-08.csv.gz"
    t0 = 1_723_161_255_342  # ms
    with gzip.open(path, "wt", compresslevel=1) as f:
        f.write("id,price,qty,quote_qty,time,is_buyer_maker\n")
        f.writelines(f"{5266583935 + i},{61800.3 + (i % 9) * 0.1:.1f},0.006,370.8,{t0 + i // 10},"
                     f"{'true' if i % 2 else 'false'}\n" for i in range(rows))
    out["binance_archive trades (synthetic)"] = path
    return out


def _cases(tmp: Path, rows: int) -> list[tuple[str, str, dict]]:
    djienne = DATA / "djienne_hyperliquid_collector"
    cases = [
        ("binance spot BTC ws (book: ticker)", "binance", {"path": str(HFT / "spot_btcusdt_20240808.gz")}),
        ("binance usdm BTC ws (book: ticker)", "binance", {"path": str(HFT / "usdm_btcusdt_20240808.gz")}),
        ("binance usdm BTC ws (book: depth)", "binance",
         {"path": str(HFT / "usdm_btcusdt_20240808.gz"), "book": "depth"}),
        ("binance coinm BTC ws (book: depth)", "binance",
         {"path": str(HFT / "cm_btcusd_perp_20240808.gz"), "book": "depth"}),
        ("hyperliquid BTC ws", "hyperliquid", {"path": str(HFT / "hyperliquid_btcusd_20250126.gz")}),
        ("hyperliquid_csv BTC (djienne)", "hyperliquid_csv", {"dir": str(djienne), "coin": "BTC"}),
    ]
    for label, path in _synthetic_csvs(tmp, rows).items():
        source = "binance_archive" if label.startswith("binance_archive") else "tardis"
        cases.append((label, source, {"path": str(path)}))
    return cases


def _drain(name: str, values: dict) -> tuple[int, float, float]:
    """Events read, seconds, and this process's peak resident memory in MB."""
    from sigkit import Market, RunContext
    from sigkit.params import build_params
    from sigkit.plugins import build_registry

    spec = build_registry().lookup("source", name)
    source = spec.factory(build_params(spec.params, values, owner=name),
                          RunContext(target=Market("x", "y"), horizon_ns=1_000_000_000))
    started = time.perf_counter()
    events = sum(len(chunk) for chunk in source.chunks())
    return events, time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run readers whose label contains this text")
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of each synthetic CSV file")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs per reader")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} is absent: the benchmark reads the shared sample data")

    print(f"{'reader':48s} {'events':>10s} {'seconds':>8s} {'events/s':>12s} {'peak MB':>8s}")
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        for label, name, values in _cases(Path(tmp), args.rows):
            if args.only not in label:
                continue
            runs = []
            for _ in range(args.repeat):
                with spawn.Pool(1) as pool:  # a fresh process: its peak memory is this reader's alone
                    runs.append(pool.apply(_drain, (name, values)))
            events, seconds, peak_mb = min(runs, key=lambda r: r[1])
            print(f"{label:48s} {events:10,d} {seconds:8.3f} {events / seconds:12,.0f} {peak_mb:8.0f}", flush=True)


if __name__ == "__main__":
    main()
