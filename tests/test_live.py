"""Live mode end to end against loopback venues serving real recorded messages (tests/fake_venues.py).

Every scenario runs the recipe's models over the live feed, then replays the recording the live run wrote
through the same recipe, and requires the same fills and the same predictions, bit for bit.
"""

from __future__ import annotations

import gzip
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sigkit_binance.live import BinanceConnection
from sigkit_hyperliquid.live import HyperliquidConnection

from sigkit.engine import Labelling, Replay
from sigkit.live import CLOCK, Backoff, LiveFeed, LiveSource, live_source_for, plan_feeds, replay_recipe_for
from sigkit.plugins import build_registry
from sigkit.recipe import instantiate, load_recipe

sys.path.insert(0, str(Path(__file__).parent))
from fake_venues import FakeBinance, FakeHyperliquid, FakeVenues  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hftbacktest_binance_hyperliquid"
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"shared data folder {DATA} is absent")

RECIPE = """\
name: live_test
seed: 7
data:
  - source: binance
    path: placeholder.gz
    venue: binance-usdm
    symbols: [BTCUSDT]<usdm>
  - source: binance
    path: placeholder.gz
    venue: binance-spot
    symbols: [BTCUSDT]<spot>
  - source: hyperliquid
    path: placeholder.gz
    coins: [BTC]<hyperliquid>
target: {venue: binance-usdm, symbol: BTCUSDT}
fills: public
horizon: 1s
models:
  - {id: base_rate, model: base_rate}
  - {id: enhanced_as, model: enhanced_as}
  - {id: spot_lead, model: cross_asset, params: {leader_venue: binance-spot, leader_symbol: BTCUSDT}}
"""


@pytest.fixture
def reader_parse():
    """The plugin registry, whose ``binance`` and ``hyperliquid`` readers parse the lines live mode feeds."""
    registry = build_registry()
    for name in ("binance", "hyperliquid"):
        assert hasattr(registry.sources[name].factory, "parse"), name
    return registry


# -- helpers ---------------------------------------------------------------------------------------------

def recipe_at(tmp_path: Path, registry, venues: FakeVenues | None = None):
    """The test recipe; with ``venues``, its data entries point at those loopback servers (``ws_url``,
    ``rest_url``), subscribe to the streams the recording has and poll open interest every 200 ms."""
    (tmp_path / "placeholder.gz").write_bytes(b"")
    path = tmp_path / "live.yaml"
    extra = {"usdm": "", "spot": "", "hyperliquid": ""}
    if venues is not None:
        for k, market in enumerate(("usdm", "spot")):
            extra[market] = (f"\n    ws_url: {venues.urls[k]}\n    rest_url: {venues.rest_urls[k]}"
                             f"\n    streams: [{', '.join(STREAMS[market])}]")
        extra["usdm"] += "\n    open_interest_every: 200ms"
        extra["hyperliquid"] = f"\n    ws_url: {venues.urls[2] if len(venues.urls) > 2 else 'ws://127.0.0.1:9'}"
    text = RECIPE
    for market, lines in extra.items():
        text = text.replace(f"<{market}>", lines)
    path.write_text(text)
    return load_recipe(path, registry)


def replay_of(recipe, sources, *, slow_s: float = 0.0):
    built = instantiate(recipe)
    if slow_s:
        sources = [(label, _Slow(src, slow_s)) for label, src in sources]
    return Replay(sources=sources, models=built.models, target=recipe.target,
                  labelling=Labelling(recipe.horizon_ns, recipe.threshold_bps, (recipe.horizon_ns,)),
                  public_fills=True)


class _Slow:
    """The engine falling behind: a pause after every chunk it takes."""

    def __init__(self, source, pause_s: float):
        self.source, self.pause_s = source, pause_s

    def chunks(self):
        for chunk in self.source.chunks():
            time.sleep(self.pause_s)
            yield chunk

    def describe(self):
        return self.source.describe()


STREAMS = {"usdm": ("trade", "bookTicker", "depth@0ms", "forceOrder"),  # as recorded: the undocumented @0ms
           "spot": ("trade", "bookTicker", "depth@100ms")}


def fakes(*, drop_after=None, skip_depth=None, hyperliquid=True):
    out = [FakeBinance(DATA / "usdm_btcusdt_20240808.gz", "usdm", lines=3000, speed=40.0, drop_after=drop_after,
                       skip_depth=skip_depth),
           FakeBinance(DATA / "spot_btcusdt_20240808.gz", "spot", lines=1500, speed=40.0)]
    if hyperliquid:
        out.append(FakeHyperliquid(DATA / "hyperliquid_btcusd_20250126.gz", speed=40.0))
    return out


