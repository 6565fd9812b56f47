"""Recipes: YAML (read with ruamel.yaml) into a validated, typed :class:`Recipe`, and the instances it names.

Every mistake is reported as ``file:line:column: what is wrong (what to do)``.  The keys are documented
in ``docs/recipes.md``; :data:`TOP_LEVEL_KEYS` is the authority.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from sigkit.context import Market, RunContext
from sigkit.errors import DurationError, PluginError, RecipeError, SigkitError
from sigkit.feeds import ON_BAD_LINE
from sigkit.params import ParamError, build_params, path_fields, suggest
from sigkit.plugins import CombinerSpec, ModelSpec, Registry, SourceSpec
from sigkit.units import format_duration, parse_duration

TOP_LEVEL_KEYS = ("name", "description", "seed", "data", "target", "fills", "horizon", "threshold_bps",
                  "models", "ensemble", "arms", "evaluation", "on_error", "on_bad_line")
EVALUATION_KEYS = ("min_confidence", "markout_horizons", "ic_period", "ic_min_fills", "bins", "capture_q",
                   "snapshot_interval", "max_snapshots")
DEFAULT_MARKOUT_HORIZONS = ("100ms", "1s", "5s", "30s")
DEFAULT_HORIZON_NS = parse_duration("1s")


@attrs.frozen
class SourceEntry:
    label: str
    spec: SourceSpec
    params: Any
    where: tuple[int, int] | None = None  # 1-based line and column of the entry in the recipe


@attrs.frozen
class ModelEntry:
    id: str
    spec: ModelSpec
    params: Any
    where: tuple[int, int] | None = None


@attrs.frozen
class EnsembleEntry:
    spec: CombinerSpec
    params: Any
    members: tuple[str, ...]
    where: tuple[int, int] | None = None


@attrs.frozen
class ArmEntry:
    """One arm of an A/B comparison: an ensemble over some of the models, or a single model."""

    name: str
    ensemble: EnsembleEntry | None = None
    model: str | None = None  # a model id, when the arm is one model


@attrs.frozen
class Evaluation:
    min_confidence: float = 0.0
    markout_horizons_ns: tuple[int, ...] = tuple(parse_duration(h) for h in DEFAULT_MARKOUT_HORIZONS)
    ic_period_ns: int = parse_duration("1m")
    ic_min_fills: int = 30
    bins: int = 10
    capture_q: float = 0.10
    snapshot_interval_ns: int = parse_duration("1m")
    max_snapshots: int = 256


@attrs.frozen
class Recipe:
    path: Path
    sha256: str
    plain: dict  # the recipe as JSON-ready data, for the report
    name: str
    seed: int
    sources: tuple[SourceEntry, ...]
    target: Market
    fills_path: Path | None  # None: the public fill model
    horizon_ns: int
    threshold_bps: float
    models: tuple[ModelEntry, ...]
    ensemble: EnsembleEntry | None
    evaluation: Evaluation
    arms: tuple[ArmEntry, ...] = ()
    on_error: str = "stop"  # or "drop": a model that raises is dropped, recorded, and the run goes on
    on_bad_line: str = "stop"  # or "skip": sources count and skip bad data lines (``--on-bad-line``)

    def context(self, instance_id: str = "", members: tuple[str, ...] = (), features=None) -> RunContext:
        """The context of one instance; instances built for one run share ``features`` (a
        :class:`sigkit.FeatureSet`; a new one if None)."""
        extra = {} if features is None else {"features": features}
        return RunContext(target=self.target, horizon_ns=self.horizon_ns, threshold_bps=self.threshold_bps,
                          seed=self.seed, instance_id=instance_id, members=members, base_dir=self.path.parent,
                          on_bad_line=self.on_bad_line, **extra)


class _Reader:
    """Walks the ruamel tree, remembering where each node came from."""

    def __init__(self, path: Path, registry: Registry):
        self.path = path
        self.registry = registry

    def error(self, message: str, where: tuple[int, int] | None, hint: str | None = None) -> RecipeError:
        line, col = (where[0] + 1, where[1] + 1) if where else (None, None)
        return RecipeError(message, path=str(self.path), line=line, column=col, hint=hint)

    @staticmethod
    def key_at(node: Any, key: Any) -> tuple[int, int] | None:
        try:
            return tuple(node.lc.key(key))
        except (AttributeError, KeyError, TypeError):
            return None

    @staticmethod
    def value_at(node: Any, key: Any) -> tuple[int, int] | None:
        try:
            if isinstance(node, CommentedSeq):
                return tuple(node.lc.item(key))
            return tuple(node.lc.value(key))
        except (AttributeError, KeyError, TypeError, IndexError):
            return None

    @staticmethod
    def node_at(node: Any) -> tuple[int, int] | None:
        try:
            return node.lc.line, node.lc.col
        except AttributeError:
            return None

    def mapping(self, node: Any, what: str, where) -> CommentedMap:
        if not isinstance(node, Mapping):
            raise self.error(f"{what} must be a mapping of keys to values", where)
        return node

    def check_keys(self, node: Mapping, allowed, what: str) -> None:
        for key in node:
            if key not in allowed:
                raise self.error(f"unknown key {key!r} in {what}" + suggest(str(key), allowed),
                                 self.key_at(node, key))

    def required(self, node: Mapping, key: str, what: str) -> Any:
        if key not in node or node[key] is None:
            raise self.error(f"{what} needs {key!r}", self.node_at(node))
        return node[key]

    def duration(self, node: Any, key: Any, what: str) -> int:
        try:
            return parse_duration(node[key])
        except DurationError as err:
            raise self.error(f"{what}: {err.message}", self.value_at(node, key), err.hint) from None

    def params(self, cls, values: Any, owner: str, parent: Any, key: Any):
        where = self.value_at(parent, key) if key is not None else self.node_at(parent)
        if values is None:
            values = {}
        self.mapping(values, f"parameters of {owner}", where)
        try:
            return build_params(cls, values, owner=owner)
        except ParamError as err:
            if err.key not in values:
                at = where
            elif err.about_key:
                at = self.key_at(values, err.key)
            else:
                at = self.value_at(values, err.key)
            raise self.error(str(err), at) from None

    def lookup(self, kind: str, name: Any, node: Any, key: Any):
        if not isinstance(name, str):
            raise self.error(f"{kind} name must be a string, got {name!r}", self.value_at(node, key))
        try:
            return self.registry.lookup(kind, name)
        except PluginError as err:
            raise self.error(err.message, self.value_at(node, key)) from None


def read_yaml(path: Path, what: str) -> tuple[str, Any]:
    """A YAML file's text and round-trip document (with line and column marks), or a :class:`RecipeError`
    naming the file, line and column (``what``: "recipe", "sweep file"...)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path}: cannot read {what}: {err}") from None
    try:
        return text, YAML(typ="rt").load(text)
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = (err.problem or err.context or "malformed YAML").strip()
        raise RecipeError(f"malformed YAML: {problem}", path=str(path),
                          line=mark.line + 1 if mark else None, column=mark.column + 1 if mark else None) from None
    except YAMLError as err:
        raise RecipeError(f"malformed YAML: {err}", path=str(path)) from None


