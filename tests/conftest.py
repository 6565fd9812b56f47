"""Shared test helpers: hand-built event chunks, in-memory sources, and venvs for plugin distributions."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sigkit
from sigkit.events import BOOK, FILL, STAT, TRADE, empty_chunk

SHARED_DATA = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data"


#: The head of a recipe over one simulated world; format with name, seed, world, duration and append models.
SIM_RECIPE_HEAD = """\
name: {name}
seed: {seed}
data:
  - source: simulate
    world: "{world}"
    duration: {duration}
target: {{venue: sim, symbol: BTC-PERP}}
horizon: 1s
"""


@pytest.fixture(autouse=True)
def _cache_dir(monkeypatch, tmp_path_factory):
    """CLI runs in tests keep their event cache in the test's temporary tree, never in the user's home."""
    monkeypatch.setenv("SIGKIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sigkit-cache"))


def chunk_of(rows: list[dict]) -> np.ndarray:
    """A chunk from dicts like {"ts_ns": 5, "kind": TRADE, "side": 1, "price": 100.0, ...}."""
    chunk = empty_chunk(len(rows))
    for i, row in enumerate(rows):
        row = {"venue": "v", "symbol": "X", **row}
        row.setdefault("exch_ts_ns", row["ts_ns"])
        for key, value in row.items():
            chunk[key][i] = value
    return chunk


def book(ts, bid, ask, venue="v", symbol="X"):
    return {"ts_ns": ts, "kind": BOOK, "bid_px": bid, "ask_px": ask, "bid_sz": 1.0, "ask_sz": 1.0,
            "venue": venue, "symbol": symbol}


def trade(ts, side, price, size=1.0, venue="v", symbol="X"):
    return {"ts_ns": ts, "kind": TRADE, "side": side, "price": price, "size": size, "venue": venue, "symbol": symbol}


def fill(ts, side, price, size=1.0):
    return {"ts_ns": ts, "kind": FILL, "side": side, "price": price, "size": size}


def stat(ts, oi):
    return {"ts_ns": ts, "kind": STAT, "open_interest": oi}


class ListSource:
    """A source over prepared chunks."""

    def __init__(self, chunks):
        self._chunks = list(chunks)

    def chunks(self):
        return iter(self._chunks)


@pytest.fixture
def target():
    return sigkit.Market("v", "X")


def plugin_venv(venv: Path) -> tuple[Path, dict]:
    """A fresh virtual environment that sees this interpreter's packages (sigkit, its deps, pip, setuptools)
    without the network: a .pth file adds this interpreter's site-packages after the venv's own.
    Returns its python and the environment to run it with."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    dirs = [d for d in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(d)]
    lines = "".join(f"import site; site.addsitedir({d!r})\n" for d in dirs)
    (Path(purelib) / "_sigkit_parent_env.pth").write_text(lines)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SIGKIT_", "PYTHON", "PIP_", "VIRTUAL_ENV"))} | {"PIP_NO_INDEX": "1"}
    return python, env


def install_plugins(python: Path, env: dict, *projects: Path) -> None:
    """Install plugin projects (editable, offline) into a :func:`plugin_venv`."""
    args = [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    for project in projects:
        args += ["-e", str(project)]
    pip = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    if pip.returncode == 0:
        return
    # setuptools < 70.1 builds wheels only with the `wheel` package, which an offline environment may lack;
    # the same setuptools can still install a project in development mode without building one.
    assert "bdist_wheel" in pip.stdout + pip.stderr, pip.stdout + pip.stderr
    for project in projects:
        proc = subprocess.run([str(python), "-c", "import setuptools; setuptools.setup()", "develop", "--no-deps"],
                              cwd=project, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def corrupt_csv_line(line: str, how: tuple) -> bytes:
    """A CSV line corrupted as the fuzz tests' ``how`` says: ``("bytes", b)`` replaces it, ``("truncate", n)``
    cuts it, ``("delete field", i)`` / ``("extra field", i)`` remove or add a field, ``("replace field",
    (i, text))`` puts ``text`` in field ``i``."""
    kind, arg = how
    fields = line.split(",")
    if kind == "bytes":
        return arg
    if kind == "truncate":
        return line[:arg].encode()
    if kind == "delete field":
        del fields[arg % len(fields)]
    elif kind == "extra field":
        fields.insert(arg % len(fields), "7")
    elif kind == "replace field":
        fields[arg[0] % len(fields)] = arg[1]
    else:
        raise ValueError(f"unknown corruption {kind!r}")
    return ",".join(fields).encode()
