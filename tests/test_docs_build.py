"""The documentation site builds cleanly, and the tutorial (docs/tutorial.md) does what it says."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path


from sigkit.scaffold import new_plugin

from conftest import install_plugins, plugin_venv

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"
MODEL = ROOT / "docs" / "tutorial" / "model.py"
AB_RECIPE = ROOT / "docs" / "tutorial" / "ab.yaml"


def _fenced_blocks(text: str, marker: str) -> list[str]:
    """The fenced code blocks that directly follow an HTML comment ``<!-- marker -->``."""
    pattern = re.compile(r"<!-- " + re.escape(marker) + r" -->\s*\n```[a-z]*\n(.*?)\n```\n", re.S)
    return pattern.findall(text)


def test_mkdocs_build_is_strict_clean(tmp_path):
    import mkdocs  # noqa: F401  (in the test extra: the docs build is part of CI, never skipped)
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "WARNING" not in output, output
    for page in ("index.html", "tutorial/index.html", "troubleshooting/index.html", "models/cross_asset/index.html"):
        assert (tmp_path / "site" / page).is_file(), page


def test_tutorial_shows_the_files_it_ships_verbatim():
    text = TUTORIAL.read_text(encoding="utf-8")
    for marker, path in (("docs/tutorial/model.py", MODEL), ("docs/tutorial/ab.yaml", AB_RECIPE)):
        blocks = _fenced_blocks(text, marker)
        assert len(blocks) == 1, f"docs/tutorial.md: expected one code block after <!-- {marker} -->"
        assert blocks[0] + "\n" == path.read_text(encoding="utf-8"), f"docs/tutorial.md: pasted {marker} is stale"


def test_tutorial_plugin_installs_passes_its_tests_conforms_and_ab_runs(tmp_path):
    target = new_plugin("spread_shock", tmp_path / "src")
    shutil.copyfile(MODEL, target / "src" / "sigkit_spread_shock" / "__init__.py")  # the tutorial's step 3

    python, env = plugin_venv(tmp_path / "venv")

    def run(*args, cwd=tmp_path):
        proc = subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    install_plugins(python, env, target)  # offline, as tests/test_scaffold.py installs a generated plugin

    # The generated tests, unchanged, pass with the tutorial's model.
    run("-m", "pytest", str(target / "tests"), "-q", "-p", "no:cacheprovider", cwd=target)

    # The conformance suite, on the installed module.
    out = run("-c", "from sigkit.testing import assert_conforms, check_model\n"
                    "from sigkit_spread_shock import SpreadShock, SpreadShockParams\n"
                    "assert_conforms(SpreadShock, params_cls=SpreadShockParams)\n"
                    "print(check_model(SpreadShock, params_cls=SpreadShockParams))")
    assert "FAIL" not in out and "PASS  no_future" in out, out

    listed = json.loads(run("-m", "sigkit.cli", "plugins", "--json"))
    plugin = next(p for p in listed["plugins"] if p["name"] == "spread_shock")
    assert [m["name"] for m in plugin["models"]] == ["spread_shock"]

    # The tutorial's A/B against the quickstart's ensemble.
    run("-m", "sigkit.cli", "validate", str(AB_RECIPE))
    ab_out = tmp_path / "ab"
    run("-m", "sigkit.cli", "ab", str(AB_RECIPE), "--quiet", "--out", str(ab_out), "--n-boot", "100", cwd=ROOT)
    report = json.loads((ab_out / "report.json").read_text())
    assert report["completed"] is True
    assert "spread_shock" in report["scores"]
    [comparison] = report["ab"]["comparisons"]
    assert (comparison["a"], comparison["b"]) == ("incumbent", "candidate")
