"""sigkit.cache: replays from the cache are identical to parsing, the key catches every change, and a
failed, interrupted or corrupt entry never gives a wrong result."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from sigkit_tardis.reader import HEADERS, Tardis, TardisParams
from sigkit_tardis.reader import SOURCE as TARDIS

import sigkit
from sigkit.cache import CachedSource, CacheWarning, cache_clear, cache_info, source_key, wrap_sources
from sigkit.engine import replay_from_recipe
from sigkit.errors import DataError
from sigkit.plugins import build_registry
from sigkit.recipe import instantiate, load_recipe
from sigkit.report import build_report

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
T0 = 1_583_020_803_145_000  # µs


def _quotes(n: int, bad_every: int = 0) -> str:
    lines = [",".join(HEADERS["quotes"])]
    for i in range(n):
        bid = 8629.0 + (i // 50 % 7) * 0.5
        if bad_every and i % bad_every == bad_every - 1:
            lines.append(f"x,BTC-USD,{T0 + 1000 * i},{T0 + 1000 * i + 50},5,notanumber,{bid},8")
        else:
            lines.append(f"x,BTC-USD,{T0 + 1000 * i},{T0 + 1000 * i + 50},{5 + i % 9},{bid + 0.5},{bid},{8 + i % 11}")
    return "\n".join(lines) + "\n"


def _trades(n: int) -> str:
    lines = [",".join(HEADERS["trades"])]
    for i in range(n):
        t = T0 + 1000 * (3 * i + 1)
        side = "buy" if (i * 7) % 3 else "sell"
        price = 8629.0 + (i // 17 % 7) * 0.5 + (0.5 if side == "buy" else 0)
        lines.append(f"x,BTC-USD,{t},{t + 50},{i},{side},{price},{1 + i % 5}")
    return "\n".join(lines) + "\n"


RECIPE = """
name: cached
seed: 3
data:
  - source: tardis
    path: quotes.csv
  - source: tardis
    path: trades.csv
target: {venue: x, symbol: BTC-USD}
fills: public
horizon: 50ms
models:
  - {id: base_rate, model: base_rate}
  - {id: enhanced_as, model: enhanced_as}
  - {id: prefill, model: prefill_toxicity}
