"""Plugin discovery: built-ins through entry points, broken plugins skipped, duplicates refused."""

from __future__ import annotations

import importlib.metadata as metadata
import types

import attrs
import pytest
from click.testing import CliRunner

import sigkit
from sigkit.cli import main
from sigkit.errors import PluginError
from sigkit.plugins import build_registry


def test_builtins_are_found_through_the_entry_point_group():
    registry = build_registry()
    assert {"base_rate", "flow"} <= set(registry.models)
    assert {"mean", "weighted", "logit", "stacking", "hedge"} <= set(registry.combiners)
    assert {"simulate", "native"} <= set(registry.sources)
    flow = registry.models["flow"]
    assert flow.distribution == "sigkit" and flow.plugin == "baselines" and flow.version == sigkit.__version__


def test_no_entry_points_means_no_models():
    registry = build_registry(load_entrypoints=False)
    assert registry.models == {}
    with pytest.raises(PluginError, match="unknown model 'flow'"):
        registry.lookup("model", "flow")


class _Dist:
    name = "sigkit-broken"
    version = "9.9"


def _fake_entry_points(real, extra):
    def entry_points(group=None):
        found = list(real(group=group))
        return found + [ep for ep in extra if ep.group == group]

    return entry_points


def test_a_plugin_that_fails_to_import_is_skipped_with_a_warning_naming_its_distribution(monkeypatch):
    broken = metadata.EntryPoint("broken", "sigkit_does_not_exist_anywhere", "sigkit")
    broken = broken._for(_Dist())
    monkeypatch.setattr(metadata, "entry_points", _fake_entry_points(metadata.entry_points, [broken]))
    registry = build_registry()
    assert "flow" in registry.models  # the others still load
    [failure] = registry.failures
    assert "sigkit-broken 9.9" in str(failure) and "ModuleNotFoundError" in str(failure)
    # A recipe naming a model that is not there hears why.
    with pytest.raises(PluginError, match="unknown model 'brokenmodel'.*sigkit-broken 9.9 failed to load"):
        registry.lookup("model", "brokenmodel")
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0
    assert "FAILED" in result.output and "sigkit-broken" in result.output


def test_a_misspelled_registration_hook_is_reported_not_silently_ignored():
    module = types.ModuleType("typo_plugin")

    @sigkit.hookimpl
    def register_model(register):
        pass

    module.register_model = register_model
    with pytest.raises(PluginError, match="unknown hook 'register_model', did you mean 'register_models'"):
        build_registry(load_entrypoints=False, plugins=[module])


class _Params:
    pass


def test_duplicate_names_are_refused_naming_both_providers():
    def plugin(name):
        module = types.ModuleType(name)

        @sigkit.hookimpl
        def register_models(register):
            register(sigkit.ModelSpec("twin", object))

        module.register_models = register_models
        return module

    with pytest.raises(PluginError, match="model 'twin' is registered twice"):
        build_registry(load_entrypoints=False, plugins=[plugin("one"), plugin("two")])


def test_plugins_json_lists_parameters_with_units_and_defaults():
    import json

    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    baselines = next(p for p in data["plugins"] if p["name"] == "baselines")
    flow = next(m for m in baselines["models"] if m["name"] == "flow")
    halflife = next(p for p in flow["params"] if p["name"] == "halflife")
    assert halflife["default"] == "2s" and halflife["unit"] == "duration"


def test_allow_list_environment_variable(monkeypatch):
    monkeypatch.setenv("SIGKIT_LOAD_PLUGINS", "combiners")
    registry = build_registry()
    assert registry.models == {} and "mean" in registry.combiners
    monkeypatch.delenv("SIGKIT_LOAD_PLUGINS")
    monkeypatch.setenv("SIGKIT_DISABLE_PLUGINS", "baselines")
    registry = build_registry()
    assert "flow" not in registry.models and "simulate" in registry.sources


