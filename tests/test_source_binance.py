"""``source: binance``: raw Binance websocket recordings (hftbacktest and cryptofeed layouts).

Real-data facts were read off the raw files in ../shared/data (see PROVENANCE.md there); the synthetic
tests pin down the book-sync rules, gaps and bad-data handling.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sigkit
from sigkit.context import Market, RunContext
from sigkit.errors import DataError
from sigkit.events import BOOK, TRADE
from sigkit.params import build_params
from sigkit.plugins import build_registry
from sigkit_binance import ws

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HFT = DATA / "hftbacktest_binance_hyperliquid"
CRYPTOFEED = DATA / "cryptofeed_binance_futures_raw"
CF_WS = CRYPTOFEED / "BINANCE_FUTURES.ws.1.0.txt"
CF_HTTP = CRYPTOFEED / "BINANCE_FUTURES.http.0.0.txt"


def _need_data():
    if not DATA.is_dir():
        pytest.skip(f"../shared/data is absent: the real Binance recordings are expected at {DATA}")


def read(path, on_bad_line="stop", **params):
    """Run the reader on ``path``: ``(all rows, describe())``."""
    values = {"path": str(path), **{k: v for k, v in params.items() if v is not None}}
    source = ws.BinanceWs(build_params(ws.BinanceParams, values, owner="source 'binance'"),
                          RunContext(target=Market("binance", "BTCUSDT"), horizon_ns=10**9, on_bad_line=on_bad_line))
    chunks = list(source.chunks())
    rows = np.concatenate(chunks) if chunks else np.zeros(0, dtype=sigkit.EVENT_DTYPE)
    return rows, source.describe()


def only(rows, kind, symbol=None):
    rows = rows[rows["kind"] == kind]
    return rows if symbol is None else rows[rows["symbol"] == symbol]


# -- real data: hftbacktest recordings ---------------------------------------------------------------

HFT_FACTS = {
    # file: (symbol, bookTicker rows, trade rows, first / last row local ns in ticker mode,
    #        depth diffs applied, dropped as older than the snapshot)
    "spot_btcusdt_20240808.gz": ("BTCUSDT", 28_040, 9_757, 1723161254087891268, 1723161599999231384, 3449, 2),
    "usdm_btcusdt_20240808.gz": ("BTCUSDT", 66_089, 21_313, 1723161255088169167, 1723161599439160683, 6547, 4),
    "cm_btcusd_perp_20240808.gz": ("BTCUSD_PERP", 19_136, 2_286, 1723161256207640365, 1723161599812570384,
                                   26824, 23),
    "spot_ethusdt_20240808.gz": ("ETHUSDT", 24_077, 6_106, 1723161254024619568, 1723161599900862584, 3432, 2),
    "usdm_ethusdt_20240808.gz": ("ETHUSDT", 53_992, 14_076, 1723161255088165267, 1723161599785105784, 6581, 5),
}
_cache: dict = {}


def hft(name, book="ticker"):
    _need_data()
    key = (name, book)
    if key not in _cache:
        _cache[key] = read(HFT / name, book=book)
    return _cache[key]


@pytest.mark.parametrize("name", sorted(HFT_FACTS))
def test_hftbacktest_counts_span_and_sync(name):
    symbol, tickers, trades, first, last, applied, dropped = HFT_FACTS[name]
    rows, info = hft(name)
    assert info["events"] == {"trade": trades, "book": tickers, "stat": 0}  # every trade is X=MARKET
    assert (info["first_ts_ns"], info["last_ts_ns"]) == (first, last)
    assert info["symbols"] == [symbol] and set(rows["symbol"]) == {symbol}
    assert info["skipped"] == {} and info["ignored"] == {}
    assert info["gaps"] == [] and info["gap_count"] == 0  # the diff chains of these files are unbroken
    depth = info["depth"]
    assert (depth["applied"], depth["dropped_before_snapshot"], depth["resyncs"]) == (applied, dropped, 0)
    assert depth["by_symbol"][symbol]["synced_at_end"] and depth["by_symbol"][symbol]["syncs"] == 1
    assert np.all(np.diff(rows["ts_ns"]) >= 0)
    # the recorder's clock runs ~1.27 s behind Binance's (PROVENANCE.md)
    lag = np.median(rows["ts_ns"] - rows["exch_ts_ns"]) / 1e9
    assert -1.28 < lag < -1.25


@pytest.mark.parametrize("name", sorted(HFT_FACTS))
def test_hftbacktest_depth_mode_books_are_never_crossed(name):
    symbol, _, trades, *_, applied, _ = HFT_FACTS[name]
    rows, info = hft(name, "depth")
    books = only(rows, BOOK)
    assert info["ignored"] == {"bookTicker": HFT_FACTS[name][1]}
    # one row per applied diff, except that the diffs replayed when the snapshot arrives make one row
    assert applied - 5 <= len(books) <= applied and len(only(rows, TRADE)) == trades
    assert np.all(books["bid_px"] < books["ask_px"])
    # five levels strictly beyond the touch, best first
    assert np.all(books["bids"][:, 0, 0] < books["bid_px"]) and np.all(books["asks"][:, 0, 0] > books["ask_px"])
    assert np.all(np.diff(books["bids"][:, :, 0], axis=1) < 0) and np.all(np.diff(books["asks"][:, :, 0], axis=1) > 0)


def test_known_trades_read_off_the_raw_files():
    # spot line 5465: {...,"p":"61829.05000000","q":"0.04875000","T":1723161303771,"m":false,"M":true}
    # usdm line 6353: {...,"T":1723161283395,...,"p":"61833.40","q":"0.228","X":"MARKET","m":false}
    # cm line 29952:  {...,"T":1723161478677,...,"p":"61647.5","q":"5","X":"MARKET","m":true}
    for name, local_ns, exch_ms, price, size, side in [
        ("spot_btcusdt_20240808.gz", 1723161302500730057, 1723161303771, 61829.05, 0.04875, 1),
        ("usdm_btcusdt_20240808.gz", 1723161282127472309, 1723161283395, 61833.40, 0.228, 1),
        ("cm_btcusd_perp_20240808.gz", 1723161477418179147, 1723161478677, 61647.5, 5.0, -1),
    ]:
        trades = only(hft(name)[0], TRADE)
        hit = trades[trades["ts_ns"] == local_ns]
        assert len(hit) == 1, name
        assert (hit["price"][0], hit["size"][0], hit["side"][0]) == (price, size, side)
        assert hit["exch_ts_ns"][0] == exch_ms * 1_000_000


def test_spot_book_ticker_rows_get_depth_once_synced_and_a_shifted_exchange_time():
    rows, _ = hft("spot_btcusdt_20240808.gz")
    books = only(rows, BOOK)
    # lines 3, 5 and 7 come before the snapshot (line 8, bridged by the buffered diff of line 6)
    unsynced = np.isnan(books["bids"][:, 0, 0])
    assert unsynced.sum() == 3 and unsynced[:3].all()
    assert np.all(books["bids"][3:, 0, 0] < books["bid_px"][3:])
    assert np.all(books["asks"][3:, 0, 0] > books["ask_px"][3:])
    # spot bookTicker has no time: line 3 (local 1723161254087891268) is shifted by the offset of line 2
    # (depth, E=1723161255308 received at 1723161254036059768)
    assert books["exch_ts_ns"][0] == 1723161254087891268 + (1723161255308 * 1_000_000 - 1723161254036059768)
    assert (books["bid_px"][0], books["bid_sz"][0], books["ask_px"][0], books["ask_sz"][0]) == (
        61837.63, 3.78826, 61837.64, 1.54698)


def test_exchange_clock_orders_by_exchange_time():
    _need_data()
    rows, info = read(HFT / "cm_btcusd_perp_20240808.gz", clock="exchange", reorder="1s")
    assert info["skipped"] == {} and len(rows) == 19_136 + 2_286
    assert np.all(np.diff(rows["ts_ns"]) >= 0) and np.array_equal(rows["ts_ns"], rows["exch_ts_ns"])


# -- real data: the cryptofeed recording with REST snapshots in a separate file -----------------------

CF_DEPTH = {  # symbol: (diffs applied, dropped as older than its snapshot) -- checked by hand on the raw file
    "SUSHIUSDT": (252, 3), "AKROUSDT": (188, 1), "KEEPUSDT": (132, 3), "CTKUSDT": (180, 5)}


def test_cryptofeed_all_four_symbols_sync_from_the_http_snapshots():
    _need_data()
    rows, info = read(CF_WS, snapshots=str(CF_HTTP), venue="binance-usdm")
    assert info["events"] == {"trade": 91, "book": 613, "stat": 0}  # aggTrade 91, bookTicker 613
    assert info["ignored"] == {"kline_1m": 67}
    assert info["symbols"] == ["SUSHIUSDT", "AKROUSDT", "KEEPUSDT", "CTKUSDT"]
    assert info["gaps"] == [] and info["gap_count"] == 0 and info["skipped"] == {}
    for symbol, (applied, dropped) in CF_DEPTH.items():
        assert info["depth"]["by_symbol"][symbol] == {"applied": applied, "dropped_before_snapshot": dropped,
                                                      "syncs": 1, "synced_at_end": True}
    assert (info["first_ts_ns"], info["last_ts_ns"]) == (1626992741062170000, 1626992771201806000)
    # 1626992742.289739: {"stream":"ctkusdt@aggTrade","data":{...,"p":"1.01100","q":"10",...,"m":false}}
    trades = only(rows, TRADE, "CTKUSDT")
    hit = trades[trades["ts_ns"] == 1626992742289739000]
    assert len(hit) == 1 and (hit["price"][0], hit["size"][0], hit["side"][0]) == (1.011, 10.0, 1)
    assert hit["exch_ts_ns"][0] == 1626992741421_000_000 and set(rows["venue"]) == {"binance-usdm"}


def test_cryptofeed_depth_mode_and_symbol_filter():
    _need_data()
    rows, info = read(CF_WS, snapshots=str(CF_HTTP), book="depth", symbols=["ctkusdt"])
    books = only(rows, BOOK)
    assert set(rows["symbol"]) == {"CTKUSDT"} and len(only(rows, TRADE)) == 38
    assert len(books) == CF_DEPTH["CTKUSDT"][0] and np.all(books["bid_px"] < books["ask_px"])
    assert info["filtered_out"] > 0 and list(info["depth"]["by_symbol"]) == ["CTKUSDT"]


def test_cryptofeed_without_snapshots_never_syncs():
    _need_data()
    rows, info = read(CF_WS)
    assert info["events"]["book"] == 613 and np.isnan(only(rows, BOOK)["bids"]).all()
    assert info["depth"]["applied"] == 0 and info["depth"]["unapplied_at_end"] == 764


def _cryptofeed_lines():
    lines = CF_WS.read_bytes().splitlines(keepends=True)
    sushi = []  # (index in lines, local ns, U, u, pu) of SUSHIUSDT diffs
    for i, line in enumerate(lines[1:], 1):
        stamp, _, body = line.partition(b": ")
        msg = json.loads(body)
        if msg["stream"] == "sushiusdt@depth@100ms":
            d = msg["data"]
            sushi.append((i, ws.epoch_seconds_ns(stamp), d["U"], d["u"], d["pu"]))
    return lines, sushi


def test_a_deleted_diff_is_a_gap_and_the_book_resyncs_only_at_a_later_snapshot(tmp_path):
    _need_data()
    lines, sushi = _cryptofeed_lines()
    truth, _ = read(CF_WS, snapshots=str(CF_HTTP), book="depth")
    deleted, after = sushi[50], sushi[51]
    cut = tmp_path / "ws.txt"
    cut.write_bytes(b"".join(lines[: deleted[0]] + lines[deleted[0] + 1:]))

    rows, info = read(cut, snapshots=str(CF_HTTP), book="depth")
    gap = {"ts_ns": after[1], "line": after[0], "symbol": "SUSHIUSDT", "field": "pu", "expected": sushi[49][3],
           "got": deleted[3], "after": "update"}  # line numbers are 1-based: index + 1, minus the deleted line
    assert info["gaps"] == [gap] and info["gap_count"] == 1 and info["skipped"] == {}
    sushi_books = only(rows, BOOK, "SUSHIUSDT")
    assert sushi_books["ts_ns"].max() < after[1]  # never papered over: no SUSHI book after the gap
    assert not info["depth"]["by_symbol"]["SUSHIUSDT"]["synced_at_end"]
    assert all(info["depth"]["by_symbol"][s]["synced_at_end"] for s in ("AKROUSDT", "KEEPUSDT", "CTKUSDT"))

    # A later snapshot, as a REST response received just before diff `resync_at` - 1 whose final update id
    # it carries; its levels are the true book after that diff (touch + 5 levels).
    prev = sushi[119]
    true_row = only(truth, BOOK, "SUSHIUSDT")
    true_row = true_row[true_row["ts_ns"] == prev[1]][0]
    def levels(side):
        touch = [(true_row[f"{side}_px"], true_row[f"{side}_sz"])]
        return [[f"{p:.4f}", f"{s:g}"] for p, s in touch + true_row[f"{side}s"].tolist()]
    bids, asks = levels("bid"), levels("ask")
    stamp = f"{prev[1] // 10**9}.{prev[1] % 10**9:09d}"
    snapshot = json.dumps({"lastUpdateId": prev[3], "bids": bids, "asks": asks})
    http = tmp_path / "http.txt"
    http.write_bytes(CF_HTTP.read_bytes().rstrip(b"\n") + b"\n" + (
        f"https://fapi.binance.com/fapi/v1/depth?symbol=SUSHIUSDT&limit=1000 -> {stamp}: {snapshot}\n").encode())

    rows, info = read(cut, snapshots=str(http), book="depth")
    assert info["gaps"] == [gap] and info["depth"]["resyncs"] == 1
    assert info["depth"]["by_symbol"]["SUSHIUSDT"]["syncs"] == 2
    assert info["depth"]["by_symbol"]["SUSHIUSDT"]["synced_at_end"]
    books = only(rows, BOOK, "SUSHIUSDT")
    resumed = books[books["ts_ns"] >= after[1]]
    assert resumed["ts_ns"].min() == prev[1]  # nothing between the gap and the later snapshot
    # from there on, the touch and the 5 levels are exactly those of the unbroken recording
    expect = only(truth, BOOK, "SUSHIUSDT")
    expect = expect[expect["ts_ns"] >= prev[1]]
    for name in ("ts_ns", "bid_px", "bid_sz", "ask_px", "ask_sz", "bids", "asks"):
        assert np.array_equal(resumed[name], expect[name]), name


# -- synthetic: sync rules -----------------------------------------------------------------------------

def _line(ns, stream, data):
    return f"{ns} " + json.dumps({"stream": stream, "data": data}, separators=(",", ":"))


def _spot_depth(ns, U, u, bids=(), asks=()):
    return _line(ns, "btcusdt@depth@100ms", {"e": "depthUpdate", "E": ns // 10**6 + 5, "s": "BTCUSDT", "U": U,
                                             "u": u, "b": list(bids), "a": list(asks)})


def _ticker(ns, bid="100.0", ask="101.0"):
    return _line(ns, "btcusdt@bookTicker", {"u": 1, "s": "BTCUSDT", "b": bid, "B": "1", "a": ask, "A": "2"})


def _trade(ns, price="100.5", m=True, extra=None):
    return _line(ns, "btcusdt@trade", {"e": "trade", "E": ns // 10**6 + 5, "s": "BTCUSDT", "t": 7, "p": price,
                                       "q": "0.5", "T": ns // 10**6 + 4, "m": m, **(extra or {})})


SNAPSHOT = json.dumps({"lastUpdateId": 104, "bids": [["100.0", "1"], ["99.0", "2"], ["98.0", "3"]],
                       "asks": [["101.0", "1"], ["102.0", "2"], ["103.0", "3"]]}, separators=(",", ":"))
T0 = 1_723_161_254_000_000_000

SPOT = [
    _spot_depth(T0, 100, 103, [["99.5", "1"]]),  # older than the snapshot: dropped
    _ticker(T0 + 1),
    _spot_depth(T0 + 2, 104, 106, [["99.5", "4"]]),  # bridges lastUpdateId + 1 = 105 once the snapshot is in
    f"{T0 + 3} {SNAPSHOT}",
    _trade(T0 + 4),
    _spot_depth(T0 + 5, 107, 110, [["100.0", "0"]], [["100.5", "1"]]),
    _ticker(T0 + 6, "99.5", "100.5"),
    _trade(T0 + 7, "100.5", m=False),
    _spot_depth(T0 + 8, 111, 112, [], [["103.0", "0"]]),
]


def _write(tmp_path, lines, name="f.txt"):
    path = Path(tmp_path) / name
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


def test_spot_sync_rules_on_a_small_file(tmp_path):
    rows, info = read(_write(tmp_path, SPOT), book="depth")
    assert info["depth"]["by_symbol"]["BTCUSDT"] == {"applied": 3, "dropped_before_snapshot": 1, "syncs": 1,
                                                    "synced_at_end": True}
    books = only(rows, BOOK)
    # the replayed diff makes one row at the snapshot's time; then one per diff
    assert books["ts_ns"].tolist() == [T0 + 3, T0 + 5, T0 + 8]
    assert books["bid_px"].tolist() == [100.0, 99.5, 99.5] and books["bid_sz"].tolist() == [1.0, 4.0, 4.0]
    assert books["ask_px"].tolist() == [101.0, 100.5, 100.5]
    assert books["asks"][2, :2, 0].tolist() == [101.0, 102.0] and np.isnan(books["asks"][2, 2, 0])
    trades = only(rows, TRADE)
    assert trades["side"].tolist() == [-1, 1]  # m true: the buyer was the maker, so a seller hit the bid


def test_ticker_mode_attaches_levels_beyond_the_touch(tmp_path):
    rows, info = read(_write(tmp_path, SPOT))
    books = only(rows, BOOK)
    assert books["ts_ns"].tolist() == [T0 + 1, T0 + 6]
    assert np.isnan(books["bids"][0]).all()  # before the snapshot
    assert books["bids"][1, :2].tolist() == [[99.0, 2.0], [98.0, 3.0]]  # strictly below 99.5
    assert books["asks"][1, :3, 0].tolist() == [101.0, 102.0, 103.0]
    assert info["events"] == {"trade": 2, "book": 2, "stat": 0}


def test_a_gap_on_spot_waits_for_a_snapshot(tmp_path):
    lines = SPOT[:6] + [_spot_depth(T0 + 8, 112, 113)]  # U 112 != 110 + 1
    rows, info = read(_write(tmp_path, lines), book="depth")
    assert info["gaps"] == [{"ts_ns": T0 + 8, "line": 7, "symbol": "BTCUSDT", "field": "U", "expected": 111,
                             "got": 112, "after": "update"}]
    assert not info["depth"]["by_symbol"]["BTCUSDT"]["synced_at_end"] and info["skipped"] == {}


def test_a_snapshot_too_new_for_the_first_diff_is_a_gap(tmp_path):
    lines = [f"{T0} {SNAPSHOT}", _spot_depth(T0 + 1, 106, 107)]  # needs U <= 105
    _, info = read(_write(tmp_path, lines))
    assert info["gaps"][0]["after"] == "snapshot" and info["gaps"][0]["expected"] == 105


def test_futures_chain_and_liquidations_and_mark_price(tmp_path):
    def depth(ns, U, u, pu, bids=(), asks=()):
        return _line(ns, "btcusdt@depth@0ms", {"e": "depthUpdate", "E": 1, "T": ns // 10**6, "s": "BTCUSDT",
                                               "U": U, "u": u, "pu": pu, "b": list(bids), "a": list(asks)})
    lines = [
        depth(T0, 90, 99, 80),  # u < lastUpdateId 100: dropped
        depth(T0 + 1, 100, 105, 99, [["100.0", "5"]]),  # U <= 100 <= u: bridges
        f"{T0 + 2} " + json.dumps({"lastUpdateId": 100, "E": 1, "T": 2, "bids": [["100.0", "1"]],
                                   "asks": [["101.0", "1"]]}),
        depth(T0 + 3, 106, 110, 105, [], [["100.5", "1"]]),
        _line(T0 + 4, "btcusdt@forceOrder", {"e": "forceOrder", "E": T0 // 10**6, "o": {
            "s": "BTCUSDT", "S": "BUY", "o": "LIMIT", "f": "IOC", "q": "0.5", "p": "101", "ap": "100.9",
            "X": "FILLED", "l": "0.5", "z": "0.4", "T": T0 // 10**6}}),
        _line(T0 + 5, "btcusdt@markPrice@1s", {"e": "markPriceUpdate", "E": T0 // 10**6, "s": "BTCUSDT",
                                                "p": "100.7", "i": "100.6", "P": "100.6", "r": "0.0001",
                                                "T": T0 // 10**6 + 3_600_000}),
        _line(T0 + 6, "btcusdt@trade", {"e": "trade", "E": 1, "T": 1, "s": "BTCUSDT", "t": 1, "p": "100.0",
                                         "q": "1", "X": "INSURANCE_FUND", "m": True}),
        _line(T0 + 7, "btcusdt@kline_1m", {"e": "kline", "k": {}}),
        depth(T0 + 8, 112, 113, 111),  # pu 111 != 110
    ]
    rows, info = read(_write(tmp_path, lines, "f.txt.gz"), book="depth")
    books = only(rows, BOOK)
    assert books["bid_sz"].tolist() == [5.0, 5.0] and books["ask_px"].tolist() == [101.0, 100.5]
    stats = rows[rows["kind"] == sigkit.events.STAT]
    assert stats["side"].tolist() == [1, 0] and stats["price"][0] == 100.9 and stats["size"][0] == 0.4
    assert stats["mark_price"][1] == 100.7 and stats["funding_rate"][1] == 0.0001
    assert stats["exch_ts_ns"][1] == T0 // 10**6 * 10**6  # markPrice: E, its T is the next funding time
    assert info["ignored"] == {"kline_1m": 1, "trade X=INSURANCE_FUND": 1}
    assert info["gaps"][0]["field"] == "pu" and info["gaps"][0]["expected"] == 110 and info["gaps"][0]["got"] == 111
    assert info["depth"]["by_symbol"]["BTCUSDT"]["dropped_before_snapshot"] == 1


def test_epoch_seconds_are_exact():
    assert ws.epoch_seconds_ns(b"1626992741.06217") == 1626992741_062170000
    assert ws.epoch_seconds_ns(b"1626992741.0000000015") == 1626992741_000000002
    assert ws.epoch_seconds_ns(b"1626992741") == 1626992741_000000000
    for bad in (b"", b"1.2.3", b"-1.5", b"1e9", b"1.", b"12a"):
        with pytest.raises(ValueError):
            ws.epoch_seconds_ns(bad)


def test_source_is_registered():
    spec = build_registry().lookup("source", "binance")
    assert spec.factory is ws.BinanceWs and spec.params is ws.BinanceParams


# -- bad data: fuzzing ---------------------------------------------------------------------------------

FUTURES_CF = [
    "wss://fstream.binance.com/stream?streams=btcusdt@aggTrade/btcusdt@depth <-> 1723161253.5",
    "1723161254.000001: " + json.dumps({"stream": "btcusdt@depth@100ms", "data": {
        "e": "depthUpdate", "E": 1723161255000, "T": 1723161254999, "s": "BTCUSDT", "U": 95, "u": 101, "pu": 94,
        "b": [["100.0", "2"]], "a": [["101.0", "1"]]}}),
    "1723161254.5: " + json.dumps({"lastUpdateId": 100, "bids": [["100.0", "1"], ["99.0", "1"]],
                                   "asks": [["101.0", "1"], ["102.0", "1"]]}),
    "1723161254.6: " + json.dumps({"stream": "btcusdt@aggTrade", "data": {
        "e": "aggTrade", "E": 1723161255100, "a": 1, "s": "BTCUSDT", "p": "100.5", "q": "3", "f": 1, "l": 2,
        "T": 1723161255099, "m": False}}),
    "1723161254.7: " + json.dumps({"stream": "btcusdt@bookTicker", "data": {
        "e": "bookTicker", "u": 102, "s": "BTCUSDT", "b": "100.0", "B": "2", "a": "101.0", "A": "1",
        "T": 1723161255200, "E": 1723161255201}}),
    "1723161254.8: " + json.dumps({"stream": "btcusdt@forceOrder", "data": {
        "e": "forceOrder", "E": 1723161255300, "o": {"s": "BTCUSDT", "S": "SELL", "o": "LIMIT", "f": "IOC",
                                                      "q": "1", "p": "99.5", "ap": "99.6", "X": "FILLED",
                                                      "l": "1", "z": "1", "T": 1723161255300}}}),
    "1723161254.9: " + json.dumps({"stream": "btcusdt@depth@100ms", "data": {
        "e": "depthUpdate", "E": 1723161255400, "T": 1723161255399, "s": "BTCUSDT", "U": 102, "u": 104, "pu": 101,
        "b": [["100.0", "0"], ["99.5", "1"]], "a": []}}),
]
BASES = {"spot.txt": SPOT, "futures.txt": FUTURES_CF}
REQUIRED = {"trade": ("p", "q", "m", "E"), "aggTrade": ("p", "q", "m", "E"), "bookTicker": ("b", "B", "a", "A"),
            "depth": ("U", "u", "b", "a", "E"), "forceOrder": ("o", "E")}
NUMBERS = {"trade": ("p", "q"), "aggTrade": ("p", "q"), "bookTicker": ("b", "B", "a", "A")}
NOT_NUMBERS = ["abc", "nan", "NaN", "inf", "-inf", "", "1e999", "--1", "0x1", "-2", "1,5"]


def _run_both(lines, name="f.txt"):
    """Read ``lines`` under stop and under skip: ``(error or None, skipped count, rows under skip)``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(tmp, lines, name)
        try:
            read(path, book="depth")
            error = None
        except DataError as err:
            error = err
        rows, info = read(path, on_bad_line="skip")
        return error, sum(info["skipped"].values()), rows


