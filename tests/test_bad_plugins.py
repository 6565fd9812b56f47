"""Badly behaved third-party plugins, installed as real distributions into a fresh venv, seen through the CLI.

Three plugins are generated with `new_plugin` and broken on purpose: one fails to import, one's model raises
in on_trade, one predicts p_adverse=1.7.  Each CLI command must say what went wrong in one line (exit 2),
or skip the broken plugin with a one-line warning, and never show a traceback.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from sigkit.scaffold import new_plugin

from conftest import install_plugins, plugin_venv

BROKEN, RAISES, OUT_OF_RANGE = "broken_import", "raises_on_trade", "out_of_range"
THIRD_PARTY = (BROKEN, RAISES, OUT_OF_RANGE)

RECIPE = """\
name: {name}
seed: 7
data:
  - source: simulate
    world: informed
    duration: 1m
target: {{venue: sim, symbol: BTC-PERP}}
horizon: 1s
{extra}models:
{models}"""


def _norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _break(target: Path, model: str, old: str, new: str) -> None:
    path = target / "src" / f"sigkit_{model}" / "__init__.py"
    text = path.read_text()
    assert text.count(old) == 1, (model, old)
    path.write_text(text.replace(old, new))
    compile(path.read_text(), str(path), "exec")


class Env:
    def __init__(self, root: Path, python: Path, env: dict):
        self.root, self.python, self.env = root, python, env

    def sigkit(self, *args, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.python), "-m", "sigkit.cli", *args], cwd=cwd or self.root, env=self.env,
                              capture_output=True, text=True, timeout=120)

    def recipe(self, name: str, models: list[tuple[str, str]], extra: str = "") -> Path:
        body = "".join(f"  - id: {mid}\n    model: {model}\n" for mid, model in models)
        path = self.root / f"{name}.yaml"
        path.write_text(RECIPE.format(name=name, extra=extra, models=body))
        return path


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Env:
    root = tmp_path_factory.mktemp("bad_plugins")
    src = root / "src"
    targets = {name: new_plugin(name, src) for name in THIRD_PARTY}
    _break(targets[BROKEN], BROKEN, "import sigkit\n", "import sigkit\nimport sigkit_does_not_exist  # noqa: F401\n")
    _break(targets[RAISES], RAISES, "        if trade.venue != self.target.venue",
           '        raise RuntimeError("boom")\n        if trade.venue != self.target.venue')
    _break(targets[OUT_OF_RANGE], OUT_OF_RANGE,
           "return sigkit.Prediction(p_adverse, confidence, self.cost.expected(p_adverse))",
           "return sigkit.Prediction(1.7)")

    python, env = plugin_venv(root / "venv")
    install_plugins(python, env, *targets.values())
    return Env(root, python, env)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The stderr line starting with 'error:'; asserts there is exactly one and no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def _assert_broken_warning(stderr: str) -> None:
    warnings = [w for w in _warnings(stderr) if "failed to load" in w]
    assert len(warnings) == 1, stderr
    w = warnings[0]
    assert w.endswith("; skipped"), w
    assert f"'{BROKEN}'" in w and "ModuleNotFoundError" in w and "sigkit_does_not_exist" in w, w
    assert _norm("sigkit-broken_import") in _norm(w), w


def test_plugins_lists_the_broken_one_as_failed_and_the_others(venv):
    proc = venv.sigkit("plugins")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1, proc.stdout
    assert f"plugin '{BROKEN}'" in failed[0] and "0.1.0" in failed[0], failed[0]
    assert _norm("sigkit-broken_import") in _norm(failed[0]), failed[0]
    # ModuleNotFoundError is the ImportError subclass `import missing` raises.
    assert "ModuleNotFoundError" in failed[0] and "sigkit_does_not_exist" in failed[0], failed[0]
    headers = [line.split()[0] for line in proc.stdout.splitlines() if line and not line[0].isspace()]
    for name in (RAISES, OUT_OF_RANGE, "baselines", "combiners"):
        assert name in headers, proc.stdout
    assert BROKEN not in headers
    models = {line.split()[1] for line in proc.stdout.splitlines() if line.strip().startswith("model ")}
    assert {RAISES, OUT_OF_RANGE, "base_rate", "flow"} <= models, proc.stdout
    assert "Traceback" not in proc.stderr

    listed = json.loads(venv.sigkit("plugins", "--json").stdout)
    assert len(listed["failures"]) == 1 and BROKEN in listed["failures"][0]
    assert {RAISES, OUT_OF_RANGE} <= {p["name"] for p in listed["plugins"]}


def test_any_command_warns_once_about_the_broken_plugin(venv):
    recipe = venv.recipe("ok", [("base_rate", "base_rate"), ("flow", "flow")])
    proc = venv.sigkit("validate", str(recipe))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_broken_warning(proc.stderr)


def test_run_naming_the_broken_plugins_model(venv):
    recipe = venv.recipe("broken", [("base_rate", "base_rate"), ("mine", BROKEN)])
    out = venv.root / "out-broken"
    proc = venv.sigkit("run", str(recipe), "--quiet", "--out", str(out))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = _one_line_error(proc)
    assert f"unknown model '{BROKEN}'" in line, line
    assert "failed to load" in line and _norm("sigkit-broken_import") in _norm(line), line
    assert not out.exists()


def test_model_raising_in_on_trade_stops_the_run_with_one_line(venv):
    recipe = venv.recipe("raises", [("base_rate", "base_rate"), ("boomer", RAISES)])
    out = venv.root / "out-raises"
    proc = venv.sigkit("run", str(recipe), "--quiet", "--out", str(out))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = _one_line_error(proc)
    assert "model 'boomer'" in line, line
    assert RAISES in line and _norm("sigkit-raises_on_trade") in _norm(line), line
    assert "RuntimeError" in line and "on_trade" in line and "boom" in line, line
    assert re.search(r"ts_ns=\d+", line), line
    assert not out.exists(), list(out.rglob("*"))


def test_model_raising_is_dropped_under_on_error_drop(venv):
    recipe = venv.recipe("raises_drop", [("base_rate", "base_rate"), ("flow", "flow"), ("boomer", RAISES)],
                         extra="on_error: drop\nensemble:\n  combiner: mean\n  members: [flow, boomer]\n")
    out = venv.root / "out-drop"
    proc = venv.sigkit("run", str(recipe), "--quiet", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    dropped = [w for w in _warnings(proc.stderr) if "dropped" in w]
    assert len(dropped) == 1, proc.stderr
    assert "'boomer'" in dropped[0] and "on_trade" in dropped[0] and "boom" in dropped[0], dropped[0]
    report = json.loads((out / "report.json").read_text())
    assert report["completed"] is True
    assert set(report["dropped"]) == {"boomer"}, report["dropped"]
    why = report["dropped"]["boomer"]
    assert why["hook"] == "on_trade" and "RuntimeError: boom" in why["error"] and isinstance(why["ts_ns"], int)
    assert "flow" in report["scores"] and "ensemble" in report["scores"], list(report["scores"])


def test_prediction_out_of_range_stops_the_run_with_one_line(venv):
    recipe = venv.recipe("range", [("base_rate", "base_rate"), ("wild", OUT_OF_RANGE)])
    out = venv.root / "out-range"
    proc = venv.sigkit("run", str(recipe), "--quiet", "--out", str(out))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = _one_line_error(proc)
    assert "model 'wild'" in line and "p_adverse=1.7" in line and "[0, 1]" in line, line
    assert not out.exists()


def test_no_plugins_lists_none_of_them_and_does_not_warn(venv):
    proc = venv.sigkit("--no-plugins", "plugins")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == "", proc.stderr
    for name in THIRD_PARTY:
        assert name not in proc.stdout, proc.stdout
    assert "FAILED" not in proc.stdout
    assert "baselines" in proc.stdout
    recipe = venv.recipe("ok_np", [("base_rate", "base_rate"), ("flow", "flow")])
    proc = venv.sigkit("--no-plugins", "validate", str(recipe))
    assert proc.returncode == 0 and _warnings(proc.stderr) == [], proc.stderr
