"""A/B runs: arms in one pass with shared models, and verdicts that match the truth of the world."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from sigkit.cli import main
from sigkit.engine import replay_from_recipe
from sigkit.plugins import build_registry
from sigkit.recipe import load_recipe, merge_for_ab

from conftest import SIM_RECIPE_HEAD

HEAD = SIM_RECIPE_HEAD


def write(tmp_path, name, body, world="informed", seed=3, duration="6m"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(HEAD.format(name=name, seed=seed, world=world, duration=duration) + body)
    return path


def ab(*args):
    result = CliRunner().invoke(main, ["ab", *map(str, args), "--quiet", "--n-boot", "200"])
    return result.exit_code, result.output


def test_two_recipes_share_identical_models_and_the_informative_arm_wins(tmp_path):
    a = write(tmp_path, "a", "models:\n  - id: base_rate\n    model: base_rate\n")
    b = write(tmp_path, "b", "models:\n  - id: base_rate\n    model: base_rate\n  - id: flow\n    model: flow\n"
                             "ensemble:\n  combiner: stacking\n")
    registry = build_registry()
    merged = merge_for_ab(load_recipe(a, registry), load_recipe(b, registry))
    assert [m.id for m in merged.models] == ["base_rate", "flow"]  # base_rate built once for both arms
    assert [arm.name for arm in merged.arms] == ["a", "b"]
    assert len(replay_from_recipe(merged).model_ids) == 2
    out = tmp_path / "out"
    code, output = ab(a, b, "--out", out)
    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    [cmp] = report["ab"]["comparisons"]
    assert (cmp["a"], cmp["b"]) == ("a", "b")
    assert cmp["verdict"]["better"] == "b", cmp["verdict"]
    assert cmp["brier"]["p_value"] < 1e-3 and cmp["brier"]["diff"] > 0
    assert cmp["bootstrap"]["brier_ci"][0] > 0
    assert "b" in report["scores"] and "a" in report["scores"]
    header = (out / "predictions.csv").read_text().splitlines()[0].split(",")
    assert "p_a" in header and "p_b" in header


def test_identical_arms_give_no_verdict(tmp_path):
    body = ("models:\n  - id: flow\n    model: flow\narms:\n  one:\n    model: flow\n  two:\n    model: flow\n")
    out = tmp_path / "out"
    code, output = ab(write(tmp_path, "same", body), "--out", out)
    assert code == 0, output
    [cmp] = json.loads((out / "report.json").read_text())["ab"]["comparisons"]
    assert cmp["verdict"]["better"] is None
    assert cmp["brier"]["diff"] == 0.0
    assert "no detectable difference" in cmp["verdict"]["text"]


def test_recipes_that_differ_in_data_cannot_be_compared(tmp_path):
    a = write(tmp_path, "a", "models:\n  - id: flow\n    model: flow\n", seed=1)
    b = write(tmp_path, "b", "models:\n  - id: flow\n    model: flow\n", seed=2)
    code, output = ab(a, b)
    assert code == 2 and "differ in 'seed'" in output and len(output.strip().splitlines()) == 1


@pytest.mark.parametrize("body,message", [
    ("models:\n  - id: flow\n    model: flow\narms:\n  one:\n    model: flow\n", "at least two named arms"),
    ("models:\n  - id: flow\n    model: flow\nensemble:\n  combiner: mean\narms:\n  a:\n    model: flow\n  b:\n    model: flow\n",
     "either an ensemble or arms"),
    ("models:\n  - id: flow\n    model: flow\narms:\n  flow:\n    model: flow\n  b:\n    model: flow\n", "also a model id"),
    ("models:\n  - id: flow\n    model: flow\narms:\n  a:\n    model: flwo\n  b:\n    model: flow\n", "did you mean 'flow'"),
])
def test_bad_arms_are_located_errors(tmp_path, body, message):
    code, output = ab(write(tmp_path, "bad", body))
    assert code == 2 and message in output and "bad.yaml:" in output, output


def test_data_option_runs_both_arms_on_a_given_file(tmp_path):
    data = tmp_path / "m.csv.gz"
    assert CliRunner().invoke(main, ["simulate", "--world", "informed", "--duration", "4m", "--seed", "9",
                                     "--out", str(data)]).exit_code == 0
    a = write(tmp_path, "a", "models:\n  - id: base_rate\n    model: base_rate\n", world="null", seed=1)
    b = write(tmp_path, "b", "models:\n  - id: flow\n    model: flow\n", world="null", seed=1)
    out = tmp_path / "out"
    code, output = ab(a, b, "--data", data, "--out", out)
    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["sources"][0]["source"] == "native"
    assert report["data"]["fills"] > 1000  # four informed minutes, not the recipes' null world
    assert report["ab"]["comparisons"][0]["verdict"]["better"] == "b"
