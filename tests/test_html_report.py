"""The HTML report: one self-contained page whose figures plot the numbers report.json holds."""

from __future__ import annotations

import base64
import json
import re
import sys

import pytest
from click.testing import CliRunner

from sigkit.cli import main
from sigkit.errors import DataError
from sigkit.html_report import (fig_ab, fig_capture, fig_leadlag, fig_markout, fig_reliability, fig_weights,
                                load_run, render_report)

from conftest import SIM_RECIPE_HEAD

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMG = re.compile(r'<img id="([^"]+)" alt="[^"]+" src="data:image/png;base64,([A-Za-z0-9+/=]+)"')

RUN_BODY = """\
models:
  - id: base_rate
    model: base_rate
  - id: enhanced_as
    model: enhanced_as
  - id: lead_lag
    model: cross_asset
    params: {leader_venue: simlead, leader_symbol: BTC-PERP}
ensemble:
  combiner: stacking
  members: [enhanced_as, lead_lag]
evaluation:
  markout_horizons: [100ms, 1s, 5s]
"""

AB_BODY = """\
models:
  - id: base_rate
    model: base_rate
  - id: flow
    model: flow
arms:
  one: {model: base_rate}
  two: {model: flow}
"""


def _recipe(tmp_path, name, world, body):
    path = tmp_path / f"{name}.yaml"
    path.write_text(SIM_RECIPE_HEAD.format(name=name, seed=5, world=world, duration="3m") + body)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html_run")
    out = tmp / "out"
    result = CliRunner().invoke(main, ["run", str(_recipe(tmp, "mini", "mixed", RUN_BODY)), "--out", str(out),
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def ab_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html_ab")
    out = tmp / "out"
    result = CliRunner().invoke(main, ["ab", str(_recipe(tmp, "mini_ab", "informed", AB_BODY)), "--out", str(out),
                                       "--quiet", "--n-boot", "100"])
    assert result.exit_code == 0, result.output
    return out


def _images(page: str) -> dict[str, bytes]:
    return {fig_id: base64.b64decode(data) for fig_id, data in IMG.findall(page)}


def test_the_page_is_self_contained_and_holds_every_figure(run_dir):
    path = render_report(run_dir)
    assert path == run_dir / "report.html"
    assert not [p for p in run_dir.iterdir() if p.name.endswith((".tmp", ".partial"))]  # renamed into place
    page = path.read_text()
    report = json.loads((run_dir / "report.json").read_text())
    images = _images(page)
    expected = {f"fig-reliability-{sid}" for sid in report["scores"]}
    expected |= {"fig-markout", "fig-capture", "fig-rolling", "fig-weights-ensemble", "fig-leadlag-lead_lag"}
    expected |= {f"fig-markout-{sid}" for sid in report["scores"] if sid != "ensemble"}  # each model's deciles
    assert expected <= set(images), expected - set(images)
    for fig_id, png in images.items():
        assert len(png) > 1000 and png.startswith(PNG_SIGNATURE), fig_id
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere
    for text in (report["recipe"]["sha256"], report["recipe"]["name"], report["sigkit_version"], "seed",
                 "reliability (−)", "resolution (+)"):
        assert text in page


def test_figures_plot_the_numbers_of_report_json(run_dir):
    run = load_run(run_dir)
    report = run.report
    assert run.model_ids == ["base_rate", "enhanced_as", "lead_lag"] and run.pooled_ids == ["ensemble"]
    for sid, score in report["scores"].items():
        dec = score["decomposition"]
        _, data = fig_reliability(report, sid)
        assert data["counts"] == dec["bin_counts"]
        assert data["forecast"] == pytest.approx(dec["bin_mean_forecast"], abs=0, rel=0)
        assert data["observed"] == pytest.approx(dec["bin_observed_rate"], abs=0, rel=0)

    _, data = fig_markout(report, "ensemble")
    horizons = report["label"]["markout_horizons"]
    assert data["horizons"] == horizons and data["seconds"] == pytest.approx([0.1, 1.0, 5.0])
    mk = report["scores"]["ensemble"]["markout_bps"]
    assert data["overall"] == pytest.approx([mk[h]["mean"] for h in horizons], abs=1e-12)
    for d in range(10):
        assert data["by_decile"][d] == pytest.approx([mk[h]["by_decile"][d] for h in horizons], abs=1e-12)

    _, data = fig_capture(run)
    assert set(data) == set(report["scores"])
    for sid, score in report["scores"].items():
        assert data[sid]["capture_at_q"] == pytest.approx(score["capture_at_q"], abs=1e-9), sid
        assert data[sid]["share_at_deciles"][0] == 0.0 and data[sid]["share_at_deciles"][-1] == pytest.approx(1.0)

    _, data = fig_weights(run, "ensemble")
    assert data["members"] == ["enhanced_as", "lead_lag"]
    last = report["state_history"][-1]["states"]["ensemble"]["by_state"][0]["weights"]
    assert [row[-1] for row in zip(*data["by_state"][0])] == pytest.approx(last)

    state = report["states"]["lead_lag"]
    _, data = fig_leadlag(state, "lead_lag")
    assert data["lag_ms"] == state["lag_ns"] / 1e6
    assert data["correlation"] == pytest.approx(state["curve"]["correlation"])


def test_ab_figure_ends_at_n_times_the_brier_difference(ab_dir, tmp_path):
    target = tmp_path / "sub" / "page.html"  # out_path is honoured, its folder made
    assert render_report(ab_dir, target) == target
    page = target.read_text()
    assert page.startswith("<!DOCTYPE html>") and not (ab_dir / "report.html").exists()
    report = json.loads((ab_dir / "report.json").read_text())
    cmp = report["ab"]["comparisons"][0]
    assert (cmp["a"], cmp["b"]) == ("one", "two")
    png = _images(page)["fig-ab-one-vs-two"]
    assert png.startswith(PNG_SIGNATURE)
    assert cmp["verdict"]["text"] in page
    _, data = fig_ab(load_run(ab_dir), cmp)
    assert data["n"] == cmp["n"]
    assert data["final"] == pytest.approx(cmp["n"] * (cmp["brier"]["a"] - cmp["brier"]["b"]), abs=1e-6)


def test_missing_run_dir_or_files_is_a_data_error(tmp_path, run_dir):
    with pytest.raises(DataError, match="does not exist"):
        render_report(tmp_path / "nope")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "report.json").write_text((run_dir / "report.json").read_text())
    with pytest.raises(DataError, match="predictions.csv"):
        render_report(partial)
    assert not (partial / "report.html").exists()


def test_missing_matplotlib_is_a_data_error_with_the_install_hint(run_dir, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(DataError) as err:
        render_report(run_dir)
    assert "pip install 'sigkit[report]'" in str(err.value)
