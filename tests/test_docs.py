"""The docs match the code."""

from pathlib import Path

from sigkit import hookspecs
from sigkit.hookdoc import render

ROOT = Path(__file__).resolve().parents[1]


def test_hook_reference_is_generated_from_the_hookspecs():
    page = (ROOT / "docs" / "hooks.md").read_text()
    assert page == render(), "docs/hooks.md is stale: run `python -m sigkit.hookdoc > docs/hooks.md`"
    for name in ("register_models", "on_trade", "on_book_update", "on_market_stat", "predict", "record_outcome",
                 "combine", "chunks"):
        assert f"### `{name}(" in page


def test_every_instance_hook_is_documented():
    for cls in (hookspecs.ModelHooks, hookspecs.CombinerHooks, hookspecs.SourceHooks):
        for name, fn in vars(cls).items():
            if not name.startswith("_") and callable(fn):
                assert fn.__doc__, f"{cls.__name__}.{name} has no docstring"


def test_recipe_reference_lists_every_top_level_and_evaluation_key():
    from sigkit.recipe import EVALUATION_KEYS, TOP_LEVEL_KEYS

    page = (ROOT / "docs" / "recipes.md").read_text()
    for key in TOP_LEVEL_KEYS + EVALUATION_KEYS:
        assert f"\n{key}:" in page or f"  {key}:" in page, key
