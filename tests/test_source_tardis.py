"""source: tardis -- the real tardis.dev samples, every data type, bad data, compression, and fuzzing."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sigkit
from sigkit.events import BOOK, STAT, TRADE
from conftest import corrupt_csv_line
from sigkit import csvblocks
from sigkit_tardis.reader import HEADERS, Tardis, TardisParams

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLES = SHARED / "nautilus_tardis_samples"


def samples() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip("../shared/data is absent: the real tardis.dev samples live in ../shared/data/"
                    "nautilus_tardis_samples, beside the repository")
    return SAMPLES


def read(path, policy="stop", **params):
    """(rows of all chunks, the reader) for one file."""
    context = sigkit.RunContext(target=sigkit.Market("x", "y"), horizon_ns=1, on_bad_line=policy)
    reader = Tardis(TardisParams(path=str(path), **params), context)
    chunks = list(reader.chunks())
    rows = np.concatenate(chunks) if chunks else np.zeros(0, sigkit.EVENT_DTYPE)
    return rows, reader


def write(tmp_path, name: str, data_type: str, rows: list[str]) -> Path:
    path = tmp_path / name
    path.write_text(",".join(HEADERS[data_type]) + "\n" + "".join(r + "\n" for r in rows))
    return path


# -- the real samples ------------------------------------------------------------------------------------
def test_real_trades():
    rows, reader = read(samples() / "bitmex_trades_XBTUSD.csv")
    assert len(rows) == 10 and set(rows["kind"]) == {TRADE}
    first = rows[0]
    # bitmex,XBTUSD,1583020803145000,1583020803307160,ccc3c1fa-...,sell,8531.5,2152
    assert (first["ts_ns"], first["exch_ts_ns"]) == (1583020803307160000, 1583020803145000000)
    assert (first["venue"], first["symbol"], first["side"], first["price"], first["size"]) == \
        ("bitmex", "XBTUSD", -1, 8531.5, 2152.0)
    assert (rows["side"] == -1).all() and (rows["price"] == 8531.5).all()  # all 10 are sells at 8531.5
    assert rows["ts_ns"][-1] == 1583020803336743000 and rows["exch_ts_ns"][-1] == 1583020803276000000
    info = reader.describe()
    assert info["events"] == {"trade": 10, "book": 0, "stat": 0} and info["data_type"] == "trades"
    assert info["skipped"] == {} and info["first_ts_ns"] == 1583020803307160000


def test_real_trades_on_exchange_clock():
    rows, _ = read(samples() / "bitmex_trades_XBTUSD.csv", clock="exchange")
    assert len(rows) == 10
    assert (rows["ts_ns"] == rows["exch_ts_ns"]).all()
    assert rows["ts_ns"][0] == 1583020803145000000 and rows["ts_ns"][-1] == 1583020803276000000


def test_real_quotes():
    rows, reader = read(samples() / "huobi-dm-swap_quotes_BTC-USD.csv")
    assert len(rows) == 10 and set(rows["kind"]) == {BOOK}
    # huobi-dm-swap,BTC-USD,1588291201099000,1588291201234268,5494,8629.3,8629.2,806
    first = rows[0]
    assert (first["bid_px"], first["bid_sz"], first["ask_px"], first["ask_sz"]) == (8629.2, 806.0, 8629.3, 5494.0)
    assert first["ts_ns"] == 1588291201234268000 and first["exch_ts_ns"] == 1588291201099000000
    assert rows[-1]["ts_ns"] == 1588291201927888000 and rows[-1]["bid_sz"] == 847.0
    assert (rows["bid_px"] < rows["ask_px"]).all()
    assert reader.describe()["events"]["book"] == 10


@pytest.mark.parametrize("name, levels", [("binance-futures_book_snapshot_25_BTCUSDT.csv", 5),
                                          ("binance-futures_book_snapshot_5_BTCUSDT.csv", 4)])
def test_real_book_snapshots(name, levels):
    rows, reader = read(samples() / name)
    assert len(rows) == 10 and set(rows["kind"]) == {BOOK}
    first = rows[0]
    assert first["ts_ns"] == 1598918403810979000 and first["exch_ts_ns"] == 1598918403696000000
    assert (first["bid_px"], first["bid_sz"], first["ask_px"], first["ask_sz"]) == (11657.07, 10.896, 11657.08, 1.714)
    assert tuple(first["bids"][0]) == (11656.97, 0.2) and tuple(first["asks"][0]) == (11657.54, 5.4)
    assert not np.isnan(first["bids"][:levels]).any()
    assert np.isnan(first["bids"][levels:]).all()  # book_snapshot_5: 4 levels below the touch
    assert (np.diff(first["bids"][:levels, 0]) < 0).all() and (np.diff(first["asks"][:levels, 0]) > 0).all()
    assert (rows["bid_px"] < rows["ask_px"]).all()
    assert reader.describe()["data_type"] == name.split("_", 1)[1].rsplit("_", 1)[0]


def test_real_snapshot_last_rows():
    rows, _ = read(samples() / "binance-futures_book_snapshot_5_BTCUSDT.csv")
    # ...,1598918404284000,1598918404289427,11657.08,1.393,11657.07,10.881,...
    assert rows[-1]["ts_ns"] == 1598918404289427000 and rows[-1]["ask_sz"] == 1.393
    rows, _ = read(samples() / "binance-futures_book_snapshot_25_BTCUSDT.csv")
    assert rows[-1]["ts_ns"] == 1598918404009468000 and rows[-1]["ask_sz"] == 1.475


def test_real_incremental_book():
    rows, reader = read(samples() / "deribit_incremental_book_L2_BTC-PERPETUAL.csv")
    # 15 snapshot rows, all asks, one local_timestamp: one message, one BOOK row
    assert len(rows) == 1
    row = rows[0]
    assert row["ts_ns"] == 1585699200355684000 and row["exch_ts_ns"] == 1585699200245000000
    assert math.isnan(row["bid_px"]) and (row["ask_px"], row["ask_sz"]) == (6421.5, 18640.0)
    assert [tuple(level) for level in row["asks"]] == [(6422.0, 1190.0), (6422.5, 1080.0), (6423.0, 1400.0),
                                                        (6423.5, 6630.0), (6424.0, 37070.0)]
    assert reader.describe()["events"] == {"trade": 0, "book": 1, "stat": 0}


def test_real_files_gzip_and_zstd(tmp_path):
    import zstandard

    source = samples() / "bitmex_trades_XBTUSD.csv"
    plain, _ = read(source)
    gz = tmp_path / "t.csv.gz"
    gz.write_bytes(gzip.compress(source.read_bytes()))
    zst = tmp_path / "t.csv.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(source.read_bytes()))
    assert read(gz)[0].tobytes() == plain.tobytes()
    assert read(zst)[0].tobytes() == plain.tobytes()


# -- the other data types, on small files in the exact layouts -----------------------------------------
def test_incremental_book_updates_and_new_snapshot(tmp_path, monkeypatch):
    monkeypatch.setattr(csvblocks, "BLOCK_BYTES", 100)  # messages cut across blocks
    key = "deribit,BTC-PERPETUAL"
    path = write(tmp_path, "l2.csv", "incremental_book_L2", [
        f"{key},100,1000,true,bid,99,5", f"{key},100,1000,true,bid,98,6", f"{key},100,1000,true,ask,101,7",
        f"{key},100,1000,true,ask,102,8",
        f"{key},200,2000,false,bid,99,0", f"{key},200,2000,false,bid,100,1.5",  # one message: delete + new best
        f"{key},300,3000,false,ask,101,9",
        f"{key},400,4000,true,bid,50,1", f"{key},400,4000,true,ask,60,2",  # a new snapshot resets the book
    ])
    rows, reader = read(path)
    assert rows["ts_ns"].tolist() == [1_000_000, 2_000_000, 3_000_000, 4_000_000]
    assert rows["exch_ts_ns"].tolist() == [100_000, 200_000, 300_000, 400_000]
    assert rows["bid_px"].tolist() == [99, 100, 100, 50] and rows["bid_sz"].tolist() == [5, 1.5, 1.5, 1]
    assert rows["ask_px"].tolist() == [101, 101, 101, 60] and rows["ask_sz"].tolist() == [7, 7, 9, 2]
    assert rows["bids"][0, 0].tolist() == [98, 6] and rows["bids"][1, 0].tolist() == [98, 6]
    assert rows["asks"][2, 0].tolist() == [102, 8]
    assert np.isnan(rows["bids"][3]).all() and np.isnan(rows["asks"][3]).all()
    assert reader.describe()["events"]["book"] == 4


def test_derivative_ticker(tmp_path):
    path = write(tmp_path, "binance-futures_derivative_ticker_BTCUSDT.csv", "derivative_ticker", [
        "binance-futures,BTCUSDT,1590969600000000,1590969600100000,1590998400000000,0.0001,0.00012,34653.577,"
        "9450.5,9448.1,9449.87",
        "binance-futures,BTCUSDT,1590969601000000,1590969601100000,,-0.0002,,,,,",  # only funding known
        "binance-futures,BTCUSDT,1590969602000000,1590969602100000,,,,,9451,,",  # none of the three
    ])
    rows, reader = read(path)
    assert len(rows) == 2 and set(rows["kind"]) == {STAT}
    assert (rows[0]["open_interest"], rows[0]["funding_rate"], rows[0]["mark_price"]) == (34653.577, 0.0001, 9449.87)
    assert rows[1]["funding_rate"] == -0.0002
    assert math.isnan(rows[1]["open_interest"]) and math.isnan(rows[1]["mark_price"])
    assert rows[0]["ts_ns"] == 1590969600100000000 and rows[0]["exch_ts_ns"] == 1590969600000000000
    info = reader.describe()
    assert info["data_type"] == "derivative_ticker" and info["rows_without_values"] == 1


def test_liquidations(tmp_path):
    path = write(tmp_path, "binance-futures_liquidations_BTCUSDT.csv", "liquidations", [
        "binance-futures,BTCUSDT,1590969600000000,1590969600100000,,buy,9450.5,0.25",
        "binance-futures,BTCUSDT,1590969601000000,1590969601100000,abc,sell,9440,1.5",
    ])
    rows, reader = read(path)
    assert reader.describe()["data_type"] == "liquidations"
    assert set(rows["kind"]) == {STAT}
    assert rows["side"].tolist() == [1, -1]  # buy: a short was liquidated (a forced buy)
    assert rows["price"].tolist() == [9450.5, 9440.0] and rows["size"].tolist() == [0.25, 1.5]
    # the same header without the name reads as trades, unless data_type says so
    other = tmp_path / "x.csv"
    other.write_bytes(path.read_bytes())
    assert set(read(other)[0]["kind"]) == {TRADE}
    assert set(read(other, data_type="liquidations")[0]["kind"]) == {STAT}


def test_trade_sides_and_venue_override(tmp_path):
    path = write(tmp_path, "t.csv", "trades", ["okex,BTC-USDT,1,10,,buy,100,1", "okex,BTC-USDT,2,20,,sell,101,2",
                                               "okex,BTC-USDT,3,30,,unknown,102,3"])
    rows, _ = read(path, venue="okx")
    assert rows["side"].tolist() == [1, -1, 0] and set(rows["venue"]) == {"okx"}


def test_unknown_header_is_line_1(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("exchange,symbol,timestamp,local_timestamp,side,price\nx,y,1,1,buy,1\n")
    with pytest.raises(sigkit.DataError, match=r"x\.csv:1: unknown header"):
        read(path)
    with pytest.raises(sigkit.DataError, match=r":1: unknown header"):
        read(samples() / "bitmex_trades_XBTUSD.csv", data_type="quotes")


# -- bad data ---------------------------------------------------------------------------------------------
TRADES = ["bitmex,XBTUSD,1000,1100,,buy,100,1", "bitmex,XBTUSD,2000,2100,,sell,101,2",
          "bitmex,XBTUSD,3000,3100,,buy,102,3", "bitmex,XBTUSD,4000,4100,,sell,103,4"]


@pytest.mark.parametrize("bad_line, reason", [
    ("bitmex,XBTUSD,2500,2600,,buy,100", "wrong column count"),
    ("bitmex,XBTUSD,2500,2600,,buy,abc,1", "not a number"),
    ("bitmex,XBTUSD,2500,2600,,buy,nan,1", "not a number"),
    ("bitmex,XBTUSD,2500,2600,,buy,100,inf", "not a number"),
    ("bitmex,XBTUSD,2500,2600,,buy,,1", "not a number"),
    ("bitmex,XBTUSD,2500,2600,,hold,100,1", "unknown side"),
    ("bitmex,XBTUSD,2500,,,buy,100,1", "bad timestamp"),
    ("bitmex,XBTUSD,2500,1000,,buy,100,1", "time went backwards"),
    ("bitmex,XBTUSD,2500,2600,,buy,100,1,extra", "wrong column count"),
])
def test_bad_trade_line(tmp_path, bad_line, reason):
    path = write(tmp_path, "t.csv", "trades", TRADES[:2] + [bad_line] + TRADES[2:])
    with pytest.raises(sigkit.DataError, match=rf"t\.csv:4: {reason}"):
        read(path)
    rows, reader = read(path, "skip")
    assert rows["price"].tolist() == [100, 101, 102, 103]
    assert reader.describe()["skipped"] == {reason: 1}


def test_first_bad_line_is_reported_whatever_its_kind(tmp_path):
    path = write(tmp_path, "q.csv", "quotes", [
        "x,Y,1,10,1,101,100,1",
        "x,Y,2,5,1,101,100,1",  # line 3: time went backwards
        "x,Y,3,30,1,101,abc,1",  # line 4: not a number (found by the parser, before the order check)
        "x,Y,4,40,1,100,101,1",  # line 5: crossed
    ])
    with pytest.raises(sigkit.DataError, match=r"q\.csv:3: time went backwards"):
        read(path)
    rows, reader = read(path, "skip")
    assert len(rows) == 1
    assert reader.describe()["skipped"] == {"crossed book": 1, "not a number": 1, "time went backwards": 1}


def test_exchange_clock_reorders_within_window(tmp_path):
    path = write(tmp_path, "t.csv", "trades", ["x,Y,1000000,1,,buy,1,1", "x,Y,900000,2,,buy,2,1",
                                               "x,Y,3000000,3,,buy,3,1", "x,Y,1500000,4,,buy,4,1"])
    rows, _ = read(path, clock="exchange", reorder_ns=sigkit.parse_duration("2s"))
    assert rows["price"].tolist() == [2, 1, 4, 3]
    with pytest.raises(sigkit.DataError, match=r"t\.csv:5: time went backwards.*re-ordering window"):
        read(path, clock="exchange", reorder_ns=sigkit.parse_duration("1s"))


def test_crossed_snapshot_and_half_empty_level(tmp_path):
    cells = ["101", "1", "100", "1"] + [""] * 96
    bad = list(cells)
    bad[2] = "102"
    half = list(cells)
    half[4] = "105"  # asks[1].price without its amount
    path = write(tmp_path, "s.csv", "book_snapshot_25", ["x,Y,1,1," + ",".join(cells), "x,Y,2,2," + ",".join(bad),
                                                         "x,Y,3,3," + ",".join(half)])
    with pytest.raises(sigkit.DataError, match=r"s\.csv:3: crossed book"):
        read(path)
    rows, reader = read(path, "skip")
    assert len(rows) == 1 and np.isnan(rows[0]["bids"]).all()
    assert reader.describe()["skipped"] == {"crossed book": 1, "not a number": 1}


def test_truncated_gzip(tmp_path):
    body = ",".join(HEADERS["trades"]) + "\n" + "".join(
        f"bitmex,XBTUSD,{i * 1000},{i * 1000 + 5},,buy,{100 + i % 7},1\n" for i in range(1, 20001))
    path = tmp_path / "t.csv.gz"
    data = gzip.compress(body.encode())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(sigkit.DataError, match="corrupt file"):
        read(path)
    rows, reader = read(path, "skip")
    assert reader.describe()["skipped"] == {"corrupt file": 1}
    assert 0 < len(rows) < 20000 and (np.diff(rows["ts_ns"]) > 0).all()


# -- fuzz -------------------------------------------------------------------------------------------------
FUZZ_FILES = {
    "trades": TRADES,
    "quotes": ["x,Y,1,10,5,101,100,6", "x,Y,2,20,5,102,100,6", "x,Y,3,30,5,103,101,6", "x,Y,4,40,5,104,102,6"],
    "derivative_ticker": ["x,Y,1,10,5,0.1,0.1,100,9,9,9", "x,Y,2,20,5,0.2,0.1,101,9,9,9",
                          "x,Y,3,30,5,0.3,0.1,102,9,9,9", "x,Y,4,40,5,0.4,0.1,103,9,9,9"],
    "book_snapshot_5": [f"x,Y,{i},{i * 10}," + ",".join(["101", "1", "100", "1"] * 5) for i in range(1, 5)],
    "incremental_book_L2": ["x,Y,1,10,true,bid,100,1", "x,Y,1,10,true,ask,101,1", "x,Y,2,20,false,bid,100.5,2",
                            "x,Y,3,30,false,ask,101,0"],
}

corruption = st.one_of(
    st.binary(max_size=40).map(lambda b: ("bytes", b.replace(b"\n", b""))),
    st.integers(0, 60).map(lambda n: ("truncate", n)),
    st.integers(0, 10).map(lambda n: ("delete field", n)),
    st.integers(0, 10).map(lambda n: ("extra field", n)),
    st.tuples(st.integers(0, 10), st.sampled_from(["abc", "nan", "-inf", "1e999", "", "-5", "0x1", "1,5"]))
    .map(lambda t: ("replace field", t)),
    st.just(("time backwards", None)),
)


def corrupt(line: str, how) -> bytes:
    if how[0] == "time backwards":
        return corrupt_csv_line(line, ("replace field", (3, "1")))  # local time before the first row's
    return corrupt_csv_line(line, how)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data_type=st.sampled_from(sorted(FUZZ_FILES)), which=st.integers(0, 3), how=corruption,
       policy=st.sampled_from(["stop", "skip"]), tiny_blocks=st.booleans())
def test_fuzz_corrupted_line(tmp_path_factory, monkeypatch, data_type, which, how, policy, tiny_blocks):
    monkeypatch.setattr(csvblocks, "BLOCK_BYTES", 64 if tiny_blocks else 4 << 20)
    lines = list(FUZZ_FILES[data_type])
    original = lines[which]
    body = [line.encode() for line in lines]
    body[which] = corrupt(original, how)
    path = tmp_path_factory.mktemp("fuzz") / f"f_{data_type}.csv"
    path.write_bytes(",".join(HEADERS[data_type]).encode() + b"\n" + b"\n".join(body) + b"\n")
    try:
        rows, reader = read(path, policy)
    except sigkit.DataError as err:
        assert policy == "stop" and f"f_{data_type}.csv:" in str(err)
        return
    skipped = sum(reader.describe()["skipped"].values())
    assert (np.diff(rows["ts_ns"]) >= 0).all()
    assert (~(rows["bid_px"] >= rows["ask_px"])).all()
    if policy == "stop":
        assert skipped == 0
    if data_type == "incremental_book_L2":
        return
    good, _ = read(write(tmp_path_factory.mktemp("good"), f"g_{data_type}.csv", data_type, lines))
    # every event but the one from the corrupted line is exactly the clean file's
    kept = [r.tobytes() for r in rows if r.tobytes() in {g.tobytes() for g in good}]
    assert len(kept) >= len(rows) - 1 and len(kept) >= len(good) - 1 - skipped
    assert len(rows) + skipped <= len(lines) + (1 if data_type == "derivative_ticker" else 0)
