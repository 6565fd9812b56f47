"""source: binance_archive -- every data.binance.vision layout (values from the hftbacktest 2024-08-08 BTCUSDT
recordings), ms and µs times, layout and symbol detection, bad data, compression, and fuzzing."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sigkit
from sigkit.events import BOOK, TRADE
from sigkit_binance.archive import Archive, ArchiveParams
from conftest import corrupt_csv_line
from sigkit import csvblocks

SPOT_TRADES = ["3735683259,61837.63000000,0.02000000,1236.75260000,1723161255342,True,True",
               "3735683260,61837.63000000,0.04800000,2968.20624000,1723161255617,True,True",
               "3735683261,61837.64000000,0.00100000,61.83764000,1723161255700,False,True"]
USDM_TRADES = ["id,price,qty,quote_qty,time,is_buyer_maker",
               "5183000001,61800.30,0.010,618.003,1723161256313,false",
               "5183000002,61800.20,0.500,30900.100,1723161256313,true"]
COINM_TRADES = ["id,price,qty,base_qty,time,is_buyer_maker",
                "610000001,61795.1,3,0.00485475,1723161256401,true"]
SPOT_AGG_US = ["2020000000,94591.79000000,0.00010000,4392000000,4392000001,1735689600123456,True,True",
               "2020000001,94591.80000000,0.01300000,4392000002,4392000002,1735689600123999,False,True"]
FUTURES_AGG = ["agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker",
               "2281000001,61800.30,0.120,5183000001,5183000003,1723161256313,false"]
BOOK_TICKER = ["update_id,best_bid_price,best_bid_qty,best_ask_price,best_ask_qty,transaction_time,event_time",
               "5123107839020,61800.20,2.507,61800.30,2.510,1723161256313,1723161256313",
               "5123107839021,61800.20,2.507,61800.30,2.600,1723161256312,1723161256314"]


def write(tmp_path, name, lines) -> str:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def read(path, policy="stop", **params):
    context = sigkit.RunContext(target=sigkit.Market("x", "y"), horizon_ns=1, on_bad_line=policy)
    reader = Archive(ArchiveParams(path=str(path), **params), context)
    chunks = list(reader.chunks())
    return (np.concatenate(chunks) if chunks else np.zeros(0, sigkit.EVENT_DTYPE)), reader


def test_spot_trades_no_header(tmp_path):
    rows, reader = read(write(tmp_path, "BTCUSDT-trades-2024-08-08.csv", SPOT_TRADES))
    assert rows["kind"].tolist() == [TRADE] * 3
    assert rows["ts_ns"].tolist() == [1723161255342000000, 1723161255617000000, 1723161255700000000]
    assert (rows["exch_ts_ns"] == rows["ts_ns"]).all()
    assert rows["price"].tolist() == [61837.63, 61837.63, 61837.64]
    assert rows["size"].tolist() == [0.02, 0.048, 0.001]
    assert rows["side"].tolist() == [-1, -1, 1]  # buyer was maker -> seller took liquidity
    assert set(rows["venue"]) == {"binance"} and set(rows["symbol"]) == {"BTCUSDT"}
    info = reader.describe()
    assert info["kind"] == "trades" and info["header"] is False and info["events"]["trade"] == 3


@pytest.mark.parametrize("lines, side, price, size, ts_ns", [
    (USDM_TRADES, [1, -1], [61800.3, 61800.2], [0.01, 0.5], 1723161256313000000),
    (COINM_TRADES, [-1], [61795.1], [3.0], 1723161256401000000),
])
def test_futures_trades_with_header(tmp_path, lines, side, price, size, ts_ns):
    rows, reader = read(write(tmp_path, "BTCUSDT-trades-2024-08-08.csv", lines), venue="binance-usdm")
    assert rows["side"].tolist() == side and rows["price"].tolist() == price and rows["size"].tolist() == size
    assert rows["ts_ns"][0] == ts_ns and set(rows["venue"]) == {"binance-usdm"}
    assert reader.describe()["header"] is True


def test_spot_aggtrades_in_microseconds(tmp_path):
    rows, reader = read(write(tmp_path, "BTCUSDT-aggTrades-2025-01-01.csv", SPOT_AGG_US))
    assert rows["ts_ns"].tolist() == [1735689600123456000, 1735689600123999000]
    assert rows["side"].tolist() == [-1, 1] and rows["price"].tolist() == [94591.79, 94591.8]
    assert rows["size"].tolist() == [0.0001, 0.013]
    assert reader.describe()["kind"] == "aggTrades"


def test_futures_aggtrades(tmp_path):
    rows, _ = read(write(tmp_path, "ETHUSDT-aggTrades-2024-08-08.csv", FUTURES_AGG))
    assert rows["ts_ns"].tolist() == [1723161256313000000] and rows["side"].tolist() == [1]
    assert rows["size"].tolist() == [0.12] and set(rows["symbol"]) == {"ETHUSDT"}


def test_book_ticker_sorted_by_transaction_time(tmp_path):
    rows, reader = read(write(tmp_path, "BTCUSDT-bookTicker-2024-08-08.csv", BOOK_TICKER))
    assert rows["kind"].tolist() == [BOOK, BOOK]
    # the second row's transaction_time is 1 ms earlier: sorted in within the re-ordering window
    assert rows["ts_ns"].tolist() == [1723161256312000000, 1723161256313000000]
    assert rows["ask_sz"].tolist() == [2.6, 2.51]
    assert (rows["bid_px"] == 61800.2).all() and (rows["ask_px"] == 61800.3).all()
    assert reader.describe()["events"]["book"] == 2


def test_layout_told_by_the_columns_when_the_name_says_nothing(tmp_path):
    for lines, kind in ((SPOT_TRADES, "trades"), (SPOT_AGG_US, "aggTrades"), (FUTURES_AGG[1:], "aggTrades"),
                        (BOOK_TICKER[1:], "bookTicker"), (USDM_TRADES[1:], "trades")):
        rows, reader = read(write(tmp_path, "data.csv", lines), symbol="BTCUSDT")
        assert reader.describe()["kind"] == kind and len(rows) == len(lines)


def test_symbol_param_and_missing_symbol(tmp_path):
    rows, _ = read(write(tmp_path, "BTCUSDT-trades-2024-08-08.csv", SPOT_TRADES), symbol="BTC-SPOT")
    assert set(rows["symbol"]) == {"BTC-SPOT"}
    with pytest.raises(sigkit.DataError, match="cannot tell the symbol"):
        read(write(tmp_path, "trades.csv", SPOT_TRADES))


def test_unknown_layout_and_kind_mismatch(tmp_path):
    with pytest.raises(sigkit.DataError, match=r"x\.csv:1: unknown layout"):
        read(write(tmp_path, "x.csv", ["a,b,c", "1,2,3"]), symbol="S")
    with pytest.raises(sigkit.DataError, match=r":1: unknown layout: no Binance archive header or data line"):
        read(write(tmp_path, "x.csv", ["1,2,3,4,5"]), symbol="S")
    with pytest.raises(sigkit.DataError, match=r":1: unknown layout: the header is a bookTicker"):
        read(write(tmp_path, "BTCUSDT-trades-2024-08-08.csv", BOOK_TICKER))


@pytest.mark.parametrize("bad_line, reason", [
    ("3735683262,61837.64000000,0.001,61.8,1723161255800,False", "wrong column count"),
    ("3735683262,abc,0.001,61.8,1723161255800,False,True", "not a number"),
    ("3735683262,61837.64,nan,61.8,1723161255800,False,True", "not a number"),
    ("3735683262,61837.64,0.001,61.8,1723161255800,maybe,True", "not a number"),
    ("3735683262,61837.64,0.001,61.8,-5,False,True", "bad timestamp"),
    ("3735683262,61837.64,0.001,61.8,1723161250000,False,True", "time went backwards"),
])
def test_bad_lines(tmp_path, bad_line, reason):
    path = write(tmp_path, "BTCUSDT-trades-2024-08-08.csv", SPOT_TRADES[:2] + [bad_line] + SPOT_TRADES[2:])
    with pytest.raises(sigkit.DataError, match=rf"\.csv:3: {reason}"):
        read(path)
    rows, reader = read(path, "skip")
    assert len(rows) == 3 and reader.describe()["skipped"] == {reason: 1}


def test_crossed_book_ticker(tmp_path):
    lines = BOOK_TICKER + ["5123107839022,61800.40,1,61800.30,1,1723161256314,1723161256314"]
    with pytest.raises(sigkit.DataError, match=r":4: crossed book"):
        read(write(tmp_path, "BTCUSDT-bookTicker-2024-08-08.csv", lines))


def test_gzip_zstd_and_truncated_gzip(tmp_path):
    import zstandard

    body = "".join(f"{i},{61800 + i % 9}.5,0.01,618,{1723161255342 + i},{i % 2 == 0},True\n"
                   for i in range(30000)).encode()
    (tmp_path / "BTCUSDT-trades-2024-08-08.csv.gz").write_bytes(gzip.compress(body))
    (tmp_path / "BTCUSDT-trades-2024-08-08.csv.zst").write_bytes(zstandard.ZstdCompressor().compress(body))
    rows, _ = read(tmp_path / "BTCUSDT-trades-2024-08-08.csv.gz")
    assert len(rows) == 30000 and rows["side"][:2].tolist() == [-1, 1]
    assert read(tmp_path / "BTCUSDT-trades-2024-08-08.csv.zst")[0].tobytes() == rows.tobytes()
    cut = tmp_path / "BTCUSDT-trades-2024-08-09.csv.gz"
    data = gzip.compress(body)
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(sigkit.DataError, match="corrupt file"):
        read(cut)
    part, reader = read(cut, "skip")
    assert reader.describe()["skipped"] == {"corrupt file": 1}
    assert 0 < len(part) < 30000 and part.tobytes() == rows[: len(part)].tobytes()


corruption = st.one_of(
    st.binary(max_size=40).map(lambda b: ("bytes", b.replace(b"\n", b""))),
    st.integers(0, 60).map(lambda n: ("truncate", n)),
    st.integers(0, 7).map(lambda n: ("delete field", n)),
    st.integers(0, 7).map(lambda n: ("extra field", n)),
    st.tuples(st.integers(0, 7), st.sampled_from(["abc", "nan", "inf", "", "-1", "1e999", "maybe", "0x10"]))
    .map(lambda t: ("replace field", t)),
)


def corrupt(line: str, how) -> bytes:
    return corrupt_csv_line(line, how)


FUZZ = {"BTCUSDT-trades-2024-08-08.csv": SPOT_TRADES, "BTCUSDT-aggTrades-2025-01-01.csv": SPOT_AGG_US,
        "BTCUSDT-bookTicker-2024-08-08.csv": BOOK_TICKER, "BTCUSDT-trades-2024-08-07.csv": USDM_TRADES}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(FUZZ)), which=st.integers(0, 2), how=corruption,
       policy=st.sampled_from(["stop", "skip"]), tiny_blocks=st.booleans())
def test_fuzz_corrupted_line(tmp_path_factory, monkeypatch, name, which, how, policy, tiny_blocks):
    monkeypatch.setattr(csvblocks, "BLOCK_BYTES", 48 if tiny_blocks else 4 << 20)
    lines = FUZZ[name]
    has_header = lines[0][0].isalpha()
    which = (which % (len(lines) - has_header)) + has_header  # never the header line
    body = [line.encode() for line in lines]
    body[which] = corrupt(lines[which], how)
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / name).write_bytes(b"\n".join(body) + b"\n")
    try:
        rows, reader = read(folder / name, policy)
    except sigkit.DataError as err:
        assert policy == "stop" and name in str(err)
        return
    good, _ = read(write(tmp_path_factory.mktemp("good"), name, lines))
    skipped = sum(reader.describe()["skipped"].values())
    if policy == "stop":
        assert skipped == 0
    assert (np.diff(rows["ts_ns"]) >= 0).all()
    clean = {g.tobytes() for g in good}
    assert sum(r.tobytes() not in clean for r in rows) <= 1  # at most the corrupted line's own event differs
    blank = not body[which].strip(b"\r")  # a blank line is passed over, not bad
    assert len(rows) + skipped == len(good) - blank