def _parts(line: str):
    """``(time prefix, separator, json)`` of a line in either layout."""
    head, sep, body = line.partition(" ")
    return (head, sep, body) if head.isdigit() else line.partition(": ")


def test_bases_are_clean():
    for lines in BASES.values():
        error, skipped, rows = _run_both(lines)
        assert error is None and skipped == 0 and len(rows) >= 3


def _assert_bad(lines):
    error, skipped, _ = _run_both(lines)
    assert isinstance(error, DataError) and skipped >= 1
    assert str(error).count(":") >= 2  # file:line: reason


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(base=st.sampled_from(sorted(BASES)), data=st.data(),
       junk=st.binary(min_size=1, max_size=80).filter(lambda b: b"\n" not in b and b"\r" not in b and b.strip()))
def test_fuzz_random_bytes_line(base, data, junk):
    lines = list(BASES[base])
    at = data.draw(st.integers(0, len(lines) - 1))
    lines[at] = junk.decode("latin-1")
    _assert_bad(lines)


@FUZZ
@given(base=st.sampled_from(sorted(BASES)), data=st.data())
def test_fuzz_truncated_line(base, data):
    lines = list(BASES[base])
    at = data.draw(st.integers(1, len(lines) - 1))
    lines[at] = lines[at][: data.draw(st.integers(1, len(lines[at]) - 1))]
    _assert_bad(lines)