def stop_when_served(venues: FakeVenues, live: LiveSource, grace_s: float = 0.4) -> threading.Thread:
    """Stop the live run (as a SIGTERM handler would) once every fake has served its slice."""
    def wait():
        venues.wait_done(30)
        time.sleep(grace_s)
        live.stop("test: feeds served")

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread


def live_and_replay(tmp_path, registry, *, slow_s=0.0, **fault):
    record = tmp_path / "rec"
    venues_list = fakes(**fault)
    with FakeVenues(*venues_list) as venues:
        recipe = recipe_at(tmp_path, registry, venues)
        live = live_source_for(recipe, record_dir=record, backoff=Backoff(initial_s=0.05, max_s=0.2), duration_s=25)
        stopper = stop_when_served(venues, live)
        live_result = replay_of(recipe, [("live", live)], slow_s=slow_s).run()
        stopper.join(1)
    described = live.describe()
    replayed = replay_of(replay_recipe_for(recipe, record), instantiate(replay_recipe_for(recipe, record)).sources)
    return live_result, replayed.run(), described, venues_list, record


def assert_same_predictions(live, replayed):
    assert live.completed and replayed.completed
    assert len(live.fills["ts_ns"]) > 300, "too few fills for the comparison to mean anything"
    for key in ("ts_ns", "price", "side", "was_adverse"):
        np.testing.assert_array_equal(live.fills[key], replayed.fills[key])
    assert live.events == replayed.events
    for model_id in live.model_ids:
        for key in ("p", "confidence", "cost_bps"):
            np.testing.assert_array_equal(live.predictions[model_id][key], replayed.predictions[model_id][key])


def synced_at_end(reader: dict) -> bool:
    """The Binance reader's book for BTCUSDT was in sync at the end (either layout of its describe())."""
    depth = reader["depth"]
    if "by_symbol" in depth:
        return depth["by_symbol"]["BTCUSDT"]["synced_at_end"]
    return depth["synced_at_end"] == ["BTCUSDT"]


def conn(described, name):
    return next(c for c in described["connections"] if c["name"] == name)


# -- tests -----------------------------------------------------------------------------------------------

def test_clock_is_strictly_increasing_across_threads():
    seen = []

    def take():
        seen.extend(CLOCK.now_ns() for _ in range(5000))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == len(seen)


def test_backoff_grows_caps_and_is_reproducible():
    a, b = Backoff(initial_s=1, max_s=8, seed=3), Backoff(initial_s=1, max_s=8, seed=3)
    delays = [a.next_s() for _ in range(8)]
    assert delays == [b.next_s() for _ in range(8)]
    assert all(0.5 * min(8, 2 ** k) <= d <= min(8, 2 ** k) for k, d in enumerate(delays))
    a.reset()
    assert a.next_s() <= 1


def test_combined_stream_and_rest_urls():
    c = BinanceConnection("x", "wss://fstream.binance.com", "https://fapi.binance.com", "usdm", "btcusdt")
    assert c.url() == ("wss://fstream.binance.com/stream?streams=btcusdt@trade/btcusdt@bookTicker/"
                       "btcusdt@depth@100ms/btcusdt@forceOrder")
    assert c.depth_url() == "https://fapi.binance.com/fapi/v1/depth?symbol=BTCUSDT&limit=1000"
    assert c.open_interest_url() == "https://fapi.binance.com/fapi/v1/openInterest?symbol=BTCUSDT"
    s = BinanceConnection("y", "wss://stream.binance.com:9443", "https://api.binance.com", "spot", "BTCUSDT")
    assert s.url().endswith("btcusdt@depth@100ms") and s.open_interest_url() is None
    assert s.depth_url() == "https://api.binance.com/api/v3/depth?symbol=BTCUSDT&limit=1000"


