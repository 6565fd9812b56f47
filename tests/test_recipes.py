"""The shipped recipes: all valid, and the quickstart's ensemble earns its place."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SHARED_DATA
from sigkit.engine import replay_from_recipe
from sigkit.plugins import build_registry
from sigkit.recipe import load_recipe
from sigkit.report import build_report

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
REGISTRY = build_registry()


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_validates(path):
    if "shared/data/" in path.read_text() and not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent: {path.name} replays the real recordings kept there")
    recipe = load_recipe(path, REGISTRY)
    assert recipe.models


def test_quickstart_ensemble_beats_every_single_model_on_the_mixed_world():
    recipe = load_recipe(RECIPES[[p.stem for p in RECIPES].index("quickstart")], REGISTRY)
    assert recipe.sources[0].params.world == "mixed"
    assert {m.spec.name for m in recipe.models} >= {"enhanced_as", "prefill_toxicity", "cross_asset", "onchain_oi"}
    assert recipe.ensemble.params.regimes  # regime-adaptive
    replay = replay_from_recipe(recipe)
    report = build_report(replay.run(), recipe, sources=[], plugins=[], version="test")
    scores = report["scores"]
    ensemble = scores.pop("ensemble")
    assert ensemble["skill_test"]["edge"]
    for model_id, s in scores.items():
        assert ensemble["brier"] < s["brier"], (model_id, s["brier"], ensemble["brier"])
        if model_id != "base_rate":
            assert s["skill_test"]["edge"], model_id  # every model sees its part of the mixed world
