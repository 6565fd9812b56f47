"""The event cache: what a file-reading source yielded, kept in a compact binary file and replayed from it.

Parsing a raw recording (Binance JSON reads at tens of thousands of events per second) costs far more
than the replay itself, and the same file is usually replayed many times while models are developed.
:class:`CachedSource` wraps any source object: the first read streams from the source and writes every
chunk to the cache as it goes; later reads of the same input stream the chunks back from the cache,
bit for bit, with the ``describe()`` the source gave at write time (counts, skipped lines, gaps).

One entry is one file ``<source>-<key hash>.sigcache`` in the cache folder::

    b"SIGKITCACHE\\0" + u32 format
    one zstd frame (with its content checksum) per chunk: the chunk's raw EVENT_DTYPE bytes
    meta (JSON: key, chunk sizes, describe(), span)  + u64 meta length + b"SIGKITEND\\0\\0\\0"

An entry is written under a temporary name and renamed into place only once the source was read to its
end, so an interrupted or failed read never leaves one.  Anything unreadable in an entry (bad magic,
truncation, a key or checksum mismatch) makes it ignored: it is removed and rebuilt, with one warning.
The key (:func:`source_key`) covers everything the chunks can depend on; docs/cache.md lists it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from sigkit.events import EVENT_DTYPE

#: Bump when the layout of an entry changes: every older entry then misses (and is rebuilt).
CACHE_FORMAT = 1
#: Where the cache lives unless ``--cache DIR`` or $SIGKIT_CACHE_DIR says otherwise.
ENV_CACHE_DIR = "SIGKIT_CACHE_DIR"
SUFFIX = ".sigcache"
#: Bytes read at each end of an input file for its content fingerprint.
FINGERPRINT_BYTES = 1 << 20

_MAGIC = b"SIGKITCACHE\0"
_HEAD = _MAGIC + struct.pack("<I", CACHE_FORMAT)
_END = b"SIGKITEND\0\0\0"
_TAIL = struct.Struct("<Q")
_TMP_PREFIX = ".tmp-"
_STALE_TMP_S = 24 * 3600  # temporary files older than this were left by a killed process
_ZSTD_LEVEL = 3


class CacheWarning(UserWarning):
    """A cache entry could not be used or written; the run goes on from the source."""


class _Corrupt(Exception):
    pass


def default_cache_dir() -> Path:
    """$SIGKIT_CACHE_DIR, else ``$XDG_CACHE_HOME/sigkit``, else ``~/.cache/sigkit``."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sigkit"


# -- the key -------------------------------------------------------------------------------------------


def file_fingerprint(path: Path) -> dict:
    """Resolved path, size, mtime_ns and a hash of the first and last MB and the size (cheap on big files).

    A folder (e.g. hyperliquid_csv's ``dir``) is fingerprinted as each file directly in it."""
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        return {"path": str(path), "dir": [file_fingerprint(p) for p in sorted(path.iterdir()) if p.is_file()]}
    st = path.stat()
    digest = hashlib.blake2b(struct.pack("<Q", st.st_size), digest_size=16)
    with open(path, "rb") as f:
        digest.update(f.read(FINGERPRINT_BYTES))
        if st.st_size > FINGERPRINT_BYTES:
            f.seek(max(FINGERPRINT_BYTES, st.st_size - FINGERPRINT_BYTES))
            digest.update(f.read(FINGERPRINT_BYTES))
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "head_tail_blake2b": digest.hexdigest()}


