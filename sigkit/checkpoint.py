"""Checkpoints: one file holding every model's and combiner's learned state and the engine's own (fills
awaiting their horizon, the causal base rate, counters, the per-fill record), so a stopped run resumes and
predicts exactly what it would have predicted had it never stopped.

The file is a NumPy ``.npz`` archive read with ``allow_pickle=False``: a JSON ``header`` (format, format
version, sigkit version, the run's identity, the event time of the checkpoint), a JSON ``state`` and the
numeric arrays the state refers to by name.  Loading one never executes code from it.  It is written to a
temporary file next to the target and moved into place with :func:`os.replace`, so a crash while saving
leaves the previous checkpoint intact.

Resuming from a checkpoint taken at event time ``T`` replays the data, skips every event with ``ts_ns <=
T`` (the saved state has seen them) and goes on; see :meth:`sigkit.engine.Replay.run` and
``docs/checkpoints.md``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from sigkit.errors import SigkitError

FORMAT = "sigkit-checkpoint"
#: Bump when the layout of the file or of the engine's state changes; older readers refuse newer files.
FORMAT_VERSION = 1


class CheckpointError(SigkitError):
    """A checkpoint cannot be written, read, or used with this recipe (the message says which and why)."""


# -- the run a checkpoint belongs to ------------------------------------------------------------------

def _plain(value: Any) -> Any:
    import attrs

    if attrs.has(type(value)):
        value = attrs.asdict(value, recurse=True)
    return json.loads(json.dumps(value, default=lambda v: list(v) if isinstance(v, (tuple, set)) else str(v)))


def recipe_identity(recipe) -> dict:
    """What a checkpoint must match to be resumed with ``recipe``: the recipe's hash, its labelling, its data
    (each source's parameters and a fingerprint of each file it reads), the bad-line policy, and every
    model and combiner with its plugin and parameters."""
    from sigkit.cache import file_fingerprint
    from sigkit.params import path_fields

    ensembles = [("ensemble", recipe.ensemble)] if recipe.ensemble is not None else []
    ensembles += [(arm.name, arm.ensemble) for arm in recipe.arms if arm.ensemble is not None]
    return {
        "recipe": recipe.name,
        "recipe_sha256": recipe.sha256,
        "target": str(recipe.target),
        "fills": "public" if recipe.fills_path is None else str(recipe.fills_path),
        "horizon_ns": recipe.horizon_ns,
        "threshold_bps": recipe.threshold_bps,
        "markout_horizons_ns": list(recipe.evaluation.markout_horizons_ns),
        "on_bad_line": recipe.on_bad_line,
        "data": [{"source": src.spec.name, "params": _plain(src.params),
                  "files": [file_fingerprint(recipe.path.parent / getattr(src.params, name))
                            for name in path_fields(src.spec.params) if getattr(src.params, name) is not None]}
                 for src in recipe.sources],
        "models": [{"id": m.id, "model": m.spec.name, "plugin": f"{m.spec.distribution} {m.spec.version}".strip(),
                    "params": _plain(m.params)} for m in recipe.models],
        "ensembles": [{"name": name, "combiner": e.spec.name,
                       "plugin": f"{e.spec.distribution} {e.spec.version}".strip(), "members": list(e.members),
                       "params": _plain(e.params)} for name, e in ensembles],
    }


def _param_diff(saved: Any, now: Any) -> str:
    if isinstance(saved, dict) and isinstance(now, dict):
        keys = [k for k in dict.fromkeys([*saved, *now]) if saved.get(k, "<unset>") != now.get(k, "<unset>")]
        return ", ".join(f"{k} {json.dumps(saved.get(k, '<unset>'))} in the checkpoint, {json.dumps(now.get(k, '<unset>'))} now"
                         for k in keys)
    return f"{json.dumps(saved)} in the checkpoint, {json.dumps(now)} now"


def identity_difference(saved: dict, now: dict) -> str | None:
    """One line naming the first way the run ``now`` differs from the run a checkpoint was taken in."""
    for key, what in (("target", "target"), ("fills", "fill model"), ("horizon_ns", "horizon (ns)"),
                      ("threshold_bps", "threshold_bps"), ("markout_horizons_ns", "markout horizons (ns)")):
        if saved.get(key) != now.get(key):
            return f"{what} is {saved.get(key)!r} in the checkpoint, {now.get(key)!r} now"
    for kind, key in (("model", "models"), ("ensemble", "ensembles")):
        ids = "id" if kind == "model" else "name"
        a, b = saved.get(key, []), now.get(key, [])
        if [x[ids] for x in a] != [x[ids] for x in b]:
            return (f"the checkpoint has {kind}s {', '.join(x[ids] for x in a) or '(none)'}, this recipe has "
                    f"{', '.join(x[ids] for x in b) or '(none)'}")
        for x, y in zip(a, b):
            for field in ("model", "combiner", "members"):
                if x.get(field) != y.get(field):
                    return f"{kind} {x[ids]!r}: {field} is {x.get(field)!r} in the checkpoint, {y.get(field)!r} now"
            if x.get("params") != y.get("params"):
                return f"{kind} {x[ids]!r}: params differ: {_param_diff(x.get('params'), y.get('params'))}"
    if saved.get("on_bad_line", "stop") != now.get("on_bad_line", "stop"):
        return f"on_bad_line is {saved.get('on_bad_line', 'stop')!r} in the checkpoint, {now.get('on_bad_line')!r} now"
    for k, (x, y) in enumerate(zip(saved.get("data", []), now.get("data", [])), start=1):
        if x != y:
            return (f"data entry {k} ({y.get('source')}) differs: its parameters or the files it reads changed "
                    "since the checkpoint was taken")
    if len(saved.get("data", [])) != len(now.get("data", [])):
        return f"the checkpoint has {len(saved.get('data', []))} data entries, this recipe {len(now.get('data', []))}"
    if saved.get("recipe_sha256") != now.get("recipe_sha256"):
        return (f"the recipe file changed (sha256 {str(saved.get('recipe_sha256'))[:12]}... in the checkpoint, "
                f"{str(now.get('recipe_sha256'))[:12]}... now), though its models, params and labelling are the same")
    return None


# -- encoding: JSON for structure, named arrays for numbers -------------------------------------------

def _encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return float(value)
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise CheckpointError(f"cannot save a dict with keys of type {type(next(iter(value))).__name__} "
                                  "(state dicts need string keys)")
        return {k: _encode(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise CheckpointError("cannot save a numpy array of Python objects in a checkpoint")
        name = f"a{len(arrays)}"
        arrays[name] = value
        return {"__ndarray__": name}
    if isinstance(value, np.generic):
        return {"__npscalar__": value.dtype.str, "value": value.item()}
    raise CheckpointError(f"cannot save a {type(value).__name__} in a checkpoint; a state_dict() holds numbers, "
                          "strings, lists, string-keyed dicts and numpy arrays")


def _decode(value: Any, arrays) -> Any:
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return arrays[value["__ndarray__"]]
        if "__npscalar__" in value:
            return np.dtype(value["__npscalar__"]).type(value["value"])
        return {k: _decode(v, arrays) for k, v in value.items()}
    return value


def _json_bytes(value: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(value, allow_nan=True, separators=(",", ":")).encode(), dtype=np.uint8)


def encode_state(state: dict) -> bytes:
    """``state`` as the bytes of an ``.npz`` archive (no header); :func:`decode_state` reads it back."""
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(state, arrays)
    buffer = io.BytesIO()
    np.savez(buffer, state=_json_bytes(tree), **arrays)
    return buffer.getvalue()


def decode_state(data: bytes) -> dict:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    return _decode(json.loads(arrays.pop("state").tobytes()), arrays)


# -- the file -----------------------------------------------------------------------------------------

def write_checkpoint(path: str | Path, *, identity: dict, ts_ns: int | None, state: dict) -> dict:
    """Write ``state`` taken at event time ``ts_ns`` atomically to ``path``; returns the header, with the
    file's size (``bytes``) and the time it took (``save_s``)."""
    from sigkit import __version__

    started = time.perf_counter()
    path = Path(path)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "sigkit_version": __version__,
              "ts_ns": ts_ns, "written_at_unix_s": time.time(), "identity": identity}
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(state, arrays)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                np.savez(out, header=_json_bytes(header), state=_json_bytes(tree), **arrays)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        raise CheckpointError(f"cannot write the checkpoint: {err.strerror or err}", path=str(path)) from err
    return {**header, "bytes": path.stat().st_size, "save_s": time.perf_counter() - started}


