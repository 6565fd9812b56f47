"""Reports: score a run's fills, write ``report.json`` and ``predictions.csv``, and lay out the summary table.

Everything but the ``timing`` section is a pure function of the input and the seed, so two runs of the
same recipe give byte-identical reports apart from ``timing``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from sigkit import comparison, scoring
from sigkit.engine import RunResult
from sigkit.units import format_duration

REPORT_FORMAT = 1


def iso_time(ts_ns: int | None) -> str | None:
    if ts_ns is None:
        return None
    seconds, ns = divmod(int(ts_ns), 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ns:09d}Z"


def score_run(result: RunResult, *, min_confidence: float = 0.0, bins: int = 10, capture_q: float = 0.10,
              ic_period_ns: int = 60_000_000_000, ic_min_fills: int = 30, horizon_ns: int) -> dict[str, dict]:
    """Metrics per model and for the ensemble, on the labelled fills whose confidence passes the filter."""
    fills = result.fills
    labelled = fills["labelled"]
    y_all = fills["was_adverse"]
    cost_all = fills["realized_as_bps"]
    truth_all = fills["truth"]
    out = {}
    for model_id, pred in result.predictions.items():
        keep = labelled & (pred["confidence"] >= min_confidence)
        n_labelled = int(labelled.sum())
        p, y, cost = pred["p"][keep], y_all[keep], cost_all[keep]
        p_ref = fills["p_ref"][keep]
        metrics = scoring.score_forecast(p, y, cost, p_ref, n_bins=bins, q=capture_q)
        metrics["coverage"] = (float(keep.sum()) / n_labelled) if n_labelled else None
        metrics["mean_confidence"] = _clean(float(np.mean(pred["confidence"][keep]))) if keep.any() else None
        lags = comparison.overlap_lags(fills["ts_ns"][keep], horizon_ns)
        metrics["skill_test"] = _clean_dict(dataclasses.asdict(scoring.skill_test(p, p_ref, y, lags=lags)))
        ts = fills["ts_ns"][keep]
        period_ids = (ts - ts[0]) // ic_period_ns if len(ts) else ts
        ic = scoring.information_coefficient(p, cost, period_ids, min_fills=ic_min_fills)
        metrics["ic"] = _clean_dict({
            "period": format_duration(ic_period_ns), "n_periods": ic.n_periods, "mean_ic": ic.mean_ic,
            "icir": ic.icir, "t_stat_hac": ic.t_stat_hac, "hac_lags": ic.hac_lags, "note": ic.note,
        })
        metrics["markout_bps"] = {}
        for h in result.markout_horizons_ns:
            markout = fills[f"markout_{h}"][keep]
            ok = ~np.isnan(markout)
            metrics["markout_bps"][format_duration(h)] = {
                "mean": _clean(float(markout[ok].mean())) if ok.any() else None,
                "by_decile": [_clean(v) for v in scoring.markout_by_decile(p[ok], markout[ok])] if ok.sum() >= 10 else None,
            }
        truth = truth_all[keep]
        if len(truth) and not np.isnan(truth).any():
            oracle = scoring.brier(truth, y)
            ref = metrics["brier_ref"]
            achievable = ref - oracle if ref is not None else None
            metrics["oracle_brier"] = _clean(oracle)
            metrics["edge_recovered"] = (_clean((ref - metrics["brier"]) / achievable)
                                         if achievable and achievable > 0 else None)
        out[model_id] = metrics
    return out


def _sum_counts(counts) -> dict[str, int]:
    """Per-reason totals of the sources' skipped-line counts (``{}`` when every line was read)."""
    total: dict[str, int] = {}
    for c in counts:
        for reason, n in c.items():
            total[reason] = total.get(reason, 0) + int(n)
    return dict(sorted(total.items()))


