"""Writes a new, ready-to-publish model plugin distribution from the templates in ``sigkit/templates/plugin``."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from string import Template

from sigkit.errors import SigkitError

#: A plugin name: lowercase letters and digits, words joined by single underscores or hyphens.
PLUGIN_NAME = re.compile(r"[a-z][a-z0-9]*(?:[_-][a-z0-9]+)*")

#: Template file -> where it goes in the new distribution (``{module}``, ``{model}`` filled in).
_LAYOUT = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "recipe.yaml.tmpl": "recipe.yaml",
    "model.py.tmpl": "src/{module}/__init__.py",
    "test_model.py.tmpl": "tests/test_{model}.py",
}


def new_plugin(name: str, directory: Path) -> Path:
    """Write the distribution ``sigkit-<name>/`` under ``directory`` and return its path.

    It holds a working model plugin (``src/sigkit_<name>/__init__.py``, registered through the ``sigkit``
    entry-point group), its tests, a recipe using it and a README.  The model is registered as ``<name>``
    with hyphens turned into underscores.  Raises :class:`SigkitError` for a bad name or a target folder
    that already has files in it.
    """
    if not PLUGIN_NAME.fullmatch(name):
        raise SigkitError(f"plugin name {name!r}: use lowercase letters, digits and single '_' or '-' "
                          "between words, starting with a letter (e.g. 'flow_ewma')")
    target = Path(directory) / f"sigkit-{name}"
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise SigkitError(f"{target}: already exists and is not empty; pick another name or --dir")

    from sigkit.plugins import PLUGIN_API_VERSION

    model = name.replace("-", "_")
    values = {
        "name": name,
        "dist": name.replace("_", "-"),
        "model": model,
        "module": f"sigkit_{model}",
        "cls": "".join(part.capitalize() for part in model.split("_")),
        "api": str(PLUGIN_API_VERSION),
    }
    templates = resources.files("sigkit") / "templates" / "plugin"
    for template_name, relative in _LAYOUT.items():
        text = Template(templates.joinpath(template_name).read_text(encoding="utf-8")).substitute(values)
        path = target / relative.format(**values)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return target