def _plain(value: Any) -> Any:
    if attrs.has(type(value)):
        return {f.name: _plain(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def source_key(spec, params, context, base_dir: Path | None = None) -> dict:
    """Everything a source's chunks can depend on, JSON-ready; any change gives another cache entry.

    ``spec`` is the :class:`sigkit.SourceSpec` (its name, distribution and version), ``params`` the built
    parameter instance (every value), ``context`` the :class:`sigkit.RunContext` the source was built with
    (on_bad_line, target, horizon, threshold, seed and instance id: a source may read any of them), and each
    path parameter that is set is fingerprinted (:func:`file_fingerprint`), relative paths from
    ``base_dir`` (default: the context's)."""
    import sigkit
    from sigkit.params import path_fields

    base = Path(base_dir if base_dir is not None else context.base_dir)
    files = {}
    for name in path_fields(spec.params):
        value = getattr(params, name, None)
        if value is None:
            continue
        full = Path(value).expanduser()
        files[name] = file_fingerprint(full if full.is_absolute() else base / full)
    return {
        "cache_format": CACHE_FORMAT,
        "sigkit": sigkit.__version__,
        "event_dtype": str(EVENT_DTYPE.descr),
        "source": {"name": spec.name, "plugin": spec.plugin, "distribution": spec.distribution,
                   "version": spec.version},
        "params": _plain(params),
        "on_bad_line": context.on_bad_line,
        "context": {"target": str(context.target), "horizon_ns": context.horizon_ns,
                    "threshold_bps": _plain(context.threshold_bps), "seed": context.seed,
                    "instance_id": context.instance_id},
        "files": files,
    }


def key_digest(key: dict) -> str:
    return hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=16).hexdigest()


# -- one entry -----------------------------------------------------------------------------------------


def _read_meta(f) -> tuple[dict, int]:
    """The entry's meta and where its frames end; raises _Corrupt."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    if size < len(_HEAD) + _TAIL.size + len(_END):
        raise _Corrupt("truncated")
    f.seek(0)
    if f.read(len(_HEAD)) != _HEAD:
        raise _Corrupt("not a sigkit cache file of this format")
    f.seek(size - _TAIL.size - len(_END))
    (meta_len,) = _TAIL.unpack(f.read(_TAIL.size))
    if f.read(len(_END)) != _END:
        raise _Corrupt("truncated (no end marker)")
    frames_end = size - _TAIL.size - len(_END) - meta_len
    if frames_end < len(_HEAD):
        raise _Corrupt("bad meta length")
    f.seek(frames_end)
    try:
        meta = json.loads(f.read(meta_len))
        sizes = meta["chunks"]
        ok = isinstance(sizes, list) and all(isinstance(r, int) and isinstance(b, int) and r >= 0 and b > 0
                                             for r, b in sizes)
    except (ValueError, KeyError, TypeError) as err:
        raise _Corrupt(f"unreadable meta ({err})") from None
    if not ok or len(_HEAD) + sum(b for _, b in sizes) != frames_end:
        raise _Corrupt("chunk index does not match the file")
    return meta, frames_end


def _read_frames(path: Path, sizes: list) -> Iterator[np.ndarray]:
    """The chunks of an entry, one at a time (memory: one chunk); raises _Corrupt on any mismatch."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    item = EVENT_DTYPE.itemsize
    with open(path, "rb") as f:
        f.seek(len(_HEAD))
        for rows, nbytes in sizes:
            frame = f.read(nbytes)
            if len(frame) != nbytes:
                raise _Corrupt("truncated")
            # Decompressed straight into a fresh (writable, as a source's) chunk: no intermediate copy.
            chunk = np.empty(rows, dtype=EVENT_DTYPE)
            out = memoryview(chunk.view(np.uint8))
            got = 0
            try:
                reader = dctx.stream_reader(frame, read_across_frames=False)
                while got < rows * item:
                    n = reader.readinto(out[got:])
                    if not n:
                        break
                    got += n
                # Reading past the end checks the frame's content checksum and that nothing is left over.
                if got != rows * item or reader.read(1) != b"":
                    raise _Corrupt("chunk of the wrong size")
            except zstandard.ZstdError as err:
                raise _Corrupt(f"bad chunk ({err})") from None
            yield chunk


class _EntryWriter:
    """Appends chunks to a temporary file; ``commit`` renames it into place, ``discard`` removes it."""

    def __init__(self, final: Path):
        import zstandard

        self.final = final
        self.tmp = final.with_name(f"{_TMP_PREFIX}{final.name}.{os.getpid()}.{time.monotonic_ns()}")
        self.cctx = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_checksum=True)
        self.sizes: list[list[int]] = []
        self.first_ts = self.last_ts = None
        final.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.tmp, "wb")  # noqa: SIM115 (kept open across add() calls; closed by commit/discard)
        self.f.write(_HEAD)

    def add(self, chunk: np.ndarray) -> None:
        frame = self.cctx.compress(np.ascontiguousarray(chunk).tobytes())
        self.f.write(frame)
        self.sizes.append([len(chunk), len(frame)])
        if len(chunk):
            self.first_ts = int(chunk["ts_ns"][0]) if self.first_ts is None else self.first_ts
            self.last_ts = int(chunk["ts_ns"][-1])

    def commit(self, key: dict, described: Any) -> None:
        span = None if self.first_ts is None else [self.first_ts, self.last_ts]
        meta = json.dumps({"key": key, "chunks": self.sizes, "events": sum(r for r, _ in self.sizes), "span": span,
                           "describe": described, "written_at": time.time()}).encode()
        self.f.write(meta + _TAIL.pack(len(meta)) + _END)
        self.f.close()
        os.replace(self.tmp, self.final)

    def discard(self) -> None:
        if not self.f.closed:
            self.f.close()
        self.tmp.unlink(missing_ok=True)