def load_recipe(path: str | Path, registry: Registry) -> Recipe:
    """Read and validate a recipe.  Raises :class:`RecipeError` (or DataError) with file:line:column."""
    path = Path(path)
    text, doc = read_yaml(path, "recipe file")
    r = _Reader(path, registry)
    if doc is None:
        raise RecipeError("recipe is empty", path=str(path), line=1, column=1,
                          hint="see recipes/quickstart.yaml for a starting point")
    doc = r.mapping(doc, "a recipe", (0, 0))
    r.check_keys(doc, TOP_LEVEL_KEYS, "the recipe")

    seed = doc.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise r.error(f"seed must be an integer, got {seed!r}", r.value_at(doc, "seed"))

    target_node = r.mapping(r.required(doc, "target", "the recipe"), "target", r.value_at(doc, "target"))
    r.check_keys(target_node, ("venue", "symbol"), "target")
    target = Market(str(r.required(target_node, "venue", "target")), str(r.required(target_node, "symbol", "target")))

    horizon_ns = r.duration(doc, "horizon", "horizon") if "horizon" in doc else DEFAULT_HORIZON_NS
    threshold = doc.get("threshold_bps", 0.0)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold < 0:
        raise r.error(f"threshold_bps must be a number >= 0, got {threshold!r}", r.value_at(doc, "threshold_bps"))

    fills_path = None
    fills = doc.get("fills", "public")
    if isinstance(fills, Mapping):
        r.check_keys(fills, ("path",), "fills")
        fills_path = path.parent / str(r.required(fills, "path", "fills"))
        if not fills_path.exists():
            raise r.error(f"fills file {str(fills_path)!r} does not exist", r.value_at(fills, "path"))
    elif fills != "public":
        raise r.error(f"fills must be 'public' or {{path: your_fills.csv}}, got {fills!r}", r.value_at(doc, "fills"))

    evaluation = _evaluation(r, doc)
    on_error = doc.get("on_error", "stop")
    if on_error not in ("stop", "drop"):
        raise r.error(f"on_error must be 'stop' or 'drop', got {on_error!r}", r.value_at(doc, "on_error"))
    on_bad_line = doc.get("on_bad_line", "stop")
    if on_bad_line not in ON_BAD_LINE:
        raise r.error(f"on_bad_line must be 'stop' or 'skip', got {on_bad_line!r}", r.value_at(doc, "on_bad_line"))
    recipe_fields = dict(path=path, sha256=hashlib.sha256(text.encode()).hexdigest(), plain=_plain(doc),
                         name=str(doc.get("name", path.stem)), seed=seed, target=target, fills_path=fills_path,
                         horizon_ns=horizon_ns, threshold_bps=float(threshold), evaluation=evaluation,
                         on_error=on_error, on_bad_line=on_bad_line)

    # Sources.
    data = r.required(doc, "data", "the recipe")
    if isinstance(data, Mapping):
        data = [data]
        data_parent, data_keys = doc, ["data"]
    else:
        data_parent, data_keys = data, list(range(len(data))) if isinstance(data, list) else []
    if not isinstance(data, list) or not data:
        raise r.error("data must be a list of sources, e.g. '- source: simulate'", r.value_at(doc, "data"))
    sources = []
    for i, entry in enumerate(data):
        where = r.value_at(data_parent, data_keys[i]) if data_parent is not doc else r.value_at(doc, "data")
        entry = r.mapping(entry, f"data entry {i + 1}", where)
        name = r.required(entry, "source", f"data entry {i + 1}")
        spec = r.lookup("source", name, entry, "source")
        params = _source_params(r, spec, entry, name)
        sources.append(SourceEntry(f"{name}#{i + 1}" if len(data) > 1 else str(name), spec, params,
                                   _one_based(r.key_at(entry, "source"))))

    # Models.
    models_node = r.required(doc, "models", "the recipe")
    if not isinstance(models_node, list) or not models_node:
        raise r.error("models must be a non-empty list of '- id: ..., model: ...'", r.value_at(doc, "models"))
    models = []
    seen: set[str] = set()
    for i, entry in enumerate(models_node):
        entry = r.mapping(entry, f"model entry {i + 1}", r.value_at(models_node, i))
        r.check_keys(entry, ("id", "model", "params"), f"model entry {i + 1}")
        name = r.required(entry, "model", f"model entry {i + 1}")
        spec = r.lookup("model", name, entry, "model")
        model_id = str(entry.get("id", name))
        if model_id in seen or model_id in ("ensemble", "base_rate_reference"):
            raise r.error(f"model id {model_id!r} is used twice or reserved; give each instance its own id",
                          r.value_at(entry, "id") if "id" in entry else r.node_at(entry))
        seen.add(model_id)
        params = r.params(spec.params, entry.get("params"), f"model {model_id!r} ({name})", entry,
                          "params" if "params" in entry else None)
        models.append(ModelEntry(model_id, spec, params, _one_based(r.key_at(entry, "model"))))

    ensemble = None
    if doc.get("ensemble") is not None:
        node = r.mapping(doc["ensemble"], "ensemble", r.value_at(doc, "ensemble"))
        ensemble = _ensemble(r, node, "ensemble", models, seen)
    arms = ()
    if doc.get("arms") is not None:
        if ensemble is not None:
            raise r.error("a recipe has either an ensemble or arms, not both", r.key_at(doc, "arms"),
                          "put the ensemble in an arm")
        arms = _arms(r, doc, models, seen)
    return Recipe(sources=tuple(sources), models=tuple(models), ensemble=ensemble, arms=arms, **recipe_fields)


