"""Compiled kernels for the batch path (numba), and the compiled twins of the shared formulas.

**One set of formulas.**  A model's arithmetic lives in plain Python functions on scalars and indexable
sequences (``sigkit.learn.logistic_step``, ``sigkit.learn.sigmoid``, a plugin's own feature functions).
Its per-event methods call them as they are; its ``on_batch`` kernel calls their compiled twins made by
:func:`twin` from the *same source*.  Nothing is written twice, and the conformance suite checks that the
two paths give the same predictions (:func:`sigkit.testing.check_batch_equivalence`).

A kernel is an ``@kernel`` function that walks ``batch.op``/``batch.ref`` (see :mod:`sigkit.batch`) over
plain arrays: the model packs its learned state into arrays before the call and unpacks it after, so its
``state_dict()``, ``describe()`` and per-event hooks see one state whichever path ran.

Compiled code is cached on disk next to the source (numba's ``cache=True``; set ``NUMBA_CACHE_DIR`` where
that is read-only), so only a first run pays for compiling.  Numba alone would reuse a cached kernel after
an edit to a formula it calls from another file; here a cached kernel is also stale once any Python file
of its own package, or sigkit's own formula modules, changes (:func:`_formula_stamp`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import os
import types
from pathlib import Path

import numba
from llvmlite import binding as _llvm
from numba.core import cgutils
from numba.core import types as _types
from numba.extending import intrinsic
from numba.extending import overload as _overload, register_jitable as _register_jitable

from sigkit import batch, learn

_CORE_FORMULAS = tuple(str(Path(__file__).with_name(name)) for name in ("learn.py", "fast.py", "batch.py",
                                                                          "features.py"))


@functools.lru_cache(maxsize=None)
def _files_digest(files: tuple[tuple[str, float, int], ...]) -> str:
    digest = hashlib.sha256()
    for path, _mtime, _size in files:
        digest.update(path.encode())
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def _formula_stamp(py_file: str) -> str:
    """A digest of the Python files a kernel in ``py_file`` may take formulas from: every ``.py`` file of its
    package folder, and sigkit's formula modules."""
    folder = Path(py_file).parent
    paths = sorted({*map(str, folder.glob("*.py")), *_CORE_FORMULAS})
    files = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        files.append((path, st.st_mtime, st.st_size))
    return _files_digest(tuple(files))


