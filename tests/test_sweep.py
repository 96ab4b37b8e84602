"""Label-free sweep: the SWEEP.yaml schema and its one-line errors, reproducible queued
points, two worker processes sharing one storage, the pick by the label-free score
(never the oracle), and a sweep resumed after its worker was killed."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from adapt.errors import UserError
from adapt.recipe import load_recipe
import domaingap.sweep as sweep_mod
from domaingap.adapt_run import main as adapt_main
from domaingap.sweep import _queued_points, load_sweep, run_sweep, trial_overrides

pytest.importorskip("optuna")
ROOT = Path(__file__).resolve().parents[1]

RECIPE = """
name: sw
seed: 0
data:
  source: {kind: phantom-cxr, site: A, n: 120}
  target: {kind: phantom-cxr, site: B, n: 80}
  image_size: 32
train: {epochs: 1, batch_size: 32, device: cpu, patience: null, threads: 1, precise_bn: false}
method:
  selection: im
  runs:
    - {name: hist, objective: source_only, style: histogram, adabn: true, epochs: 1}
diagnostics: {enabled: false}
output: {dir: OUT}
"""

SWEEP = """
sampler: random
trials: TRIALS
seed: 3
params:
  method.runs.0.lr: {low: 1.0e-4, high: 0.1, log: true}
  method.runs.0.adabn: [true, false]