def _ensemble(r: _Reader, node: Mapping, what: str, models: list[ModelEntry], seen: set[str]) -> EnsembleEntry:
    r.check_keys(node, ("combiner", "params", "members"), what)
    spec = r.lookup("combiner", r.required(node, "combiner", what), node, "combiner")
    members = node.get("members") or [m.id for m in models]
    if not isinstance(members, list):
        raise r.error(f"{what} members must be a list of model ids", r.value_at(node, "members"))
    for j, member in enumerate(members):
        if member not in seen:
            raise r.error(f"{what} member {member!r} is not a model id" + suggest(str(member), seen),
                          r.value_at(node["members"], j) if "members" in node else r.node_at(node))
    params = r.params(spec.params, node.get("params"), f"combiner {spec.name!r}", node,
                      "params" if "params" in node else None)
    return EnsembleEntry(spec, params, tuple(str(m) for m in members), _one_based(r.key_at(node, "combiner")))


def _arms(r: _Reader, doc: Mapping, models: list[ModelEntry], seen: set[str]) -> tuple[ArmEntry, ...]:
    node = r.mapping(doc["arms"], "arms", r.value_at(doc, "arms"))
    if len(node) < 2:
        raise r.error("arms needs at least two named arms to compare", r.value_at(doc, "arms"))
    arms = []
    for name, arm in node.items():
        name = str(name)
        if name in seen:
            raise r.error(f"arm name {name!r} is also a model id; name arms differently", r.key_at(node, name))
        arm = r.mapping(arm, f"arm {name!r}", r.value_at(node, name))
        if "model" in arm:
            r.check_keys(arm, ("model",), f"arm {name!r}")
            if arm["model"] not in seen:
                raise r.error(f"arm {name!r}: {arm['model']!r} is not a model id" + suggest(str(arm["model"]), seen),
                              r.value_at(arm, "model"))
            arms.append(ArmEntry(name, model=str(arm["model"])))
        else:
            arms.append(ArmEntry(name, ensemble=_ensemble(r, arm, f"arm {name!r}", models, seen)))
    return tuple(arms)