def _mutate(lines, data, change):
    """Apply ``change(kind, payload)`` in place to the data of a random stream message of ``lines``."""
    candidates = []
    for i, line in enumerate(lines):
        head, sep, body = _parts(line)
        if body.startswith('{"stream"'):
            candidates.append(i)
    i = data.draw(st.sampled_from(candidates))
    head, sep, body = _parts(lines[i])
    msg = json.loads(body)
    kind = msg["stream"].split("@")[1]
    change(kind, msg["data"])
    lines[i] = head + sep + json.dumps(msg, separators=(",", ":"))


@FUZZ
@given(base=st.sampled_from(sorted(BASES)), data=st.data())
def test_fuzz_deleted_required_field(base, data):
    lines = list(BASES[base])

    def delete(kind, payload):
        payload.pop(data.draw(st.sampled_from(REQUIRED[kind])))
    _mutate(lines, data, delete)
    _assert_bad(lines)


@FUZZ
@given(base=st.sampled_from(sorted(BASES)), data=st.data(), text=st.sampled_from(NOT_NUMBERS))
def test_fuzz_non_numeric_numbers(base, data, text):
    lines = list(BASES[base])

    def spoil(kind, payload):
        if kind == "depth":
            side = payload["b"] or payload["a"]
            side[0][data.draw(st.integers(0, 1))] = text
        elif kind == "forceOrder":
            payload["o"]["q" if data.draw(st.booleans()) else "p"] = text
        else:
            payload[data.draw(st.sampled_from(NUMBERS[kind]))] = text
    _mutate(lines, data, spoil)
    _assert_bad(lines)


