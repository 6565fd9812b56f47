"""sigkit's native event files: exact round trip, prefixes, gzip determinism, and reading them in a recipe."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from sigkit import sim
from sigkit.cli import main
from sigkit.errors import DataError
from sigkit.native import read_fills_csv, read_native, write_native
from sigkit.units import parse_duration

from conftest import book, chunk_of


def _events(duration="2m", world="mixed"):
    return np.concatenate(list(sim.simulate(world, seed=3, duration_ns=parse_duration(duration))))


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.tobytes() == b.tobytes() or all(
        np.array_equal(a[n], b[n], equal_nan=a.dtype[n].base.kind == "f") for n in a.dtype.names)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_round_trip_is_exact(tmp_path, suffix):
    events = _events()
    path = tmp_path / f"e{suffix}"
    assert write_native(path, [events], {"world": "mixed"}) == len(events)
    back = np.concatenate(list(read_native(path, chunk_rows=1000)))
    assert _same(events, back)


def test_depth_levels_survive(tmp_path):
    chunk = chunk_of([book(1, 99.0, 101.0)])
    chunk["bids"][0, :2] = [(98.5, 2.0), (98.0, 3.0)]
    path = tmp_path / "d.csv"
    write_native(path, [chunk])
    back = next(read_native(path))
    assert back["bids"][0, 1].tolist() == [98.0, 3.0] and np.isnan(back["bids"][0, 2, 0])


def test_a_prefix_of_the_rows_is_a_valid_file(tmp_path):
    path = tmp_path / "e.csv"
    events = _events("1m")
    write_native(path, [events])
    lines = path.read_text().splitlines(keepends=True)
    prefix = tmp_path / "p.csv"
    prefix.write_text("".join(lines[:502]))
    back = np.concatenate(list(read_native(prefix)))
    assert _same(events[:500], back)


def test_gzip_output_is_byte_identical_across_runs(tmp_path):
    events = _events("1m")
    write_native(tmp_path / "a.csv.gz", [events])
    write_native(tmp_path / "b.csv.gz", [events])
    assert (tmp_path / "a.csv.gz").read_bytes() == (tmp_path / "b.csv.gz").read_bytes()


def test_truncated_gzip_is_a_data_error(tmp_path):
    path = tmp_path / "e.csv.gz"
    write_native(path, [_events("1m")])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        list(read_native(path))


def test_simulated_file_replays_exactly_like_the_simulate_source(tmp_path):
    runner = CliRunner()
    data = tmp_path / "world.csv.gz"
    result = runner.invoke(main, ["simulate", "--world", "informed", "--duration", "3m", "--seed", "5",
                                  "--out", str(data)])
    assert result.exit_code == 0, result.output
    body = "target: {venue: sim, symbol: BTC-PERP}\nhorizon: 1s\nseed: 5\nmodels:\n  - id: flow\n    model: flow\n"
    (tmp_path / "a.yaml").write_text(f"data:\n  - source: simulate\n    world: informed\n    duration: 3m\n{body}")
    (tmp_path / "b.yaml").write_text(f"data:\n  - source: native\n    path: world.csv.gz\n{body}")
    for name in ("a", "b"):
        out = tmp_path / f"out_{name}"
        result = runner.invoke(main, ["run", str(tmp_path / f"{name}.yaml"), "--out", str(out), "--quiet"])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "out_a/predictions.csv").read_bytes() == (tmp_path / "out_b/predictions.csv").read_bytes()
    a = json.loads((tmp_path / "out_a/report.json").read_text())["scores"]
    b = json.loads((tmp_path / "out_b/report.json").read_text())["scores"]
    assert a == b and "oracle_brier" in b["flow"]


def test_truth_for_another_horizon_is_dropped_and_the_report_says_so(tmp_path):
    runner = CliRunner()
    data = tmp_path / "w.csv"
    assert runner.invoke(main, ["simulate", "--duration", "1m", "--horizon", "5s", "--out", str(data)]).exit_code == 0
    (tmp_path / "r.yaml").write_text("data:\n  - source: native\n    path: w.csv\ntarget: {venue: sim, symbol: BTC-PERP}\n"
                                     "horizon: 1s\nmodels:\n  - id: flow\n    model: flow\n")
    out = tmp_path / "out"
    assert runner.invoke(main, ["run", str(tmp_path / "r.yaml"), "--out", str(out), "--quiet"]).exit_code == 0
    report = json.loads((out / "report.json").read_text())
    assert "oracle_brier" not in report["scores"]["flow"]
    assert "horizon 5s" in report["data"]["sources"][0]["note"]


def test_own_fills_csv(tmp_path):
    path = tmp_path / "fills.csv"
    path.write_text("ts_ns,side,price,size,fee\n10,bid,99.5,1,0\n20,ASK,100.5,2,0\n")
    chunk = next(read_fills_csv(path, venue="v", symbol="X"))
    assert chunk["side"].tolist() == [1, -1] and chunk["ts_ns"].tolist() == [10, 20]
    path.write_text("ts_ns,side,price,size\n10,sideways,99.5,1\n")
    with pytest.raises(DataError, match="fills.csv:2"):
        list(read_fills_csv(path, venue="v", symbol="X"))


def test_own_fills_bad_rows_stop_or_are_skipped_and_zst_is_read(tmp_path):
    import zstandard

    text = "ts_ns,side,price,size,fee,order_id\n10,bid,99.5,1,0,a\n20,ask,nan,1,0,b\n5,ask,100,1,0,c\n30,ask,100.5,2,,d\n"
    path = tmp_path / "fills.csv.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
    with pytest.raises(DataError, match=r"fills.csv.zst:3: unreadable fill"):
        list(read_fills_csv(path, venue="v", symbol="X"))
    chunk = next(read_fills_csv(path, venue="v", symbol="X", on_bad_line="skip"))
    assert chunk["ts_ns"].tolist() == [10, 30] and chunk["price"].tolist() == [99.5, 100.5]


def test_a_recipe_scoring_your_own_fills(tmp_path):
    events = _events("2m", world="informed")
    write_native(tmp_path / "m.csv", [events])
    trades = events[(events["kind"] == 1) & (events["venue"] == "sim")][:200:2]
    lines = ["ts_ns,side,price,size"] + [f"{t['ts_ns'] + 1},{'ask' if t['side'] > 0 else 'bid'},{float(t['price'])!r},1"
                                         for t in trades]
    (tmp_path / "fills.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "r.yaml").write_text("data:\n  - source: native\n    path: m.csv\ntarget: {venue: sim, symbol: BTC-PERP}\n"
                                     "fills: {path: fills.csv}\nmodels:\n  - id: flow\n    model: flow\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(tmp_path / "r.yaml"), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["fills"] == len(trades) and report["label"]["fills"].endswith("fills.csv")
