"""The reader building blocks in sigkit.feeds: files, the bad-line policy, chunk building, clocks, books."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
import zstandard

from sigkit import DataError
from sigkit.events import BOOK, STAT, TRADE
from sigkit.feeds import BadLines, ChunkBuilder, L2Book, number, open_lines

LINES = [b'1 {"a":1}', b"", b'2 {"a":2}', b'3 {"a":3}']


def _write(path, payload: bytes) -> None:
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    elif path.name.endswith(".zst"):
        payload = zstandard.ZstdCompressor().compress(payload)
    path.write_bytes(payload)


@pytest.mark.parametrize("name", ["f.txt", "f.txt.gz", "f.txt.zst"])
def test_open_lines_numbers_lines_in_every_compression(tmp_path, name):
    path = tmp_path / name
    _write(path, b"\n".join(LINES) + b"\n")
    got = list(open_lines(path, BadLines(path)))
    assert got == [(1, b'1 {"a":1}'), (3, b'2 {"a":2}'), (4, b'3 {"a":3}')]  # blank line 2 passed over


@pytest.mark.parametrize("name", ["f.txt.gz", "f.txt.zst"])
def test_a_truncated_compressed_file_is_bad_data_at_the_line_where_it_broke(tmp_path, name):
    path = tmp_path / name
    _write(path, b"".join(b"%d {\"x\": %d}\n" % (i, i) for i in range(5000)))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=r"f\.txt\.(gz|zst):\d+: corrupt file") as err:
        list(open_lines(path, BadLines(path)))
    assert 0 < err.value.line <= 5000
    # Under skip, the lines before the break are read and the loss is counted once.
    bad = BadLines(path, "skip")
    got = list(open_lines(path, bad))
    assert len(got) == err.value.line - 1
    assert bad.summary() == {"corrupt file": 1}


def test_a_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list(open_lines(tmp_path / "nope.gz", BadLines("nope.gz")))


def test_bad_lines_stop_raises_with_file_line_and_hint_and_skip_counts():
    with pytest.raises(DataError) as err:
        BadLines("x.csv")(7, "not a number", "price 'abc'")
    assert str(err.value).startswith("x.csv:7: not a number: price 'abc' (")
    assert "--on-bad-line skip" in str(err.value)
    bad = BadLines("x.csv", "skip")
    for line in (3, 9):
        bad(line, "not a number", "...")
    bad(4, "wrong column count", "...")
    assert bad.summary() == {"not a number": 2, "wrong column count": 1}
    assert bad.first == {"not a number": 3, "wrong column count": 4}


def test_number_refuses_nan_inf_and_text():
    assert number("61837.63000000") == 61837.63
    for text in ("nan", "inf", "-inf", "abc", ""):
        with pytest.raises(ValueError):
            number(text)


def _all(builder: ChunkBuilder) -> np.ndarray:
    return np.concatenate(list(builder.finish()))


def test_chunk_builder_fills_every_column_and_counts():
    b = ChunkBuilder(BadLines("f"))
    b.trade(1, 10, 9, "binance", "BTCUSDT", -1, 100.5, 0.2)
    b.book(2, 11, 10, "binance", "BTCUSDT", 100.0, 1.0, 101.0, 2.0,
           bids=np.array([[99.0, 3.0]]), asks=np.array([[102.0, 4.0], [103.0, 5.0]]))
    b.stat(3, 12, 12, "hyperliquid", "BTC", open_interest=5.0, funding_rate=1e-5, mark_price=100.7)
    out = _all(b)
    assert out["ts_ns"].tolist() == [10, 11, 12] and out["exch_ts_ns"].tolist() == [9, 10, 12]
    assert out["kind"].tolist() == [TRADE, BOOK, STAT]
    assert out["venue"].tolist() == ["binance", "binance", "hyperliquid"]
    assert out["symbol"].tolist() == ["BTCUSDT", "BTCUSDT", "BTC"]
    assert out["side"][0] == -1 and out["price"][0] == 100.5 and out["size"][0] == 0.2
    assert (out["bid_px"][1], out["ask_sz"][1]) == (100.0, 2.0)
    assert out["bids"][1, 0].tolist() == [99.0, 3.0] and math.isnan(out["bids"][1, 1, 0])
    assert out["asks"][1, :2].tolist() == [[102.0, 4.0], [103.0, 5.0]]
    assert (out["open_interest"][2], out["funding_rate"][2], out["mark_price"][2]) == (5.0, 1e-5, 100.7)
    assert math.isnan(out["price"][2]) and math.isnan(out["bid_px"][0])
    assert b.describe() == {"events": {"trade": 1, "book": 1, "stat": 1}, "first_ts_ns": 10, "last_ts_ns": 12}


def test_chunk_builder_yields_bounded_chunks_in_order():
    b = ChunkBuilder(BadLines("f"), chunk_rows=100)
    chunks = []
    for i in range(1050):
        b.trade(i + 1, 1000 + i, 1000 + i, "v", "s", 1, 1.0, 1.0)
        chunks.extend(b.ready())
    chunks.extend(b.finish())
    assert [len(c) for c in chunks] == [100] * 10 + [50]
    ts = np.concatenate(chunks)["ts_ns"]
    assert (np.diff(ts) == 1).all()


def test_local_clock_refuses_time_going_backwards_and_skip_drops_the_row():
    b = ChunkBuilder(BadLines("f.gz"))
    b.trade(1, 100, 1, "v", "s", 1, 1.0, 1.0)
    with pytest.raises(DataError, match=r"f\.gz:2: time went backwards"):
        b.trade(2, 99, 2, "v", "s", 1, 1.0, 1.0)
    bad = BadLines("f.gz", "skip")
    b = ChunkBuilder(bad)
    for line, ts in enumerate([100, 99, 100, 101], start=1):
        b.trade(line, ts, 0, "v", "s", 1, 1.0, 1.0)
    assert _all(b)["ts_ns"].tolist() == [100, 100, 101]
    assert bad.summary() == {"time went backwards": 1}


def test_exchange_clock_reorders_within_the_window_and_refuses_older_rows():
    bad = BadLines("f", "skip")
    b = ChunkBuilder(bad, clock="exchange", reorder_ns=50, chunk_rows=4)
    out = []
    # Exchange times arrive slightly out of order (two streams); all within 50 ns of the newest.
    for line, exch in enumerate([100, 90, 130, 120, 200, 190, 260, 250], start=1):
        b.trade(line, 1000 + line, exch, "v", "s", 1, float(exch), 1.0)
        out.extend(b.ready())
    # 60 is older than rows already released: refused, not silently sorted in.
    b.trade(9, 2000, 60, "v", "s", 1, 60.0, 1.0)
    out.extend(b.finish())
    ts = np.concatenate(out)["ts_ns"].tolist()
    assert ts == [90, 100, 120, 130, 190, 200, 250, 260]
    assert bad.summary() == {"time went backwards": 1}


def test_crossed_book_is_bad_data():
    with pytest.raises(DataError, match="crossed book"):
        ChunkBuilder(BadLines("f")).book(5, 1, 1, "v", "s", 101.0, 1.0, 100.0, 1.0)
    b = ChunkBuilder(BadLines("f", "skip"))
    assert b.book(5, 1, 1, "v", "s", 101.0, 1.0, 101.0, 1.0) is False  # locked is not below: refused
    assert b.book(6, 2, 2, "v", "s", math.nan, math.nan, 101.0, 1.0) is True  # an empty side is fine


def test_l2_book_keeps_sorted_levels_and_deletes_on_zero():
    book = L2Book()
    for px, sz in [(100.0, 1.0), (99.0, 2.0), (101.0, 3.0), (98.0, 4.0)]:
        book.set(True, px, sz)
    for px, sz in [(102.0, 1.5), (104.0, 2.5), (103.0, 3.5)]:
        book.set(False, px, sz)
    assert book.best_bid() == (101.0, 3.0) and book.best_ask() == (102.0, 1.5)
    book.set(True, 101.0, 0.0)
    book.set(True, 55.0, 0.0)  # removing an absent level is normal
    book.set(False, 102.0, 9.0)  # absolute size replaces
    assert book.best_bid() == (100.0, 1.0) and book.best_ask() == (102.0, 9.0)
    bids, asks = book.depth(2)
    assert bids.tolist() == [[99.0, 2.0], [98.0, 4.0]] and asks.tolist() == [[103.0, 3.5], [104.0, 2.5]]
    bids, asks = book.outside(99.5, 103.0)
    assert bids.tolist() == [[99.0, 2.0], [98.0, 4.0]] and asks.tolist() == [[104.0, 2.5]]
    assert len(book) == 6
    book.clear()
    assert len(book) == 0 and math.isnan(book.best_bid()[0])


def test_a_market_name_too_long_for_the_dtype_is_refused_not_cut():
    b = ChunkBuilder(BadLines("f"))
    b.trade(1, 1, 1, "v" * 16, "S" * 24, 1, 1.0, 1.0)  # exactly the widths: kept
    with pytest.raises(DataError, match="symbol name 'XXXXXXXXXXXXXXXXXXXXXXXXX' is longer than the 24"):
        b.trade(2, 2, 2, "v", "X" * 25, 1, 1.0, 1.0)
    with pytest.raises(DataError, match="venue name .* is longer than the 16"):
        b.book(3, 3, 3, "binance-usdm-futures", "BTCUSDT", 1.0, 1.0, 2.0, 1.0)
    assert _all(b)["symbol"].tolist() == ["S" * 24]
