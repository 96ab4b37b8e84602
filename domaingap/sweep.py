"""A label-free hyper-parameter sweep over any recipe keys, on Optuna.

``adapt-run RECIPE --sweep SWEEP.yaml`` runs one trial per parameter set. A trial is
the recipe with the trial's values applied through the same ``key.path=value`` overrides
as the command line (so any recipe key can be swept: ``train.lr``, ``strategy.top_k``,
``method.runs.0.dann.weight``, ``method.runs.0.ewc.lambda``, ...), run by the pipeline
into ``RUN_DIR/sweep/trials/trial_<n>/``, and scored by the recipe's own label-free
selector (``method.selection``: im, snd or source_val) at the epoch that selector chose
for the swept run: ``run`` when SWEEP.yaml names one, else the run the trial's one
deployment decision audits (:class:`domaingap.runs.Deployment`: ``method.audit_run``, else
the run ranked first by ``method.deploy`` — the deployed run, or the best-ranked run when
the source model is kept).
Target labels never enter the score; when they are known, the target test accuracy is
recorded next to it as the *oracle* column, so the table shows what label-free selection cost.

SWEEP.yaml::

    sampler: random        # grid | random | tpe
    trials: 8              # random/tpe (grid: every combination)
    seed: 0
    run: dann              # the run whose score counts (default: the run each trial deploys)
    storage: null          # default: sqlite in RUN_DIR/sweep/; or any Optuna storage URL
    params:
      train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}
      strategy.top_k: [1, 2, 4]
      method.runs.0.dann.weight: {low: 0.05, high: 0.5}

Grid and random points are drawn up front from ``seed`` and queued in the study, so a
sweep is reproducible and workers never duplicate a point; TPE queues its random start-up
points the same way, then adapts (with several workers its later points depend on timing).

Storage: a local SQLite file ``RUN_DIR/sweep/optuna.db`` by default, or any Optuna
storage URL (``postgresql://...``, ``mysql://...``), so several ``adapt-run --sweep``
processes — on one machine or many — share one study. Trials send a heartbeat; a trial
whose worker was killed is marked failed after ``GRACE_S`` seconds without one and queued
again with the same values, and the re-run continues from that trial's stage checkpoints
(``resume``). Re-running the same command therefore resumes a killed sweep. The URL is
checked first (domaingap/sweep_storage.py): an unknown scheme, a missing driver or a server
that does not answer is one error line, never a hang.

Outputs in ``RUN_DIR/sweep/``: ``trials.csv`` and ``trials.md`` (one row per trial:
parameters, label-free score, oracle target accuracy, source accuracy, seconds),
``best_recipe.yaml`` (the recipe with the best trial's values, fully resolved) and
``sweep.json``. Optuna is an optional extra: ``pip install 'domaingap[sweep]'``.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import itertools
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adapt.errors import UserError
from adapt.io import atomic_write_json, atomic_write_text
from domaingap.pipeline import run_recipe
from domaingap.sweep_storage import (close_storage, default_storage_url, open_storage, resolve_storage_url,
                                     retry_callback, shown)
from adapt.recipe import Recipe, format_validation_error, load_recipe
from adapt.recipe_text import parse_yaml
from adapt.selectors import SELECTOR_KEYS, chosen_epoch

__all__ = ["SweepSpec", "ParamRange", "SweepResult", "load_sweep", "run_sweep", "trial_overrides"]

#: heartbeat of a running trial, and how long without one marks it as killed (seconds)
HEARTBEAT_S = 2
GRACE_S = 10
#: the selectors a sweep can maximise: their scores compare across trials (their log keys:
#: adapt.selectors.SELECTOR_KEYS)
SWEEPABLE = ("im", "snd", "source_val")
_SWEEP_EXTRA = "pip install 'domaingap[sweep]'"


class ParamRange(BaseModel):
    """A numeric range: ints when both ends are ints and ``log`` is off, else floats."""

    model_config = ConfigDict(extra="forbid")
    low: int | float
    high: int | float
    log: bool = False
    step: int | float | None = None

    @model_validator(mode="after")
    def _check(self) -> ParamRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int) and not self.log and (
            self.step is None or isinstance(self.step, int))


Choice = bool | int | float | str | None


class SweepSpec(BaseModel):
    """The SWEEP.yaml schema (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    sampler: Literal["grid", "random", "tpe"] = "tpe"
    trials: int | None = Field(None, ge=1)
    seed: int = 0
    run: str | None = None
    storage: str | None = None
    study: str | None = Field(None, min_length=1)
    params: dict[str, list[Choice] | ParamRange] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        for key, space in self.params.items():
            if isinstance(space, list) and not space:
                raise ValueError(f"params.{key}: an empty list of values")
        if self.sampler == "grid":
            ranges = [k for k, v in self.params.items() if isinstance(v, ParamRange)]
            if ranges:
                raise ValueError(f"params.{ranges[0]}: a grid needs a list of values, not a range")
        elif self.trials is None:
            raise ValueError(f"trials: required for the {self.sampler} sampler")
        return self

    def grid(self) -> list[dict[str, Any]]:
        keys = list(self.params)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.params[k] for k in keys))]

    def n_trials(self) -> int:
        return len(self.grid()) if self.sampler == "grid" else int(self.trials)


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    """Read and validate SWEEP.yaml; problems are one-line UserErrors naming the key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: sweep file not found")
    raw = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise UserError(f"{path}: {format_validation_error(err, raw)}") from None


def trial_overrides(params: dict[str, Any]) -> list[str]:
    """``key.path=value`` strings (the values as JSON, which the YAML parser reads back exactly)."""
    return [f"{key}={json.dumps(value)}" for key, value in params.items()]


def _random_point(spec: SweepSpec, rng: np.random.Generator) -> dict[str, Any]:
    point: dict[str, Any] = {}
    for key, space in spec.params.items():
        if isinstance(space, list):
            point[key] = space[int(rng.integers(len(space)))]
        elif space.is_int:
            step = space.step or 1
            point[key] = int(space.low + step * rng.integers((space.high - space.low) // step + 1))
        elif space.log:
            point[key] = float(math.exp(rng.uniform(math.log(space.low), math.log(space.high))))
        else:
            value = float(rng.uniform(space.low, space.high))
            if space.step:
                value = float(space.low + space.step * round((value - space.low) / space.step))
            point[key] = min(value, float(space.high))
    return point


def _queued_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """The points queued up front: the whole grid, every random point, TPE's start-up."""
    if spec.sampler == "grid":
        return spec.grid()
    rng = np.random.default_rng(spec.seed)
    n = spec.n_trials() if spec.sampler == "random" else _tpe_startup(spec)
    return [_random_point(spec, rng) for _ in range(n)]