def test_recipe_data_entries_become_connections(tmp_path, reader_parse):
    planned = plan_feeds(recipe_at(tmp_path, reader_parse))
    kinds = [(p.spec.name, type(p.connection), getattr(p.connection, "market", None),
              getattr(p.connection, "symbol", None) or p.connection.coins, p.params.symbols if p.spec.name == "binance"
              else p.params.coins, p.file_name, p.connection.name) for p in planned]
    assert kinds == [
        ("binance", BinanceConnection, "usdm", "BTCUSDT", ("BTCUSDT",), "binance-usdm_BTCUSDT.gz", "binance-usdm_BTCUSDT"),
        ("binance", BinanceConnection, "spot", "BTCUSDT", ("BTCUSDT",), "binance-spot_BTCUSDT.gz", "binance-spot_BTCUSDT"),
        ("hyperliquid", HyperliquidConnection, None, ("BTC",), ("BTC",), "hyperliquid_BTC.gz", "hyperliquid_BTC")]
    # No ws_url / rest_url / streams in the recipe: the venues' public endpoints and default streams.
    assert planned[0].connection.url() == ("wss://fstream.binance.com/stream?streams=btcusdt@trade/btcusdt@bookTicker/"
                                           "btcusdt@depth@100ms/btcusdt@forceOrder")
    assert planned[0].connection.depth_url() == "https://fapi.binance.com/fapi/v1/depth?symbol=BTCUSDT&limit=1000"
    assert planned[0].connection.open_interest_every_s == 10.0
    assert planned[1].connection.url().startswith("wss://stream.binance.com:9443/stream?streams=btcusdt@trade/")
    assert planned[2].connection.url() == "wss://api.hyperliquid.xyz/ws"


def test_a_source_without_live_connections_has_no_live_mode(tmp_path, reader_parse):
    from sigkit.errors import RecipeError

    (tmp_path / "r.yaml").write_text(CLI_RECIPE.replace("source: binance", "source: simulate").replace(
        "    venue: binance-spot\n    symbols: [BTCUSDT]\n", "    duration: 1m\n"))
    with pytest.raises(RecipeError, match="source 'simulate' has no live mode"):
        plan_feeds(load_recipe(tmp_path / "r.yaml", reader_parse))
    (tmp_path / "b.yaml").write_text(CLI_RECIPE.replace("    symbols: [BTCUSDT]\n", ""))
    with pytest.raises(RecipeError, match="live mode needs `symbols`"):
        plan_feeds(load_recipe(tmp_path / "b.yaml", reader_parse))


@needs_data
def test_live_run_equals_replay_of_its_recording(tmp_path, reader_parse):
    live, replayed, described, venues, record = live_and_replay(tmp_path, reader_parse)
    assert_same_predictions(live, replayed)
    usdm, spot, hl = (conn(described, n) for n in ("binance-usdm_BTCUSDT", "binance-spot_BTCUSDT", "hyperliquid_BTC"))
    assert usdm["messages"] == venues[0].delivered == venues[0].sent  # nothing lost on the way
    assert spot["messages"] == venues[1].delivered == venues[1].sent
    assert usdm["reconnects"] == 0 and usdm["gaps"] == 0 and usdm["snapshots"] >= 1
    assert usdm["open_interest_polls"] >= 1 and spot["open_interest_polls"] == 0
    assert hl["messages"] == venues[2].delivered + venues[2].subscribe_messages  # data plus one ack per subscription
    assert venues[0].subscriptions == [tuple(f"btcusdt@{s}" for s in STREAMS["usdm"])]
    assert described["stop_reason"] == "test: feeds served"
    assert {p.name for p in record.iterdir()} == {"binance-usdm_BTCUSDT.gz", "binance-spot_BTCUSDT.gz",
                                                  "hyperliquid_BTC.gz", "live.json"}
    lines = gzip.open(record / "binance-usdm_BTCUSDT.gz", "rb").read().splitlines()
    stamps = [int(line.split(b" ", 1)[0]) for line in lines]
    assert stamps == sorted(set(stamps))
    assert sum(line.split(b" ", 1)[1].startswith(b'{"lastUpdateId"') for line in lines) == usdm["snapshots"]
    oi = [line for line in lines if b"@openInterest" in line]
    assert oi and b'"e":"openInterest"' in oi[0]
    # The served messages are recorded byte for byte.
    served = {body for _, body in venues[0].messages}
    assert all(line.split(b" ", 1)[1] in served for line in lines if line.split(b" ", 1)[1].startswith(b'{"stream":"btcusdt@t'))
    assert synced_at_end(usdm["reader"])


@needs_data
def test_dropped_connection_reconnects_resubscribes_and_resyncs(tmp_path, reader_parse):
    live, replayed, described, venues, _ = live_and_replay(tmp_path, reader_parse, drop_after=1200)
    assert_same_predictions(live, replayed)
    usdm = conn(described, "binance-usdm_BTCUSDT")
    assert venues[0].dropped_connections == 1
    assert usdm["disconnects"] == 1 and usdm["reconnects"] == 1 and usdm["connects"] == 2
    assert len(venues[0].subscriptions) == 2  # subscribed again with the same streams
    assert usdm["snapshots"] >= 2  # one per session
    assert synced_at_end(usdm["reader"])


