"""The ``sigkit`` command: parse, call the library, print, and turn user mistakes into exit code 2."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import click

from sigkit.errors import SigkitError
from sigkit.sweep import EXECUTORS

EXIT_USER_ERROR = 2


class _Group(click.Group):
    """Turns a :class:`SigkitError` into one line on stderr and exit code 2; bugs keep their traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SigkitError as err:
            if os.environ.get("SIGKIT_DEBUG"):
                raise
            click.echo(f"error: {err}", err=True)
            ctx.exit(EXIT_USER_ERROR)


def _version() -> str:
    from sigkit import __version__

    return __version__


def _bad_line_option(command):
    """``--on-bad-line``, shared by the commands that read data."""
    from sigkit.feeds import ON_BAD_LINE

    return click.option("--on-bad-line", type=click.Choice(ON_BAD_LINE), default=None,
                        help="Bad data lines: stop with file:line (the default, or the recipe's on_bad_line) or "
                             "skip them, counted by reason in the report.")(command)


def _cache_options(command):
    """``--cache DIR`` and ``--no-cache``, shared by the commands that read data files."""
    command = click.option("--no-cache", is_flag=True,
                           help="Neither read nor write the event cache (docs/cache.md).")(command)
    return click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help="Keep parsed data files in DIR and reuse them while unchanged  "
                             "[default: $SIGKIT_CACHE_DIR or ~/.cache/sigkit]")(command)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(version=None, package_name="sigkit", message="sigkit %(version)s")
@click.option("--no-plugins", is_flag=True,
              help="Load only sigkit's built-in plugins (same as SIGKIT_NO_PLUGINS=1).")
@click.pass_context
def main(ctx: click.Context, no_plugins: bool) -> None:
    """sigkit: toxicity signals for market makers, replayed causally and scored honestly.

    \b
    Start here:
      sigkit run recipes/quickstart.yaml          run an ensemble on simulated data
      sigkit run recipes/binance_btc.yaml         the same on real Binance recordings (docs/data.md)
      sigkit run RECIPE --live --duration 45m     on the venues' live feeds (docs/live.md)
      sigkit ab recipes/ab_quickstart.yaml        is the candidate ensemble really better?
      sigkit sweep SWEEP.yaml                     many replays in parallel (docs/sweeps.md)
      sigkit validate recipes/quickstart.yaml     check a recipe without running it
      sigkit simulate --world informed --out d.csv.gz   write a simulated market
      sigkit plugins                              what models, sources and combiners are installed

    Exit codes: 0 success, 2 a problem with your input (one line says what and where), 1 a bug in sigkit.
    Set SIGKIT_DEBUG=1 to see the traceback behind an input error.  Plugins: SIGKIT_LOAD_PLUGINS=a,b loads
    only those, SIGKIT_DISABLE_PLUGINS=a skips one, --no-plugins keeps only the built-ins.
    """
    ctx.obj = {"builtins_only": no_plugins}


def _registry(warn: bool = True):
    from sigkit.plugins import build_registry

    ctx = click.get_current_context(silent=True)
    builtins_only = bool(ctx and ctx.find_root().obj and ctx.find_root().obj.get("builtins_only"))
    registry = build_registry(builtins_only=builtins_only)
    if warn:
        for failure in registry.failures:
            click.echo(f"warning: {failure}; skipped", err=True)
    return registry


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for report.json and predictions.csv  [default: sigkit-runs/<recipe name>]")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no table; errors still print.")
@click.option("--html", is_flag=True, help="Also write OUT/report.html with figures (needs sigkit[report]).")
@_bad_line_option
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Save every model's learned state to FILE every --checkpoint-every of event time and at exit "
                   "(also when stopped by SIGTERM or Ctrl-C).")
@click.option("--checkpoint-every", default="1m", show_default=True,
              help="Event time between checkpoints, with a unit (30s, 5m).")
