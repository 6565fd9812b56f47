"""Sweeps: many independent replays (recipes x seeds x data) run serially, in local processes or on a Dask
cluster, and merged into one deterministic report.

A sweep file names recipes and the overrides to vary (``seeds:``, ``grid:``); :func:`load_sweep` expands it
into :class:`Job` records, :func:`run_sweep` hands each job to an executor (``serial``, ``processes`` or
``dask``), and every worker loads its recipe and reads its data itself, so nothing large crosses the wire.
The merged report is the same, byte for byte apart from ``timing``, whatever the executor and worker count.
The format is documented in ``docs/sweeps.md``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from sigkit.errors import RecipeError, SigkitError

SWEEP_FORMAT = 1
SWEEP_KEYS = ("name", "recipe", "recipes", "seeds", "grid")
EXECUTORS = ("serial", "processes", "dask")
#: What an override may set: the recipe's seed, or one parameter of one data entry (0-based).
_OVERRIDE_KEY = re.compile(r"^(seed|data\.(\d+)\.([A-Za-z_][A-Za-z0-9_]*))$")
#: The per-model numbers the merged report keeps from each job's report.
_SCORE_FIELDS = ("n", "coverage", "bss", "skill_t", "edge", "brier", "brier_ref", "log_loss")


@attrs.frozen
class Job:
    """One replay: a recipe file and the overrides applied to it.  Small and picklable: this is all a
    worker receives."""

    id: str
    recipe: str  # absolute path of the recipe file, as the workers will open it
    overrides: tuple[tuple[str, Any], ...] = ()
    where: tuple[tuple[str, str], ...] = ()  # override key -> "sweep.yaml:line:col", for error messages


def job_id(recipe: str | Path, overrides: Sequence[tuple[str, Any]]) -> str:
    """A stable, filesystem-safe id: the recipe file's stem, then ``__key=value`` per override, sorted."""
    parts = [Path(recipe).stem] + [f"{key}={value}" for key, value in sorted(overrides)]
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", "__".join(parts))


# --------------------------------------------------------------------------- the sweep file


def load_sweep(path: str | Path) -> tuple[str, list[Job]]:
    """Read and expand a sweep file into its name and jobs (recipes x seeds x grid, in file order).

    Raises :class:`RecipeError` with ``file:line:column`` for a malformed file.  Only the recipe files are
    checked here; data files are opened by the workers, so a missing one fails that job alone."""
    from sigkit.recipe import _Reader, read_yaml

    path = Path(path)
    _, doc = read_yaml(path, "sweep file")
    r = _Reader(path, registry=None)
    if doc is None:
        raise RecipeError("sweep file is empty", path=str(path), line=1, column=1,
                          hint="it needs at least `recipe: your_recipe.yaml`; see docs/sweeps.md")
    doc = r.mapping(doc, "a sweep file", (0, 0))
    r.check_keys(doc, SWEEP_KEYS, "the sweep file")

    # Recipes: `recipe: one.yaml` and/or `recipes: [a.yaml, b.yaml]`, relative to the sweep file.
    recipes: list[tuple[str, Any, Any]] = []  # (value, parent node, key) for error locations
    if "recipe" in doc:
        recipes.append((doc["recipe"], doc, "recipe"))
    if "recipes" in doc:
        node = doc["recipes"]
        if not isinstance(node, list) or not node:
            raise r.error("recipes must be a non-empty list of recipe files", r.value_at(doc, "recipes"))
        recipes += [(value, node, i) for i, value in enumerate(node)]
    if not recipes:
        raise r.error("a sweep needs `recipe: file.yaml` or `recipes: [a.yaml, b.yaml]`", (0, 0))
    recipe_paths = []
    for value, parent, key in recipes:
        if not isinstance(value, str) or not value:
            raise r.error(f"a recipe must be a file name, got {value!r}", r.value_at(parent, key))
        full = Path(value).expanduser()
        full = (full if full.is_absolute() else path.parent / full).resolve()
        if not full.is_file():
            raise r.error(f"recipe file {str(full)!r} does not exist", r.value_at(parent, key),
                          "relative paths start at the sweep file's folder")
        recipe_paths.append(str(full))

    # Axes: each is an override key and its values; jobs are their product.
    axes: list[tuple[str, list[tuple[Any, str]]]] = []  # (key, [(value, "file:line:col")])

    def at(parent: Any, key: Any) -> str:
        where = r.value_at(parent, key)
        return f"{path}:{where[0] + 1}:{where[1] + 1}" if where else str(path)

    if "seeds" in doc:
        seeds = doc["seeds"]
        if not isinstance(seeds, list) or not seeds:
            raise r.error("seeds must be a non-empty list of integers, e.g. [1, 2, 3]", r.value_at(doc, "seeds"))
        for i, seed in enumerate(seeds):
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise r.error(f"a seed must be an integer, got {seed!r}", r.value_at(seeds, i))
        axes.append(("seed", [(int(s), at(seeds, i)) for i, s in enumerate(seeds)]))
    if doc.get("grid") is not None:
        grid = r.mapping(doc["grid"], "grid", r.value_at(doc, "grid"))
        for key, values in grid.items():
            if not isinstance(key, str) or not _OVERRIDE_KEY.match(key):
                raise r.error(f"grid key {key!r} is not something a sweep can vary", r.key_at(grid, key),
                              "use `seed` or `data.N.PARAM`, N counting the recipe's data entries from 0: data.0.path")
            if key == "seed" and "seeds" in doc:
                raise r.error("the seed is set twice: by `seeds` and by grid key `seed`", r.key_at(grid, key),
                              "keep one")
            if not isinstance(values, list) or not values:
                raise r.error(f"grid {key!r} must be a non-empty list of values", r.value_at(grid, key))
            for i, value in enumerate(values):
                if isinstance(value, (Mapping, list)) or value is None:
                    raise r.error(f"grid {key!r}: each value must be a number or a string, got {value!r}",
                                  r.value_at(values, i))
                if key == "seed" and (isinstance(value, bool) or not isinstance(value, int)):
                    raise r.error(f"a seed must be an integer, got {value!r}", r.value_at(values, i))
            axes.append((key, [(_scalar(v), at(values, i)) for i, v in enumerate(values)]))

    jobs, seen = [], {}
    for recipe in recipe_paths:
        for combo in itertools.product(*(values for _, values in axes)):
            overrides = tuple((key, value) for (key, _), (value, _) in zip(axes, combo))
            where = tuple((key, loc) for (key, _), (_, loc) in zip(axes, combo))
            job = Job(job_id(recipe, overrides), recipe, overrides, where)
            if job.id in seen:
                raise RecipeError(f"two jobs would both be called {job.id!r} ({seen[job.id]} and {recipe})",
                                  path=str(path), hint="give the recipe files different names")
            seen[job.id] = recipe
            jobs.append(job)
    name = doc.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise r.error(f"name must be a string, got {name!r}", r.value_at(doc, "name"))
    return name, jobs


