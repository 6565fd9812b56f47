"""Plugin loading and the registries: the manager factory, entry-point discovery, typed specs.

Built-in models, combiners and sources are found through the ``sigkit`` entry-point group exactly like a
third party's; nothing here knows their names.
"""

from __future__ import annotations

import importlib.metadata as metadata
import inspect
import os
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import pluggy

from sigkit import hookspecs
from sigkit.errors import PluginError
from sigkit.params import suggest

ENTRY_POINT_GROUP = "sigkit"
#: Comma-separated entry-point names: load only these (``SIGKIT_LOAD_PLUGINS=""`` loads none).
ENV_ALLOW = "SIGKIT_LOAD_PLUGINS"
#: Comma-separated entry-point or distribution names never to load.
ENV_BLOCK = "SIGKIT_DISABLE_PLUGINS"
#: Set (to anything but "" or "0") to load only sigkit's own built-in plugins, like ``--no-plugins``.
ENV_NO_PLUGINS = "SIGKIT_NO_PLUGINS"
BUILTIN_DISTRIBUTION = "sigkit"
#: The plugin API this sigkit speaks.  A plugin module may declare ``SIGKIT_PLUGIN_API = 1``; one that
#: declares another major version is refused at load time instead of failing mid-run.
PLUGIN_API_VERSION = 1


@attrs.frozen
class _Spec:
    name: str
    factory: Callable[..., Any]
    params: type | None = None
    description: str = ""
    # Stamped by the registry with where the spec came from.
    plugin: str = ""
    distribution: str = ""
    version: str = ""


@attrs.frozen
class ModelSpec(_Spec):
    """A model a recipe can name: ``factory(params, context)`` builds an instance."""


@attrs.frozen
class SourceSpec(_Spec):
    """A data source a recipe can name in its ``data`` section."""


@attrs.frozen
class CombinerSpec(_Spec):
    """An ensemble combiner a recipe can name in ``ensemble.combiner``."""


KINDS = {"model": ModelSpec, "source": SourceSpec, "combiner": CombinerSpec}


@attrs.frozen
class PluginInfo:
    name: str  # entry-point name
    distribution: str
    version: str
    registers: dict = attrs.Factory(dict)  # kind -> names


@attrs.frozen
class LoadFailure:
    name: str
    distribution: str
    version: str
    error: str

    def __str__(self) -> str:
        return (f"plugin {self.name!r} from distribution {self.distribution} {self.version} "
                f"failed to load: {self.error}")


@attrs.define
class Registry:
    """Everything the installed plugins provide, by kind and name."""

    models: dict[str, ModelSpec] = attrs.Factory(dict)
    sources: dict[str, SourceSpec] = attrs.Factory(dict)
    combiners: dict[str, CombinerSpec] = attrs.Factory(dict)
    plugins: list[PluginInfo] = attrs.Factory(list)
    failures: list[LoadFailure] = attrs.Factory(list)

    def table(self, kind: str) -> dict[str, _Spec]:
        return {"model": self.models, "source": self.sources, "combiner": self.combiners}[kind]

    def lookup(self, kind: str, name: str) -> _Spec:
        """The spec of ``kind`` called ``name``, or a :class:`PluginError` saying what exists instead."""
        table = self.table(kind)
        if name in table:
            return table[name]
        message = f"unknown {kind} {name!r}" + suggest(name, table)
        if self.failures:
            message += "; note: " + "; ".join(str(f) for f in self.failures)
        raise PluginError(message)


@attrs.frozen
class LoadedPlugins:
    """A plugin manager with what happened while filling it."""

    pm: pluggy.PluginManager
    failures: list[LoadFailure]
    distributions: dict[str, tuple[str, str]]  # plugin name -> (distribution, version)