@click.option("--resume", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Start from a checkpoint of this same recipe: skip the events it has seen and go on.")
@click.option("--live", is_flag=True,
              help="Connect to the venues the recipe's data entries name (binance, hyperliquid) over their public "
                   "websockets instead of reading files; see docs/live.md.")
@click.option("--duration", default=None,
              help="--live: stop after this much wall time, with a unit (45m, 2h)  [default: until Ctrl-C]")
@click.option("--record", "record_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="--live: write everything received to DIR in the replayable raw formats.")
@click.option("--report-every", default="30s", show_default=True,
              help="--live: rewrite OUT/report.json and redraw the table this often (wall time).")
@_cache_options
@click.option("--per-event", is_flag=True,
              help="Call every model's per-event hooks even where it has a compiled batch path (on_batch); "
                   "the predictions are the same, only slower (docs/fast.md).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Run the models' compiled batch paths side by side in this many threads (at most one per "
                   "model); the predictions do not depend on it  [default: 1]")
def run(recipe: Path, out_dir: Path | None, quiet: bool, html: bool, on_bad_line: str | None,
        checkpoint: Path | None, checkpoint_every: str, resume: Path | None, live: bool, duration: str | None,
        record_dir: Path | None, report_every: str, cache_dir: Path | None, no_cache: bool, per_event: bool,
        threads: int | None) -> None:
    """Replay RECIPE's data through its models and score every fill.

    Every model is asked about each fill before the fill's own trade is revealed, learns from every
    outcome once its horizon has passed, and is scored against the causal running base rate.  Writes
    OUT/report.json (all metrics, versions, data span) and OUT/predictions.csv (one row per fill).

    Stopping with Ctrl-C or SIGTERM writes both files for what was processed, marked incomplete, and
    exits with 128 + the signal number (130 or 143).  With --checkpoint the models' learned state is saved
    too, and --resume goes on from it with the same predictions as an uninterrupted run.

    With --live the same recipe runs on the venues' public feeds (no credentials): events are stamped with
    the local receive time, the console shows each model's running Brier, skill and coverage (and the
    sequential A/B state when the recipe has arms), report.json is rewritten every --report-every, and
    --record DIR keeps a recording that `sigkit run` replays to the same predictions.

    Models with a compiled batch path (every built-in one) run through it, side by side in --threads; --per-event
    calls their per-event hooks instead, with the same predictions (the conformance suite checks it).

    \b
    Examples:
      sigkit run recipes/quickstart.yaml --out runs/quick
      sigkit run recipes/live_btc.yaml --live --duration 45m --record recordings/today
    """
    from sigkit.recipe import load_recipe
    from sigkit.report import format_table, table_rows

    parsed = _with_bad_line_policy(load_recipe(recipe, _registry()), on_bad_line)
    every_ns = _duration_option(checkpoint_every, "--checkpoint-every")
    if not live and (duration or record_dir):
        raise SigkitError("--duration and --record belong to live runs: add --live")
    live_options = None
    if live:
        live_options = {"duration_s": _duration_option(duration, "--duration") / 1e9 if duration else None,
                        "record_dir": record_dir, "report_every_s": _duration_option(report_every, "--report-every") / 1e9}
    report, result, paths, stop = _replay_and_write(parsed, out_dir, quiet=quiet, html=html, checkpoint=checkpoint,
                                                    checkpoint_every_ns=every_ns, resume=resume, live=live_options,
                                                    cache=_cache_dir(cache_dir, no_cache),
                                                    path="per-event" if per_event else "batch", threads=threads)
    if not quiet:
        header, rows = table_rows(report)
        click.echo(format_table(header, rows))
        data = report["data"]
        click.echo(f"\n{data['events']['total']} events, {data['fills']} fills ({data['fills_labelled']} labelled), "
                   f"horizon {report['label']['horizon']}, base rate "
                   f"{'-' if data['base_rate'] is None else format(data['base_rate'], '.3f')}, "
                   f"{report['timing']['events_per_s'] or '-'} events/s")
    _finish(result, paths, stop, quiet, report)


def _replay_and_write(parsed, out_dir: Path | None, *, quiet: bool, html: bool, n_boot: int = 1000,
                      checkpoint: Path | None = None, checkpoint_every_ns: int | None = None,
                      resume: Path | None = None, live: dict | None = None, cache: Path | None = None,
                      path: str = "batch", threads: int | None = None):
    """Replay a validated recipe (stoppable by SIGTERM/Ctrl-C), then write its report and predictions.

    With ``checkpoint``, the models' state is saved every ``checkpoint_every_ns`` of event time and at exit;
    with ``resume``, the run starts from such a checkpoint.  ``live`` (``duration_s``, ``record_dir``,
    ``report_every_s``) runs on the venues' live feeds instead of the recipe's files; ``cache`` is the folder
    of the binary event cache for file sources (None: no cache)."""
    from sigkit.engine import replay_from_recipe
    from sigkit.report import build_report, plugins_used, write_outputs

    out_dir = out_dir or Path("sigkit-runs") / parsed.name
    stop = _StopFlag()
    live_source = None
    if live is not None:
        from sigkit.live import live_source_for

        if parsed.fills_path is not None:
            raise SigkitError(f"{parsed.path}: live runs use the public fill model; remove `fills: {{path: ...}}`")
        live_source = live_source_for(parsed, record_dir=live["record_dir"], duration_s=live["duration_s"],
                                      should_stop=stop.reason)
    replay = replay_from_recipe(parsed, sources=None if live_source is None else [("live", live_source)],
                                cache_dir=cache if live_source is None else None,
                                cache_warn=lambda message: click.echo(f"warning: {message}", err=True), path=path,
                                threads=threads)

    def interim(result) -> None:  # live: a crash loses at most the last interval
        report = build_report(result, parsed, sources=replay.describe_sources(), plugins=plugins_used(parsed),
                              version=_version(), n_boot=200)
        write_outputs(out_dir, report, result)
        if table is not None:
            table.show(report)

    table = None if (live is None or quiet) else _LiveTable()
    _warm_up(replay, quiet)
    try:
        with stop.installed(), (_progress(replay.span_ns(), quiet) if live is None else _nothing()) as progress, \
                (table or _nothing()):
            # Live: the source itself stops on the signal and still yields everything it received (and
            # recorded), so the engine drains it and the recording replays to exactly these predictions.
            result = replay.run(progress=progress, should_stop=stop.reason if live is None else None,
                                checkpoint_path=checkpoint,
                                checkpoint_every_ns=checkpoint_every_ns if checkpoint else None, resume_from=resume,
                                on_interval=None if live is None else interim,
                                interval_s=live["report_every_s"] if live else 30.0)
    finally:
        if live_source is not None:
            live_source.close()
    if live is not None and (stop.reason() or live_source.failure):
        result.completed, result.stop_reason = False, stop.reason() or live_source.failure
    if checkpoint is not None and result.checkpoints:
        last = result.checkpoints[-1]
        click.echo(f"checkpoint {checkpoint} at ts_ns={last['ts_ns']} ({last['bytes']:,} bytes)", err=True)
    report = build_report(result, parsed, sources=replay.describe_sources(), plugins=plugins_used(parsed),
                          version=_version(), n_boot=n_boot)
    paths = write_outputs(out_dir, report, result)
    if html:
        _render_html(out_dir, quiet)
    if live_source is not None and live_source.failure:
        raise SigkitError(f"live run stopped: {live_source.failure}; wrote {paths[0]} for what was received",
                          hint="free some space or choose another --record folder")
    return report, result, paths, stop


def _nothing():
    import contextlib

    return contextlib.nullcontext(None)


class _LiveTable:
    """The live console: each model's running Brier, skill, coverage (and the A/B state), redrawn in place."""

    def __enter__(self):
        from rich.console import Console
        from rich.live import Live

        self._live = Live("waiting for the first scored fills...", console=Console(stderr=True),
                          auto_refresh=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._live.__exit__(*exc)

    def show(self, report: dict) -> None:
        from rich.table import Table

        from sigkit.report import table_rows

        header, rows = table_rows(report)
        keep = [i for i, h in enumerate(header) if h in ("model", "n_scored", "coverage", "brier", "brier_ref", "bss",
                                                          "skill_t", "edge", "log_loss")]
        data = report["data"]
        table = Table(title=f"live {report['recipe']['name']}: {data['events']['total']:,} events, "
                            f"{data['fills']:,} fills ({data['fills_labelled']:,} labelled), last {data['last_ts']}")
        for i in keep:
            table.add_column(header[i], justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*(row[i] for i in keep))
        for c in report.get("ab", {}).get("comparisons", []):
            seq = c["sequential"]
            p = seq.get("p_value") if seq.get("burn_in_done") else None
            table.caption = (table.caption or "") + (f"{c['b']} vs {c['a']}: always-valid p "
                                                     f"{'-' if p is None else format(p, '.3g')}; ")
        self._live.update(table, refresh=True)


def _cache_dir(cache_dir: Path | None, no_cache: bool) -> Path | None:
    """The event cache folder a run uses: ``--cache DIR``, else the default; None with ``--no-cache``."""
    from sigkit.cache import default_cache_dir

    return None if no_cache else (cache_dir or default_cache_dir())


@main.command("cache")
@click.option("--dir", "cache_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The cache folder  [default: $SIGKIT_CACHE_DIR or ~/.cache/sigkit]")
@click.option("--clear", is_flag=True, help="Remove every cache entry.")
def cache_command(cache_dir: Path | None, clear: bool) -> None:
    """List the event cache's entries (size, source, events, input files), or remove them with --clear.

    `sigkit run` keeps every data file it parses (Binance, Hyperliquid, tardis.dev, native...) as
    compressed event chunks here and reads them back, millions of events a second, while the file, the
    reader's parameters and sigkit's version are unchanged (docs/cache.md).
    """
    from sigkit.cache import cache_clear, cache_info, default_cache_dir

    cache_dir = cache_dir or default_cache_dir()
    if clear:
        removed, freed = cache_clear(cache_dir)
        click.echo(f"removed {removed} files ({freed / 1e6:.1f} MB) from {cache_dir}")
        return
    info = cache_info(cache_dir)
    for e in info["entries"]:
        click.echo(f"{e['bytes'] / 1e6:8.1f} MB  {e.get('events') or '-':>10}  {e['file']}  "
                   f"{', '.join(e.get('inputs') or []) or e.get('error', '')}")
    click.echo(f"{len(info['entries'])} entries, {info['bytes'] / 1e6:.1f} MB in {info['dir']}")


def _with_bad_line_policy(parsed, on_bad_line: str | None):
    """The recipe with ``--on-bad-line`` applied (the flag wins over the recipe's ``on_bad_line``)."""
    import attrs

    return parsed if on_bad_line is None else attrs.evolve(parsed, on_bad_line=on_bad_line)


def _data_warnings(report: dict) -> list[str]:
    """One line per source that skipped bad lines or saw sequence gaps: never a silent repair."""
    lines = []
    for source in report["data"].get("sources", []):
        name = source.get("path") or source.get("source", "?")
        skipped = source.get("skipped") or {}
        if skipped:
            what = ", ".join(f"{n} {reason}" for reason, n in skipped.items())
            lines.append(f"warning: {name}: skipped {sum(skipped.values())} bad lines ({what})")
        if source.get("gap_count"):
            first = (source.get("gaps") or [{}])[0]
            lines.append(f"warning: {name}: {source['gap_count']} sequence gaps in depth data (first at line "
                         f"{first.get('line', '?')}); the book was marked unsynced until the next snapshot")
    return lines


def _finish(result, paths: tuple[Path, Path], stop: "_StopFlag", quiet: bool, report: dict | None = None) -> None:
    for line in _data_warnings(report) if report else []:
        click.echo(line, err=True)
    for model_id, why in result.dropped.items():
        click.echo(f"warning: model {model_id!r} was dropped at ts_ns={why['ts_ns']} ({why['hook']} raised "
                   f"{why['error']}); it predicted the base rate from then on (on_error: drop)", err=True)
    click.echo(f"wrote {paths[0]} and {paths[1]}", err=quiet)
    if not result.completed:
        click.echo(f"run stopped: {result.stop_reason}; wrote what was processed, report marked incomplete", err=True)
        # The shell convention for a process ended by a signal: 128 + its number (143 SIGTERM, 130 Ctrl-C).
        sys.exit(128 + (stop.signum or signal.SIGINT))


class _StopFlag:
    """First SIGTERM/SIGINT asks the run to stop after the current chunk; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self._reason: str | None = None
        self.signum: int | None = None

    def reason(self) -> str | None:
        return self._reason

    def _handle(self, signum, frame) -> None:
        if self._reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        self._reason = "stopped by SIGTERM" if signum == signal.SIGTERM else "interrupted (Ctrl-C)"

    def installed(self):
        import contextlib

        @contextlib.contextmanager
        def manager():
            old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
            try:
                yield self
            finally:
                for s, handler in old.items():
                    signal.signal(s, handler)

        return manager()


def _warm_up(replay, quiet: bool) -> None:
    """Compile the models' batch kernels (or load them from numba's cache) before the replay, saying so when
    it takes a while: the first run after an install or an edit compiles every kernel once."""
    if quiet:
        replay.warm_up()
        return
    from rich.console import Console

    with Console(stderr=True).status("loading compiled kernels (the first run after an install compiles them)"):
        seconds = replay.warm_up()
    if seconds > 2.0:
        click.echo(f"compiled the batch kernels in {seconds:.0f} s; they are cached for later runs", err=True)


def _progress(span: tuple[int, int] | None, quiet: bool):
    """A rich progress bar over event time: events done, rate, time left.  Silent when quiet."""
    import contextlib

    if quiet:
        return contextlib.nullcontext(None)

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)

    @contextlib.contextmanager
    def manager():
        columns = [TextColumn("replaying"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                   TextColumn("{task.fields[events]:,} events  {task.fields[rate]:,.0f}/s"),
                   TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn()]
        with Progress(*columns, console=console, transient=True) as bar:
            total = (span[1] - span[0]) if span else None
            task = bar.add_task("replay", total=total, events=0, rate=0.0)
            import time

            started = time.perf_counter()

            def update(events: int, last_ts: int | None) -> None:
                elapsed = max(time.perf_counter() - started, 1e-9)
                completed = (last_ts - span[0]) if (span and last_ts is not None) else None
                bar.update(task, completed=completed, events=events, rate=events / elapsed)

            yield update

    return manager()


@main.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for report.json and predictions.csv  [default: sigkit-runs/<A>_vs_<B>]")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no tables; errors still print.")
@click.option("--n-boot", type=int, default=1000, show_default=True, help="Bootstrap replicates for the intervals.")
@click.option("--data", "data_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Run every arm on this native event file (.csv or .csv.gz) instead of the recipes' data.")
@click.option("--html", is_flag=True, help="Also write OUT/report.html with figures (needs sigkit[report]).")
@_bad_line_option
@_cache_options
def ab(recipes: tuple[Path, ...], out_dir: Path | None, quiet: bool, n_boot: int, data_path: Path | None,
       html: bool, on_bad_line: str | None, cache_dir: Path | None, no_cache: bool) -> None:
    """Compare ensembles on the same fills and say whether the difference is real.

    Give two recipes (A, the incumbent, then B, the candidate) that share their data, target, fills,
    horizon and seed, or one recipe with an `arms:` section.  All arms run in one pass over the data, and a
    model with the same plugin and parameters in several arms is built once.

    For each arm against the first: the paired per-fill Brier and log-loss differences with a
    Diebold-Mariano test (HAC variance covering overlapping outcome windows, Harvey-Leybourne-Newbold
    correction, Student-t p-value), a paired stationary block-bootstrap interval for the Brier and
    capture@10% differences, an always-valid sequential p-value, and a verdict.

    \b
    Examples:
      sigkit ab recipes/quickstart.yaml candidate.yaml --out runs/ab
      sigkit ab recipes/ab_quickstart.yaml
    """
    from sigkit.recipe import load_recipe, merge_for_ab, with_native_data
    from sigkit.report import format_table, table_rows

    registry = _registry()
    loaded = [load_recipe(path, registry) for path in recipes[:2]]
    if data_path is not None:
        loaded = [with_native_data(recipe, data_path, registry) for recipe in loaded]
    if len(recipes) == 1:
        parsed = loaded[0]
        if not parsed.arms:
            raise SigkitError(f"{recipes[0]}: has no arms; give two recipes or add an `arms:` section")
    elif len(recipes) == 2:
        parsed = merge_for_ab(*loaded)
    else:
        raise SigkitError("sigkit ab takes two recipes (A then B) or one recipe with arms")
    parsed = _with_bad_line_policy(parsed, on_bad_line)
    report, result, paths, stop = _replay_and_write(parsed, out_dir, quiet=quiet, html=html, n_boot=n_boot,
                                                    cache=_cache_dir(cache_dir, no_cache))
    if not quiet:
        header, rows = table_rows(report)
        click.echo(format_table(header, rows))
        click.echo("")
        click.echo(format_table(*ab_rows(report)))
        for c in report["ab"]["comparisons"]:
            click.echo(f"\n{c['b']} vs {c['a']}: {c['verdict']['text']}")
    _finish(result, paths, stop, quiet, report)


def ab_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    header = ["comparison", "n", "coverage", "brier_a", "brier_b", "d_brier", "dm_p", "boot_95%_ci", "d_capture@10%",
              "d_logloss", "seq_p", "better"]
    rows = []
    for c in report["ab"]["comparisons"]:
        brier, boot, seq = c["brier"], c["bootstrap"], c["sequential"]
        ci = boot.get("brier_ci") or [None, None]
        rows.append([
            f"{c['b']} vs {c['a']}", str(c["n"]), _fmt(c.get("coverage"), ".0%"), _fmt(brier.get("a"), ".4f"),
            _fmt(brier.get("b"), ".4f"), _fmt(brier.get("diff"), "+.4f"), _fmt(brier.get("p_value"), ".2g"),
            f"[{_fmt(ci[0], '+.4f')}, {_fmt(ci[1], '+.4f')}]", _fmt(boot.get("capture_diff"), "+.1%"),
            _fmt(c["log_loss"].get("diff"), "+.4f"), _fmt(seq.get("p_value") if seq.get("burn_in_done") else None, ".2g"),
            c["verdict"].get("better") or "no difference",
        ])
    return header, rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _render_html(run_dir: Path, quiet: bool) -> Path:
    from sigkit.html_report import render_report

    path = render_report(run_dir)
    click.echo(f"wrote {path}", err=quiet)
    return path


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write  [default: RUN_DIR/report.html]")
def report(run_dir: Path, out_path: Path | None) -> None:
    """Render an earlier run's directory (report.json + predictions.csv) as one self-contained HTML file.

    Reliability diagrams, markout curves, cumulative gain, rolling skill and member weights, the A/B
    difference over time and the lead-lag curve, with the recipe, data span, versions and seed on top.
    Needs matplotlib: pip install 'sigkit[report]'.

    \b
    Example:
      sigkit run recipes/quickstart.yaml --out runs/q && sigkit report runs/q
    """
    from sigkit.html_report import render_report

    click.echo(f"wrote {render_report(run_dir, out_path)}")


@main.command("new-plugin")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder to create sigkit-NAME/ in.")
def new_plugin(name: str, directory: Path) -> None:
    """Create sigkit-NAME/: a ready-to-publish model plugin with tests, a recipe and a README.

    The model (an online signed-flow model) has a comment on each hook saying when it is called and what it
    may see; its tests run it on a simulated world through the sigkit entry point.

    \b
    Example:
      sigkit new-plugin my_flow && cd sigkit-my_flow && pip install -e '.[test]' && python -m pytest
    """
    from sigkit.scaffold import new_plugin as scaffold

    target = scaffold(name, directory)
    click.echo(f"created {target}")
    click.echo(f"next: cd {target} && pip install -e '.[test]' && python -m pytest && sigkit run recipe.yaml")


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
def validate(recipe: Path) -> None:
    """Check RECIPE without running it: YAML, names, parameters, units and data paths.

    Prints a summary on success; otherwise one line with file:line:column, what is wrong and what to do.
    """
    from sigkit.recipe import describe_recipe, load_recipe

    parsed = load_recipe(recipe, _registry())
    summary = describe_recipe(parsed)
    click.echo(f"{recipe}: ok")
    for key in ("target", "fills", "horizon", "sources", "models", "ensemble", "arms"):
        value = summary[key]
        if not value:
            continue
        if isinstance(value, list):
            value = ", ".join(value)
        elif isinstance(value, dict):
            value = f"{value['combiner']} over {', '.join(value['members'])}"
        click.echo(f"  {key:<9} {value}")


@main.command()
@click.option("--world", type=click.Choice(["null", "informed", "leadlag", "oi", "mixed"]), default="informed",
              show_default=True, help="What is predictable (see below).")
@click.option("--duration", default="10m", show_default=True, help="Simulated span, with a unit: 90s, 10m, 1h.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same market, byte for byte.")
@click.option("--horizon", default="1s", show_default=True,
              help="Horizon the true adverse probabilities are computed for.")
@click.option("--threshold-bps", type=float, default=0.0, show_default=True,
              help="Adverse iff markout < -threshold (bps), for the true probabilities.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Native event file to write (.csv or .csv.gz).")
def simulate(world: str, duration: str, seed: int, horizon: str, threshold_bps: float, out_path: Path) -> None:
    """Write a seeded simulated market with known ground truth as a native event file.

    \b
    Worlds:
      null      nothing is predictable (every fill has the same true probability)
      informed  an informed-trader share that moves with observable order flow
      leadlag   a leader venue (simlead) the target (sim) trails by a known lag
      oi        open interest and liquidation cascades
      mixed     all of the above at once

    Each target trade carries its true adverse probability (column truth) for --horizon and
    --threshold-bps, so a report can show the oracle Brier.  A longer --duration with the same seed
    gives the same first part.  Read it back in a recipe with `- source: native` and `path: FILE`.
    """
    from sigkit import sim
    from sigkit.native import write_native
    from sigkit.units import format_duration

    duration_ns = _duration_option(duration, "--duration")
    horizon_ns = _duration_option(horizon, "--horizon")
    chunks = sim.simulate(world, seed=seed, duration_ns=duration_ns, horizon_ns=horizon_ns, threshold_bps=threshold_bps)
    meta = {"world": world, "seed": seed, "duration": format_duration(duration_ns),
            "truth_horizon": format_duration(horizon_ns), "truth_threshold_bps": threshold_bps}
    rows = write_native(out_path, chunks, meta)
    click.echo(f"wrote {rows} events to {out_path}")


def _duration_option(value: str, name: str) -> int:
    from sigkit.errors import DurationError
    from sigkit.units import parse_duration

    try:
        return parse_duration(value)
    except DurationError as err:
        raise SigkitError(f"{name}: {err}") from None


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List installed plugins: their distributions, versions, and the models, sources and combiners each
    registers (with parameters, units and defaults in --json).

    Plugins that failed to load are listed with the reason; they are skipped, not fatal.
    """
    from sigkit.params import describe_params

    registry = _registry(warn=False)
    if as_json:
        out = {"plugins": [], "failures": [str(f) for f in registry.failures]}
        for info in registry.plugins:
            entry = {"name": info.name, "distribution": info.distribution, "version": info.version}
            for kind in ("model", "source", "combiner"):
                names = info.registers.get(kind + "s", [])
                if names:
                    entry[kind + "s"] = [
                        {"name": n, "description": registry.table(kind)[n].description,
                         "params": describe_params(registry.table(kind)[n].params)} for n in names]
            out["plugins"].append(entry)
        click.echo(json.dumps(out, indent=2))
        return
    for info in registry.plugins:
        click.echo(f"{info.name}  ({info.distribution} {info.version})")
        for kind in ("models", "sources", "combiners"):
            for name in info.registers.get(kind, []):
                spec = registry.table(kind[:-1])[name]
                click.echo(f"  {kind[:-1]:<9} {name:<14} {spec.description}")
    for failure in registry.failures:
        click.echo(f"FAILED  {failure}")


@main.command("sweep")
@click.argument("sweep_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--executor", type=click.Choice(EXECUTORS), default=None,
              help="Where jobs run: here one by one, in local processes, or on Dask  "
                   "[default: processes; dask when --scheduler is given]")
@click.option("--workers", "-j", type=int, default=None,
              help="Processes (or LocalCluster workers) to use  [default: one per core]")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="A running Dask scheduler, e.g. tcp://10.0.0.5:8786 (implies --executor dask).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for sweep.json and one report folder per job  [default: sigkit-runs/<sweep name>]")
@click.option("--quiet", "-q", is_flag=True, help="No progress and no tables; errors still print.")
@click.pass_context
def sweep(ctx: click.Context, sweep_file: Path, executor: str | None, workers: int | None, scheduler: str | None,
          out_dir: Path | None, quiet: bool) -> None:
    """Run every job of SWEEP_FILE (recipes x seeds x data) in parallel and merge the results.

    Each job is one replay, exactly as `sigkit run` would do it, written to OUT/<job id>/; OUT/sweep.json
    holds every job's scores and the spread of each model's skill across jobs, identical whatever the
    executor.  A job that fails on its input (a missing data file) is reported and the others go on.
    Exit code 0 when every job completed, 2 when one failed on its input, 1 when one hit a bug.

    \b
    Examples:
      sigkit sweep sweeps/seeds.yaml --workers 4
      sigkit sweep sweeps/days.yaml --scheduler tcp://10.0.0.5:8786 --out /shared/runs/days
    """
    from sigkit.sweep import load_sweep, run_sweep, write_merged

    root = ctx.find_root().obj if ctx.find_root() is not None else None
    builtins_only = bool(root and root.get("builtins_only"))
    name, jobs = load_sweep(sweep_file)
    executor = executor or ("dask" if scheduler else "processes")
    out_dir = out_dir or Path("sigkit-runs") / name
    with _sweep_progress(len(jobs), quiet) as on_done:
        merged = run_sweep(jobs, executor=executor, workers=workers, scheduler=scheduler, out_dir=out_dir,
                           builtins_only=builtins_only, name=name, on_done=on_done)
    path = write_merged(out_dir / "sweep.json", merged)
    if not quiet:
        _print_sweep_tables(merged)
    for job in merged["jobs"]:
        if job["status"] != "ok":
            first = job["error"].rstrip().splitlines()[-1] if job["status"] == "error" else job["error"]
            click.echo(f"{'failed' if job['status'] == 'failed' else 'bug in'} {job['id']}: {first}", err=True)
    counts = merged["counts"]
    click.echo(f"{counts['ok']}/{counts['jobs']} jobs done in {merged['timing']['elapsed_s']:.1f}s "
               f"({executor}, {merged['timing']['workers']} workers); wrote {path}", err=quiet)
    if counts["errors"]:
        ctx.exit(1)
    if counts["failed"]:
        ctx.exit(2)


def _sweep_progress(total: int, quiet: bool):
    """``on_done`` for :func:`run_sweep` that advances a 'jobs done / total' bar on stderr."""
    import contextlib

    @contextlib.contextmanager
    def manager():
        if quiet:
            yield None
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("jobs"),
                      TimeElapsedColumn(), TextColumn("{task.fields[last]}"), console=Console(stderr=True),
                      transient=True) as bar:
            task = bar.add_task("sweep", total=total, last="")
            yield lambda outcome: bar.update(task, advance=1, last=f"{outcome['id']}: {outcome['status']}")

    return manager()