def _install_locators() -> None:
    """Put formula-aware versions of numba's file-backed cache locators first in its list."""
    try:
        from numba.core import caching
    except ImportError:  # pragma: no cover - numba's layout changed: keep its own locators
        return

    def aware(base):
        class FormulaAware(base):
            def get_source_stamp(self):
                return (super().get_source_stamp(), _formula_stamp(self._py_file))

        FormulaAware.__name__ = f"FormulaAware{base.__name__}"
        return FormulaAware

    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    bases = [getattr(caching, name, None) for name in
             ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")]
    if impl is None or not all(bases) or getattr(impl, "_sigkit_locators", False):
        return
    impl._locator_classes = [aware(base) for base in bases] + list(impl._locator_classes)
    impl._sigkit_locators = True


_install_locators()

__all__ = ["kernel", "twin", "inline", "borrowed", "sigmoid", "logit", "logistic_decision", "logistic_step", "base_rate_value",
           "expected_cost", "evidence_confidence", "solve_spd", "newton_decision", "newton_step", "regime_decay",
           "regime_observe", "regime_span", "regime_state", "slot_put", "slot_take"]


def kernel(fn):
    """Compile a batch kernel (nopython, cached on disk)."""
    return numba.njit(cache=True, nogil=True)(fn)


def twin(fn):
    """The compiled twin of a plain-Python formula: the same source, compiled for kernels to call.  The
    formula becomes callable by its plain name from other formulas' twins too."""
    _register_jitable(fn)
    return numba.njit(cache=True, nogil=True)(fn)


# -- for a kernel's hottest loop -------------------------------------------------------------------------
# Numba counts the references of every array view it makes (``theta[state]``, ``tf[0:2]``) and of every
# array it passes to a compiled function it does not inline, with an atomic increment and decrement each; at
# a few views per step that can cost more than the arithmetic.  A kernel can inline the formulas it calls per
# step (:func:`inline`: the same source, the same arithmetic) and take its views through :func:`borrowed`.

def inline(fn, **calls):
    """``fn`` (a plain formula) compiled to be inlined into the kernels that call it.  ``calls`` rebinds names
    the formula calls, to inline those too: ``inline(learn.newton_step, solve_spd=inline(learn.solve_spd))``
    (the same code object; only the names it looks up change)."""
    if calls:
        fn = types.FunctionType(fn.__code__, {**fn.__globals__, **calls}, fn.__name__, fn.__defaults__,
                                fn.__closure__)
    return numba.njit(nogil=True, inline="always")(fn)


@intrinsic
def borrowed(typingctx, arr):
    """``arr`` without its reference count (a NULL meminfo), so that the views made of it and passing it to
    compiled functions cost no atomic operations.  Only for an array that outlives every use of the result:
    a kernel's argument, alive for the whole call (pass scratch in as one rather than make it inside)."""
    def codegen(context, builder, signature, args):
        view = context.make_array(arr)(context, builder, value=args[0])
        view.meminfo = cgutils.get_null_value(view.meminfo.type)
        return view._getvalue()

    return arr(arr), codegen


def _c_pow_address() -> int:
    """The address of the C ``pow`` this Python's ``float ** float`` calls."""
    for lib in (None, ctypes.util.find_library("m"), "ucrtbase", "msvcrt"):
        try:
            return ctypes.cast(ctypes.CDLL(lib).pow, ctypes.c_void_p).value
        except (OSError, TypeError, AttributeError):
            continue
    raise ImportError("sigkit.fast: cannot find the C library's pow()")


# learn.power is ``x ** y``: C pow in Python.  Kernels call the same C function, under a name of our own
# (LLVM rewrites a call named "pow" with a constant exponent 2 into x * x, which is not always the same).
_llvm.add_symbol("sigkit_pow", _c_pow_address())
_c_pow = _types.ExternalFunction("sigkit_pow", _types.float64(_types.float64, _types.float64))


@_overload(learn.power, jit_options={"cache": True})
def _power(x, y):
    def impl(x, y):
        return _c_pow(x, y)
    return impl


sigmoid = twin(learn.sigmoid)
logit = twin(learn.logit)
logistic_decision = twin(learn.logistic_decision)
logistic_step = twin(learn.logistic_step)
base_rate_value = twin(learn.base_rate_value)
expected_cost = twin(learn.expected_cost)
evidence_confidence = twin(learn.evidence_confidence)
solve_spd = twin(learn.solve_spd)
newton_decision = twin(learn.newton_decision)
newton_step = twin(learn.newton_step)
regime_decay = twin(learn.regime_decay)
regime_observe = twin(learn.regime_observe)
regime_span = twin(learn.regime_span)
regime_state = twin(learn.regime_state)
slot_put = twin(batch.slot_put)
slot_take = twin(batch.slot_take)


@kernel
def release_slots(owner, oldest_pending, first):
    """:meth:`sigkit.FillSlots.ensure`'s scan: free the slots of fills before ``oldest_pending`` (never to be
    delivered) and return the oldest fill still held, or ``first`` if none is older."""
    lo = first
    for i in range(owner.size):
        f = owner[i]
        if f >= 0:
            if f < oldest_pending:
                owner[i] = -1
            elif f < lo:
                lo = f
    return lo


@kernel
def first_invalid(p, confidence):
    """0 if every ``p`` and ``confidence`` is in [0, 1]; else ``1 + i`` for the first bad ``p[i]``, or
    ``-(1 + i)`` for the first bad ``confidence[i]`` (a NaN is bad)."""
    for i in range(p.size):
        if not (p[i] >= 0.0 and p[i] <= 1.0):
            return 1 + i
    for i in range(confidence.size):
        if not (confidence[i] >= 0.0 and confidence[i] <= 1.0):
            return -(1 + i)
    return 0


@kernel
def match_markets(words, keys, out):
    """:meth:`sigkit.MarketCodes.of_chunk`'s match: ``out[r]`` = the row of ``keys`` equal to ``words[r]``
    (each a market's venue and symbol bytes, as words), or -1; returns how many rows matched none."""
    unmatched = 0
    last = 0
    n_keys, width = keys.shape
    for r in range(words.shape[0]):
        out[r] = -1
        for i in range(n_keys):
            c = (last + i) % n_keys  # rows of one market come in runs: try the last match first
            same = True
            for w in range(width):
                if words[r, w] != keys[c, w]:
                    same = False
                    break
            if same:
                out[r] = c
                last = c
                break
        if out[r] < 0:
            unmatched += 1
    return unmatched