def _one_based(where: tuple[int, int] | None) -> tuple[int, int] | None:
    return (where[0] + 1, where[1] + 1) if where else None


def _source_params(r: _Reader, spec: SourceSpec, entry: CommentedMap, name: str):
    values = {k: v for k, v in entry.items() if k != "source"}
    try:
        params = build_params(spec.params, values, owner=f"source {name!r}")
    except ParamError as err:
        if err.key not in entry:
            at = r.node_at(entry)
        else:
            at = r.key_at(entry, err.key) if err.about_key else r.value_at(entry, err.key)
        raise r.error(str(err), at) from None
    for field in path_fields(spec.params):
        value = getattr(params, field)
        if value is None:
            continue
        full = Path(value).expanduser()
        full = full if full.is_absolute() else r.path.parent / full
        if not full.exists():
            raise r.error(f"data file {str(full)!r} does not exist", r.value_at(entry, field),
                          "check the path; relative paths start at the recipe's folder")
    return params


def _evaluation(r: _Reader, doc: Mapping) -> Evaluation:
    node = doc.get("evaluation")
    if node is None:
        return Evaluation()
    node = r.mapping(node, "evaluation", r.value_at(doc, "evaluation"))
    r.check_keys(node, EVALUATION_KEYS, "evaluation")
    values = {}
    if "min_confidence" in node:
        v = node["min_confidence"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise r.error(f"min_confidence must be a number in [0, 1], got {v!r}", r.value_at(node, "min_confidence"))
        values["min_confidence"] = float(v)
    if "markout_horizons" in node:
        seq = node["markout_horizons"]
        if not isinstance(seq, list) or not seq:
            raise r.error("markout_horizons must be a list of durations, e.g. [100ms, 1s, 5s]",
                          r.value_at(node, "markout_horizons"))
        values["markout_horizons_ns"] = tuple(r.duration(seq, i, "markout_horizons") for i in range(len(seq)))
    if "ic_period" in node:
        values["ic_period_ns"] = r.duration(node, "ic_period", "ic_period")
    if "snapshot_interval" in node:
        values["snapshot_interval_ns"] = r.duration(node, "snapshot_interval", "snapshot_interval")
    for key, low in (("bins", 2), ("ic_min_fills", 2), ("max_snapshots", 2)):
        if key in node:
            v = node[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise r.error(f"{key} must be an integer >= {low}, got {v!r}", r.value_at(node, key))
            values[key] = v
    if "capture_q" in node:
        v = node["capture_q"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise r.error(f"capture_q must be a fraction in (0, 1), got {v!r}", r.value_at(node, "capture_q"))
        values["capture_q"] = float(v)
    return Evaluation(**values)


def _plain(node: Any) -> Any:
    """The recipe as plain JSON-ready data."""
    return json.loads(json.dumps(node, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    return str(value)


@attrs.frozen
class Instances:
    sources: list[tuple[str, Any]]
    models: list[tuple[str, Any]]
    ensembles: list[tuple[str, Any, tuple[str, ...]]]  # (name, combiner object, member ids)


def instantiate(recipe: Recipe, *, sources: bool = True) -> Instances:
    """Build the source, model and combiner objects a recipe names (``sources=False``: no sources, for a
    run fed another way, e.g. live).  Every instance shares one set of features (:mod:`sigkit.features`)."""
    from sigkit.context import _feature_set

    features = _feature_set()

    def build(spec, params, instance_id: str, what: str, members: tuple[str, ...] = (), where=None):
        try:
            return spec.factory(params, recipe.context(instance_id, members, features))
        except SigkitError as err:
            line, column = where or (None, None)
            raise type(err)(f"{what}: {err.message}", path=str(recipe.path), line=line, column=column,
                            hint=err.hint) from None
        except Exception as err:
            raise PluginError(f"{what} (from {spec.distribution} {spec.version}) could not be built: "
                              f"{type(err).__name__}: {err}") from err

    built_sources = sources
    sources = [(s.label, build(s.spec, s.params, s.label, f"source {s.label!r}", where=s.where))
               for s in recipe.sources] if built_sources else []
    if recipe.fills_path is not None and built_sources:
        sources.append(("fills", _FillsSource(recipe.fills_path, recipe.target, recipe.on_bad_line)))
    models = [(m.id, build(m.spec, m.params, m.id, f"model {m.id!r}", where=m.where)) for m in recipe.models]
    named = [("ensemble", recipe.ensemble)] if recipe.ensemble is not None else []
    named += [(arm.name, arm.ensemble) for arm in recipe.arms if arm.ensemble is not None]
    ensembles = [(name, build(e.spec, e.params, name, f"combiner {e.spec.name!r} of {name!r}", e.members, e.where),
                  e.members) for name, e in named]
    return Instances(sources, models, ensembles)


class _FillsSource:
    """The user's own fills (``fills: {path: ...}``) as FILL rows on the target market."""

    def __init__(self, path: Path, target: Market, on_bad_line: str = "stop"):
        self.path, self.target, self.on_bad_line = path, target, on_bad_line

    def chunks(self):
        from sigkit.native import read_fills_csv

        return read_fills_csv(self.path, venue=self.target.venue, symbol=self.target.symbol,
                              on_bad_line=self.on_bad_line)

    def describe(self) -> dict:
        return {"fills": str(self.path)}


def describe_recipe(recipe: Recipe) -> dict:
    """A short JSON-ready summary (used by ``sigkit validate`` and the report)."""
    return {
        "name": recipe.name,
        "path": str(recipe.path),
        "sha256": recipe.sha256,
        "target": str(recipe.target),
        "fills": "public" if recipe.fills_path is None else str(recipe.fills_path),
        "horizon": format_duration(recipe.horizon_ns),
        "threshold_bps": recipe.threshold_bps,
        "sources": [s.label for s in recipe.sources],
        "models": [f"{m.id} ({m.spec.name})" for m in recipe.models],
        "ensemble": None if recipe.ensemble is None else {
            "combiner": recipe.ensemble.spec.name, "members": list(recipe.ensemble.members)},
        "arms": [arm.name for arm in recipe.arms],
    }


# The parts of a recipe two arms must share to be compared on the same fills.
_SHARED_FOR_AB = ("data", "target", "fills", "horizon", "threshold_bps", "seed")


def merge_for_ab(a: Recipe, b: Recipe) -> Recipe:
    """One recipe whose two arms are ``a`` and ``b``: shared data, one pass, models built once.

    A model of ``b`` with the same plugin and parameters as one of ``a`` is the same instance; other ids
    that collide are prefixed with the arm's name.  Each arm is its recipe's ensemble or, if it has none,
    its single model.
    """
    for key in _SHARED_FOR_AB:
        if a.plain.get(key) != b.plain.get(key):
            raise RecipeError(f"{a.path} and {b.path} differ in {key!r}; an A/B compares arms on the same data, "
                              "fills and label", hint=f"make {key!r} identical in both recipes")
    name_a, name_b = (a.name, b.name) if a.name != b.name else ("A", "B")
    models = list(a.models)
    rename_b: dict[str, str] = {}
    for m in b.models:
        twin = next((x for x in models if x.spec.name == m.spec.name and x.params == m.params), None)
        if twin is not None:
            rename_b[m.id] = twin.id
            continue
        new_id = m.id if all(x.id != m.id for x in models) else f"{name_b}.{m.id}"
        rename_b[m.id] = new_id
        models.append(attrs.evolve(m, id=new_id))
    arms = (_arm_of(a, name_a, {m.id: m.id for m in a.models}), _arm_of(b, name_b, rename_b))
    return attrs.evolve(a, name=f"{name_a}_vs_{name_b}", models=tuple(models), ensemble=None, arms=arms,
                        plain={"arms": {name_a: a.plain, name_b: b.plain}},
                        sha256=hashlib.sha256((a.sha256 + b.sha256).encode()).hexdigest())


def _arm_of(recipe: Recipe, name: str, ids: dict[str, str]) -> ArmEntry:
    if recipe.ensemble is not None:
        e = recipe.ensemble
        return ArmEntry(name, ensemble=attrs.evolve(e, members=tuple(ids[m] for m in e.members)))
    if len(recipe.models) == 1:
        return ArmEntry(name, model=ids[recipe.models[0].id])
    raise RecipeError(f"{recipe.path}: to be an arm, a recipe needs an ensemble or exactly one model",
                      hint="add an ensemble section")


def with_native_data(recipe: Recipe, path: Path, registry: Registry) -> Recipe:
    """``recipe`` reading its events from a native file instead of its own data section."""
    spec = registry.lookup("source", "native")
    if not Path(path).exists():
        raise RecipeError(f"{path}: no such data file")
    params = build_params(spec.params, {"path": str(Path(path).resolve())}, owner="source 'native'")
    plain = dict(recipe.plain, data=[{"source": "native", "path": str(path)}])
    return attrs.evolve(recipe, sources=(SourceEntry("native", spec, params),), plain=plain)