def _print_sweep_tables(merged: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from sigkit.report import _num

    console = Console()
    jobs = Table(title=f"sweep {merged['name']}: {merged['counts']['ok']}/{merged['counts']['jobs']} jobs")
    for column in ("job", "model", "n", "bss", "skill_t", "edge", "brier", "log_loss"):
        jobs.add_column(column, justify="left" if column in ("job", "model") else "right")
    for job in merged["jobs"]:
        if job["status"] != "ok":
            jobs.add_row(job["id"], f"[red]{job['status']}[/red]", *[""] * 6)
            continue
        for i, (model_id, s) in enumerate(job["scores"].items()):
            jobs.add_row(job["id"] if i == 0 else "", model_id, str(s["n"]), _num(s["bss"], 3), _num(s["skill_t"], 1),
                         "yes" if s["edge"] else "no", _num(s["brier"], 4), _num(s["log_loss"], 4))
        jobs.add_section()
    console.print(jobs)
    summary = Table(title="across jobs")
    for column in ("model", "jobs", "bss mean", "sd", "min", "max", "with edge"):
        summary.add_column(column, justify="left" if column == "model" else "right")
    for model_id, s in merged["summary"]["models"].items():
        summary.add_row(model_id, str(s["jobs"]), _num(s["bss_mean"], 3), _num(s["bss_sd"], 3), _num(s["bss_min"], 3),
                        _num(s["bss_max"], 3), f"{s['jobs_with_edge']}/{s['jobs']}")
    console.print(summary)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