"""


def _files(tmp_path: Path, trials: int = 4) -> tuple[Path, Path]:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.replace("OUT", str(tmp_path / "runs")))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP.replace("TRIALS", str(trials)))
    return recipe, sweep


def _storage_args(storage: str | None) -> list[str]:
    return [] if storage is None else ["--storage", storage]


def _worker(recipe: Path, sweep: Path, log: Path, storage: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "domaingap.adapt_run", str(recipe), "--sweep", str(sweep), "--quiet",
                             *_storage_args(storage)],
                            cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def test_sweep_file_errors_are_one_line(tmp_path):
    recipe, _ = _files(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampler: grid\nparams:\n  train.lr: {low: 0.001, high: 0.01}\n")
    with pytest.raises(UserError, match="a grid needs a list of values"):
        load_sweep(bad)
    bad.write_text("sampler: random\nparams:\n  train.lr: [0.1]\n")
    with pytest.raises(UserError, match="trials: .*required"):
        load_sweep(bad)
    # a key the recipe does not have stops before any trial trains
    bad.write_text("sampler: grid\nparams:\n  method.runs.0.lrr: [0.1]\n")
    with pytest.raises(UserError, match="unknown key 'lrr'"):
        run_sweep(recipe, bad)
    bad.write_text("sampler: grid\nparams:\n  method.runs.0.lr: [-1]\n")
    with pytest.raises(UserError, match="method.runs.0.lr"):
        run_sweep(recipe, bad)
    assert not (tmp_path / "runs").exists()
    (tmp_path / "last.yaml").write_text(RECIPE.replace("OUT", str(tmp_path / "runs")).replace("selection: im",
                                                                                            "selection: last"))
    bad.write_text("sampler: grid\nparams:\n  method.runs.0.lr: [0.1]\n")
    with pytest.raises(UserError, match="gives no score"):
        run_sweep(tmp_path / "last.yaml", bad)


def test_queued_points_are_reproducible_and_in_range(tmp_path):
    _, sweep = _files(tmp_path, trials=6)
    spec = load_sweep(sweep)
    a, b = _queued_points(spec), _queued_points(spec)
    assert a == b and len(a) == 6
    assert all(1e-4 <= p["method.runs.0.lr"] <= 0.1 and p["method.runs.0.adabn"] in (True, False) for p in a)
    grid = spec.model_copy(update={"sampler": "grid", "params": {"a": [1, 2], "b": ["x", "y", "z"]}})
    assert len(_queued_points(grid)) == 6 and grid.n_trials() == 6
    # the overrides round-trip through the recipe's key=value parser exactly
    recipe = load_recipe(_files(tmp_path)[0], trial_overrides(a[0]))
    assert recipe.method.runs[0].lr == a[0]["method.runs.0.lr"]


@pytest.mark.slow
def test_two_workers_share_one_study_and_the_pick_is_label_free(tmp_path):
    check_two_workers_share_one_study(tmp_path, storage=None)


def check_two_workers_share_one_study(tmp_path: Path, storage: str | None) -> None:
    """Two worker processes on one storage (None: the SQLite default): every trial done
    once, by both workers, scored and picked label-free; a third start reruns nothing."""
    recipe, sweep = _files(tmp_path, trials=4)
    procs = [_worker(recipe, sweep, tmp_path / f"w{i}.log", storage) for i in range(2)]
    codes = [p.wait(timeout=500) for p in procs]
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs
    out = json.loads((tmp_path / "runs" / "sw" / "sweep" / "sweep.json").read_text())
    rows = out["trials"]
    assert [r["state"] for r in rows] == ["complete"] * 4
    assert len({r["worker"] for r in rows}) == 2  # both processes ran trials
    assert len({(r["method.runs.0.lr"], r["method.runs.0.adabn"]) for r in rows}) == 4  # no point twice
    for r in rows:
        # the score is the run's own label-free IM at its selected epoch; the oracle is apart
        sel = json.loads((Path(r["run_dir"]) / "methods" / "hist" / "selection.json").read_text())
        chosen = next(e for e in sel["epochs"] if e["epoch"] == sel["selected_epoch"])
        assert r["score"] == pytest.approx(chosen["im"])
        assert r["oracle_target_acc"] is not None and 0 <= r["oracle_target_acc"] <= 1
    best = max(rows, key=lambda r: r["score"])
    assert out["best"]["trial"] == best["trial"]
    best_recipe = load_recipe(tmp_path / "runs" / "sw" / "sweep" / "best_recipe.yaml")
    assert best_recipe.method.runs[0].lr == pytest.approx(best["method.runs.0.lr"])
    assert best_recipe.method.runs[0].adabn == best["method.runs.0.adabn"]
    assert "oracle target acc" in (tmp_path / "runs" / "sw" / "sweep" / "trials.md").read_text()
    # a third start finds the study done: nothing is rerun (the same command, in this
    # process: a third interpreter would only add its start-up)
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        code = adapt_main([str(recipe), "--sweep", str(sweep), "--quiet", *_storage_args(storage)])
    assert code == 0 and "4 trials complete" in said.getvalue(), said.getvalue()
    assert json.loads((tmp_path / "runs" / "sw" / "sweep" / "sweep.json").read_text())["trials"] == rows


@pytest.mark.slow
def test_a_killed_sweep_resumes_and_reruns_the_killed_trial_from_its_checkpoints(tmp_path):
    check_a_killed_worker_s_trial_is_resumed(tmp_path, storage=None)


def check_a_killed_worker_s_trial_is_resumed(tmp_path: Path, storage: str | None) -> None:
    """A worker killed mid-trial: the next start marks its trial failed (no heartbeat) and
    runs it again in the same folder, from the stage checkpoints it had written."""
    recipe, sweep = _files(tmp_path, trials=3)
    trials_dir = tmp_path / "runs" / "sw" / "sweep" / "trials"
    proc = _worker(recipe, sweep, tmp_path / "w.log", storage)
    deadline = time.time() + 400
    source_ckpt = trials_dir / "trial_1" / "source" / "model.pt"
    while not source_ckpt.exists():  # trial 0 done, trial 1 past its source stage
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "w.log").read_text()
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stamp = source_ckpt.stat().st_mtime_ns

    # the resuming worker is the only one alive: a grace of two heartbeats is enough to
    # tell the killed trial stale (the default, 10 s, allows for a loaded cluster)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweep_mod, "GRACE_S", 2 * sweep_mod.HEARTBEAT_S)
        result = run_sweep(recipe, sweep, storage=storage, say=lambda msg: None)
    # the worker's database connections are closed when the sweep returns: none is left for
    # the garbage collector to find (psycopg: "... was deleted while still open")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert not [str(c.message) for c in caught if "still open" in str(c.message)]
    states = {r["trial"]: r["state"] for r in result.rows}
    assert sorted(states.values()) == ["complete"] * 3 + ["fail"]
    assert states[1] == "fail"  # the killed one, marked failed once its heartbeat stopped...
    rerun = [r for r in result.rows if r["trial"] > 2]
    assert len(rerun) == 1 and rerun[0]["state"] == "complete"  # ...and run again
    killed_point = next(r for r in result.rows if r["trial"] == 1)
    assert rerun[0]["method.runs.0.lr"] == killed_point["method.runs.0.lr"]
    assert Path(rerun[0]["run_dir"]).name == "trial_1"
    assert source_ckpt.stat().st_mtime_ns == stamp  # its finished source stage was loaded, not retrained


def test_a_failed_point_is_queued_again_into_its_own_folder():
    import optuna
    from optuna.trial import TrialState, create_trial

    from domaingap.sweep import _queue

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dist = optuna.distributions.FloatDistribution(0.001, 0.1)
    points = [{"lr": 0.01}, {"lr": 0.05}, {"lr": 0.002}]
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=1.0, params=points[0],
                                 distributions={"lr": dist}))
    study.add_trial(create_trial(state=TrialState.FAIL, params=points[1], distributions={"lr": dist}))
    _queue(study, points, TrialState)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [points[1], points[2]]
    assert waiting[0].user_attrs == {"folder": 1} and waiting[1].user_attrs == {}
    _queue(study, points, TrialState)  # a second worker queues nothing more
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 2


@pytest.mark.parametrize("sampler", ["tpe", "grid"])
def test_the_pick_follows_the_label_free_score_not_the_oracle(sampler, tmp_path, monkeypatch):
    """Stand-in trials (no training): IM peaks at lr = 0.01, the oracle target accuracy at
    the smallest lr. The best trial is the IM's, and the oracle is only reported."""
    import math
    from types import SimpleNamespace

    import domaingap.sweep as sweep_mod

    def fake_run(recipe, **kwargs):
        lr = recipe.method.runs[0].lr
        im = -(math.log10(lr) + 2) ** 2
        stage = SimpleNamespace(selection={"selected_epoch": 1, "epochs": [{"epoch": 0, "im": -99.0},
                                                                          {"epoch": 1, "im": im}]},
                                metrics={"target_test": {"accuracy": 1 / (1 + 1000 * lr)},
                                         "source_test": {"accuracy": 0.9}})
        return SimpleNamespace(runs={"hist": stage}, deployment=SimpleNamespace(audited="hist"))

    monkeypatch.setattr(sweep_mod, "run_recipe", fake_run)
    recipe, sweep = _files(tmp_path)
    if sampler == "grid":
        sweep.write_text("sampler: grid\nparams:\n  method.runs.0.lr: [0.0001, 0.001, 0.01, 0.1]\n")
    else:
        sweep.write_text("sampler: tpe\ntrials: 6\nseed: 1\nparams:\n  method.runs.0.lr: {low: 1.0e-4, high: 0.1, log: true}\n")
    result = run_sweep(recipe, sweep, say=lambda msg: None)
    rows = [r for r in result.rows if r["state"] == "complete"]
    assert len(rows) == (4 if sampler == "grid" else 6)
    by_score = max(rows, key=lambda r: r["score"])
    by_oracle = max(rows, key=lambda r: r["oracle_target_acc"])
    assert result.best["trial"] == by_score["trial"] != by_oracle["trial"]
    if sampler == "grid":
        assert result.best["method.runs.0.lr"] == 0.01
    best = load_recipe(result.best_recipe_path)
    assert best.method.runs[0].lr == by_score["method.runs.0.lr"]
    # the user's output settings, not a trial's folder
    assert best.output.name is None and best.output.dir == str(tmp_path / "runs")