def _scalar(value: Any) -> Any:
    """A ruamel scalar as a plain Python int, float, bool or str (picklable, JSON-ready)."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


# --------------------------------------------------------------------------- one job, in a worker


def apply_overrides(recipe, overrides: Sequence[tuple[str, Any]], registry, where: Mapping[str, str] | None = None):
    """``recipe`` with its seed and data-entry parameters replaced, validated like the recipe itself.

    The values go where the recipe's own would, so relative paths start at the recipe's folder.  The
    report records the overridden content and a hash of the recipe plus the overrides."""
    from sigkit.recipe import _Reader, _source_params

    if not overrides:
        return recipe
    where = where or {}
    plain = json.loads(json.dumps(recipe.plain))
    data = plain["data"] if isinstance(plain.get("data"), list) else [plain["data"]]
    sources = list(recipe.sources)
    seed = recipe.seed
    def failure(key: str, value: Any, message: str, hint: str | None = None) -> RecipeError:
        # Where the value came from in the sweep file first: that is where the user fixes it.
        prefix = f"{where[key]}: " if where.get(key) else ""
        return RecipeError(f"{prefix}{key}={value} for {recipe.path}: {message}", hint=hint)

    for key, value in overrides:
        match = _OVERRIDE_KEY.match(key)

        if match is None:
            raise failure(key, value, "not something a sweep can vary", "use `seed` or `data.N.PARAM`")
        if key == "seed":
            if isinstance(value, bool) or not isinstance(value, int):
                raise failure(key, value, "a seed must be an integer")
            seed = plain["seed"] = value
            continue
        index, param = int(match.group(2)), match.group(3)
        if index >= len(sources):
            entries = f"{len(sources)} data entr{'y' if len(sources) == 1 else 'ies'}"
            raise failure(key, value, f"the recipe has {entries} (numbered from 0)")
        if param == "source":
            raise failure(key, value, "a sweep varies a data entry's parameters, not its source",
                          "list another recipe instead")
        entry = dict(data[index], **{param: value})
        data[index] = entry
        try:
            params = _source_params(_Reader(recipe.path, registry), sources[index].spec, entry, entry["source"])
        except RecipeError as err:
            raise failure(key, value, err.message, err.hint) from None
        sources[index] = attrs.evolve(sources[index], params=params)
    if isinstance(plain.get("data"), list):
        plain["data"] = data
    else:
        plain["data"] = data[0]
    digest = hashlib.sha256((recipe.sha256 + json.dumps(list(overrides))).encode()).hexdigest()
    return attrs.evolve(recipe, seed=seed, sources=tuple(sources), plain=plain, sha256=digest)


def run_job(job: Job, out_dir: str | None = None, builtins_only: bool = False, n_boot: int = 1000) -> dict:
    """Run one job where this function is called (a worker): load, override, replay, report.

    Returns ``{"id", "recipe", "overrides", "status", "error", "report", "elapsed_s"}``; ``status`` is
    ``ok``, ``failed`` (a :class:`SigkitError`: ``error`` is its one line) or ``error`` (a bug: ``error``
    is the traceback).  With ``out_dir``, writes ``out_dir/<job id>/report.json`` and ``predictions.csv``."""
    started = time.perf_counter()
    outcome = {"id": job.id, "recipe": job.recipe, "overrides": dict(job.overrides), "status": "ok",
               "error": None, "report": None}
    try:
        from sigkit import __version__
        from sigkit.cache import default_cache_dir
        from sigkit.engine import replay_from_recipe
        from sigkit.plugins import build_registry
        from sigkit.recipe import load_recipe
        from sigkit.report import build_report, plugins_used, write_outputs

        registry = build_registry(builtins_only=builtins_only)
        recipe = apply_overrides(load_recipe(job.recipe, registry), job.overrides, registry, dict(job.where))
        replay = replay_from_recipe(recipe, cache_dir=default_cache_dir())  # parsed files shared by the jobs
        result = replay.run()
        report = build_report(result, recipe, sources=replay.describe_sources(), plugins=plugins_used(recipe),
                              version=__version__, n_boot=n_boot)
        if out_dir is not None:
            write_outputs(Path(out_dir) / job.id, report, result)
        outcome["report"] = report
    except SigkitError as err:
        outcome.update(status="failed", error=str(err))
    except Exception:  # a bug: keep its traceback for the merged report; the other jobs go on
        outcome.update(status="error", error=traceback.format_exc())
    outcome["elapsed_s"] = round(time.perf_counter() - started, 3)
    return outcome


# --------------------------------------------------------------------------- executors


def run_sweep(jobs: Sequence[Job], *, executor: str = "serial", workers: int | None = None,
              scheduler: str | None = None, out_dir: str | Path | None = None, builtins_only: bool = False,
              name: str = "sweep", on_done: Callable[[dict], None] | None = None) -> dict:
    """Run every job and return the merged report (see :func:`merge`).

    ``executor``: ``serial`` (here, one after another), ``processes`` (a spawn-context process pool of
    ``workers``, default one per core) or ``dask`` (``scheduler``: the address of a running Dask
    scheduler, e.g. ``tcp://10.0.0.5:8786``; without it a LocalCluster of ``workers`` processes is
    started and closed).  ``on_done(outcome)`` is called here as each job finishes, in completion order.
    With ``out_dir`` (a folder every worker can write), each job writes ``out_dir/<job id>/``."""
    if executor not in EXECUTORS:
        raise SigkitError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if scheduler is not None and executor != "dask":
        raise SigkitError("--scheduler is the address of a Dask scheduler: use it with --executor dask")
    if workers is not None and workers < 1:
        raise SigkitError(f"workers must be at least 1, got {workers}")
    ids = [job.id for job in jobs]
    if len(set(ids)) != len(ids):
        raise SigkitError("two jobs share an id; every job needs its own (see sigkit.sweep.job_id)")
    out = None if out_dir is None else str(Path(out_dir).resolve())
    started = time.perf_counter()
    done: dict[str, dict] = {}

    def collect(outcome: dict) -> None:
        done[outcome["id"]] = outcome
        if on_done is not None:
            on_done(outcome)

    if executor == "serial":
        for job in jobs:
            collect(run_job(job, out, builtins_only))
        used_workers = 1
    elif executor == "processes":
        used_workers = _run_processes(jobs, out, builtins_only, workers, collect)
    else:
        used_workers = _run_dask(jobs, out, builtins_only, workers, scheduler, collect)
    merged = merge([done[job.id] for job in jobs], name=name)
    merged["timing"] = {"executor": executor, "workers": used_workers,
                        "elapsed_s": round(time.perf_counter() - started, 3),
                        "jobs_s": {job.id: done[job.id].get("elapsed_s") for job in jobs}}
    return merged


def _lost(job: Job, err: BaseException) -> dict:
    """The outcome of a job whose worker died (or the pool broke) before it could report."""
    return {"id": job.id, "recipe": job.recipe, "overrides": dict(job.overrides), "status": "error",
            "error": f"the worker running this job was lost: {type(err).__name__}: {err}", "report": None}


def _run_processes(jobs, out, builtins_only, workers, collect) -> int:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    n = workers or os.cpu_count() or 1
    # spawn: each worker starts clean (no forked locks or plugin state) and behaves as it would on any OS.
    with ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_job, job, out, builtins_only): job for job in jobs}
        for future in as_completed(futures):
            try:
                collect(future.result())
            except Exception as err:  # BrokenProcessPool: a worker was killed
                collect(_lost(futures[future], err))
    return n


def _run_dask(jobs, out, builtins_only, workers, scheduler, collect) -> int | None:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise SigkitError("the dask executor needs dask.distributed",
                          hint="pip install 'sigkit[dask]'") from None
    import contextlib
    import uuid

    with contextlib.ExitStack() as stack:
        if scheduler is None:
            cluster = stack.enter_context(LocalCluster(n_workers=workers or os.cpu_count() or 1,
                                                       threads_per_worker=1, processes=True,
                                                       dashboard_address=None))
            address = cluster.scheduler_address
        else:
            address = scheduler
        try:
            client = stack.enter_context(Client(address, timeout="30s"))
        except OSError as err:
            raise SigkitError(f"cannot reach the Dask scheduler at {address}: {err}",
                              hint="start one with `dask scheduler` and check the address") from None
        # One task per job, not retried, keyed by the job id (for the dashboard) and this run (keys are
        # shared by everyone using the scheduler).
        run_token = uuid.uuid4().hex[:8]
        futures = {client.submit(run_job, job, out, builtins_only, key=f"sigkit-sweep-{run_token}-{job.id}",
                                 retries=0): job for job in jobs}
        for future in as_completed(futures):
            try:
                collect(future.result())
            except Exception as err:  # KilledWorker, a lost connection
                collect(_lost(futures[future], err))
        used = len(client.scheduler_info().get("workers", {}))
    return used


# --------------------------------------------------------------------------- the merged report


def merge(outcomes: Sequence[dict], *, name: str = "sweep") -> dict:
    """One report over many jobs: per job its id, overrides, status and scores table, then per model the
    spread of skill across jobs.  A pure function of the outcomes in the order given."""
    from sigkit import __version__

    jobs = []
    for o in outcomes:
        report = o.get("report")
        entry = {"id": o["id"], "recipe": o["recipe"], "name": report["recipe"]["name"] if report else None,
                 "overrides": o["overrides"], "status": o["status"],
                 "completed": bool(report["completed"]) if report else False,
                 "error": o["error"], "scores": {}}
        if report:
            entry["fills_labelled"] = report["data"]["fills_labelled"]
            for model_id, s in report["scores"].items():
                skill = s.get("skill_test") or {}
                row = {"n": s.get("n"), "coverage": s.get("coverage"), "bss": s.get("bss"),
                       "skill_t": skill.get("t_stat"), "edge": bool(skill.get("edge")), "brier": s.get("brier"),
                       "brier_ref": s.get("brier_ref"), "log_loss": s.get("log_loss")}
                entry["scores"][model_id] = row
        jobs.append(entry)
    ok = [j for j in jobs if j["status"] == "ok"]
    by_recipe: dict[str, list[dict]] = {}
    for j in ok:
        by_recipe.setdefault(j["name"], []).append(j)
    return {
        "sweep_format": SWEEP_FORMAT,
        "sigkit_version": __version__,
        "name": name,
        "counts": {"jobs": len(jobs), "ok": len(ok), "completed": sum(j["completed"] for j in jobs),
                   "failed": sum(j["status"] == "failed" for j in jobs),
                   "errors": sum(j["status"] == "error" for j in jobs)},
        "jobs": jobs,
        "summary": {"models": _spread(ok), "by_recipe": {k: _spread(v) for k, v in by_recipe.items()}},
    }


def _spread(jobs: list[dict]) -> dict:
    """Per model id: over the jobs that scored it, mean/sd/min/max of bss and how many found an edge."""
    models: dict[str, list[dict]] = {}
    for job in jobs:
        for model_id, row in job["scores"].items():
            models.setdefault(model_id, []).append(row)
    out = {}
    for model_id, rows in models.items():
        bss = [r["bss"] for r in rows if r["bss"] is not None]
        mean = math.fsum(bss) / len(bss) if bss else None
        sd = math.sqrt(math.fsum((b - mean) ** 2 for b in bss) / (len(bss) - 1)) if len(bss) > 1 else None
        out[model_id] = {"jobs": len(rows), "bss_mean": mean, "bss_sd": sd, "bss_min": min(bss) if bss else None,
                         "bss_max": max(bss) if bss else None, "jobs_with_edge": sum(r["edge"] for r in rows)}
    return out


def write_merged(path: Path, merged: dict) -> Path:
    from sigkit.report import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(merged, indent=2, allow_nan=False) + "\n")
    return path


def without_timing(merged: dict) -> dict:
    """The merged report minus ``timing``: what is identical across executors and worker counts."""
    return {k: v for k, v in merged.items() if k != "timing"}