def get_plugin_manager(*, load_entrypoints: bool = True, plugins: Iterable[Any] = (),
                       builtins_only: bool = False) -> LoadedPlugins:
    """A fresh plugin manager (never a module-level singleton, so tests and workers build their own).

    Entry points of the ``sigkit`` group are loaded unless ``load_entrypoints`` is false, honouring
    ``SIGKIT_LOAD_PLUGINS`` and ``SIGKIT_DISABLE_PLUGINS``; with ``builtins_only`` (or
    ``SIGKIT_NO_PLUGINS``) only sigkit's own distribution is loaded.  ``plugins`` are extra objects (modules or
    instances with registration hooks) registered directly, e.g. by a test.  A plugin that fails to
    import or declares an unknown hook is skipped and reported in the returned failures.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    failures: list[LoadFailure] = []
    distributions: dict[str, tuple[str, str]] = {}
    if load_entrypoints:
        allow = _env_names(ENV_ALLOW)
        block = _env_names(ENV_BLOCK) or set()
        builtins_only = builtins_only or os.environ.get(ENV_NO_PLUGINS, "") not in ("", "0")
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            if (allow is not None and ep.name not in allow) or ep.name in block or dist in block:
                continue
            if builtins_only and dist != BUILTIN_DISTRIBUTION:
                continue
            if pm.has_plugin(ep.name):
                continue
            try:
                module = ep.load()
            except Exception as err:  # a broken plugin must not brick sigkit
                failures.append(LoadFailure(ep.name, dist, version, f"{type(err).__name__}: {err}"))
                continue
            error = _api_mismatch(module) or _register_checked(pm, module, ep.name)
            if error:
                failures.append(LoadFailure(ep.name, dist, version, error))
            else:
                distributions[ep.name] = (dist, version)
    for i, plugin in enumerate(plugins):
        name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{i}"
        error = _register_checked(pm, plugin, name)
        if error:
            raise PluginError(f"plugin {name!r}: {error}")
    return LoadedPlugins(pm, failures, distributions)


def _api_mismatch(module: Any) -> str | None:
    declared = getattr(module, "SIGKIT_PLUGIN_API", None)
    if declared is None or declared == PLUGIN_API_VERSION:
        return None
    return (f"it was written for sigkit plugin API {declared!r}, this sigkit speaks API {PLUGIN_API_VERSION}; "
            "upgrade the plugin (or sigkit)")


def _register_checked(pm: pluggy.PluginManager, plugin: Any, name: str) -> str | None:
    try:
        pm.register(plugin, name=name)
        pm.check_pending()
    except pluggy.PluginValidationError as err:
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        return _explain_validation(str(err))
    except ValueError:  # the same module behind two entry points
        other = pm.get_name(plugin)
        return f"its module is already loaded as plugin {other!r}"
    return None


def _explain_validation(text: str) -> str:
    # pluggy says "unknown hook 'register_model' in plugin ..."; add the nearest real hook.
    if text.startswith("unknown hook"):
        bad = text.split("'")[1]
        names = [n for n in dir(hookspecs) if n.startswith("register_")]
        return f"unknown hook {bad!r}" + suggest(bad, names)
    return text


def _env_names(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


def build_registry(*, load_entrypoints: bool = True, plugins: Iterable[Any] = (), builtins_only: bool = False) -> Registry:
    """Load plugins and collect what each registers, stamped with its plugin and distribution."""
    loaded = get_plugin_manager(load_entrypoints=load_entrypoints, plugins=plugins, builtins_only=builtins_only)
    pm = loaded.pm
    registry = Registry(failures=loaded.failures)
    for plugin_name, plugin in sorted(pm.list_name_plugin(), key=lambda np: str(np[0])):
        if plugin is None:
            continue
        dist, version = loaded.distributions.get(plugin_name, ("(registered directly)", ""))
        info = PluginInfo(plugin_name, dist, version)
        for kind, hook_name in (("model", "register_models"), ("source", "register_sources"),
                                ("combiner", "register_combiners")):
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                impl.function(register=_registrar(registry, kind, info))
        registry.plugins.append(info)
    return registry


def _registrar(registry: Registry, kind: str, info: PluginInfo) -> Callable[[_Spec], None]:
    expected = KINDS[kind]

    def register(spec: _Spec) -> None:
        if not isinstance(spec, expected):
            raise PluginError(f"plugin {info.name!r} registered {spec!r} in register_{kind}s; "
                              f"expected a sigkit.{expected.__name__}")
        table = registry.table(kind)
        if spec.name in table:
            other = table[spec.name]
            raise PluginError(f"{kind} {spec.name!r} is registered twice: by {other.distribution} "
                              f"(plugin {other.plugin!r}) and by {info.distribution} (plugin {info.name!r})")
        stamped = attrs.evolve(spec, plugin=info.name, distribution=info.distribution, version=info.version)
        table[spec.name] = stamped
        info.registers.setdefault(kind + "s", []).append(spec.name)

    return register


# --- instance hooks --------------------------------------------------------------------------------

_HOOK_PREFIXES = {
    "model": ("on_", "predict", "record_", "describe"),
    "combiner": ("combine", "record_", "on_", "describe"),
    "source": ("chunks", "span", "describe", "live_"),
}


class _InstanceManager(pluggy.PluginManager):
    """Checks an instance's public hook-like methods against the spec; no markers needed on them."""

    def __init__(self, role: str):
        super().__init__(hookspecs.INSTANCE_PROJECT)
        self._prefixes = _HOOK_PREFIXES[role]
        self.add_hookspecs(hookspecs.INSTANCE_SPECS[role])

    def parse_hookimpl_opts(self, plugin: Any, name: str):
        if name.startswith("_") or not name.startswith(self._prefixes):
            return None
        attr = inspect.getattr_static(plugin, name, None)
        if not (inspect.isfunction(attr) or isinstance(attr, (staticmethod, classmethod))):
            return None
        return {}


def resolve_hooks(obj: Any, role: str, label: str) -> dict[str, Callable]:
    """The bound hook methods ``obj`` implements, checked once against the spec of ``role``.

    Raises :class:`PluginError` for a misspelled hook (``on_trades``), a hook whose arguments do not
    match the spec, or a missing required hook.
    """
    pm = _InstanceManager(role)
    try:
        pm.register(obj, name=label)
        pm.check_pending()
    except pluggy.PluginValidationError as err:
        text = str(err)
        if text.startswith("unknown hook"):
            bad = text.split("'")[1]
            valid = [n for n in dir(hookspecs.INSTANCE_SPECS[role]) if not n.startswith("_")]
            text = f"unknown hook {bad!r}" + suggest(bad, valid)
        raise PluginError(f"{label}: {text}") from None
    found = {}
    for name in dir(hookspecs.INSTANCE_SPECS[role]):
        if name.startswith("_"):
            continue
        impls = getattr(pm.hook, name).get_hookimpls()
        if impls:
            found[name] = impls[0].function
    for either in hookspecs.REQUIRED_HOOKS[role]:
        if not any(name in found for name in either):
            raise PluginError(f"{label}: does not implement {'() or '.join(either)}()")
    return found