@attrs.frozen
class P:
    window_ns: int = sigkit.duration("1s", doc="d")
    scales_ns: tuple[int, ...] = sigkit.duration(("100ms", "1s"), doc="d")
    rate: float = sigkit.param(0.1, doc="r")
    mode: str = sigkit.param("a", doc="m", choices=("a", "b"))


def test_params_convert_durations_and_refuse_bad_values():
    from sigkit.params import ParamError, build_params

    p = build_params(P, {"window": "250ms", "scales": ["10ms", "2s"], "rate": 1}, owner="x")
    assert p.window_ns == 250_000_000 and p.scales_ns == (10_000_000, 2_000_000_000) and p.rate == 1.0
    assert build_params(P, {}, owner="x").scales_ns == (100_000_000, 1_000_000_000)
    with pytest.raises(ParamError, match='quote it'):
        build_params(P, {"mode": None}, owner="x")
    for bad in ({"window": 5}, {"rate": "x"}, {"rate": True}, {"mode": "c"}, {"scales": "1s"}, {"windo": "1s"}):
        with pytest.raises(ParamError):
            build_params(P, bad, owner="x")


@attrs.frozen
class Validated:
    window_ns: int = sigkit.duration("1s", doc="d")
    count: int = sigkit.param(3, doc="c", unit="buckets")

    @count.validator
    def _positive(self, attribute, value):
        if value < 1:
            raise ValueError(f"count must be at least 1, got {value}")


def test_a_params_validator_becomes_a_param_error_naming_the_key():
    from sigkit.params import ParamError, build_params

    with pytest.raises(ParamError, match="count must be at least 1") as info:
        build_params(Validated, {"count": 0}, owner="model 'm'")
    assert info.value.key == "count"


class _OtherDist:
    name = "sigkit-thirdparty"
    version = "1.0"


def test_the_same_module_behind_two_entry_points_is_a_load_failure_not_a_crash(monkeypatch):
    twin = metadata.EntryPoint("twin", "sigkit_baselines", "sigkit")._for(_OtherDist())
    monkeypatch.setattr(metadata, "entry_points", _fake_entry_points(metadata.entry_points, [twin]))
    registry = build_registry()
    [failure] = registry.failures
    assert "already loaded as plugin 'baselines'" in str(failure) and "flow" in registry.models


def test_no_plugins_keeps_only_the_builtins(monkeypatch):
    import sys

    module = types.ModuleType("sigkit_thirdparty")

    @sigkit.hookimpl
    def register_models(register):
        register(sigkit.ModelSpec("third_model", object))

    module.register_models = register_models
    monkeypatch.setitem(sys.modules, "sigkit_thirdparty", module)
    third = metadata.EntryPoint("thirdparty", "sigkit_thirdparty", "sigkit")._for(_OtherDist())
    monkeypatch.setattr(metadata, "entry_points", _fake_entry_points(metadata.entry_points, [third]))
    assert "third_model" in build_registry().models
    monkeypatch.setenv("SIGKIT_NO_PLUGINS", "1")
    registry = build_registry()
    assert {p.distribution for p in registry.plugins} == {"sigkit"} and "flow" in registry.models
    result = CliRunner().invoke(main, ["--no-plugins", "plugins"])
    assert result.exit_code == 0 and "thirdparty" not in result.output


def test_a_plugin_for_another_api_version_is_refused_at_load(monkeypatch):
    import sys

    module = types.ModuleType("sigkit_future_plugin")
    module.SIGKIT_PLUGIN_API = 2
    monkeypatch.setitem(sys.modules, "sigkit_future_plugin", module)
    future = metadata.EntryPoint("future", "sigkit_future_plugin", "sigkit")._for(_OtherDist())
    monkeypatch.setattr(metadata, "entry_points", _fake_entry_points(metadata.entry_points, [future]))
    registry = build_registry()
    [failure] = registry.failures
    assert "plugin API 2" in str(failure) and f"API {sigkit.PLUGIN_API_VERSION}" in str(failure)
    assert "sigkit-thirdparty 1.0" in str(failure)