@needs_data
def test_sequence_gap_is_counted_and_a_new_snapshot_fetched(tmp_path, reader_parse):
    live, replayed, described, venues, _ = live_and_replay(tmp_path, reader_parse, skip_depth=60, hyperliquid=False)
    assert_same_predictions(live, replayed)
    usdm = conn(described, "binance-usdm_BTCUSDT")
    assert venues[0].skipped == 1
    assert usdm["gaps"] == 1 and usdm["snapshots"] >= 2 and usdm["reconnects"] == 0
    assert usdm["reader"]["gap_count"] >= 1
    assert synced_at_end(usdm["reader"])


@needs_data
def test_slow_consumer_loses_nothing_and_reports_its_lag(tmp_path, reader_parse):
    live, replayed, described, venues, _ = live_and_replay(tmp_path, reader_parse, slow_s=0.2, hyperliquid=False)
    assert_same_predictions(live, replayed)
    assert conn(described, "binance-usdm_BTCUSDT")["messages"] == venues[0].delivered == venues[0].sent
    assert described["backlog"]["max_lag_ms"] > 50
    assert described["backlog"]["max_lines"] > 10


def _down_feed(recipe) -> LiveFeed:
    """A Binance USD-M feed whose port nothing listens on, retrying fast, recorded as down.gz."""
    plan = plan_feeds(recipe)[0]
    down = BinanceConnection("down", "ws://127.0.0.1:9", "http://127.0.0.1:9", "usdm", "BTCUSDT",
                             backoff=Backoff(initial_s=0.02, max_s=0.05), open_timeout_s=0.5)

    def make(path):
        return plan.spec.factory(plan.params.__class__(path=str(path), venue="binance-usdm"), recipe.context("down"))

    return LiveFeed(down, make, "down.gz")


def test_a_venue_that_stays_down_does_not_stop_the_others(tmp_path, reader_parse):
    """Nothing listens on the port: the connection retries with backoff until the run ends on time."""
    down = _down_feed(recipe_at(tmp_path, reader_parse))
    live = LiveSource([down], duration_s=0.6, record_dir=tmp_path / "rec")
    started = time.monotonic()
    assert list(live.chunks()) == []
    assert time.monotonic() - started < 3
    stats = live.describe()["connections"][0]
    assert stats["connects"] == 0 and stats["disconnects"] >= 3 and stats["last_error"]
    assert live.describe()["stop_reason"] == "duration reached"
    assert gzip.open(tmp_path / "rec" / "down.gz").read() == b""  # closed properly, even when empty


def test_should_stop_ends_a_run_that_receives_nothing(tmp_path, reader_parse):
    """The CLI's SIGTERM flag is polled even while no data arrives (the engine never gets a chunk to stop at)."""
    down = _down_feed(recipe_at(tmp_path, reader_parse))
    deadline = time.monotonic() + 0.3
    live = LiveSource([down], duration_s=60,
                      should_stop=lambda: "stopped by SIGTERM" if time.monotonic() > deadline else None)
    assert list(live.chunks()) == []
    assert time.monotonic() - deadline < 2
    assert live.describe()["stop_reason"] == "stopped by SIGTERM"


CLI_RECIPE = """\
name: live_cli
seed: 7
data:
  - source: binance
    venue: binance-spot
    symbols: [BTCUSDT]
target: {venue: binance-spot, symbol: BTCUSDT}
horizon: 100ms             # the fake serves 10x faster than recorded: 100 ms here is 1 s of market time
models:
  - {id: base_rate, model: base_rate}
  - {id: enhanced_as, model: enhanced_as}
"""


