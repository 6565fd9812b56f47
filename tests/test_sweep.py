"""Sweeps: the same merged report serially, in processes and on a Dask cluster; failed jobs reported while the
others complete; a malformed sweep file is one file:line error."""

from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner
from conftest import SIM_RECIPE_HEAD

from sigkit.errors import RecipeError
from sigkit.sweep import Job, load_sweep, run_sweep, without_timing

MODELS = {
    "mean": "models:\n  - {id: base_rate, model: base_rate}\n  - {id: flow, model: flow}\nensemble: {combiner: mean}\n",
    "logit": "models:\n  - {id: base_rate, model: base_rate}\n  - {id: flow, model: flow, params: {halflife: 2s}}\n"
             "ensemble: {combiner: logit}\n",
}


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
    """3 seeds x 2 recipes, each one simulated minute of the informed world."""
    folder = tmp_path_factory.mktemp("sweep")
    for name, models in MODELS.items():
        head = SIM_RECIPE_HEAD.format(name=name, seed=0, world="informed", duration="1m")
        (folder / f"{name}.yaml").write_text(head + models)
    path = folder / "seeds.yaml"
    path.write_text("name: seeds\nrecipes: [mean.yaml, logit.yaml]\nseeds: [1, 2, 3]\n")
    return path


@pytest.fixture(scope="module")
def serial(sweep_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    name, jobs = load_sweep(sweep_file)
    return run_sweep(jobs, executor="serial", out_dir=out, name=name), out


def canonical(merged: dict) -> str:
    return json.dumps(without_timing(merged), indent=2, allow_nan=False)


def test_jobs_have_stable_ids_in_file_order(sweep_file):
    name, jobs = load_sweep(sweep_file)
    assert name == "seeds"
    assert [j.id for j in jobs] == [f"{r}__seed={s}" for r in ("mean", "logit") for s in (1, 2, 3)]
    assert jobs[0].overrides == (("seed", 1),)
    assert jobs[0].recipe == str((sweep_file.parent / "mean.yaml").resolve())


def test_serial_sweep_merges_every_job(serial):
    merged, out = serial
    assert merged["counts"] == {"jobs": 6, "ok": 6, "completed": 6, "failed": 0, "errors": 0}
    first = merged["jobs"][0]
    assert first["overrides"] == {"seed": 1} and first["name"] == "mean"
    assert set(first["scores"]) == {"base_rate", "flow", "ensemble"}
    assert set(first["scores"]["flow"]) >= {"bss", "skill_t", "edge", "brier", "log_loss"}
    # Seeds give different markets; each job's own report records the overridden seed.
    assert len({j["scores"]["flow"]["brier"] for j in merged["jobs"][:3]}) == 3
    report = json.loads((out / "mean__seed=2" / "report.json").read_text())
    assert report["recipe"]["content"]["seed"] == 2
    assert (out / "mean__seed=2" / "predictions.csv").exists()
    flow = merged["summary"]["models"]["flow"]
    bss = [j["scores"]["flow"]["bss"] for j in merged["jobs"]]
    assert flow["jobs"] == 6 and flow["bss_min"] == min(bss) and flow["bss_max"] == max(bss)
    assert set(merged["summary"]["by_recipe"]) == {"mean", "logit"}


def test_processes_give_the_serial_report(serial, sweep_file, tmp_path):
    name, jobs = load_sweep(sweep_file)
    merged = run_sweep(jobs, executor="processes", workers=2, out_dir=tmp_path, name=name)
    assert merged["timing"]["workers"] == 2
    assert canonical(merged) == canonical(serial[0])
    one = json.loads((tmp_path / "logit__seed=3" / "report.json").read_text())
    two = json.loads((serial[1] / "logit__seed=3" / "report.json").read_text())
    assert without_timing(one) == without_timing(two)


def test_a_dask_cluster_gives_the_serial_report(serial, sweep_file):
    distributed = pytest.importorskip("dask.distributed")
    name, jobs = load_sweep(sweep_file)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        merged = run_sweep(jobs, executor="dask", scheduler=cluster.scheduler_address, name=name)
    assert merged["timing"]["workers"] == 2
    assert canonical(merged) == canonical(serial[0])


def test_without_a_scheduler_dask_starts_and_closes_its_own_local_cluster(serial, sweep_file):
    pytest.importorskip("dask.distributed")
    name, jobs = load_sweep(sweep_file)
    merged = run_sweep(jobs, executor="dask", workers=2, name=name)
    assert merged["timing"]["workers"] == 2
    assert canonical(merged) == canonical(serial[0])


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """Two 'days' of native data and a sweep over them plus one that does not exist."""
    from sigkit import sim
    from sigkit.native import write_native

    folder = tmp_path_factory.mktemp("days")
    for seed in (1, 2):
        write_native(folder / f"day{seed}.csv.gz", sim.simulate("informed", seed=seed, duration_ns=30 * 10**9,
                                                                 horizon_ns=10**9, threshold_bps=0.0), {})
    (folder / "flow.yaml").write_text("name: flow\ndata:\n  - source: native\n    path: day1.csv.gz\n"
                                      "target: {venue: sim, symbol: BTC-PERP}\nhorizon: 1s\n" + MODELS["mean"])
    (folder / "days.yaml").write_text(textwrap.dedent("""\
        recipe: flow.yaml
        grid:
          data.0.path: [day1.csv.gz, day2.csv.gz, day3.csv.gz]
        """))
    return folder / "days.yaml"


def test_a_failing_job_is_reported_and_the_others_complete(days):
    name, jobs = load_sweep(days)
    merged = run_sweep(jobs, name=name)
    assert [j["status"] for j in merged["jobs"]] == ["ok", "ok", "failed"]
    failed = merged["jobs"][2]
    assert failed["id"] == "flow__data.0.path=day3.csv.gz" and failed["scores"] == {}
    # One line, pointing at the sweep file's value, then what is wrong.
    assert failed["error"].startswith(f"{days}:3:") and "day3.csv.gz" in failed["error"]
    assert "does not exist" in failed["error"] and "\n" not in failed["error"]
    assert merged["counts"] == {"jobs": 3, "ok": 2, "completed": 2, "failed": 1, "errors": 0}
    assert merged["summary"]["models"]["flow"]["jobs"] == 2
    assert merged["jobs"][0]["scores"]["flow"] != merged["jobs"][1]["scores"]["flow"]  # two different days


def test_a_bug_in_a_job_keeps_its_traceback(sweep_file, monkeypatch):
    import sigkit.engine

    def broken(recipe, **options):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(sigkit.engine, "replay_from_recipe", broken)
    _, jobs = load_sweep(sweep_file)
    merged = run_sweep(jobs[:1])
    job = merged["jobs"][0]
    assert job["status"] == "error" and merged["counts"]["errors"] == 1
    assert job["error"].startswith("Traceback") and "ZeroDivisionError: a bug" in job["error"]


def test_cli_prints_the_table_writes_sweep_json_and_exits_2_on_a_failed_job(days, tmp_path):
    from sigkit.cli import main

    result = CliRunner().invoke(main, ["sweep", str(days), "--executor", "serial", "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "across jobs" in result.output and "failed flow__data.0.path=day3.csv.gz" in result.output
    merged = json.loads((tmp_path / "sweep.json").read_text())
    assert merged["counts"]["ok"] == 2
    assert (tmp_path / "flow__data.0.path=day1.csv.gz" / "report.json").exists()


@pytest.mark.parametrize("text, line, message", [
    ("recipe: a.yaml\nseeds: [1, 2\n", 3, "malformed YAML"),
    ("recipe: a.yaml\nseed: [1, 2]\n", 2, "unknown key 'seed'"),
    ("recipe: a.yaml\nseeds: [1, two]\n", 2, "a seed must be an integer"),
    ("recipe: nowhere.yaml\n", 1, "does not exist"),
    ("recipes: [a.yaml]\ngrid:\n  horizon: [1s, 5s]\n", 3, "grid key 'horizon'"),
    ("recipe: a.yaml\ngrid:\n  data.0.path: []\n", 3, "non-empty list"),
    ("recipe: a.yaml\nseeds: [1]\ngrid: {seed: [2]}\n", 3, "the seed is set twice"),
    ("seeds: [1]\n", 1, "a sweep needs"),
    ("", 1, "sweep file is empty"),
])
def test_a_malformed_sweep_file_is_one_line_with_file_and_line(tmp_path, text, line, message):
    (tmp_path / "a.yaml").write_text("name: a\n")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_sweep(path)
    text = str(info.value)
    assert text.startswith(f"{path}:{line}:") and message in text and "\n" not in text


def test_bad_override_values_fail_their_job_only(sweep_file):
    recipe = str(sweep_file.parent / "mean.yaml")
    jobs = [Job("bad_world", recipe, (("data.0.world", "nowhere"),)), Job("bad_index", recipe, (("data.3.path", "x"),)),
            Job("ok", recipe, (("data.0.duration", "30s"),))]
    merged = run_sweep(jobs)
    status = {j["id"]: (j["status"], j["error"]) for j in merged["jobs"]}
    assert status["ok"] == ("ok", None)
    assert status["bad_world"][0] == "failed" and "nowhere" in status["bad_world"][1]
    assert status["bad_index"][0] == "failed" and "1 data entry" in status["bad_index"][1]


def test_the_sweep_page_documents_every_key():
    from pathlib import Path

    from sigkit.sweep import SWEEP_KEYS

    page = (Path(__file__).resolve().parents[1] / "docs" / "sweeps.md").read_text()
    for key in SWEEP_KEYS:
        assert f"`{key}`" in page, key