def test_a_source_free_trial_records_no_source_accuracy(tmp_path, monkeypatch):
    """A source-free run (SHOT/TENT from a checkpoint) has ``metrics["source_test"] is None``:
    the trial is scored and its source accuracy recorded as unknown, not a TypeError."""
    from types import SimpleNamespace

    import domaingap.sweep as sweep_mod

    def fake_run(recipe, **kwargs):
        stage = SimpleNamespace(selection={"selected_epoch": 0, "epochs": [{"epoch": 0, "im": 0.5}]},
                                metrics={"target_test": {"accuracy": 0.7}, "source_test": None})
        return SimpleNamespace(runs={"hist": stage}, deployment=SimpleNamespace(audited="hist"))

    monkeypatch.setattr(sweep_mod, "run_recipe", fake_run)
    recipe, sweep = _files(tmp_path)
    sweep.write_text("sampler: grid\nparams:\n  method.runs.0.lr: [0.001, 0.01]\n")
    result = run_sweep(recipe, sweep, say=lambda msg: None)
    rows = [r for r in result.rows if r["state"] == "complete"]
    assert len(rows) == 2 and all(r["score"] == 0.5 for r in rows)
    assert all(r.get("source_acc") is None for r in rows)


def test_a_trial_scores_the_run_it_deploys(tmp_path, monkeypatch):
    """Without ``run:`` in SWEEP.yaml a trial is scored by the run its deployment decision
    picked (RunSummary.deployment: here the label-free first, not the recipe's last run),
    and the table says which."""
    from types import SimpleNamespace

    import domaingap.sweep as sweep_mod

    def fake_run(recipe, **kwargs):
        lr = recipe.method.runs[0].lr
        stage = lambda im: SimpleNamespace(selection={"selected_epoch": 0, "epochs": [{"epoch": 0, "im": im}]},  # noqa: E731
                                           metrics={"target_test": None, "source_test": None})
        # the first run wins the label-free ranking at the small lr, the last one at the large
        first_wins = lr < 0.005
        runs = {"hist": stage(0.9 if first_wins else 0.1), "plain": stage(0.2 if first_wins else 0.8)}
        return SimpleNamespace(runs=runs, deployment=SimpleNamespace(audited="hist" if first_wins else "plain"))

    monkeypatch.setattr(sweep_mod, "run_recipe", fake_run)
    recipe, sweep = _files(tmp_path)
    recipe.write_text(recipe.read_text().replace(
        "adabn: true, epochs: 1}", "adabn: true, epochs: 1}\n    - {name: plain, objective: source_only, epochs: 1}"))
    sweep.write_text("sampler: grid\nparams:\n  method.runs.0.lr: [0.001, 0.01]\n")
    result = run_sweep(recipe, sweep, say=lambda msg: None)
    rows = {r["method.runs.0.lr"]: r for r in result.rows if r["state"] == "complete"}
    assert [rows[0.001]["score"], rows[0.01]["score"]] == [0.9, 0.8]
    assert [rows[0.001]["run"], rows[0.01]["run"]] == ["hist", "plain"]
    assert result.run is None and "| run |" in (result.sweep_dir / "trials.md").read_text()
