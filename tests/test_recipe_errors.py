"""Bad input gets one clear line with file:line:column, exit code 2, no traceback and no output files."""

from __future__ import annotations

import textwrap

import pytest
from click.testing import CliRunner

from sigkit.cli import main

GOOD = """\
name: t
data:
  - source: native
    path: {data}
target: {venue: v, symbol: X}
horizon: 1s
models:
  - id: flow
    model: flow
    params:
      halflife: 2s
"""


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "events.csv"
    from sigkit.native import COLUMNS, MAGIC

    path.write_text(f"{MAGIC}\n{','.join(COLUMNS)}\n")
    return path


def run_cli(*args):
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


CASES = {
    "malformed yaml": ("models:\n  - id: a\n   model: flow\n", r"r\.yaml:3:\d+: malformed YAML"),
    "unknown model": (GOOD.replace("model: flow", "model: flwo"), r"r\.yaml:9:12: unknown model 'flwo', did you mean 'flow'\?"),
    "unknown parameter": (GOOD.replace("halflife: 2s", "halflive: 2s"),
                          r"r\.yaml:11:7: unknown parameter 'halflive' .*did you mean 'halflife'\?"),
    "wrong parameter type": (GOOD.replace("halflife: 2s", "halflife: 2s\n      learning_rate: fast"),
                             r"r\.yaml:12:22: parameter 'learning_rate' .* expected a number, got 'fast'"),
    "unitless duration": (GOOD.replace("horizon: 1s", "horizon: 5"), r"r\.yaml:6:10: horizon: duration 5 has no unit"),
    "unitless parameter duration": (GOOD.replace("halflife: 2s", "halflife: 2"),
                                    r"r\.yaml:11:17: parameter 'halflife' .* has no unit"),
    "missing data file": (GOOD.replace("path: {data}", "path: nowhere.csv"),
                          r"r\.yaml:4:11: data file '.*nowhere\.csv' does not exist"),
    "unknown top-level key": (GOOD + "modles: []\n", r"r\.yaml:12:1: unknown key 'modles' in the recipe, did you mean 'models'\?"),
    "unknown source": (GOOD.replace("source: native", "source: nativ"), r"r\.yaml:3:13: unknown source 'nativ', did you mean 'native'\?"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_recipe_is_one_line_exit_2_and_writes_nothing(case, command, tmp_path, data_file):
    text, pattern = CASES[case]
    recipe = write(tmp_path, text.replace("{data}", str(data_file)))
    out = tmp_path / "out"
    args = [command, str(recipe)] + (["--out", str(out), "--quiet"] if command == "run" else [])
    code, output = run_cli(*args)
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "Traceback" not in output
    import re

    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists()


def test_missing_recipe_file(tmp_path):
    code, output = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert code == 2 and "no such recipe file" in output


def test_corrupt_data_file_is_exit_2_with_line(tmp_path, data_file):
    with open(data_file, "a") as f:
        f.write("123,123,trade,v,X,1,abc,1,,,,,,,,,,\n")
    recipe = write(tmp_path, GOOD.replace("{data}", str(data_file)))
    out = tmp_path / "out"
    code, output = run_cli("run", str(recipe), "--out", str(out), "--quiet")
    assert code == 2, output
    assert re.search(r"events\.csv:3: column 'price': cannot read 'abc'", output), output
    assert not out.exists()


import re  # noqa: E402


def test_good_recipe_validates(tmp_path, data_file):
    recipe = write(tmp_path, GOOD.replace("{data}", str(data_file)))
    code, output = run_cli("validate", str(recipe))
    assert code == 0, output
    assert "ok" in output.splitlines()[0]


def test_an_error_raised_while_building_a_model_names_it_and_its_line(tmp_path, data_file):
    text = GOOD.replace("{data}", str(data_file)) + "ensemble:\n  combiner: weighted\n  params: {weights: [1.0, 2.0]}\n"
    recipe = write(tmp_path, text)
    code, output = run_cli("run", str(recipe), "--quiet", "--out", str(tmp_path / "o"))
    assert code == 2, output
    assert re.search(r"r\.yaml:13:3: combiner 'weighted' of 'ensemble': weighted combiner: 2 weights for 1 members", output), output


RAISING_PLUGIN = '''
import sigkit


class Raises:
    def __init__(self, params, context):
        pass

    def on_trade(self, trade):
        raise RuntimeError("feed handler exploded")

    def predict(self, query):
        return sigkit.Prediction(0.5)


@sigkit.hookimpl
def register_models(register):
    register(sigkit.ModelSpec("raises", Raises))
'''


def _use_plugin(monkeypatch, name: str, source: str) -> None:
    """Make every registry this test builds include a plugin module made from ``source``."""
    import sys
    import types

    from sigkit import plugins

    module = types.ModuleType(name)
    exec(source, module.__dict__)
    monkeypatch.setitem(sys.modules, name, module)
    real = plugins.build_registry
    monkeypatch.setattr(plugins, "build_registry", lambda **kw: real(plugins=[module], **kw))


def test_a_plugin_that_raises_mid_run_is_named_with_model_hook_and_time(tmp_path, monkeypatch):
    _use_plugin(monkeypatch, "raising_plugin", RAISING_PLUGIN)
    recipe = write(tmp_path, "data:\n  - source: simulate\n    duration: 1m\ntarget: {venue: sim, symbol: BTC-PERP}\n"
                             "models:\n  - id: bad\n    model: raises\n")
    out = tmp_path / "out"
    code, output = run_cli("run", str(recipe), "--quiet", "--out", str(out))
    assert code == 2, output
    assert re.search(r"model 'bad' \(raises from \(registered directly\)\) raised RuntimeError in on_trade "
                     r"at ts_ns=\d+: feed handler exploded", output), output
    assert len(output.strip().splitlines()) == 1 and not out.exists()


def test_on_error_drop_records_the_dropped_model_and_finishes(tmp_path, monkeypatch):
    import json
    _use_plugin(monkeypatch, "raising_plugin", RAISING_PLUGIN)
    recipe = write(tmp_path, "data:\n  - source: simulate\n    duration: 1m\ntarget: {venue: sim, symbol: BTC-PERP}\n"
                             "on_error: drop\nmodels:\n  - id: bad\n    model: raises\n  - id: flow\n    model: flow\n"
                             "ensemble:\n  combiner: mean\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(recipe), "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "model 'bad' was dropped" in result.output and "on_error: drop" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["completed"] and report["dropped"]["bad"]["hook"] == "on_trade"
    assert "feed handler exploded" in report["dropped"]["bad"]["error"]
    assert report["scores"]["flow"]["n"] > 100 and report["scores"]["ensemble"]["n"] == report["scores"]["flow"]["n"]


def test_on_error_must_be_stop_or_drop(tmp_path, data_file):
    recipe = write(tmp_path, GOOD.replace("{data}", str(data_file)) + "on_error: ignore\n")
    code, output = run_cli("validate", str(recipe))
    assert code == 2 and "r.yaml:12:11: on_error must be 'stop' or 'drop'" in output, output


def test_on_error_drop_also_drops_a_model_whose_prediction_is_not_a_probability(tmp_path, monkeypatch):
    import json
    _use_plugin(monkeypatch, "wild_plugin", RAISING_PLUGIN.replace('raise RuntimeError("feed handler exploded")', "pass")
                .replace("sigkit.Prediction(0.5)", "sigkit.Prediction(1.7)").replace('"raises"', '"wild"'))
    body = "data:\n  - source: simulate\n    duration: 1m\ntarget: {venue: sim, symbol: BTC-PERP}\nmodels:\n  - id: w\n    model: wild\n"
    code, output = run_cli("run", str(write(tmp_path, body)), "--quiet", "--out", str(tmp_path / "o1"))
    assert code == 2 and re.search(r"model 'w' \(wild from .*\) at ts_ns=\d+ predicted p_adverse=1.7", output), output
    out = tmp_path / "o2"
    code, output = run_cli("run", str(write(tmp_path, "on_error: drop\n" + body, name="d.yaml")), "--quiet", "--out", str(out))
    assert code == 0, output
    assert "p_adverse=1.7" in json.loads((out / "report.json").read_text())["dropped"]["w"]["error"]