@FUZZ
@given(base=st.sampled_from(sorted(BASES)), data=st.data())
def test_fuzz_time_going_backwards(base, data):
    lines = list(BASES[base])
    at = data.draw(st.integers(2, len(lines) - 1))
    head, sep, body = _parts(lines[at])
    prev_head = _parts(lines[at - 1])[0]
    earlier = (str(int(prev_head) - data.draw(st.integers(1, 10**9))) if sep == " "
               else f"{float(prev_head) - data.draw(st.integers(1, 1000)) / 1000:.6f}")
    lines[at] = earlier + sep + body
    _assert_bad(lines)


@FUZZ
@given(base=st.sampled_from(sorted(BASES)), data=st.data(),
       key=st.text("abcdefghijklmnopqrstuvwxyz", min_size=3, max_size=8), value=st.integers() | st.text(max_size=5))
def test_fuzz_extra_fields_change_nothing(base, data, key, value):
    lines = list(BASES[base])
    _mutate(lines, data, lambda kind, payload: payload.setdefault(key, value))  # existing keys stay as they are
    error, skipped, rows = _run_both(lines)
    clean = _run_both(BASES[base])[2]
    assert error is None and skipped == 0 and rows.tobytes() == clean.tobytes()


def test_truncated_gzip(tmp_path):
    _need_data()
    raw = (HFT / "spot_btcusdt_20240808.gz").read_bytes()
    path = tmp_path / "cut.gz"
    path.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(DataError, match="corrupt file"):
        read(path)
    rows, info = read(path, on_bad_line="skip")
    assert info["skipped"] == {"corrupt file": 1} and 0 < len(rows) < 37_797


def test_a_crossed_synced_book_is_bad_data(tmp_path):
    lines = SPOT[:4] + [_spot_depth(T0 + 5, 107, 107, [["102.5", "1"]])]  # a bid above the best ask
    with pytest.raises(DataError, match="crossed book"):
        read(_write(tmp_path, lines))
    _, info = read(_write(tmp_path, lines), on_bad_line="skip")
    assert info["skipped"] == {"crossed book": 1} and info["depth"]["crossed"] == 1


def test_a_junk_line_that_only_looks_like_a_header_is_refused():
    # Found by the fuzz test above: cryptofeed's header is `<url> <-> <epoch seconds>`; " <-> " alone is not.
    lines = list(FUTURES_CF)
    lines[0] = " <-> "
    _assert_bad(lines)
