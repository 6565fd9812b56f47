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
that is read-only), so only a first run pays for compiling.
"""

from __future__ import annotations

import numba

from sigkit import learn

__all__ = ["kernel", "twin", "sigmoid", "logit", "logistic_decision", "logistic_step", "base_rate_value",
           "expected_cost", "evidence_confidence"]


def kernel(fn):
    """Compile a batch kernel (nopython, cached on disk)."""
    return numba.njit(cache=True, nogil=True)(fn)


def twin(fn):
    """The compiled twin of a plain-Python formula: the same source, compiled for kernels to call."""
    return numba.njit(cache=True, nogil=True)(fn)


sigmoid = twin(learn.sigmoid)
logit = twin(learn.logit)
logistic_decision = twin(learn.logistic_decision)
logistic_step = twin(learn.logistic_step)
base_rate_value = twin(learn.base_rate_value)
expected_cost = twin(learn.expected_cost)
evidence_confidence = twin(learn.evidence_confidence)