def build_report(result: RunResult, recipe, *, sources: list[dict], plugins: list[dict], version: str,
                 n_boot: int = 1000) -> dict:
    ev = recipe.evaluation
    for arm in recipe.arms:  # an arm that is a single model is scored as that model, under the arm's name
        if arm.model is not None:
            result.predictions[arm.name] = result.predictions[arm.model]
    scores = score_run(result, min_confidence=ev.min_confidence, bins=ev.bins, capture_q=ev.capture_q,
                       ic_period_ns=ev.ic_period_ns, ic_min_fills=ev.ic_min_fills, horizon_ns=recipe.horizon_ns)
    fills = result.fills
    n_fills = len(fills["ts_ns"])
    n_labelled = int(fills["labelled"].sum())
    events_total = sum(result.events.values())
    return {
        "report_format": REPORT_FORMAT,
        "sigkit_version": version,
        "completed": result.completed,
        "stop_reason": result.stop_reason,
        "recipe": {"name": recipe.name, "path": str(recipe.path), "sha256": recipe.sha256,
                   "content": recipe.plain},
        "plugins": plugins,
        "data": {
            "sources": sources,
            "on_bad_line": recipe.on_bad_line,
            "skipped_lines": _sum_counts(s.get("skipped") or {} for s in sources),
            "depth_gaps": sum(int(s.get("gap_count") or 0) for s in sources),
            "first_ts_ns": result.first_ts_ns,
            "last_ts_ns": result.last_ts_ns,
            "first_ts": iso_time(result.first_ts_ns),
            "last_ts": iso_time(result.last_ts_ns),
            "events": dict(result.events, total=events_total),
            "fills": n_fills,
            "fills_labelled": n_labelled,
            "fills_unlabelled": n_fills - n_labelled,
            "base_rate": _clean(float(np.nanmean(fills["was_adverse"]))) if n_labelled else None,
        },
        "label": {
            "target": str(recipe.target),
            "fills": "public" if recipe.fills_path is None else str(recipe.fills_path),
            "horizon": format_duration(recipe.horizon_ns),
            "threshold_bps": recipe.threshold_bps,
            "markout_horizons": [format_duration(h) for h in result.markout_horizons_ns],
            "reference": "causal running base rate: adverse share of outcomes delivered before each fill, "
                         "Beta(1,1) prior",
        },
        "evaluation": {
            "min_confidence": ev.min_confidence, "bins": ev.bins, "capture_q": ev.capture_q,
            "ic_period": format_duration(ev.ic_period_ns), "ic_min_fills": ev.ic_min_fills,
            "edge_rule": "edge = Brier skill vs the causal base rate with a one-sided HAC t >= 2",
        },
        "scores": scores,
        **({"ab": ab_section(result, recipe, n_boot=n_boot)} if recipe.arms else {}),
        "dropped": result.dropped,
        "states": _clean_dict(result.states),
        "state_history": [{"ts_ns": h["ts_ns"], "states": _clean_dict(h["states"])} for h in result.state_history],
        "state_history_interval_ns": result.state_interval_ns,
        "timing": {
            "elapsed_s": round(result.elapsed_s, 3),
            "events_per_s": round(events_total / result.elapsed_s) if result.elapsed_s > 0 else None,
            "paths": dict(result.paths),  # model or ensemble -> "batch" (on_batch) or "per-event"
            "threads": result.threads,  # the batch models ran side by side in this many threads
        },
    }


# The IC t-statistic stays in report.json but not in the table: a model that adapts to outcomes inside
# a period is rank-anti-correlated with that period's later outcomes, so its per-period IC is biased
# negative (docs/metrics.md).  The table's verdict comes from skill_t, which has no such bias.
# Bucket width of the sequential test: 10 s buckets of 1 s-horizon fills are close to independent, and
# a 30-bucket burn-in then ends after five minutes of data.
SEQUENTIAL_BUCKET_NS = 10_000_000_000


def ab_section(result: RunResult, recipe, *, n_boot: int = 1000) -> dict:
    """Each arm against the first, on the fills both score: paired tests, intervals, a verdict."""
    ev = recipe.evaluation
    fills = result.fills
    base = recipe.arms[0].name
    out = {"baseline": base, "comparisons": []}
    for arm in recipe.arms[1:]:
        a, b = result.predictions[base], result.predictions[arm.name]
        scored = (fills["labelled"] & (a["confidence"] >= ev.min_confidence)
                  & (b["confidence"] >= ev.min_confidence))
        labelled = fills["labelled"]
        cmp = comparison.compare(a["p"][labelled], b["p"][labelled], fills["was_adverse"][labelled],
                                 fills["realized_as_bps"][labelled], fills["ts_ns"][labelled],
                                 horizon_ns=recipe.horizon_ns, q=ev.capture_q, n_boot=n_boot, seed=recipe.seed,
                                 scored=scored[labelled], names=(base, arm.name), bucket_ns=SEQUENTIAL_BUCKET_NS)
        out["comparisons"].append({"a": base, "b": arm.name, **cmp})
    return out