@needs_data
def test_cli_live_run_records_and_its_replay_gives_the_same_predictions(tmp_path):
    """`sigkit run --live --duration --record` end to end (against a loopback Binance spot), then `sigkit run`
    over the recording: the same predictions.csv, byte for byte."""
    import json

    from click.testing import CliRunner

    from sigkit.cli import main

    runner = CliRunner()
    with FakeVenues(FakeBinance(DATA / "spot_btcusdt_20240808.gz", "spot", lines=1500, speed=10.0)) as venues:
        (tmp_path / "live.yaml").write_text(CLI_RECIPE.replace(
            "    symbols: [BTCUSDT]\n",
            f"    symbols: [BTCUSDT]\n    ws_url: {venues.urls[0]}\n    rest_url: {venues.rest_urls[0]}\n"))
        live = runner.invoke(main, ["run", str(tmp_path / "live.yaml"), "--live", "--duration", "4s", "--record",
                                    str(tmp_path / "rec"), "--report-every", "1s", "--out", str(tmp_path / "a"),
                                    "--quiet"])
        assert venues.wait_done(1)  # the whole slice was served within the run
    assert live.exit_code == 0, live.output
    recording = tmp_path / "rec" / "binance-spot_BTCUSDT.gz"
    assert recording.exists()
    replay_recipe = CLI_RECIPE.replace("    symbols: [BTCUSDT]\n", f"    symbols: [BTCUSDT]\n    path: {recording}\n")
    (tmp_path / "replay.yaml").write_text(replay_recipe)
    again = runner.invoke(main, ["run", str(tmp_path / "replay.yaml"), "--out", str(tmp_path / "b"), "--quiet"])
    assert again.exit_code == 0, again.output
    live_predictions = (tmp_path / "a" / "predictions.csv").read_bytes()
    assert live_predictions == (tmp_path / "b" / "predictions.csv").read_bytes()
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["completed"] and report["data"]["fills_labelled"] > 150  # fills were scored live
    assert report["scores"]["enhanced_as"]["n"] == report["data"]["fills_labelled"]


def test_cli_live_needs_live_sources_and_refuses_live_only_flags_without_live(tmp_path):
    from click.testing import CliRunner

    from sigkit.cli import main

    (tmp_path / "r.yaml").write_text(CLI_RECIPE.replace("source: binance", "source: simulate").replace(
        "    venue: binance-spot\n    symbols: [BTCUSDT]\n", "    duration: 1m\n"))
    runner = CliRunner()
    result = runner.invoke(main, ["run", str(tmp_path / "r.yaml"), "--live", "--duration", "1s", "--quiet"])
    assert result.exit_code == 2 and "has no live mode" in result.output
    result = runner.invoke(main, ["run", str(tmp_path / "r.yaml"), "--duration", "1s", "--quiet"])
    assert result.exit_code == 2 and "add --live" in result.output


@needs_data
def test_sigterm_ends_a_live_run_cleanly_with_report_and_recording_flushed(tmp_path):
    """A real `sigkit run --live` process stopped by SIGTERM mid-stream: exit 143, the report written and
    marked incomplete, the recording a complete gzip that replays to the same predictions."""
    import json
    import os
    import signal
    import subprocess

    from click.testing import CliRunner

    from sigkit.cli import main

    fake = FakeBinance(DATA / "spot_btcusdt_20240808.gz", "spot", lines=6000, speed=2.0)  # ~20 s of stream
    with FakeVenues(fake) as venues:
        recipe = CLI_RECIPE.replace("    symbols: [BTCUSDT]\n", f"    symbols: [BTCUSDT]\n    ws_url: {venues.urls[0]}\n"
                                                               f"    rest_url: {venues.rest_urls[0]}\n")
        (tmp_path / "live.yaml").write_text(recipe)
        sigkit_exe = Path(sys.executable).with_name("sigkit")
        proc = subprocess.Popen([str(sigkit_exe), "run", str(tmp_path / "live.yaml"), "--live", "--record",
                                 str(tmp_path / "rec"), "--out", str(tmp_path / "a"), "--quiet"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        recording = tmp_path / "rec" / "binance-spot_BTCUSDT.gz"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not recording.exists() or recording.stat().st_size < 20_000):
            time.sleep(0.1)  # data is flowing and being recorded
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        served_all = venues.wait_done(0)
    assert proc.returncode == 143, err
    assert "run stopped: stopped by SIGTERM" in err and "Traceback" not in err
    assert not served_all  # it really was stopped mid-stream
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["completed"] is False and report["stop_reason"] == "stopped by SIGTERM"
    lines = gzip.decompress(recording.read_bytes()).splitlines()  # complete: no truncated gzip member
    assert len(lines) > 100
    (tmp_path / "replay.yaml").write_text(CLI_RECIPE.replace("    symbols: [BTCUSDT]\n",
                                                             f"    symbols: [BTCUSDT]\n    path: {recording}\n"))
    replayed = CliRunner().invoke(main, ["run", str(tmp_path / "replay.yaml"), "--out", str(tmp_path / "b"),
                                         "--quiet"])
    assert replayed.exit_code == 0, replayed.output
    live_csv = (tmp_path / "a" / "predictions.csv").read_bytes()
    assert live_csv.count(b"\n") > 50 and live_csv == (tmp_path / "b" / "predictions.csv").read_bytes()
