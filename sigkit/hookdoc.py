"""Renders the hook reference (docs/hooks.md) from the hookspecs, so the page cannot drift from the code.

Regenerate with ``python -m sigkit.hookdoc > docs/hooks.md``; a test fails when the page is stale.
"""

from __future__ import annotations

import inspect

from sigkit import hookspecs

INTRO = """\
# Hook reference

Generated from `sigkit/hookspecs.py` by `python -m sigkit.hookdoc > docs/hooks.md`; a test keeps the two in
step.  Registration hooks are pluggy hooks of a plugin module (mark them with `@sigkit.hookimpl`); instance
hooks are plain methods of the objects a spec's factory builds, checked against these signatures once
when a run is built and then called directly.
"""


def _section(title: str, functions) -> list[str]:
    out = [f"\n## {title}\n"]
    for name, fn in functions:
        signature = str(inspect.signature(fn)).replace("'", "")
        out.append(f"### `{name}{signature}`\n")
        out.append(inspect.cleandoc(fn.__doc__ or "") + "\n")
    return out


def render() -> str:
    parts = [INTRO]
    registration = [(n, getattr(hookspecs, n)) for n in ("register_models", "register_sources", "register_combiners")]
    parts += _section("Registration hooks (module level)", registration)
    for title, cls in (("Model instance hooks", hookspecs.ModelHooks),
                       ("Combiner instance hooks", hookspecs.CombinerHooks),
                       ("Source instance hooks", hookspecs.SourceHooks)):
        doc = inspect.cleandoc(cls.__doc__ or "")
        methods = [(n, f) for n, f in vars(cls).items() if not n.startswith("_") and callable(f)]
        section = _section(title, methods)
        section.insert(1, doc + "\n")
        parts += section
    return "\n".join(parts)


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