TABLE_COLUMNS = ("model", "n_scored", "coverage", "brier", "brier_ref", "bss", "skill_t", "edge", "log_loss",
                 "ece", "capture@{q}", "lift@{q}")


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the console summary."""
    q = report["evaluation"]["capture_q"]
    qtext = f"{q * 100:g}%"
    header = [c.format(q=qtext) for c in TABLE_COLUMNS]
    with_oracle = any("edge_recovered" in s for s in report["scores"].values())
    if with_oracle:
        header += ["oracle", "recovered"]
    rows = []
    for model_id, s in report["scores"].items():
        skill = s.get("skill_test") or {}
        row = [
            model_id, str(s["n"]), _pct(s["coverage"], 0), _num(s["brier"], 4), _num(s["brier_ref"], 4),
            _num(s["bss"], 3), _num(skill.get("t_stat"), 1), "yes" if skill.get("edge") else "no",
            _num(s["log_loss"], 4), _num(s["ece"], 3), _pct(s["capture_at_q"], 1), _num(s["lift_at_q"], 2),
        ]
        if with_oracle:
            row += [_num(s.get("oracle_brier"), 4), _pct(s.get("edge_recovered"), 0)]
        rows.append(row)
    return header, rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _num(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


def _clean_dict(d: dict) -> dict:
    return {k: (_clean_dict(v) if isinstance(v, dict) else [_clean(x) for x in v] if isinstance(v, (list, tuple))
                else _clean(v)) for k, v in d.items()}


def predictions_csv(result: RunResult) -> str:
    """One row per fill: where and what it was, every model's probability, the ensemble's, the outcome."""
    fills = result.fills
    ids = list(result.model_ids)
    pooled = [name for name in result.predictions if name not in result.model_ids]  # ensembles and arms
    has_truth = len(fills["truth"]) and not np.isnan(fills["truth"]).all()
    header = ["ts_ns", "venue", "symbol", "side", "price"] + [f"p_{m}" for m in ids]
    header += [f"p_{name}" for name in pooled] + ["confidence"]
    header += ["p_ref", "was_adverse", "realized_as_bps"] + (["p_true"] if has_truth else [])
    conf_source = pooled[0] if pooled else ids[-1]
    columns = [fills["ts_ns"].astype(str).tolist(), fills["venue"].tolist(), fills["symbol"].tolist(),
               np.where(fills["side"] > 0, "bid", "ask").tolist(), _floats(fills["price"])]
    columns += [_floats(result.predictions[m]["p"]) for m in ids]
    columns += [_floats(result.predictions[name]["p"]) for name in pooled]
    columns.append(_floats(result.predictions[conf_source]["confidence"]))
    adverse = np.where(np.isnan(fills["was_adverse"]), "", np.where(fills["was_adverse"] > 0, "1", "0")).tolist()
    columns += [_floats(fills["p_ref"]), adverse, _floats(fills["realized_as_bps"])]
    if has_truth:
        columns.append(_floats(fills["truth"]))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(zip(*columns))
    return buf.getvalue()


def _floats(values: np.ndarray) -> list[str]:
    text = np.asarray(values, dtype=float).astype(str)
    text[np.isnan(values)] = ""
    return text.tolist()


def write_outputs(out_dir: Path, report: dict, result: RunResult) -> tuple[Path, Path]:
    """Write both files atomically: each is complete or absent."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / "report.json"
    predictions_path = out_dir / "predictions.csv"
    atomic_write(predictions_path, predictions_csv(result))
    atomic_write(report_path, json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report_path, predictions_path


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary name, so the file is complete or absent."""
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def plugins_used(recipe) -> list[dict]:
    """The source, model and combiner plugins a recipe uses, with their distributions and versions (for the
    report's provenance)."""
    used = [("source", s.spec) for s in recipe.sources] + [("model", m.spec) for m in recipe.models]
    if recipe.ensemble is not None:
        used.append(("combiner", recipe.ensemble.spec))
    seen, out = set(), []
    for kind, spec in used:
        if (kind, spec.name) in seen:
            continue
        seen.add((kind, spec.name))
        out.append({"kind": kind, "name": spec.name, "plugin": spec.plugin, "distribution": spec.distribution,
                    "version": spec.version})
    return out
