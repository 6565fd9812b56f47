"""`sigkit.scaffold.new_plugin`: the generated plugin compiles, installs, passes its own tests and runs."""

from __future__ import annotations

import json
import subprocess

import pytest

from sigkit import SigkitError
from sigkit.scaffold import new_plugin

from conftest import install_plugins, plugin_venv

FILES = ("pyproject.toml", "README.md", "recipe.yaml", "src/sigkit_flow_ewma/__init__.py", "tests/test_flow_ewma.py")


def test_writes_the_distribution_and_its_python_compiles(tmp_path):
    target = new_plugin("flow_ewma", tmp_path)
    assert target == tmp_path / "sigkit-flow_ewma"
    for name in FILES:
        assert (target / name).is_file(), name
    for path in target.rglob("*.py"):
        compile(path.read_text(), str(path), "exec")
    pyproject = (target / "pyproject.toml").read_text()
    assert 'dependencies = ["sigkit>=0.1,<0.2"]' in pyproject
    assert 'flow_ewma = "sigkit_flow_ewma"' in pyproject
    assert "$" not in "".join(p.read_text() for p in target.rglob("*") if p.is_file())  # all filled in


def test_hyphenated_name_makes_an_importable_module(tmp_path):
    target = new_plugin("my-flow", tmp_path)
    assert (target / "src" / "sigkit_my_flow" / "__init__.py").is_file()
    assert 'my-flow = "sigkit_my_flow"' in (target / "pyproject.toml").read_text()
    assert "class MyFlow:" in (target / "src" / "sigkit_my_flow" / "__init__.py").read_text()


@pytest.mark.parametrize("name", ["", "Flow", "1flow", "flow ewma", "flow__x", "flow-", "../x", "flöw"])
def test_refuses_a_bad_name(tmp_path, name):
    with pytest.raises(SigkitError, match="plugin name"):
        new_plugin(name, tmp_path)
    assert not any(tmp_path.iterdir())


def test_refuses_an_existing_non_empty_target_but_fills_an_empty_one(tmp_path):
    (tmp_path / "sigkit-flow_ewma").mkdir()
    new_plugin("flow_ewma", tmp_path)  # empty: fine
    readme = tmp_path / "sigkit-flow_ewma" / "README.md"
    readme.write_text("mine")
    with pytest.raises(SigkitError, match="already exists") as info:
        new_plugin("flow_ewma", tmp_path)
    assert "\n" not in str(info.value)
    assert readme.read_text() == "mine"  # nothing overwritten


def test_generated_plugin_installs_passes_its_tests_is_listed_and_runs(tmp_path):
    target = new_plugin("flow_ewma", tmp_path / "src")
    python, env = plugin_venv(tmp_path / "venv")

    def run(*args, cwd=tmp_path):
        proc = subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    install_plugins(python, env, target)
    run("-m", "pytest", str(target / "tests"), "-q", "-p", "no:cacheprovider", cwd=target)
    listed = json.loads(run("-m", "sigkit.cli", "plugins", "--json"))
    plugin = next(p for p in listed["plugins"] if p["name"] == "flow_ewma")
    assert plugin["distribution"].replace("_", "-") == "sigkit-flow-ewma" and plugin["version"] == "0.1.0"
    assert [m["name"] for m in plugin["models"]] == ["flow_ewma"]
    assert "flow_ewma" in run("-m", "sigkit.cli", "plugins")
    out = tmp_path / "out"
    run("-m", "sigkit.cli", "run", str(target / "recipe.yaml"), "--quiet", "--out", str(out))
    report = json.loads((out / "report.json").read_text())
    assert report["completed"] is True and "flow_ewma" in report["scores"]
