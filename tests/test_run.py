"""End to end on simulated worlds: no look-ahead, no false edge, real edge found, determinism, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sigkit.cli import main
from sigkit.engine import replay_from_recipe
from sigkit.plugins import build_registry
from sigkit.recipe import load_recipe
from sigkit.report import build_report

from conftest import SIM_RECIPE_HEAD

RECIPE = SIM_RECIPE_HEAD + """\
models:
  - id: base_rate
    model: base_rate
  - id: flow
    model: flow
ensemble:
  combiner: stacking
"""


def recipe_file(tmp_path, world="informed", duration="10m", seed=7, name="t"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(RECIPE.format(world=world, duration=duration, seed=seed, name=name))
    return path


def replay(path):
    recipe = load_recipe(path, build_registry())
    r = replay_from_recipe(recipe)
    result = r.run()
    return recipe, r, result, build_report(result, recipe, sources=r.describe_sources(), plugins=[], version="test")


def test_no_look_ahead_predictions_before_T_do_not_depend_on_what_follows(tmp_path):
    _, _, short, _ = replay(recipe_file(tmp_path, duration="3m", name="short"))
    _, _, long, _ = replay(recipe_file(tmp_path, duration="6m", name="long"))
    n = len(short.fills["ts_ns"])
    assert n > 500
    cut = short.last_ts_ns
    assert long.fills["ts_ns"][n - 1] == short.fills["ts_ns"][-1] and long.fills["ts_ns"][n] > cut
    for model in ("base_rate", "flow", "ensemble"):
        np.testing.assert_array_equal(short.predictions[model]["p"], long.predictions[model]["p"][:n])
        np.testing.assert_array_equal(short.predictions[model]["confidence"], long.predictions[model]["confidence"][:n])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_null_world_no_model_claims_edge(tmp_path, seed):
    _, _, _, report = replay(recipe_file(tmp_path, world="null", duration="15m", seed=seed))
    for model, s in report["scores"].items():
        assert abs(s["bss"]) < 0.005, (model, s["bss"])
        assert not s["skill_test"]["edge"], (model, s["skill_test"])
        if model != "base_rate":  # the reference itself has no differences to test
            assert -3 < s["skill_test"]["t_stat"] < 2, (model, s["skill_test"])


def test_informed_world_flow_shows_significant_skill(tmp_path):
    _, _, _, report = replay(recipe_file(tmp_path, world="informed", duration="10m"))
    flow = report["scores"]["flow"]
    assert flow["bss"] > 0.02
    assert flow["skill_test"]["edge"] and flow["skill_test"]["t_stat"] > 3
    assert 0 < flow["edge_recovered"] <= 1
    assert abs(report["scores"]["base_rate"]["bss"]) < 1e-12  # the reference itself
    assert report["scores"]["ensemble"]["bss"] > 0.02
    # The combiner's describe() lands in the report: it learned from every labelled fill.
    assert report["states"]["ensemble"]["by_state"][0]["outcomes"] == report["data"]["fills_labelled"]


def test_same_input_same_seed_same_bytes(tmp_path):
    path = recipe_file(tmp_path, duration="3m")
    outs = []
    for k in range(2):
        out = tmp_path / f"out{k}"
        result = CliRunner().invoke(main, ["run", str(path), "--out", str(out), "--quiet"])
        assert result.exit_code == 0, result.output
        report = json.loads((out / "report.json").read_text())
        report.pop("timing")
        outs.append((json.dumps(report), (out / "predictions.csv").read_bytes()))
    assert outs[0] == outs[1]
    text = (tmp_path / "out0" / "report.json").read_text()
    assert '"completed": true' in text


def test_predictions_csv_has_one_row_per_fill_with_every_model(tmp_path):
    path = recipe_file(tmp_path, duration="2m")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    lines = (out / "predictions.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header[:5] == ["ts_ns", "venue", "symbol", "side", "price"]
    for column in ("p_base_rate", "p_flow", "p_ensemble", "confidence", "was_adverse", "realized_as_bps", "p_true"):
        assert column in header
    report = json.loads((out / "report.json").read_text())
    assert len(lines) - 1 == report["data"]["fills"] > 0


def test_sigterm_writes_what_it_has_and_says_so(tmp_path):
    path = recipe_file(tmp_path, duration="24h", name="long")  # long enough never to end on its own here
    out = tmp_path / "out"
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "sigkit.cli", "run", str(path), "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(8)  # past start-up (imports, loading compiled kernels), even on a loaded machine
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM" in stderr and "incomplete" in stderr
    report = json.loads((out / "report.json").read_text())
    assert report["completed"] is False and report["stop_reason"] == "stopped by SIGTERM"
    assert report["data"]["fills"] > 0
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) - 1 == report["data"]["fills"]
    assert not list(Path(out).glob("*.partial"))


def test_confidence_filter_selects_what_is_scored_and_reports_coverage(tmp_path):
    path = recipe_file(tmp_path, duration="4m")
    path.write_text(path.read_text() + "evaluation:\n  min_confidence: 0.5\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    import csv

    rows = [r for r in csv.DictReader((out / "predictions.csv").open()) if r["was_adverse"] != ""]
    flow = report["scores"]["flow"]
    # flow's confidence is n/(n+200): the first ~200 outcomes are below 0.5 and are not scored...
    assert 0.5 < flow["coverage"] < 1.0
    assert flow["n"] == round(flow["coverage"] * len(rows))
    # ...yet the model learned from them: its confidence could only rise because outcomes kept arriving.
    # The reference is scored on the same subset: recompute it from the kept rows.
    kept = rows[len(rows) - flow["n"]:]
    ref = sum((float(r["p_ref"]) - float(r["was_adverse"])) ** 2 for r in kept) / len(kept)
    assert flow["brier_ref"] == pytest.approx(ref, abs=1e-12)
    assert report["scores"]["base_rate"]["coverage"] < 1.0
