"""Declared parameters: how a model, source or combiner says what it accepts, with types, units and defaults.

A parameter class is an attrs class whose fields are made with :func:`param` or :func:`duration`::

    @attrs.frozen
    class FlowParams:
        halflife_ns: int = sigkit.duration("1s", doc="half-life of the signed-flow average")
        learning_rate: float = sigkit.param(0.05, doc="SGD step of the online logistic fit")

A recipe writes ``halflife: 1s``: the ``_ns`` suffix of a duration field is dropped in recipes, and
the value must carry a unit.  :func:`build_params` turns a recipe mapping into an instance, refusing
unknown names (with the nearest valid one), wrong types and unitless durations.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

import attrs

from sigkit.errors import DurationError
from sigkit.units import format_duration, parse_duration

_KIND = "sigkit_kind"  # metadata key: "value" or "duration"


def param(default: Any = attrs.NOTHING, *, doc: str, unit: str | None = None,
          choices: tuple | None = None) -> Any:
    """A declared parameter.  ``unit`` is for documentation (e.g. ``'bps'``); durations use :func:`duration`."""
    return attrs.field(default=default, metadata={_KIND: "value", "doc": doc, "unit": unit, "choices": choices})


def duration(default: str | tuple[str, ...] | None | Any = attrs.NOTHING, *, doc: str) -> Any:
    """A duration parameter (or a tuple of them), held in integer nanoseconds; the recipe gives units.

    Name the field with an ``_ns`` suffix; the recipe key is the name without it.
    """
    if default is attrs.NOTHING or default is None:
        value = default
    elif isinstance(default, tuple):
        value = tuple(parse_duration(d) for d in default)
    else:
        value = parse_duration(default)
    return attrs.field(default=value, metadata={_KIND: "duration", "doc": doc, "unit": "duration",
                                                 "choices": None})


def path(default: Any = attrs.NOTHING, *, doc: str) -> Any:
    """A file path.  Relative paths start at the recipe's folder; a recipe naming a missing file is refused
    with the line of the path."""
    return attrs.field(default=default, metadata={_KIND: "path", "doc": doc, "unit": "path", "choices": None})


def path_fields(cls: type | None) -> list[str]:
    """Names of the path parameters of ``cls``."""
    return [] if cls is None else [f.name for f in declared_fields(cls) if f.metadata.get(_KIND) == "path"]


def recipe_key(field: attrs.Attribute) -> str:
    if field.metadata.get(_KIND) == "duration" and field.name.endswith("_ns"):
        return field.name[: -len("_ns")]
    return field.name


def declared_fields(cls: type) -> list[attrs.Attribute]:
    attrs.resolve_types(cls)
    return list(attrs.fields(cls))


def describe_params(cls: type | None) -> list[dict]:
    """JSON-ready list of a parameter class's fields (for ``sigkit plugins`` and the docs)."""
    if cls is None:
        return []
    out = []
    for field in declared_fields(cls):
        meta = field.metadata
        default = field.default
        if default is attrs.NOTHING:
            shown = None
        elif meta.get(_KIND) == "duration" and default is not None:
            shown = (", ".join(format_duration(d) for d in default) if isinstance(default, tuple)
                     else format_duration(default))
        else:
            shown = default if not isinstance(default, tuple) else list(default)
        out.append({
            "name": recipe_key(field),
            "type": _type_name(field.type),
            "default": shown,
            "required": field.default is attrs.NOTHING,
            "unit": meta.get("unit"),
            "choices": list(meta["choices"]) if meta.get("choices") else None,
            "doc": meta.get("doc", ""),
        })
    return out


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


class ParamError(ValueError):
    """A parameter value is wrong; ``key`` names it so the caller can point at its line."""

    def __init__(self, key: str, message: str, *, about_key: bool = False):
        super().__init__(message)
        self.key = key
        self.about_key = about_key  # the name is wrong (point at the key), not the value


def build_params(cls: type | None, values: Mapping[str, Any], *, owner: str) -> Any:
    """Validate ``values`` (recipe keys) against ``cls`` and build an instance.

    Raises :class:`ParamError` naming the offending key; ``owner`` (e.g. ``"model 'flow'"``) is used in
    messages.
    """
    if cls is None:
        if values:
            key = next(iter(values))
            raise ParamError(key, f"{owner} takes no parameters, got {key!r}")
        return None
    fields = {recipe_key(f): f for f in declared_fields(cls)}
    kwargs = {}
    for key, value in values.items():
        field = fields.get(key)
        if field is None:
            raise ParamError(key, f"unknown parameter {key!r} for {owner}" + suggest(key, fields), about_key=True)
        try:
            kwargs[field.name] = _convert(field, value)
        except DurationError as err:
            raise ParamError(key, f"parameter {key!r} of {owner}: {err}") from None
        except (TypeError, ValueError) as err:
            raise ParamError(key, f"parameter {key!r} of {owner}: {err}") from None
    missing = [k for k, f in fields.items() if f.default is attrs.NOTHING and f.name not in kwargs]
    if missing:
        raise ParamError(missing[0], f"{owner} needs parameter {missing[0]!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # an attrs validator of the params class refused a value
        key = next((recipe_key(f) for f in declared_fields(cls) if f.name in str(err)), next(iter(values), ""))
        raise ParamError(key, f"{owner}: {err}") from None


def suggest(name: str, valid) -> str:
    """``", did you mean 'x'?"`` for the nearest valid name, or a list of the valid ones."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    if close:
        return f", did you mean {close[0]!r}?"
    if not valid:
        return ""
    shown = ", ".join(valid[:12]) + (", ..." if len(valid) > 12 else "")
    return f" (valid: {shown})"


def _convert(field: attrs.Attribute, value: Any) -> Any:
    tp = field.type
    is_duration = field.metadata.get(_KIND) == "duration"
    if field.metadata.get(_KIND) == "path":
        if not isinstance(value, str) or not value:
            raise TypeError(f"expected a file path, got {value!r}")
        return value
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    choices = field.metadata.get("choices")
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {value!r}")
        item_tp = args[0]
        items = tuple(_scalar(item_tp, v, is_duration) for v in value)
        for item in items:
            if choices and item not in choices:
                raise ValueError(f"{item!r} is not one of {', '.join(map(str, choices))}"
                                 + suggest(str(item), map(str, choices)))
        return items
    converted = _scalar(tp, value, is_duration)
    if choices and converted not in choices:
        raise ValueError(f"{value!r} is not one of {', '.join(map(str, choices))}"
                         + suggest(str(value), map(str, choices)))
    return converted


def _scalar(tp: Any, value: Any, is_duration: bool) -> Any:
    if is_duration:
        return parse_duration(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ValueError(f"expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if value is None:
            raise TypeError("expected a string, got nothing: YAML reads a bare null or ~ as no value; "
                            "quote it, e.g. \"null\"")
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported parameter type {tp!r}")