def _queue(study, points: list[dict[str, Any]], state) -> None:
    """Queue every point that has no waiting, running or complete trial yet.

    On the first start that is all of them; on a restart, the points whose trial failed
    (an interrupted worker, an error since fixed) — their re-run reuses the failed trial's
    folder. A killed worker's trial is still "running" here: the heartbeat check queues it.
    """
    trials = study.get_trials(deepcopy=False)
    params = lambda t: t.system_attrs.get("fixed_params", t.params)  # noqa: E731
    live = [params(t) for t in trials if t.state in (state.WAITING, state.RUNNING, state.COMPLETE)]
    for point in points:
        if point in live:
            continue
        failed = [t for t in trials if t.state == state.FAIL and params(t) == point]
        folder = failed[0].user_attrs.get("folder", failed[0].number) if failed else None
        study.enqueue_trial(point, user_attrs=None if folder is None else {"folder": folder})
        live.append(point)


def _tpe_startup(spec: SweepSpec) -> int:
    return min(spec.n_trials(), 10, max(2, spec.n_trials() // 3))


def _suggest(trial, spec: SweepSpec) -> dict[str, Any]:
    """The trial's values (queued ones come back as queued)."""
    out: dict[str, Any] = {}
    for key, space in spec.params.items():
        if isinstance(space, list):
            out[key] = trial.suggest_categorical(key, space)
        elif space.is_int:
            out[key] = trial.suggest_int(key, space.low, space.high, step=space.step or 1)
        else:
            out[key] = trial.suggest_float(key, float(space.low), float(space.high), log=space.log,
                                           step=None if space.log or space.step is None else float(space.step))
    return out


# --------------------------------------------------------------------------- storage


def _optuna():
    """The optuna module, or a one-line UserError naming the extra (an optional
    dependency: imported here, only when a sweep runs)."""
    try:
        import optuna  # late: an optional extra (.[sweep])
    except ImportError:
        raise UserError(f"--sweep needs the 'optuna' package: {_SWEEP_EXTRA}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # heartbeats and stale-trial retries are marked experimental: not the user's concern
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"optuna\..*")
    return optuna


def _storage(url: str):
    _optuna()
    return open_storage(url, heartbeat_s=HEARTBEAT_S, grace_s=GRACE_S)


@contextlib.contextmanager
def _local_lock(path: Path):
    """An exclusive lock between local workers (queueing points once, not twice)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- result


@dataclass
class SweepResult:
    """The study's trials and the best one (by the label-free score)."""

    sweep_dir: Path
    selector: str
    #: the run scored: SWEEP.yaml's ``run``, or None for the run each trial deploys (rows' "run")
    run: str | None
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    best_recipe_path: Path | None
    storage: str
    study: str


def _rows(study, spec: SweepSpec) -> list[dict[str, Any]]:
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        a = t.user_attrs
        if a.get("surplus"):
            continue
        rows.append({
            "trial": t.number,
            "state": t.state.name.lower(),
            "run": a.get("run"),
            **{k: t.params.get(k) for k in spec.params},
            "score": t.value if t.values else None,
            "oracle_target_acc": a.get("oracle_target_acc"),
            "source_acc": a.get("source_acc"),
            "seconds": a.get("seconds"),
            "run_dir": a.get("run_dir"),
            "worker": a.get("worker"),
        })
    return rows


def _markdown(rows: list[dict[str, Any]], spec: SweepSpec, selector: str, best: int | None) -> str:
    keys = list(spec.params)
    head = ["trial", "state", "run", *keys, f"label-free score ({selector})", "oracle target acc %", "source acc %",
            "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(v: Any) -> str:
        if v is None:
            return "—"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    pct = lambda v: "—" if v is None else f"{100 * v:.1f}"  # noqa: E731
    for r in rows:
        mark = " ★" if best is not None and r["trial"] == best else ""
        lines.append("| " + " | ".join([f"{r['trial']}{mark}", r["state"], fmt(r["run"]), *(fmt(r[k]) for k in keys),
                                        fmt(r["score"]), pct(r["oracle_target_acc"]), pct(r["source_acc"]),
                                        fmt(r["seconds"])]) + " |")
    return "\n".join(lines)


def _write_outputs(study, spec: SweepSpec, sweep_dir: Path, selector: str, run: str | None, storage_url: str,
                   best_recipe: Callable[[dict[str, Any]], str]) -> SweepResult:
    rows = _rows(study, spec)
    done = [r for r in rows if r["state"] == "complete" and r["score"] is not None and math.isfinite(r["score"])]
    best = max(done, key=lambda r: (r["score"], -r["trial"])) if done else None
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(sweep_dir / "trials.csv", buf.getvalue())
    atomic_write_text(sweep_dir / "trials.md", _markdown(rows, spec, selector, best and best["trial"]) + "\n")
    best_path = None
    if best is not None:
        best_path = atomic_write_text(sweep_dir / "best_recipe.yaml",
                                      best_recipe({k: best[k] for k in spec.params}))
    summary = {"selector": selector, "run": run, "sampler": spec.sampler, "seed": spec.seed,
               "trials_planned": spec.n_trials(), "storage": storage_url, "study": study.study_name,
               "best": best, "trials": rows,
               "note": "score = the recipe's label-free selector; oracle_target_acc uses target labels "
                       "and is reported only, never used to choose"}
    atomic_write_json(sweep_dir / "sweep.json", summary)
    return SweepResult(sweep_dir=sweep_dir, selector=selector, run=run, rows=rows, best=best,
                       best_recipe_path=best_path, storage=storage_url, study=study.study_name)


# --------------------------------------------------------------------------- the sweep


def run_sweep(recipe_path: str | os.PathLike, sweep_path: str | os.PathLike, overrides: list[str] | tuple = (),
              *, storage: str | None = None, progress: bool = True,
              say: Callable[[str], None] = print) -> SweepResult:
    """Run (or join, or resume) the sweep; return the trial table and the best trial.

    ``storage``: an Optuna storage URL (overrides SWEEP.yaml's ``storage``); default the
    SQLite file in ``RUN_DIR/sweep/``. Every process started with the same recipe, sweep
    and storage is one more worker of the same study.
    """
    spec = load_sweep(sweep_path)
    base = load_recipe(recipe_path, list(overrides))
    selector = base.method.selection
    if selector not in SWEEPABLE:
        raise UserError(f"{recipe_path}: method.selection '{selector}' gives no score to sweep on; "
                        f"choose one of {', '.join(SWEEPABLE)}")
    # a sweep scores one run: the one named, else the one each trial deploys (its Deployment)
    run = spec.run
    names = [r.name for r in base.method.runs]
    if not names or (run is not None and run not in names):
        raise UserError(f"{sweep_path}: run: {run!r} is not one of the recipe's runs ({', '.join(names) or 'none'})")
    # fail fast on a key or value the recipe rejects, before any trial trains
    for point in _queued_points(spec)[:1] + ([] if spec.sampler == "grid" else
                                            [_random_point(spec, np.random.default_rng(1))]):
        load_recipe(recipe_path, [*overrides, *trial_overrides(point)])

    sweep_dir = base.run_dir / "sweep"
    if storage or spec.storage:  # a scheme or driver that cannot work: said before any folder is made
        _optuna()
        resolve_storage_url(storage or spec.storage)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    url = storage or spec.storage or default_storage_url(sweep_dir)
    optuna = _optuna()
    sampler = (optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=_tpe_startup(spec))
               if spec.sampler == "tpe" else optuna.samplers.RandomSampler(seed=spec.seed))
    study_name = spec.study or base.name
    # local workers start one at a time here: creating the tables and queueing the
    # points twice at once would collide
    with _local_lock(sweep_dir / ".queue.lock"):
        store = _storage(url)
        study = optuna.create_study(storage=store, study_name=study_name, direction="maximize",
                                    sampler=sampler, load_if_exists=True)
        _queue(study, _queued_points(spec), optuna.trial.TrialState)

    planned = spec.n_trials()
    state = optuna.trial.TrialState

    def resolved(point: dict[str, Any]) -> str:
        return load_recipe(recipe_path, [*overrides, *trial_overrides(point)]).to_yaml()

    def objective(trial) -> float:
        point = _suggest(trial, spec)
        trials = study.get_trials(deepcopy=False)
        frozen = next(t for t in trials if t.number == trial.number)
        others = sum(t.state in (state.COMPLETE, state.RUNNING) for t in trials if t.number != trial.number)
        queued = "fixed_params" in frozen.system_attrs
        if (not queued and spec.sampler != "tpe") or (spec.sampler == "tpe" and others >= planned):
            # two workers saw the same last queued point and only one got it: the other's
            # trial is surplus (hidden from the table, nothing trained)
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned("surplus trial: the study already has its trials")
        history = retry_callback().retry_history(frozen)
        # a re-run continues the killed (or interrupted) trial's folder from its checkpoints
        number = history[0] if history else frozen.user_attrs.get("folder", trial.number)
        trial_dir = sweep_dir / "trials"
        recipe: Recipe = load_recipe(recipe_path, [
            *overrides, *trial_overrides(point), f"output.dir={json.dumps(str(trial_dir))}",
            f"output.name=trial_{number}", "diagnostics.enabled=false", "output.onnx=false"])
        t0 = time.perf_counter()
        summary = run_recipe(recipe, resume=True, progress=False, diagnostics=False)
        scored = run or summary.deployment.audited
        stage = summary.runs[scored]
        selection = stage.selection or {}
        chosen = chosen_epoch(selection)
        value = None if chosen is None else chosen.get(SELECTOR_KEYS[selector])
        # no score (e.g. source_val without a validation split): the worst, not a failure
        score = float(value) if value is not None and math.isfinite(float(value)) else -math.inf
        target = stage.metrics.get("target_test") or {}
        # the oracle: recorded for the table only, never returned to the sampler
        trial.set_user_attr("run", scored)
        trial.set_user_attr("oracle_target_acc", target.get("accuracy"))
        # a source-free run has no source images: its source accuracy is unknown (None)
        trial.set_user_attr("source_acc", (stage.metrics.get("source_test") or {}).get("accuracy"))
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
        trial.set_user_attr("run_dir", str(recipe.run_dir))
        trial.set_user_attr("worker", os.getpid())
        oracle = target.get("accuracy")
        again = "" if number == trial.number else f" (re-run of trial {number})"
        say(f"trial {trial.number}{again}: " + ", ".join(f"{k}={v}" for k, v in point.items())
            + f" -> {selector} {score:.4g}" + ("" if oracle is None else f" (oracle target acc {100 * oracle:.1f}%)"))
        return score

    try:  # until the study has all its trials (another worker's running trial is waited for)
        while True:
            optuna.storages.fail_stale_trials(study)  # a killed worker's trial: failed, then queued again
            trials = study.get_trials(deepcopy=False)
            waiting, running, complete = (sum(t.state == s for t in trials)
                                          for s in (state.WAITING, state.RUNNING, state.COMPLETE))
            # grid and random points are all queued (and re-queued): only TPE samples new ones
            more = waiting > 0 or (spec.sampler == "tpe" and complete + running < planned)
            if more:
                study.optimize(objective, n_trials=1, catch=())
            elif running:
                # another worker's trial, or a killed one that is not yet stale: wait, so that
                # a dead worker's trial is run again and every worker ends with the full table
                time.sleep(HEARTBEAT_S)
            else:
                break
        result = _write_outputs(study, spec, sweep_dir, selector, run, shown(url), resolved)
    finally:  # the database connections this worker opened, closed (not left to the collector)
        close_storage(store)
    if progress and result.best is not None:
        say(f"best trial {result.best['trial']} by {selector}: {result.best['score']:.4g}")
    return result
