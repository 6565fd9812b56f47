"""The Hyperliquid readers: websocket recordings (``source: hyperliquid``) and the djienne collector CSVs
(``source: hyperliquid_csv``), on the real samples in ../shared/data and on corrupted copies."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sigkit
from sigkit import DataError
from sigkit.events import BOOK, STAT, TRADE
from sigkit.params import build_params
from sigkit.plugins import build_registry

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WS_FILE = DATA / "hftbacktest_binance_hyperliquid" / "hyperliquid_btcusd_20250126.gz"
CSV_DIR = DATA / "djienne_hyperliquid_collector"
CONTEXT = sigkit.RunContext(target=sigkit.Market("hyperliquid", "BTC"), horizon_ns=1_000_000_000)
SKIP_CONTEXT = sigkit.RunContext(target=sigkit.Market("hyperliquid", "BTC"), horizon_ns=1_000_000_000,
                                 on_bad_line="skip")
REGISTRY = build_registry()
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def data():
    if not DATA.exists():
        pytest.skip(f"../shared/data is absent: {DATA} holds the real Hyperliquid samples these tests read")
    return DATA


def build(source: str, context=CONTEXT, **values):
    """A reader built through the plugin registry, with its parameters validated as a recipe would."""
    spec = REGISTRY.sources[source]
    return spec.factory(build_params(spec.params, values, owner=f"source {source!r}"), context)


def drain(reader) -> np.ndarray:
    chunks = list(reader.chunks())
    out = np.concatenate(chunks) if chunks else np.zeros(0, dtype=sigkit.EVENT_DTYPE)
    assert (np.diff(out["ts_ns"]) >= 0).all()
    books = out[out["kind"] == BOOK]
    assert not (books["bid_px"] >= books["ask_px"]).any()
    return out


def ws_lines() -> list[bytes]:
    return gzip.decompress(WS_FILE.read_bytes()).splitlines()


# -- source: hyperliquid, the real recording --------------------------------------------------------------
def test_ws_real_recording_counts_span_and_first_book(data):
    reader = build("hyperliquid", path=str(WS_FILE))
    rows = drain(reader)
    books, trades = rows[rows["kind"] == BOOK], rows[rows["kind"] == TRADE]
    # 55 lines: 46 l2Book, 9 trades messages; the first trades message replays 30 older trades.
    replayed = len(json.loads(ws_lines()[2].split(b" ", 1)[1])["data"])
    live = sum(len(json.loads(line.split(b" ", 1)[1])["data"]) for line in ws_lines()[3:] if b'"trades"' in line)
    assert (replayed, live) == (30, 34)
    assert len(books) == 46 and len(trades) == 34
    out = reader.describe()
    assert out["events"] == {"trade": 34, "book": 46, "stat": 0}
    assert out["messages"] == {"l2Book": 46, "trades": 9}
    assert out["replayed_trades"] == {"count": 30, "emitted": False}
    assert out["duplicate_trades_dropped"] == 0 and out["skipped"] == {}
    assert (out["first_ts_ns"], out["last_ts_ns"]) == (1737918843893903000, 1737918869246864000)
    json.dumps(out)
    first = books[0]
    assert first["ts_ns"] == 1737918843893903000 and first["exch_ts_ns"] == 1737918843542 * 1_000_000
    touch = (first["bid_px"], first["bid_sz"], first["ask_px"], first["ask_sz"])
    assert touch == (105055.0, 3.03622, 105056.0, 6.34472)
    assert first["bids"][0].tolist() == [105054.0, 0.1428] and first["asks"][0].tolist() == [105057.0, 0.0001]
    assert not np.isnan(first["bids"]).any()  # 20 levels a side: all 5 depth levels filled
    assert (books["bid_px"] < books["ask_px"]).all()
    # The first live trade (line 10): B 0.02222 @ 105056.0, exchange time 1737918847000 ms.
    t = trades[0]
    assert (t["ts_ns"], t["exch_ts_ns"], t["side"], t["price"], t["size"]) == (
        1737918847319919000, 1737918847000 * 1_000_000, 1, 105056.0, 0.02222)
    assert (trades["side"] == -1).sum() == 30  # A (sell aggressor): lines 29, 43, 47 (7 trades), 52 (21)
    assert set(rows["venue"]) == {"hyperliquid"} and set(rows["symbol"]) == {"BTC"}


def test_ws_replayed_trades_can_be_kept_and_exchange_clock_orders_by_exchange_time(data):
    kept = drain(build("hyperliquid", path=str(WS_FILE), replayed_trades="keep"))
    trades = kept[kept["kind"] == TRADE]
    assert len(trades) == 64
    assert trades[0]["ts_ns"] == 1737918844167767000 and trades[0]["exch_ts_ns"] == 1737918794873 * 1_000_000
    exch = drain(build("hyperliquid", path=str(WS_FILE), clock="exchange"))
    assert len(exch) == 80 and (exch["ts_ns"] == exch["exch_ts_ns"]).all()
    assert exch["ts_ns"][0] == 1737918843542 * 1_000_000
    assert len(drain(build("hyperliquid", path=str(WS_FILE), coins=["ETH"]))) == 0


def _ws_file(tmp_path, lines: list[str], name="rec.txt") -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


# Real messages from reference/FORMATS.md: the tardis-node bbo fixture (ask side missing), the MOODENG
# activeAssetCtx capture, and the BTC entry of nautilus' allDexsAssetCtxs capture (the fields listed there).
BBO = '{"channel":"bbo","data":{"coin":"BTC","time":1750948919838,"bbo":[{"px":"107575.0","sz":"3.87947","n":17}]}}'
MOODENG = ('{"channel":"activeAssetCtx","data":{"coin":"MOODENG","ctx":{"funding":"0.00004863","openInterest":'
           '"18617460.0","prevDayPx":"0.20296","dayNtlVlm":"7665220.55613","premium":"0.00008521","oraclePx":"0.1995",'
           '"markPx":"0.19963","midPx":"0.19957","impactPxs":["0.199517","0.199725"]}}}')
BTC_CTX = ('{"channel":"activeAssetCtx","data":{"coin":"BTC","ctx":{"funding":"-0.0000015186","openInterest":'
           '"27353.17682","oraclePx":"77605.0","markPx":"77562.0","midPx":"77558.5","impactPxs":["77558.0","77559.0"],'
           '"dayBaseVlm":"19707.77457"}}}')


SUB_BBO = '{"channel":"subscriptionResponse","data":{"method":"subscribe","subscription":{"type":"bbo","coin":"BTC"}}}'
BBO_NO_BID = ('{"channel":"bbo","data":{"coin":"BTC","time":1750948919900,"bbo":[null,{"px":"107576.0","sz":"1.5",'
              '"n":2}]}}')
SPOT_CTX = ('{"channel":"activeSpotAssetCtx","data":{"coin":"PURR/USDC","ctx":{"markPx":"0.2","midPx":"0.2",'
            '"dayNtlVlm":"1.0"}}}')


def test_ws_bbo_with_a_missing_side_and_asset_contexts(tmp_path):
    t0 = 1750948920000000000
    path = _ws_file(tmp_path, [
        f"{t0} {SUB_BBO}",
        f"{t0 + 1} {BBO}",
        f"{t0 + 2} {BBO_NO_BID}",
        f"{t0 + 3} {BTC_CTX}",
        f"{t0 + 4} {MOODENG}",
        f"{t0 + 5} {SPOT_CTX}",
        f'{t0 + 6} {{"channel":"pong"}}',
    ])
    reader = build("hyperliquid", path=str(path))
    rows = drain(reader)
    assert rows["kind"].tolist() == [BOOK, BOOK, STAT, STAT, STAT]
    first, second = rows[0], rows[1]
    assert (first["bid_px"], first["bid_sz"], first["exch_ts_ns"]) == (107575.0, 3.87947, 1750948919838 * 1_000_000)
    assert math.isnan(first["ask_px"]) and math.isnan(first["ask_sz"])
    assert math.isnan(second["bid_px"]) and second["ask_px"] == 107576.0
    btc = rows[2]
    assert (btc["symbol"], btc["open_interest"], btc["funding_rate"], btc["mark_price"]) == (
        "BTC", 27353.17682, -0.0000015186, 77562.0)
    assert btc["exch_ts_ns"] == btc["ts_ns"] == t0 + 3  # no exchange time: the receive time stands in
    assert (rows[3]["symbol"], rows[3]["open_interest"], rows[3]["mark_price"]) == ("MOODENG", 18617460.0, 0.19963)
    spot = rows[4]
    assert spot["mark_price"] == 0.2 and math.isnan(spot["funding_rate"]) and math.isnan(spot["open_interest"])
    assert reader.describe()["messages"] == {"activeAssetCtx": 2, "activeSpotAssetCtx": 1, "bbo": 2, "pong": 1,
                                             "subscriptionResponse": 1}


def _trade(time_ms: int, tid: int, side="B", px="100.0", coin="BTC") -> dict:
    return {"coin": coin, "side": side, "px": px, "sz": "1.0", "time": time_ms, "tid": tid, "hash": "0x0",
            "users": ["0x1", "0x2"]}


def _trades_line(local_ns: int, trades: list[dict]) -> str:
    return f"{local_ns} " + json.dumps({"channel": "trades", "data": trades})


def test_ws_replay_after_a_resubscribe_is_not_emitted_and_duplicates_are_dropped(tmp_path):
    sub = SUB_BBO.replace('"bbo"', '"trades"')
    path = _ws_file(tmp_path, [
        _trades_line(1_000, [_trade(1, 11), _trade(2, 12)]),  # replay at file start
        _trades_line(2_000, [_trade(2, 12), _trade(3, 13)]),  # live; (2, 12) repeats the replay
        _trades_line(2_500, [_trade(3, 99, coin="ETH")]),  # first ETH message: ETH's own replay
        f"3000 {sub}",
        _trades_line(4_000, [_trade(3, 13), _trade(4, 14)]),  # replay after the reconnect
        _trades_line(5_000, [_trade(4, 14, "A"), _trade(5, 15, "A")]),  # live again
    ])
    reader = build("hyperliquid", path=str(path))
    rows = drain(reader)
    assert [(int(r["exch_ts_ns"]) // 1_000_000, int(r["side"])) for r in rows] == [(3, 1), (5, -1)]
    out = reader.describe()
    assert out["duplicate_trades_dropped"] == 3
    assert out["replayed_trades"]["count"] == 4  # (1,11) (2,12) ETH (3,99) and (4,14); (3,13) was a duplicate
    kept = drain(build("hyperliquid", path=str(path), replayed_trades="keep", coins=["BTC"]))
    assert [int(r["exch_ts_ns"]) // 1_000_000 for r in kept] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(("line", "reason"), [
    ('{"channel":"pong"}', "missing receive time"),
    ('17379188x3893903000 {"channel":"pong"}', "missing receive time"),
    ('99999999999999999999 {"channel":"pong"}', "missing receive time"),
    ('1 {"channel":"pong"', "malformed json"),
    ('1 {"channel":"candle","data":{}}', "unknown message"),
    ('1 {"channel":"bbo","data":{"coin":"BTC","time":1,"bbo":[{"px":"NaN","sz":"1"},null]}}', "not a number"),
    ('1 {"channel":"bbo","data":{"coin":"BTC","time":1,"bbo":[{"px":"abc","sz":"1"},null]}}', "not a number"),
    ('1 {"channel":"bbo","data":{"coin":"BTC","bbo":[null,null]}}', "bad message"),
    ('1 {"channel":"bbo","data":{"coin":"BTC","time":1,"bbo":[null,null,null]}}', "bad message"),
    ('1 {"channel":"trades","data":[{"coin":"BTC","side":"X","px":"1","sz":"1","time":1,"tid":1}]}', "bad message"),
    ('1 {"channel":"bbo","data":{"coin":"BTC","time":1,"bbo":[{"px":"2","sz":"1"},{"px":"1","sz":"1"}]}}',
     "crossed book"),
])
def test_ws_bad_lines_stop_with_file_and_line_or_are_counted(tmp_path, line, reason):
    ok = '2 {"channel":"bbo","data":{"coin":"BTC","time":1,"bbo":[{"px":"1","sz":"1"},{"px":"2","sz":"1"}]}}'
    path = _ws_file(tmp_path, ['1 {"channel":"pong"}', line, ok])
    with pytest.raises(DataError, match=rf"rec\.txt:2: {reason}:") as err:
        drain(build("hyperliquid", path=str(path)))
    assert err.value.line == 2
    reader = build("hyperliquid", SKIP_CONTEXT, path=str(path))
    assert len(drain(reader)) == 1
    assert reader.describe()["skipped"] == {reason: 1}


def test_ws_time_going_backwards_and_truncated_gzip(tmp_path, data):
    lines = ws_lines()
    lines[5] = b"1737918843000000000 " + lines[5].split(b" ", 1)[1]
    path = tmp_path / "back.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError, match=r"back\.txt:6: time went backwards"):
        drain(build("hyperliquid", path=str(path)))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(WS_FILE.read_bytes()[:4000])
    with pytest.raises(DataError, match=r"cut\.gz:\d+: corrupt file"):
        drain(build("hyperliquid", path=str(cut)))
    reader = build("hyperliquid", SKIP_CONTEXT, path=str(cut))
    assert 0 < len(drain(reader)) < 80 and reader.describe()["skipped"] == {"corrupt file": 1}


def _corrupt_ws(kind: str, where: int, blob: bytes, lines: list[bytes]) -> list[bytes]:
    """One line of ``lines`` broken in one of the ways a recording goes bad."""
    lines = list(lines)
    line = lines[where]
    stamp, body = line.split(b" ", 1)
    if kind == "random bytes":
        lines[where] = blob
    elif kind == "truncated":
        lines[where] = line[: 1 + len(blob) * 37 % (len(line) - 1)]
    elif kind == "deleted field":
        field = [b'"time":', b'"px":', b'"sz":', b'"coin":', b'"tid":', b'"side":'][len(blob) % 6]
        at = body.find(field)
        if at < 0:
            field, at = b'"time":', body.find(b'"time":')
        end = body.find(b",", at)
        lines[where] = stamp + b" " + body[:at] + body[end + 1:]
    elif kind == "not a number":
        word = [b'"abc"', b'"NaN"', b'"inf"', b'""', b'"-1"'][len(blob) % 5]
        at = body.find(b'"px":')
        end = body.find(b",", at)
        lines[where] = stamp + b" " + body[: at + 5] + word + body[end:]
    else:  # time going backwards (never the first line: nothing comes before it)
        lines[where] = b"%d " % (int(lines[0].split(b" ")[0]) - 1_000_000_000) + body
    return lines


WS_KINDS = ["random bytes", "truncated", "deleted field", "not a number", "backwards"]
_bytes = st.binary(min_size=1, max_size=60).filter(lambda b: b.strip() and b"\n" not in b and b"\r" not in b)


@FUZZ
@given(kind=st.sampled_from(WS_KINDS), where=st.integers(1, 54), blob=_bytes)
def test_ws_fuzz_corrupted_lines_stop_or_are_counted(tmp_path, data, kind, where, blob):
    lines = _corrupt_ws(kind, where, blob, ws_lines())
    path = tmp_path / "fuzz.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError) as err:
        drain(build("hyperliquid", path=str(path)))
    assert err.value.line == where + 1
    reader = build("hyperliquid", SKIP_CONTEXT, path=str(path))
    rows = drain(reader)
    assert sum(reader.describe()["skipped"].values()) == 1 and len(rows) <= 80


# -- source: hyperliquid_csv, the real collector files ----------------------------------------------------
def test_csv_real_files_counts_span_and_known_rows(data):
    reader = build("hyperliquid_csv", dir=str(CSV_DIR), coin="BTC")
    rows = drain(reader)
    out = reader.describe()
    json.dumps(out)
    # prices 3,586 rows = 1,793 bid/ask pairs; orderbooks 446; trades 1,497 - 30 replayed - 30 repeated.
    assert out["files"]["prices"]["events"]["book"] == 1793
    assert out["files"]["orderbooks"]["events"]["book"] == 446
    assert out["events"] == {"trade": 1437, "book": 2239, "stat": 0}
    assert out["replayed_trades"] == {"count": 30, "emitted": False}
    assert out["duplicate_trades_dropped"] == 30 and out["lone_bbo_sides"] == 0 and out["skipped"] == {}
    # Span 2025-09-03 12:55:12 -> 13:04:14 UTC, exact to the ns of the decimal text.
    assert (out["first_ts_ns"], out["last_ts_ns"]) == (1756904112546592700, 1756904654918197400)
    assert str(np.datetime64(out["first_ts_ns"], "ns"))[:19] == "2025-09-03T12:55:12"
    assert str(np.datetime64(out["last_ts_ns"], "ns"))[:19] == "2025-09-03T13:04:14"
    first = rows[0]  # orderbooks line 2, the first row of all three files
    assert (first["kind"], first["bid_px"], first["bid_sz"], first["ask_px"], first["ask_sz"]) == (
        BOOK, 111038.0, 8.84885, 111039.0, 0.0036)
    assert first["bids"][0].tolist() == [111037.0, 0.38041] and first["asks"][0].tolist() == [111040.0, 0.00011]
    assert first["exch_ts_ns"] == 1756904112212 * 1_000_000
    # trades line 32, the first live trade: 1756904113.029678,111038.0,0.00093,sell,834790675867468,1756904112363
    trades = rows[rows["kind"] == TRADE]
    t = trades[0]
    assert (t["ts_ns"], t["exch_ts_ns"], t["side"], t["price"], t["size"]) == (
        1756904113029678000, 1756904112363 * 1_000_000, -1, 111038.0, 0.00093)
    # line 1344: 1756904600.6650734,111148.0,0.00054,buy,763928812513627,1756904600222
    t = trades[trades["ts_ns"] == 1756904600665073400]
    assert len(t) == 1 and (t["price"][0], t["size"][0], t["side"][0]) == (111148.0, 0.00054, 1)
    # prices lines 2-3 (bid 111038.0 x 8.84885, ask 111039.0 x 0.0036 at 1756904112.7999077) -> one touch row
    touch = rows[(rows["kind"] == BOOK) & (rows["ts_ns"] == 1756904112799907700)][0]
    assert (touch["bid_px"], touch["bid_sz"], touch["ask_px"], touch["ask_sz"]) == (111038.0, 8.84885, 111039.0, 0.0036)
    assert np.isnan(touch["bids"]).all()  # a bbo row has no depth


def test_csv_eth_and_exchange_clock(data):
    reader = build("hyperliquid_csv", dir=str(CSV_DIR), coin="ETH")
    drain(reader)
    out = reader.describe()
    # trades 782 - 30 replayed - 1 (line 32 repeats the last replayed trade); prices 3,590 rows = 1,795 pairs.
    assert out["events"] == {"trade": 751, "book": 1795 + 446, "stat": 0}
    assert out["duplicate_trades_dropped"] == 1
    rows = drain(build("hyperliquid_csv", dir=str(CSV_DIR), coin="ETH", clock="exchange", replayed_trades="keep"))
    assert (rows["ts_ns"] == rows["exch_ts_ns"]).all() and len(rows) == 781 + 2241
    assert rows["ts_ns"][0] == 1756904107451 * 1_000_000  # the oldest replayed trade, at its own time


def test_csv_single_files_and_ties_order_orderbooks_prices_trades(tmp_path):
    t = "1756904112.5"
    (tmp_path / "prices_X.csv").write_text("timestamp,price,size,side,exchange_timestamp\n"
                                           f"{t},10.0,1.0,bid,1756904112000\n{t},11.0,2.0,ask,1756904112000\n"
                                           "1756904112.6,10.5,1.0,bid,1756904112100\n")
    (tmp_path / "trades_X.csv").write_text("timestamp,price,size,side,trade_id,exchange_timestamp\n"
                                           "1756904112.4,10.0,1.0,sell,1,1756904112000\n"
                                           f"{t},11.0,1.0,buy,2,1756904112000\n")
    header = "timestamp,sequence,exchange_timestamp,bid_price_0,bid_size_0,ask_price_0,ask_size_0"  # 1 level
    (tmp_path / "orderbooks_X.csv").write_text(f"{header}\n{t},1756904112000,1756904112000,10.0,1.0,11.0,2.0\n")
    reader = build("hyperliquid_csv", dir=str(tmp_path), coin="X")
    rows = drain(reader)
    # The replay is the trades rows sharing the first timestamp (1756904112.4): only trade 1.
    assert [(int(r["kind"]), int(r["ts_ns"])) for r in rows] == [
        (BOOK, 1756904112500000000), (BOOK, 1756904112500000000), (TRADE, 1756904112500000000),
        (BOOK, 1756904112600000000)]
    assert np.isnan(rows[0]["bids"]).all()  # a one-level book has nothing beyond the touch
    lone = rows[3]
    assert lone["bid_px"] == 10.5 and np.isnan(lone["ask_px"])  # a lone bid row: the ask side was null
    assert reader.describe()["lone_bbo_sides"] == 1
    only = build("hyperliquid_csv", coin="X", trades=str(tmp_path / "trades_X.csv"))
    assert len(drain(only)) == 1 and only.describe()["replayed_trades"]["count"] == 1


def test_csv_params_need_files_and_a_missing_file_in_dir_is_named(tmp_path):
    with pytest.raises(ValueError, match="needs `dir`"):
        build("hyperliquid_csv", coin="BTC")
    with pytest.raises(DataError, match="no orderbooks_DOGE.csv"):
        drain(build("hyperliquid_csv", dir=str(tmp_path), coin="DOGE"))


def _csv_lines(kind: str, count: int) -> list[bytes]:
    return (CSV_DIR / f"{kind}_BTC.csv").read_bytes().splitlines()[:count]


def _corrupt_csv(kind: str, where: int, blob: bytes, lines: list[bytes]) -> list[bytes]:
    lines = list(lines)
    cells = lines[where].split(b",")
    pick = len(blob) % len(cells)
    if kind == "random bytes":
        lines[where] = blob
    elif kind == "truncated":
        lines[where] = lines[where][: 1 + len(blob) * 37 % (len(lines[where]) - 1)]
    elif kind == "deleted field":
        del cells[pick]
        lines[where] = b",".join(cells)
    elif kind == "extra field":
        cells.insert(pick, b"1.0")
        lines[where] = b",".join(cells)
    elif kind == "not a number":
        cells[pick] = [b"abc", b"nan", b"inf", b"", b"-1", b"1.2.3"][len(blob) % 6]
        lines[where] = b",".join(cells)
    else:  # time going backwards (never the first data row: nothing comes before it)
        cells[0] = b"%.1f" % (float(lines[1].split(b",")[0]) - 1)
        lines[where] = b",".join(cells)
    return lines


CSV_KINDS = ["random bytes", "truncated", "deleted field", "extra field", "not a number", "backwards"]


@FUZZ
@given(file=st.sampled_from(["prices", "trades", "orderbooks"]), kind=st.sampled_from(CSV_KINDS),
       where=st.integers(2, 39), blob=_bytes)
def test_csv_fuzz_corrupted_rows_stop_or_are_counted_never_silently_wrong(tmp_path, data, file, kind, where, blob):
    """A corrupted row is bad data at its line, or (a change to a column the reader does not use) leaves
    the events exactly as they were."""
    clean = _csv_lines(file, 40)
    (tmp_path / f"{file}_BTC.csv").write_bytes(b"\n".join(clean) + b"\n")
    expected = drain(build("hyperliquid_csv", coin="BTC", **{file: str(tmp_path / f"{file}_BTC.csv")}))
    path = tmp_path / f"{file}_BTC.csv"
    path.write_bytes(b"\n".join(_corrupt_csv(kind, where, blob, clean)) + b"\n")
    try:
        rows = drain(build("hyperliquid_csv", coin="BTC", **{file: str(path)}))
    except DataError as err:
        assert err.line == where + 1 and f"{file}_BTC.csv:{where + 1}:" in str(err)
    else:
        assert rows.tobytes() == expected.tobytes(), f"{kind} at line {where + 1} changed the events silently"
    reader = build("hyperliquid_csv", SKIP_CONTEXT, coin="BTC", **{file: str(path)})
    drain(reader)
    assert sum(reader.describe()["skipped"].values()) <= 1


def test_csv_bad_rows_name_file_line_and_reason(tmp_path):
    head = "timestamp,price,size,side,trade_id,exchange_timestamp\n"
    good = "1756904112.5,10.0,1.0,buy,1,1756904112000\n1756904112.6,10.0,1.0,buy,2,1756904112100\n"
    cases = {
        "1756904112.7,10.0,1.0,buy,3\n": "wrong column count",
        "1756904112.7,ten,1.0,buy,3,1756904112200\n": "not a number",
        "1756904112.7,10.0,1.0,hold,3,1756904112200\n": "bad side",
        "1756904112.1234567891,10.0,1.0,buy,3,1756904112200\n": "bad timestamp",
        "1756904112.7,10.0,1.0,buy,3,175690411220\n": "clocks disagree",
        "1756904112.4,10.0,1.0,buy,3,1756904112200\n": "time went backwards",
    }
    for line, reason in cases.items():
        path = tmp_path / "trades_X.csv"
        path.write_text(head + good + line + good.replace(",1,", ",7,").replace(",2,", ",8,").replace(
            "112.5", "113.5").replace("112.6", "113.6"))
        with pytest.raises(DataError, match=rf"trades_X\.csv:4: {reason}:"):
            drain(build("hyperliquid_csv", coin="X", trades=str(path)))
        reader = build("hyperliquid_csv", SKIP_CONTEXT, coin="X", trades=str(path))
        assert len(drain(reader)) == 3 and reader.describe()["skipped"] == {reason: 1}, reason
    crossed = tmp_path / "prices_X.csv"
    crossed.write_text("timestamp,price,size,side,exchange_timestamp\n"
                       "1756904112.5,11.0,1.0,bid,1756904112000\n1756904112.5,10.0,1.0,ask,1756904112000\n")
    with pytest.raises(DataError, match=r"prices_X\.csv:2: crossed book"):
        drain(build("hyperliquid_csv", coin="X", prices=str(crossed)))
    wrong = tmp_path / "orderbooks_X.csv"
    wrong.write_text("time,bid,ask\n1,2,3\n")
    with pytest.raises(DataError, match=r"orderbooks_X\.csv:1: unexpected header"):
        drain(build("hyperliquid_csv", coin="X", orderbooks=str(wrong)))


def test_csv_gzip_and_truncated_gzip(tmp_path, data):
    raw = (CSV_DIR / "orderbooks_BTC.csv").read_bytes()
    whole = tmp_path / "orderbooks_BTC.csv.gz"
    whole.write_bytes(gzip.compress(raw, mtime=0))
    assert len(drain(build("hyperliquid_csv", coin="BTC", orderbooks=str(whole)))) == 446
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut\.csv\.gz:\d+: corrupt file"):
        drain(build("hyperliquid_csv", coin="BTC", orderbooks=str(cut)))
    reader = build("hyperliquid_csv", SKIP_CONTEXT, coin="BTC", orderbooks=str(cut))
    assert 0 < len(drain(reader)) < 446 and reader.describe()["skipped"] == {"corrupt file": 1}
