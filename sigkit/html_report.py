"""One self-contained HTML page for a run directory: ``report.json`` + ``predictions.csv`` -> ``report.html``.

Every figure is a function ``fig_*(...) -> (png_bytes, data)``: the PNG and the numbers it plotted, so
tests can check the picture against ``report.json``.  matplotlib is imported lazily (``sigkit[report]``)
and always with the Agg backend, so the module imports fine without it.  See docs/report.md.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from sigkit.errors import DataError
from sigkit.report import atomic_write
from sigkit.units import parse_duration

__all__ = ["render_report", "load_run", "fig_reliability", "fig_markout", "fig_capture", "fig_rolling",
           "fig_weights", "fig_ab", "fig_leadlag", "capture_curve", "ab_cumulative"]

ROLLING_WINDOW = 500
_NOT_PROB = {"p_ref", "p_true"}


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


class Run:
    """What a run directory holds: the report, the prediction columns, which ids are models or pooled."""

    def __init__(self, run_dir: Path, report: dict, columns: dict[str, np.ndarray], header: list[str]):
        self.run_dir = run_dir
        self.report = report
        self.columns = columns
        content = (report.get("recipe") or {}).get("content") or {}
        self.content = content if isinstance(content, dict) else {}
        prob_ids = [h[2:] for h in header if h.startswith("p_") and h not in _NOT_PROB]
        declared = [m.get("id") for m in self.content.get("models", []) if isinstance(m, dict)]
        self.model_ids = [m for m in prob_ids if m in declared] if declared else []
        self.pooled_ids = [m for m in prob_ids if m not in self.model_ids]
        if not declared:  # no recipe content: the last p_ columns are pooled only if named like one
            self.model_ids = [m for m in prob_ids if m not in ("ensemble",)]
            self.pooled_ids = [m for m in prob_ids if m == "ensemble"]
        self.ids = self.model_ids + self.pooled_ids
        y = columns["was_adverse"]
        self.labelled = ~np.isnan(y)

    def members(self, pooled_id: str) -> list[str]:
        if pooled_id == "ensemble" and isinstance(self.content.get("ensemble"), dict):
            return list(self.content["ensemble"].get("members", []))
        arms = self.content.get("arms")
        if isinstance(arms, dict) and isinstance(arms.get(pooled_id), dict):
            spec = arms[pooled_id]
            if "members" in spec:
                return list(spec["members"])
            if "model" in spec:
                return [spec["model"]]
        return []


def load_run(run_dir: Path) -> Run:
    """Read ``report.json`` and ``predictions.csv``; DataError when either is missing or unreadable."""
    run_dir = Path(run_dir)
    report_path, pred_path = run_dir / "report.json", run_dir / "predictions.csv"
    if not run_dir.is_dir():
        raise DataError(f"run directory {run_dir} does not exist",
                        hint="produce one with `sigkit run RECIPE --out DIR`")
    for path in (report_path, pred_path):
        if not path.is_file():
            raise DataError(f"{run_dir} has no {path.name}; it is not a sigkit run directory",
                            hint="produce one with `sigkit run RECIPE --out DIR`")
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {report_path}: {err}") from None
    try:
        with pred_path.open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            rows = list(reader)
    except (OSError, StopIteration, csv.Error) as err:
        raise DataError(f"cannot read {pred_path}: {err or 'empty file'}") from None
    columns: dict[str, np.ndarray] = {}
    text_cols = {"venue", "symbol", "side"}
    for j, name in enumerate(header):
        raw = [r[j] if j < len(r) else "" for r in rows]
        if name in text_cols:
            columns[name] = np.array(raw, dtype=object)
        elif name == "ts_ns":
            columns[name] = np.array([int(v) for v in raw], dtype=np.int64)
        else:
            columns[name] = np.array([float(v) if v != "" else math.nan for v in raw], dtype=float)
    for need in ("ts_ns", "was_adverse", "realized_as_bps", "p_ref"):
        if need not in columns:
            raise DataError(f"{pred_path} has no column {need!r}")
    return Run(run_dir, report, columns, header)


# --------------------------------------------------------------------------------------------
# matplotlib helpers
# --------------------------------------------------------------------------------------------


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise DataError("the HTML report needs matplotlib, which is not installed",
                        hint="pip install 'sigkit[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _nums(values) -> np.ndarray:
    return np.array([math.nan if v is None else float(v) for v in values], dtype=float)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def fig_reliability(report: dict, score_id: str) -> tuple[bytes, dict]:
    """Predicted vs observed adverse rate per quantile bin, counts annotated, binomial 95% bars."""
    plt = _pyplot()
    dec = report["scores"][score_id]["decomposition"]
    forecast = _nums(dec["bin_mean_forecast"])
    observed = _nums(dec["bin_observed_rate"])
    counts = np.array([int(c or 0) for c in dec["bin_counts"]])
    with np.errstate(invalid="ignore", divide="ignore"):
        half = 1.96 * np.sqrt(observed * (1.0 - observed) / np.where(counts > 0, counts, np.nan))
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    ok = counts > 0
    ax.errorbar(forecast[ok], observed[ok], yerr=half[ok], fmt="o-", ms=4, capsize=2, label="bins (95% band)")
    for x, y, c in zip(forecast[ok], observed[ok], counts[ok]):
        ax.annotate(str(c), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=6, color="0.35")
    finite = np.concatenate([forecast[ok], observed[ok]])
    finite = finite[np.isfinite(finite)]
    if finite.size:
        lo, hi = max(0.0, finite.min() - 0.05), min(1.0, finite.max() + 0.05)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    ax.set_xlabel("mean predicted P(adverse)")
    ax.set_ylabel("observed adverse rate")
    ax.set_title(f"Reliability: {score_id}")
    ax.legend(fontsize=7, loc="upper left")
    data = {"forecast": forecast.tolist(), "observed": observed.tolist(), "counts": counts.tolist(),
            "half_width": half.tolist()}
    return _png(fig), data


def fig_markout(report: dict, pooled_id: str | None) -> tuple[bytes, dict]:
    """Mean markout vs horizon (log x), overall, and by predicted-toxicity decile of ``pooled_id``."""
    plt = _pyplot()
    horizons = list(report["label"]["markout_horizons"])
    seconds = np.array([parse_duration(h) / 1e9 for h in horizons])
    scores = report["scores"]
    some = scores[pooled_id] if pooled_id in scores else next(iter(scores.values()))
    mk = some.get("markout_bps") or {}
    overall = _nums([mk.get(h, {}).get("mean") for h in horizons])
    deciles = np.array([_nums(mk.get(h, {}).get("by_decile") or [math.nan] * 10) for h in horizons]).T
    fig, ax = plt.subplots(figsize=(6.2, 4.0))
    cmap = plt.get_cmap("coolwarm")
    n_dec = deciles.shape[0]
    for d in range(n_dec):
        strong = d in (0, n_dec - 1)
        label = ("bottom decile (least toxic)" if d == 0 else "top decile (most toxic)" if d == n_dec - 1
                 else None)
        ax.plot(seconds, deciles[d], color=cmap(d / max(1, n_dec - 1)), lw=1.8 if strong else 0.8,
                alpha=1.0 if strong else 0.35, marker="o" if strong else None, ms=3, label=label)
    ax.plot(seconds, overall, color="black", lw=2.2, marker="s", ms=4, label="all fills")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xscale("log")
    ax.set_xticks(seconds)
    ax.set_xticklabels(horizons)
    ax.set_xlabel("markout horizon")
    ax.set_ylabel("mean markout (bps, + = we earned)")
    ax.set_title(f"Markout by predicted-toxicity decile of {pooled_id or 'the first model'}")
    ax.legend(fontsize=7)
    data = {"horizons": horizons, "seconds": seconds.tolist(), "overall": overall.tolist(),
            "by_decile": deciles.tolist(), "split_by": pooled_id}
    return _png(fig), data


def capture_curve(p: np.ndarray, cost_bps: np.ndarray, q: float) -> dict:
    """Fills ranked by p (stable sort of -p) vs cumulative share of positive cost; capture@q on it.

    n_top = max(1, ceil(q*N - 1e-9)), the rule of sigkit.scoring.capture_at."""
    weight = np.maximum(np.asarray(cost_bps, dtype=float), 0.0)
    n = len(p)
    order = np.argsort(-np.asarray(p, dtype=float), kind="stable")
    total = float(weight.sum())
    if n == 0 or total == 0.0:
        return {"x": [0.0], "share": [0.0], "n_top": 0, "capture_at_q": math.nan, "q": q}
    cum = np.concatenate([[0.0], np.cumsum(weight[order])]) / total
    x = np.arange(n + 1) / n
    n_top = min(n, max(1, math.ceil(q * n - 1e-9)))
    capture = float(np.sum(weight[order[:n_top]])) / total
    return {"x": x, "share": cum, "n_top": n_top, "capture_at_q": capture, "q": q}


def fig_capture(run: Run) -> tuple[bytes, dict]:
    """Cumulative gain: share of positive realized AS cost captured by the top fills ranked by p."""
    plt = _pyplot()
    q = float(run.report.get("evaluation", {}).get("capture_q", 0.1))
    lab = run.labelled
    cost = run.columns["realized_as_bps"][lab]
    fig, ax = plt.subplots(figsize=(5.4, 4.4))
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1, label="random")
    ax.axvline(q, color="0.75", lw=0.8)
    data = {}
    for sid in run.ids:
        p = run.columns[f"p_{sid}"][lab]
        curve = capture_curve(p, cost, q)
        pooled = sid in run.pooled_ids
        step = max(1, len(p) // 1500)
        ax.plot(np.append(curve["x"][::step], 1.0), np.append(curve["share"][::step], 1.0),
                lw=2.0 if pooled else 1.0, label=f"{sid} (capture@{q:g} = {curve['capture_at_q']:.3f})")
        if curve["n_top"]:
            ax.plot([curve["n_top"] / len(p)], [curve["capture_at_q"]], "o", ms=4, color=ax.lines[-1].get_color())
        data[sid] = {"capture_at_q": curve["capture_at_q"], "n_top": curve["n_top"], "n": int(len(p)),
                     "share_at_deciles": [float(np.interp(t, curve["x"], curve["share"])) for t in
                                          np.linspace(0, 1, 11)]}
    ax.set_xlabel("share of fills, most toxic predicted first")
    ax.set_ylabel("share of positive realized AS cost")
    ax.set_title("Cumulative gain (capture) curve")
    ax.legend(fontsize=6.5, loc="lower right")
    return _png(fig), data


def _rolling_sum(values: np.ndarray, window: int) -> np.ndarray:
    c = np.concatenate([[0.0], np.cumsum(values)])
    return c[window:] - c[:-window]


def fig_rolling(run: Run, window: int = ROLLING_WINDOW) -> tuple[bytes, dict]:
    """Rolling Brier skill vs p_ref, and rolling mean(p) - mean(y), over ``window`` labelled fills."""
    plt = _pyplot()
    lab = run.labelled
    y = run.columns["was_adverse"][lab]
    ref = run.columns["p_ref"][lab]
    ts = run.columns["ts_ns"][lab]
    n = len(y)
    window = max(2, min(window, n)) if n else window
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7.0, 5.4), sharex=True)
    data: dict[str, Any] = {"window": window}
    if n >= 2:
        t0 = run.columns["ts_ns"][0]
        minutes = (ts[window - 1:] - t0) / 6e10
        ref_sum = _rolling_sum((ref - y) ** 2, window)
        step = max(1, len(minutes) // 1500)  # plot at most ~1500 points a line; the numbers are exact
        for sid in run.ids:
            if sid == "base_rate":
                continue
            p = run.columns[f"p_{sid}"][lab]
            with np.errstate(invalid="ignore", divide="ignore"):
                bss = 1.0 - _rolling_sum((p - y) ** 2, window) / ref_sum
            bias = _rolling_sum(p - y, window) / window
            pooled = sid in run.pooled_ids
            ax1.plot(minutes[::step], bss[::step], lw=1.8 if pooled else 0.9, label=sid)
            ax2.plot(minutes[::step], bias[::step], lw=1.8 if pooled else 0.9, label=sid)
            data[sid] = {"bss_last": float(bss[-1]), "bias_last": float(bias[-1])}
        data["minutes"] = [float(minutes[0]), float(minutes[-1])]
    ax1.axhline(0, color="0.6", lw=0.8)
    ax2.axhline(0, color="0.6", lw=0.8)
    ax1.set_ylabel(f"Brier skill vs p_ref\n(last {window} fills)")
    ax2.set_ylabel("mean(p) - mean(y)")
    ax2.set_xlabel("minutes since first fill")
    ax1.set_title("Rolling skill and calibration")
    ax1.legend(fontsize=7, ncol=3)
    return _png(fig), data


def weight_history(run: Run, pooled_id: str) -> dict | None:
    """Member weights over time from state_history (stacking ``by_state`` or hedge ``weights_by_state``)."""
    times, by_state = [], []
    for snap in run.report.get("state_history") or []:
        st = (snap.get("states") or {}).get(pooled_id)
        if not isinstance(st, dict):
            continue
        if isinstance(st.get("by_state"), list):
            ws = [s.get("weights") for s in st["by_state"] if isinstance(s, dict)]
        elif isinstance(st.get("weights_by_state"), list):
            ws = st["weights_by_state"]
        else:
            continue
        times.append(snap["ts_ns"])
        by_state.append(ws)
    if not times:
        return None
    return {"ts_ns": times, "weights": by_state}


def fig_weights(run: Run, pooled_id: str) -> tuple[bytes, dict] | None:
    """Member weights over time, regime state 0 solid, other states dashed."""
    hist = weight_history(run, pooled_id)
    if hist is None:
        return None
    plt = _pyplot()
    members = run.members(pooled_id)
    t0 = run.columns["ts_ns"][0] if len(run.columns["ts_ns"]) else hist["ts_ns"][0]
    minutes = (np.array(hist["ts_ns"], dtype=float) - t0) / 6e10
    n_states = max(len(w) for w in hist["weights"])
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    series = {}
    for s in range(n_states):
        rows = [w[s] if s < len(w) and w[s] is not None else None for w in hist["weights"]]
        k = max((len(r) for r in rows if r), default=0)
        mat = np.array([_nums(r) if r else np.full(k, np.nan) for r in rows]).reshape(len(rows), k)
        for j in range(k):
            name = members[j] if j < len(members) else f"member {j}"
            ax.plot(minutes, mat[:, j], color=colors[j % len(colors)], ls="-" if s == 0 else "--",
                    marker="o", ms=3, lw=1.5 if s == 0 else 0.9,
                    label=name if s == 0 else (f"{name} (state {s})" if n_states <= 2 else None))
        series[s] = mat.tolist()
    ax.set_xlabel("minutes since first fill")
    ax.set_ylabel("weight")
    ax.set_title(f"Member weights of {pooled_id}" + (" (state 0 solid, others dashed)" if n_states > 1 else ""))
    ax.legend(fontsize=7, ncol=2)
    return _png(fig), {"members": members, "minutes": minutes.tolist(), "by_state": series}


def ab_cumulative(run: Run, a: str, b: str) -> dict:
    """Per-fill Brier difference (a - b) on labelled fills, its cumulative sum and a 95% band."""
    lab = run.labelled
    y = run.columns["was_adverse"][lab]
    pa, pb = run.columns[f"p_{a}"][lab], run.columns[f"p_{b}"][lab]
    d = (pa - y) ** 2 - (pb - y) ** 2
    cum = np.cumsum(d)
    k = np.arange(1, len(d) + 1)
    var = float(np.var(d)) if len(d) else math.nan
    band = 1.96 * np.sqrt(k * var)
    return {"ts_ns": run.columns["ts_ns"][lab], "diff": d, "cum": cum, "band": band, "n": int(len(d)),
            "final": float(cum[-1]) if len(cum) else 0.0}


def fig_ab(run: Run, comparison: dict) -> tuple[bytes, dict]:
    """Cumulative Brier(a) - Brier(b) over time: rising means b is better; band = ±1.96·sqrt(k·var)."""
    plt = _pyplot()
    a, b = comparison["a"], comparison["b"]
    res = ab_cumulative(run, a, b)
    t0 = run.columns["ts_ns"][0] if len(run.columns["ts_ns"]) else 0
    minutes = (res["ts_ns"] - t0) / 6e10
    fig, ax = plt.subplots(figsize=(6.8, 3.8))
    ax.fill_between(minutes, -res["band"], res["band"], color="0.85", label="±1.96·sqrt(k·var) (no difference)")
    ax.plot(minutes, res["cum"], color="C3", lw=1.6, label=f"Σ [Brier({a}) − Brier({b})]")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlabel("minutes since first fill")
    ax.set_ylabel("cumulative Brier difference")
    verdict = (comparison.get("verdict") or {}).get("text", "")
    ax.set_title(f"A/B: {a} vs {b}" + (f"\n{verdict}" if verdict else ""), fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig), {"a": a, "b": b, "n": res["n"], "final": res["final"],
                       "band_final": float(res["band"][-1]) if res["n"] else 0.0}


def fig_leadlag(state: dict, model_id: str) -> tuple[bytes, dict]:
    """Cross-correlation of leader and target moves vs shift (ms), the lag in use marked."""
    plt = _pyplot()
    curve = state["curve"]
    shifts_ms = _nums(curve["shifts_ns"]) / 1e6
    corr = _nums(curve["correlation"])
    lag_ns = state.get("lag_ns")
    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    ax.plot(shifts_ms, corr, lw=1.2)
    ax.axvline(0, color="0.6", lw=0.8)
    if lag_ns is not None:
        ax.axvline(lag_ns / 1e6, color="C3", ls="--", lw=1.2, label=f"lag in use: {lag_ns / 1e6:g} ms")
        ax.legend(fontsize=7)
    ax.set_xlabel("shift (ms, + = leader ahead)")
    ax.set_ylabel("correlation")
    ax.set_title(f"Lead-lag curve: {model_id} ({state.get('leader', '')})")
    return _png(fig), {"shifts_ms": shifts_ms.tolist(), "correlation": corr.tolist(),
                       "lag_ms": None if lag_ns is None else lag_ns / 1e6}


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px}h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:12px;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.card{border:1px solid #eee;padding:8px;border-radius:4px}img{max-width:100%}.note{color:#666;font-size:12px}
.bad{color:#b00}.good{color:#070}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.{digits}g}"
    return _esc(v)


def _img(fig_id: str, png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img id="{_esc(fig_id)}" alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[Any]], left: int = 1) -> str:
    out = ["<table><tr>"]
    out += [f'<th class="{"l" if i < left else ""}">{_esc(h)}</th>' for i, h in enumerate(header)]
    out.append("</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{_fmt(v)}</td>'
                                    for i, v in enumerate(r)) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _header_html(run: Run) -> str:
    r = run.report
    rec = r.get("recipe") or {}
    data = r.get("data") or {}
    rows = [["recipe", rec.get("name")], ["path", rec.get("path")], ["sha256", rec.get("sha256")],
            ["seed", run.content.get("seed")], ["data span", f"{data.get('first_ts')} → {data.get('last_ts')}"],
            ["fills (labelled)", f"{data.get('fills')} ({data.get('fills_labelled')})"],
            ["sigkit version", r.get("sigkit_version")], ["report format", r.get("report_format")],
            ["completed", r.get("completed")]]
    if r.get("stop_reason"):
        rows.append(["stop reason", r.get("stop_reason")])
    label = r.get("label") or {}
    rows.append(["label", f"{label.get('target')}: adverse iff markout at {label.get('horizon')} "
                          f"< -{label.get('threshold_bps')} bps"])
    plugins = [[p.get("kind"), p.get("name"), p.get("plugin"), p.get("distribution"), p.get("version")]
               for p in r.get("plugins") or []]
    return (_table(["", "value"], rows, left=2)
            + "<h3>Plugins</h3>" + _table(["kind", "name", "plugin", "distribution", "version"], plugins, left=4))


def _scores_html(run: Run) -> str:
    q = (run.report.get("evaluation") or {}).get("capture_q", 0.1)
    rows = []
    for sid, s in run.report.get("scores", {}).items():
        st = s.get("skill_test") or {}
        rows.append([sid, s.get("n"), s.get("coverage"), s.get("brier"), s.get("brier_ref"), s.get("bss"),
                     st.get("t_stat"), st.get("edge"), s.get("log_loss"), s.get("ece"), s.get("capture_at_q"),
                     s.get("lift_at_q")])
    return _table(["model", "n", "coverage", "brier", "brier_ref", "bss", "skill t", "edge", "log_loss", "ece",
                   f"capture@{q:g}", f"lift@{q:g}"], rows)


def _decomp_html(s: dict) -> str:
    d = s.get("decomposition") or {}
    rows = [["brier", s.get("brier")], ["reliability (−)", d.get("reliability")],
            ["resolution (+)", d.get("resolution")], ["uncertainty", d.get("uncertainty")],
            ["within-bin variance", d.get("within_bin_variance")],
            ["within-bin covariance", d.get("within_bin_covariance")], ["ece", s.get("ece")],
            ["bss vs p_ref", s.get("bss")]]
    return _table(["term", "value"], rows)


def _build(run: Run) -> tuple[str, dict[str, dict]]:
    """The page and every figure's plotted numbers, keyed by figure id."""
    r = run.report
    figures: dict[str, dict] = {}
    parts = [f"<h1>sigkit report: {_esc((r.get('recipe') or {}).get('name', run.run_dir.name))}</h1>",
             "<h2>Run</h2>", _header_html(run), "<h2>Scores</h2>", _scores_html(run)]

    def add(fig_id: str, result, alt: str) -> str:
        png, data = result
        figures[fig_id] = data
        return _img(fig_id, png, alt)

    parts.append("<h2>Reliability</h2><p class='note'>Quantile bins of the forecast; bars are a binomial 95% "
                 "band sqrt(o(1−o)/n)·1.96; numbers beside each point are bin counts.</p><div class='row'>")
    for sid in r.get("scores", {}):
        if not (r["scores"][sid].get("decomposition") or {}).get("bin_counts"):
            continue
        img = add(f"fig-reliability-{sid}", fig_reliability(r, sid), f"reliability diagram of {sid}")
        parts.append(f"<div class='card'>{img}{_decomp_html(r['scores'][sid])}</div>")
    parts.append("</div>")

    split = run.pooled_ids[0] if run.pooled_ids else (run.model_ids[-1] if run.model_ids else None)
    if (r.get("label") or {}).get("markout_horizons") and r.get("scores"):
        parts.append("<h2>Markout curves</h2>")
        parts.append(add("fig-markout", fig_markout(r, split), "markout curves"))
        # The same split for every other scored forecaster, smaller, so each model's deciles can be read.
        others = [sid for sid in r["scores"] if sid != split and r["scores"][sid].get("markout_bps")]
        if others:
            parts.append("<div class='grid'>")
            parts += [add(f"fig-markout-{sid}", fig_markout(r, sid), f"markout curves by decile of {sid}")
                      for sid in others]
            parts.append("</div>")

    if run.ids:
        parts.append("<h2>Cumulative gain</h2><p class='note'>Labelled fills ranked by p (descending) vs share "
                     "of positive realized AS cost; dots mark capture@q.</p>")
        parts.append(add("fig-capture", fig_capture(run), "cumulative gain curves"))
        parts.append(f"<h2>Rolling skill and calibration</h2><p class='note'>Trailing windows of "
                     f"{ROLLING_WINDOW} labelled fills.</p>")
        parts.append(add("fig-rolling", fig_rolling(run), "rolling skill and calibration"))

    weight_imgs = []
    for pid in run.pooled_ids:
        res = fig_weights(run, pid)
        if res is not None:
            weight_imgs.append(add(f"fig-weights-{pid}", res, f"member weights of {pid}"))
    if weight_imgs:
        parts.append("<h2>Member weights</h2>" + "".join(weight_imgs))

    ab = r.get("ab")
    if isinstance(ab, dict) and ab.get("comparisons"):
        parts.append(f"<h2>A/B (baseline: {_esc(ab.get('baseline'))})</h2>")
        for cmp in ab["comparisons"]:
            a, b = cmp["a"], cmp["b"]
            if f"p_{a}" not in run.columns or f"p_{b}" not in run.columns:
                continue
            verdict = cmp.get("verdict") or {}
            parts.append(f"<p><b>{_esc(verdict.get('text', ''))}</b></p>")
            br, bs = cmp.get("brier") or {}, cmp.get("bootstrap") or {}
            parts.append(_table(["", "brier a", "brier b", "diff", "DM p", "boot 95% CI", "capture diff"],
                                [[f"{a} vs {b}", br.get("a"), br.get("b"), br.get("diff"), br.get("p_value"),
                                  " – ".join(_fmt(x) for x in bs.get("brier_ci") or []), bs.get("capture_diff")]]))
            parts.append(add(f"fig-ab-{a}-vs-{b}", fig_ab(run, cmp), f"A/B cumulative Brier difference {a} vs {b}"))

    for sid, st in (r.get("states") or {}).items():
        if isinstance(st, dict) and isinstance(st.get("curve"), dict) and st["curve"].get("shifts_ns"):
            parts.append(f"<h2>Lead-lag: {_esc(sid)}</h2>")
            parts.append(add(f"fig-leadlag-{sid}", fig_leadlag(st, sid), f"lead-lag curve of {sid}"))

    timing = r.get("timing") or {}
    parts.append(f"<p class='note'>Generated by sigkit.html_report from {_esc(run.run_dir)}; run took "
                 f"{_fmt(timing.get('elapsed_s'))} s.</p>")
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>sigkit report</title>"
            f"<style>{_CSS}</style></head><body>" + "\n".join(parts) + "</body></html>")
    return page, figures


def build_report(run_dir: Path) -> tuple[str, dict[str, dict]]:
    """The HTML text and the plotted numbers of every figure, keyed by figure id (no file written)."""
    _pyplot()  # fail early with the install hint
    return _build(load_run(Path(run_dir)))


def render_report(run_dir: Path, out_path: Path | None = None) -> Path:
    """Write one self-contained HTML report of a run directory; returns its path.

    Default ``run_dir/report.html``.  Raises DataError when the directory lacks report.json or
    predictions.csv, or when matplotlib is not installed (``pip install 'sigkit[report]'``)."""
    run_dir = Path(run_dir)
    page, _ = build_report(run_dir)
    out = Path(out_path) if out_path is not None else run_dir / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, page)
    return out