ensemble: {combiner: mean, members: [enhanced_as, prefill]}
"""


@pytest.fixture(scope="module")
def registry():
    return build_registry(builtins_only=True)


@pytest.fixture
def recipe_dir(tmp_path):
    (tmp_path / "quotes.csv").write_text(_quotes(6000))
    (tmp_path / "trades.csv").write_text(_trades(2000))
    (tmp_path / "r.yaml").write_text(RECIPE)
    return tmp_path


class Spy:
    """Wraps a source and counts the calls of its chunks()."""

    def __init__(self, source):
        self.inner, self.calls = source, 0

    def chunks(self):
        self.calls += 1
        return self.inner.chunks()

    def describe(self):
        return self.inner.describe()


def _run(recipe, cache_dir):
    built = instantiate(recipe).sources
    spies = [(label, Spy(obj)) for label, obj in built]
    sources = wrap_sources(recipe, spies, cache_dir, warn=lambda m: None)
    replay = replay_from_recipe(recipe, sources=sources)
    result = replay.run()
    report = build_report(result, recipe, sources=replay.describe_sources(), plugins=[], version="t", n_boot=20)
    return result, report, [s for _, s in spies], [s for _, s in sources]


def _same(a, b) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _same(a[k], b[k])
        else:
            assert np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f"), k


def test_replay_identical_and_second_run_never_parses(recipe_dir, tmp_path_factory, registry):
    cache = tmp_path_factory.mktemp("cache")
    recipe = load_recipe(recipe_dir / "r.yaml", registry)
    plain, plain_report, _, _ = _run(recipe, None)
    first, first_report, spies1, wrapped1 = _run(recipe, cache)
    assert [s.calls for s in spies1] == [1, 1] and [w.status for w in wrapped1] == ["written", "written"]
    second, second_report, spies2, wrapped2 = _run(recipe, cache)
    assert [s.calls for s in spies2] == [0, 0], "the second run must read the cache, not the files"
    assert [w.status for w in wrapped2] == ["hit", "hit"]
    assert len(plain.fills["ts_ns"]) > 100
    for run in (first, second):
        _same(plain.predictions, run.predictions)
        _same(plain.fills, run.fills)
    for report in (first_report, second_report):
        assert report["scores"] == plain_report["scores"] and report["states"] == plain_report["states"]
        assert report["data"]["sources"] == plain_report["data"]["sources"]
    assert len(cache_info(cache)["entries"]) == 2


def _source(path, cache, policy="stop", **params):
    context = sigkit.RunContext(target=sigkit.Market("x", "BTC-USD"), horizon_ns=1, on_bad_line=policy)
    tp = TardisParams(path=str(path), **params)
    spy = Spy(Tardis(tp, context))
    return CachedSource(spy, source_key(TARDIS, tp, context), cache, warn=lambda m: None), spy


def _rows(source) -> np.ndarray:
    return np.concatenate(list(source.chunks()))


def _bitwise(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_key_changes_with_file_params_and_policy(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text(_quotes(500))
    cache = tmp_path / "cache"
    a, spy = _source(path, cache)
    rows = _rows(a)
    b, spy = _source(path, cache)
    assert _bitwise(_rows(b), rows) and spy.calls == 0

    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))  # touch
    c, spy = _source(path, cache)
    _rows(c)
    assert spy.calls == 1 and c.path != a.path

    with open(path, "a") as f:  # append a row: a new entry with the new row
        f.write(f"x,BTC-USD,{T0 + 10**7},{T0 + 10**7 + 50},5,9000.5,9000,8\n")
    d, spy = _source(path, cache)
    assert len(_rows(d)) == len(rows) + 1 and spy.calls == 1

    e, spy = _source(path, cache, clock="exchange")
    assert spy.calls == 0 and e.path != d.path
    _rows(e)
    assert spy.calls == 1
    f, spy = _source(path, cache, policy="skip")
    _rows(f)
    assert spy.calls == 1 and f.path not in (d.path, e.path)
    assert len(cache_info(cache)["entries"]) == 5


def test_same_size_same_mtime_content_change_is_caught(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text(_quotes(300))
    st = path.stat()
    cache = tmp_path / "cache"
    a, _ = _source(path, cache)
    _rows(a)
    text = path.read_text().replace("8629.5,8629.0", "8629.6,8629.1", 1)
    path.write_text(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    b, spy = _source(path, cache)
    assert _rows(b)["bid_px"][0] == 8629.1 and spy.calls == 1


def test_describe_survives_the_cache(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text(_quotes(400, bad_every=37))
    cache = tmp_path / "cache"
    a, _ = _source(path, cache, policy="skip")
    rows = _rows(a)
    described = a.describe()
    assert sum(described["skipped"].values()) == 400 // 37
    b, spy = _source(path, cache, policy="skip")
    assert _bitwise(_rows(b), rows) and spy.calls == 0
    assert b.describe() == described and b.span_ns() == (int(rows["ts_ns"][0]), int(rows["ts_ns"][-1]))


def test_failed_read_leaves_no_entry(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text(_quotes(400, bad_every=100))
    cache = tmp_path / "cache"
    a, _ = _source(path, cache)  # on_bad_line: stop
    with pytest.raises(DataError):
        _rows(a)
    assert not list(cache.iterdir())


def test_interrupted_read_leaves_no_entry(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text(_quotes(200_000))  # several chunks
    cache = tmp_path / "cache"
    a, _ = _source(path, cache)
    stream = a.chunks()
    next(stream)
    stream.close()  # what happens to a source when a run is stopped (SIGTERM, Ctrl-C, until_ns)
    assert not list(cache.iterdir())
    assert a.status == "miss"


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupt_entry_is_rebuilt_with_a_warning(tmp_path, damage):
    path = tmp_path / "q.csv"
    path.write_text(_quotes(3000))
    cache = tmp_path / "cache"
    a, _ = _source(path, cache)
    rows = _rows(a)
    data = bytearray(a.path.read_bytes())
    if damage == "flip":
        data[len(data) // 3] ^= 0xFF  # inside a compressed chunk
    elif damage == "truncate":
        data = data[: len(data) - 20]
    else:
        data = bytearray(b"not a cache at all")
    a.path.write_bytes(bytes(data))
    context = sigkit.RunContext(target=sigkit.Market("x", "BTC-USD"), horizon_ns=1)
    tp = TardisParams(path=str(path))
    spy = Spy(Tardis(tp, context))
    b = CachedSource(spy, source_key(TARDIS, tp, context), cache)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = _rows(b)
    assert _bitwise(again, rows) and spy.calls == 1
    assert len(caught) == 1 and caught[0].category is CacheWarning and "\n" not in str(caught[0].message)
    c, spy = _source(path, cache)
    assert _bitwise(_rows(c), rows) and spy.calls == 0  # rebuilt


def test_corrupt_chunk_mid_stream_goes_on_from_the_source(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text(_quotes(200_000))
    cache = tmp_path / "cache"
    a, _ = _source(path, cache)
    chunks = list(a.chunks())
    assert len(chunks) >= 3
    data = bytearray(a.path.read_bytes())
    data[-2000] ^= 0xFF  # the last chunk (the meta is short), after some chunks were delivered
    a.path.write_bytes(bytes(data))
    b, spy = _source(path, cache)
    messages = []
    b._warn = messages.append
    again = list(b.chunks())
    assert spy.calls == 1 and len(messages) == 1
    assert _bitwise(np.concatenate(again), np.concatenate(chunks))


def test_nan_and_strings_bitwise(tmp_path):
    cache = tmp_path / "cache"
    chunk = sigkit.empty_chunk(5)
    chunk["ts_ns"] = np.arange(5)
    chunk["venue"], chunk["symbol"] = "vénue-ü", "BTC-USDT-SWAP-ÆØ"
    chunk["bids"][:, 0, 0] = [1.0, -0.0, np.inf, np.nan, 5e-324]

    class Mem:
        def chunks(self):
            yield chunk
            yield chunk[:0]
            yield chunk[::-1].copy()

        def describe(self):
            return {"source": "mem"}

    key = {"source": {"name": "mem"}, "x": 1}
    list(CachedSource(Mem(), key, cache).chunks())
    hit = CachedSource(None, key, cache)
    got = list(hit.chunks())
    assert [g.tobytes() for g in got] == [chunk.tobytes(), b"", chunk[::-1].tobytes()]
    assert got[0].flags.writeable and hit.describe() == {"source": "mem"}


def test_wrap_sources_wraps_only_file_readers(recipe_dir, registry, tmp_path):
    sim = recipe_dir / "sim.yaml"
    sim.write_text(RECIPE.replace("  - source: tardis\n    path: quotes.csv\n", "  - source: simulate\n"
                                  "    world: informed\n    duration: 10s\n"))
    recipe = load_recipe(sim, registry)
    wrapped = wrap_sources(recipe, instantiate(recipe).sources, tmp_path / "c")
    assert [type(o).__name__ for _, o in wrapped] == ["Simulate", "CachedSource"]
    assert wrap_sources(recipe, instantiate(recipe).sources, None)[1][1].__class__.__name__ == "Tardis"


def test_cache_info_and_clear(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text(_quotes(100))
    cache = tmp_path / "cache"
    _rows(_source(path, cache)[0])
    (cache / "unrelated.txt").write_text("keep me")
    info = cache_info(cache)
    assert [e["source"] for e in info["entries"]] == ["tardis"] and info["entries"][0]["events"] == 100
    assert info["entries"][0]["inputs"] == [str(path.resolve())]
    removed, freed = cache_clear(cache)
    assert removed == 1 and freed == info["bytes"] and (cache / "unrelated.txt").exists()
    assert cache_info(tmp_path / "nowhere")["entries"] == []


def test_real_recording_through_the_cache(tmp_path):
    path = DATA / "hftbacktest_binance_hyperliquid" / "usdm_btcusdt_20240808.gz"
    if not path.exists():
        pytest.skip(f"../shared/data is absent: the real Binance recording is expected at {path}")
    from sigkit_binance.ws import SOURCE, BinanceParams, BinanceWs

    context = sigkit.RunContext(target=sigkit.Market("binance", "BTCUSDT"), horizon_ns=1)
    params = BinanceParams(path=str(path))
    key = source_key(SOURCE, params, context)
    first = CachedSource(BinanceWs(params, context), key, tmp_path)
    parsed = list(first.chunks())
    spy = Spy(BinanceWs(params, context))
    second = CachedSource(spy, key, tmp_path)
    cached = list(second.chunks())
    assert spy.calls == 0 and second.status == "hit"
    assert [c.tobytes() for c in cached] == [c.tobytes() for c in parsed]
    assert second.describe() == first.describe() and second.describe()["events"]["trade"] > 0


def test_cli_run_writes_then_reuses_the_cache_and_no_cache_bypasses_it(recipe_dir, tmp_path):
    from click.testing import CliRunner

    from sigkit.cli import main

    runner = CliRunner()
    cache = tmp_path / "cache"

    def run(out: str, *flags: str):
        result = runner.invoke(main, ["run", str(recipe_dir / "r.yaml"), "--out", str(tmp_path / out), "--quiet",
                                      *flags])
        assert result.exit_code == 0, result.output
        return (tmp_path / out / "predictions.csv").read_bytes()

    first = run("a", "--cache", str(cache))
    listed = runner.invoke(main, ["cache", "--dir", str(cache)])
    assert listed.exit_code == 0 and "2 entries" in listed.output  # one per data file
    assert run("b", "--cache", str(cache)) == first  # read back from the cache: the same predictions
    (tmp_path / "other").mkdir()
    assert run("c", "--no-cache", "--cache", str(tmp_path / "other")) == first
    assert not any((tmp_path / "other").iterdir())  # --no-cache writes nothing
    cleared = runner.invoke(main, ["cache", "--dir", str(cache), "--clear"])
    assert cleared.exit_code == 0 and cleared.output.startswith("removed 2 files")
    assert "0 entries" in runner.invoke(main, ["cache", "--dir", str(cache)]).output