def read_header(path: str | Path) -> dict:
    """Just the header of a checkpoint (format, versions, identity, ``ts_ns``), validated."""
    return read_checkpoint(path, with_state=False)[0]


def read_checkpoint(path: str | Path, *, with_state: bool = True) -> tuple[dict, dict | None]:
    """``(header, state)`` of a checkpoint file; :class:`CheckpointError` with one clear line if it is
    missing, not a checkpoint, truncated or corrupt, or written by a newer format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("no such checkpoint file", path=str(path))
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "header" not in archive.files:
                raise CheckpointError("not a sigkit checkpoint (no header)", path=str(path))
            header = json.loads(archive["header"].tobytes())
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise CheckpointError("not a sigkit checkpoint", path=str(path))
            version = header.get("format_version")
            if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
                raise CheckpointError(
                    f"checkpoint format version {version!r} (written by sigkit {header.get('sigkit_version')}) "
                    f"is not one this sigkit reads (version {FORMAT_VERSION})",
                    path=str(path), hint="resume with the sigkit version that wrote it, or start a fresh run")
            if not with_state:
                return header, None
            arrays = {k: archive[k] for k in archive.files if k != "header"}
    except CheckpointError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        raise CheckpointError(f"cannot read the checkpoint (truncated or corrupt?): {type(err).__name__}: {err}",
                              path=str(path)) from None
    try:
        state = _decode(json.loads(arrays.pop("state").tobytes()), arrays)
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"the checkpoint's state is corrupt: {type(err).__name__}: {err}",
                              path=str(path)) from None
    return header, state


def check_identity(header: dict, identity: dict, path: str | Path | None = None) -> None:
    """Refuse a checkpoint taken in another run than ``identity`` describes, naming what differs."""
    diff = identity_difference(header.get("identity") or {}, identity)
    if diff:
        raise CheckpointError(f"this checkpoint belongs to another run: {diff}",
                              path=None if path is None else str(path),
                              hint="resume with the recipe it was taken with, or start a fresh run")
