"""Checkpoints: a run stopped mid-way and resumed predicts exactly what the uninterrupted run predicts, and a
checkpoint that does not fit (another recipe, edited params, a corrupt file, a newer format) is refused
with one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import sigkit
from sigkit.checkpoint import CheckpointError, read_checkpoint, read_header
from sigkit.engine import replay_from_recipe
from sigkit.plugins import build_registry
from sigkit.recipe import load_recipe
from sigkit.report import build_report, table_rows

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@pytest.fixture(scope="module")
def registry():
    return build_registry()


def _recipe(registry, name: str, tmp_path: Path | None = None, edit=None):
    path = RECIPES / name
    if edit is not None:
        text = edit(path.read_text(encoding="utf-8"))
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
    return load_recipe(path, registry)


def _scores(result, recipe) -> list[list[str]]:
    report = build_report(result, recipe, sources=[], plugins=[], version=sigkit.__version__, n_boot=50)
    return table_rows(report)[1]


def _assert_same_predictions(full, resumed, after_ts: int) -> int:
    later = full.fills["ts_ns"] > after_ts
    assert later.sum() > 100, "the checkpoint should leave many fills to predict"
    assert full.fills["ts_ns"].tobytes() == resumed.fills["ts_ns"].tobytes()
    assert set(full.predictions) == set(resumed.predictions)
    for name, preds in full.predictions.items():
        for key in ("p", "confidence", "cost_bps"):
            a, b = preds[key], resumed.predictions[name][key]
            assert a[later].tobytes() == b[later].tobytes(), f"{name} {key} differs after the checkpoint"
            assert a.tobytes() == b.tobytes(), f"{name} {key} differs"  # the saved record of earlier fills too
    for key, values in full.fills.items():
        assert values.tobytes() == resumed.fills[key].tobytes(), f"fills[{key!r}] differs"
    return int(later.sum())


@pytest.mark.parametrize("name", ["quickstart.yaml", "microstructure_hedge.yaml"])
def test_resumed_run_predicts_exactly_as_the_uninterrupted_one(registry, tmp_path, name):
    recipe = _recipe(registry, name)
    full = replay_from_recipe(recipe).run()
    assert full.completed
    ts = full.fills["ts_ns"]
    stop_at = int(ts[len(ts) * 2 // 5])
    checkpoint = tmp_path / "run.ckpt"

    # Stop mid-run the way SIGTERM does (should_stop), with periodic checkpoints on the way.
    seen = {}
    first = replay_from_recipe(recipe).run(
        progress=lambda n, last_ts: seen.update(last_ts=last_ts),
        should_stop=lambda: "stopped by test" if seen["last_ts"] >= stop_at else None,
        checkpoint_path=checkpoint, checkpoint_every_ns=sigkit.parse_duration("1m"))
    assert not first.completed and first.stop_reason == "stopped by test"
    assert len(first.checkpoints) >= 2  # periodic ones and the one at exit
    header = read_header(checkpoint)
    T = header["ts_ns"]
    assert T == first.last_ts_ns == first.checkpoints[-1]["ts_ns"]
    assert header["identity"]["recipe_sha256"] == recipe.sha256
    # What the stopped run predicted is what the full run predicted for the same fills.
    n_first = len(first.fills["ts_ns"])
    assert full.predictions["ensemble"]["p"][:n_first].tobytes() == first.predictions["ensemble"]["p"].tobytes()

    resumed = replay_from_recipe(recipe).run(resume_from=checkpoint)
    assert resumed.completed and resumed.resumed_from_ts_ns == T
    assert resumed.events == full.events
    _assert_same_predictions(full, resumed, T)
    assert _scores(resumed, recipe) == _scores(full, recipe)


def test_until_and_resume_from_a_periodic_checkpoint(registry, tmp_path):
    recipe = _recipe(registry, "quickstart.yaml")
    full = replay_from_recipe(recipe).run()
    checkpoint = tmp_path / "run.ckpt"
    until = int(full.fills["ts_ns"][len(full.fills["ts_ns"]) // 3])
    first = replay_from_recipe(recipe).run(until_ns=until, checkpoint_path=checkpoint)
    assert first.stop_reason == f"reached until_ns={until}" and first.last_ts_ns <= until
    # A second stop further on, resumed from the first checkpoint, then resumed again.
    until2 = int(full.fills["ts_ns"][len(full.fills["ts_ns"]) * 2 // 3])
    second = replay_from_recipe(recipe).run(resume_from=checkpoint, until_ns=until2, checkpoint_path=checkpoint)
    assert second.resumed_from_ts_ns == first.last_ts_ns
    resumed = replay_from_recipe(recipe).run(resume_from=checkpoint)
    _assert_same_predictions(full, resumed, second.last_ts_ns)


@pytest.fixture(scope="module")
def quickstart_checkpoint(registry, tmp_path_factory):
    recipe = _recipe(registry, "quickstart.yaml")
    path = tmp_path_factory.mktemp("ckpt") / "quick.ckpt"
    replay_from_recipe(recipe).run(until_ns=1767225720_000_000_000, checkpoint_path=path)
    return path


def test_a_checkpoint_of_another_recipe_is_refused(registry, quickstart_checkpoint):
    recipe = _recipe(registry, "microstructure_hedge.yaml")
    with pytest.raises(CheckpointError, match="belongs to another run: .*horizon|belongs to another run: the checkpoint has models"):
        replay_from_recipe(recipe).run(resume_from=quickstart_checkpoint)


def test_a_checkpoint_with_other_params_is_refused(registry, tmp_path, quickstart_checkpoint):
    edited = _recipe(registry, "quickstart.yaml", tmp_path,
                     edit=lambda t: t.replace("    regimes: [volatility]", "    regimes: [volatility]\n    l2: 0.001"))
    with pytest.raises(CheckpointError) as caught:
        replay_from_recipe(edited).run(resume_from=quickstart_checkpoint)
    message = str(caught.value)
    assert "ensemble 'ensemble': params differ: l2 0.0 in the checkpoint, 0.001 now" in message
    assert "\n" not in message
    # Only a comment changed: models and params match, the recipe file does not.
    commented = _recipe(registry, "quickstart.yaml", tmp_path, edit=lambda t: t + "\n# a comment\n")
    with pytest.raises(CheckpointError, match="the recipe file changed"):
        replay_from_recipe(commented).run(resume_from=quickstart_checkpoint)


def test_a_corrupt_or_truncated_checkpoint_is_a_clear_error(registry, tmp_path, quickstart_checkpoint):
    recipe = _recipe(registry, "quickstart.yaml")
    data = quickstart_checkpoint.read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all" * 100)
    for path in (truncated, garbage, tmp_path / "missing.ckpt"):
        with pytest.raises(CheckpointError) as caught:
            replay_from_recipe(recipe).run(resume_from=path)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    # A bit flipped inside the compressed archive's state also fails as a sigkit error, never a traceback.
    flipped = tmp_path / "flipped.ckpt"
    raw = bytearray(data)
    raw[len(raw) // 2] ^= 0xFF
    flipped.write_bytes(bytes(raw))
    with pytest.raises(sigkit.SigkitError):
        replay_from_recipe(recipe).run(resume_from=flipped)


def _rewrite_header(src: Path, dst: Path, **changes) -> None:
    with np.load(src, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    header = json.loads(arrays["header"].tobytes())
    header.update(changes)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    with open(dst, "wb") as out:
        np.savez(out, **arrays)


def test_a_checkpoint_from_a_future_format_is_refused(registry, tmp_path, quickstart_checkpoint):
    future = tmp_path / "future.ckpt"
    _rewrite_header(quickstart_checkpoint, future, format_version=99, sigkit_version="9.0")
    with pytest.raises(CheckpointError, match=r"format version 99 \(written by sigkit 9.0\) is not one this sigkit reads"):
        read_checkpoint(future)
    recipe = _recipe(registry, "quickstart.yaml")
    with pytest.raises(CheckpointError, match="format version 99"):
        replay_from_recipe(recipe).run(resume_from=future)


def test_a_model_state_of_another_layout_version_is_refused():
    model = sigkit.OnlineLogistic(2)
    state = model.state_dict()
    state["version"] = 2
    with pytest.raises(sigkit.ModelError, match="layout version 2"):
        sigkit.OnlineLogistic(2).load_state_dict(state)
    state = model.state_dict()
    state["attrs"]["surprise"] = 1.0
    with pytest.raises(sigkit.ModelError, match="unexpected: surprise"):
        sigkit.OnlineLogistic(2).load_state_dict(state)


def test_pending_fills_survive_a_checkpoint_and_match_equal_fills_in_order():
    from sigkit.checkpoint import decode_state, encode_state

    pending = sigkit.PendingFills()
    a = sigkit.FillQuery(1, "sim", "X", 1, 100.0, 1.0)
    twin = sigkit.FillQuery(1, "sim", "X", 1, 100.0, 1.0)
    nan_price = sigkit.FillQuery(2, "sim", "X", -1, float("nan"), 1.0)
    pending.put(a, ([1.0, 2.0], 0.5))
    pending.put(twin, ([3.0], 0.25))
    pending.put(nan_price, 7)
    restored = sigkit.PendingFills()
    restored.load_state_dict(decode_state(encode_state(pending.state_dict())))
    assert len(restored) == 3
    assert restored.pop(sigkit.FillQuery(1, "sim", "X", 1, 100.0, 1.0)) == ([1.0, 2.0], 0.5)
    assert restored.pop(sigkit.FillQuery(1, "sim", "X", 1, 100.0, 1.0)) == ([3.0], 0.25)
    assert restored.pop(sigkit.FillQuery(2, "sim", "X", -1, float("nan"), 1.0)) == 7
    assert restored.pop(a, "gone") == "gone"


def test_a_model_without_state_cannot_be_checkpointed(tmp_path):
    class Stateless:
        def predict(self, query):
            return sigkit.Prediction(0.5, 0.0)

    from sigkit.engine import Labelling, Replay
    from sigkit.testing import MemorySource

    replay = Replay(sources=[("memory", MemorySource([]))], models=[("stateless", Stateless())],
                    target=sigkit.Market("sim", "X"), labelling=Labelling(10**9))
    with pytest.raises(sigkit.ModelError, match="cannot be checkpointed"):
        replay.run(checkpoint_path=tmp_path / "x.ckpt")


def test_cli_checkpoint_and_resume(tmp_path):
    from click.testing import CliRunner

    from conftest import SIM_RECIPE_HEAD
    from sigkit.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(SIM_RECIPE_HEAD.format(name="cp", seed=3, world="informed", duration="3m")
                      + "models:\n  - id: flow\n    model: flow\n  - id: base_rate\n    model: base_rate\n")
    runner = CliRunner()
    first = runner.invoke(main, ["run", str(recipe), "--out", str(tmp_path / "a"), "--quiet",
                                 "--checkpoint", str(tmp_path / "cp.npz"), "--checkpoint-every", "30s"])
    assert first.exit_code == 0, first.output
    assert "checkpoint" in first.output and (tmp_path / "cp.npz").exists()
    again = runner.invoke(main, ["run", str(recipe), "--out", str(tmp_path / "b"), "--quiet",
                                 "--resume", str(tmp_path / "cp.npz")])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "a" / "predictions.csv").read_bytes() == (tmp_path / "b" / "predictions.csv").read_bytes()
    (tmp_path / "bad.npz").write_bytes(b"not a checkpoint")
    bad = runner.invoke(main, ["run", str(recipe), "--out", str(tmp_path / "c"), "--quiet",
                               "--resume", str(tmp_path / "bad.npz")])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1, bad.output
    assert not (tmp_path / "c").exists()
    unitless = runner.invoke(main, ["run", str(recipe), "--quiet", "--checkpoint", str(tmp_path / "x.npz"),
                                    "--checkpoint-every", "30"])
    assert unitless.exit_code == 2 and "--checkpoint-every" in unitless.output


def test_a_checkpoint_is_refused_when_its_data_file_or_bad_line_policy_changed(tmp_path):
    from click.testing import CliRunner

    from sigkit.cli import main

    runner = CliRunner()
    assert runner.invoke(main, ["simulate", "--world", "informed", "--duration", "1m", "--out",
                                str(tmp_path / "d.csv")]).exit_code == 0
    (tmp_path / "r.yaml").write_text("name: cpdata\ndata:\n  - source: native\n    path: d.csv\n"
                                     "target: {venue: sim, symbol: BTC-PERP}\nhorizon: 1s\n"
                                     "models:\n  - {id: flow, model: flow}\n")
    run = ["run", str(tmp_path / "r.yaml"), "--quiet", "--out", str(tmp_path / "out")]
    assert runner.invoke(main, [*run, "--checkpoint", str(tmp_path / "cp.npz")]).exit_code == 0
    policy = runner.invoke(main, [*run, "--resume", str(tmp_path / "cp.npz"), "--on-bad-line", "skip"])
    assert policy.exit_code == 2 and "on_bad_line is 'stop' in the checkpoint, 'skip' now" in policy.output
    with open(tmp_path / "d.csv", "a") as f:  # the recording grew (or was replaced) since the checkpoint
        f.write(open(tmp_path / "d.csv").read().splitlines()[-1] + "\n")
    changed = runner.invoke(main, [*run, "--resume", str(tmp_path / "cp.npz")])
    assert changed.exit_code == 2 and "data entry 1 (native) differs" in changed.output