def _remove_stale_tmp(cache_dir: Path) -> None:
    now = time.time()
    try:
        for p in cache_dir.glob(f"{_TMP_PREFIX}*"):
            try:
                if now - p.stat().st_mtime > _STALE_TMP_S:
                    p.unlink()
            except OSError:
                pass
    except OSError:
        pass


# -- the wrapper ---------------------------------------------------------------------------------------


def _default_warn(message: str) -> None:
    warnings.warn(message, CacheWarning, stacklevel=3)


class CachedSource:
    """Any source object, read from the cache entry of ``key`` when there is a valid one.

    ``chunks()`` streams a valid entry (never loading it whole) and ``describe()`` then returns what the
    source described when the entry was written; otherwise it streams the source while writing the entry,
    committed only when the source was read to its end.  ``status`` says what happened: ``"hit"``,
    ``"written"``, ``"miss"`` (not read yet, or the read did not finish), ``"unwritable"``.  ``warn`` receives
    one line per problem (a corrupt entry, a cache folder that cannot be written); the run never fails for the
    cache's sake.
    """

    def __init__(self, source: Any, key: dict, cache_dir: str | Path, *,
                 warn: Callable[[str], None] | None = None):
        self._source = source
        self._key = json.loads(json.dumps(key, default=str))  # as it reads back from an entry
        self._dir = Path(cache_dir).expanduser()
        self._warn = warn or _default_warn
        name = str(key.get("source", {}).get("name", "source")) if isinstance(key.get("source"), dict) else "source"
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        self.path = self._dir / f"{name}-{key_digest(self._key)}{SUFFIX}"
        self.status = "miss"
        self._meta: dict | None = None  # of the valid entry being (or last) read

    @property
    def source(self) -> Any:
        """The wrapped source object."""
        return self._source

    def _valid_meta(self) -> tuple[dict, int] | None:
        """The meta of a valid entry for this key, or None (a corrupt entry is removed, with a warning)."""
        try:
            with open(self.path, "rb") as f:
                meta, end = _read_meta(f)
            if meta.get("key") != self._key:
                raise _Corrupt("its key does not match")
            return meta, end
        except FileNotFoundError:
            return None
        except (OSError, _Corrupt) as err:
            self._drop(f"{err}")
            return None

    def _drop(self, why: str) -> None:
        self._warn(f"cache entry {self.path} is unusable ({why}); removed, reading the source again")
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass

    def chunks(self) -> Iterator[np.ndarray]:
        found = self._valid_meta()
        delivered = 0  # rows already yielded from the entry (if it breaks mid-way, the source goes on after them)
        if found is not None:
            meta = found[0]
            self._meta = meta
            self.status = "hit"
            try:
                for chunk in _read_frames(self.path, meta["chunks"]):
                    delivered += len(chunk)
                    yield chunk
                return
            except (OSError, _Corrupt) as err:
                self._meta = None
                self.status = "miss"
                self._drop(str(err))
        yield from self._from_source(skip_rows=delivered)

    def _from_source(self, skip_rows: int = 0) -> Iterator[np.ndarray]:
        writer = None
        try:
            _remove_stale_tmp(self._dir)
            writer = _EntryWriter(self.path)
        except OSError as err:
            self.status = "unwritable"
            self._warn(f"cannot write the cache in {self._dir} ({err}); reading without it")
        committed = False
        try:
            for chunk in self._source.chunks():
                if writer is not None:
                    if not (isinstance(chunk, np.ndarray) and chunk.dtype == EVENT_DTYPE):
                        writer.discard()  # the engine refuses this source anyway; never cache it
                        writer = None
                    else:
                        try:
                            writer.add(chunk)
                        except OSError as err:
                            self._warn(f"cannot write the cache entry {self.path} ({err}); reading without it")
                            self.status = "unwritable"
                            writer.discard()
                            writer = None
                if skip_rows:
                    if len(chunk) <= skip_rows:
                        skip_rows -= len(chunk)
                        continue
                    chunk, skip_rows = chunk[skip_rows:], 0
                yield chunk
            if writer is not None:
                described = self._source.describe() if callable(getattr(self._source, "describe", None)) else None
                try:
                    writer.commit(self._key, json.loads(json.dumps(described, default=str)))
                    committed = True
                    self.status = "written"
                except (OSError, TypeError, ValueError) as err:
                    self._warn(f"cannot write the cache entry {self.path} ({err}); reading without it")
                    self.status = "unwritable"
        finally:
            # A failed, stopped or abandoned read (DataError, SIGTERM, generator closed) leaves no entry.
            if writer is not None and not committed:
                writer.discard()

    def span_ns(self) -> tuple[int, int] | None:
        found = self._meta or (self._valid_meta() or (None, 0))[0]
        if found is not None and found.get("span"):
            return tuple(found["span"])
        span = getattr(self._source, "span_ns", None)
        return span() if callable(span) else None

    def describe(self) -> dict:
        if self.status == "hit" and self._meta is not None:
            return self._meta["describe"]
        describe = getattr(self._source, "describe", None)
        return describe() if callable(describe) else {}


def wrap_sources(recipe, built_sources: list[tuple[str, Any]], cache_dir: str | Path | None, *,
                 warn: Callable[[str], None] | None = None) -> list[tuple[str, Any]]:
    """``built_sources`` (``(label, object)`` as :func:`sigkit.recipe.instantiate` builds them) with every
    file-reading source of ``recipe`` (a path parameter set) wrapped in a :class:`CachedSource`; others
    (simulate, live, the fills file) are returned as they are.  ``cache_dir=None``: no cache."""
    if cache_dir is None:
        return list(built_sources)
    from sigkit.params import path_fields

    entries = {s.label: s for s in recipe.sources}
    out = []
    for label, obj in built_sources:
        entry = entries.get(label)
        if entry is not None and any(getattr(entry.params, name, None) is not None
                                     for name in path_fields(entry.spec.params)):
            try:
                key = source_key(entry.spec, entry.params, recipe.context(label), recipe.path.parent)
            except OSError as err:  # an input that cannot be fingerprinted: the source will say why itself
                (warn or _default_warn)(f"source {label!r} is read without the cache ({err})")
            else:
                obj = CachedSource(obj, key, cache_dir, warn=warn)
        out.append((label, obj))
    return out


# -- managing the folder (``sigkit cache``) ------------------------------------------------------------


def cache_info(cache_dir: str | Path) -> dict:
    """JSON-ready listing of the entries in ``cache_dir``: file, size, source, events, when written, inputs."""
    cache_dir = Path(cache_dir).expanduser()
    entries, leftovers = [], []
    if cache_dir.is_dir():
        for p in sorted(cache_dir.iterdir()):
            if p.name.startswith(_TMP_PREFIX):
                leftovers.append({"file": p.name, "bytes": p.stat().st_size})
                continue
            if not p.name.endswith(SUFFIX):
                continue
            row: dict[str, Any] = {"file": p.name, "bytes": p.stat().st_size}
            try:
                with open(p, "rb") as f:
                    meta, _ = _read_meta(f)
                key = meta.get("key", {})
                row.update(source=key.get("source", {}).get("name"), events=meta.get("events"),
                           written_at=meta.get("written_at"),
                           inputs=[v.get("path") for v in key.get("files", {}).values()])
            except (OSError, _Corrupt) as err:
                row["error"] = str(err)
            entries.append(row)
    return {"dir": str(cache_dir), "entries": entries, "bytes": sum(e["bytes"] for e in entries + leftovers),
            "temporary": leftovers}


def cache_clear(cache_dir: str | Path) -> tuple[int, int]:
    """Remove every cache entry (and leftover temporary file) in ``cache_dir``: (files removed, bytes freed).
    Other files in the folder are left alone."""
    cache_dir = Path(cache_dir).expanduser()
    removed = freed = 0
    if cache_dir.is_dir():
        for p in cache_dir.iterdir():
            if p.is_file() and (p.name.endswith(SUFFIX) or p.name.startswith(_TMP_PREFIX)):
                size = p.stat().st_size
                p.unlink(missing_ok=True)
                removed, freed = removed + 1, freed + size
    return removed, freed
