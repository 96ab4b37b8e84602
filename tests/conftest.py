"""Shared test fixtures."""

from __future__ import annotations

from dataclasses import dataclass, field

import os

import pytest
import torch


# --------------------------------------------------------------------------- parallel runs
# The README's test command runs the suite on 2 pytest-xdist workers with `--dist loadgroup`.
# Each file is one group, so a module-scoped fixture (a trained model, a written phantom) is
# built once, on one worker; every test that reads the session's end-to-end run (`e2e`) is in
# one group too, so that run trains once. Each worker gets its share of the cores for torch
# and BLAS: two workers of two threads on two cores made the small kernels thrash.
def pytest_configure(config):
    # the memory policy adapt-run and diagnose set at start (adapt/allocator.py), so the
    # in-process runs here are run as the commands run
    from adapt.allocator import retain_freed_memory

    retain_freed_memory()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        share = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(share)
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=share)  # numpy/scipy's BLAS in this worker
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(share))  # subprocesses (CLI tests) inherit it


#: tests that are a group of their own: the guarded quickstart trains the whole quickstart
#: recipe (the longest single test), so it gets a worker to itself while the other trains `e2e`
OWN_GROUP = {"test_fairness.py::test_the_quickstart_with_a_guard_does_not_trip": "quickstart"}

#: the groups that take longest (seconds on the idle 2-core machine, one thread a worker),
#: longest first: they are handed out first (longest-processing-time-first), so the two
#: biggest land on different workers and the many short groups fill in at the end; a long
#: group handed out last would run alone while the other worker idles
SLOW_GROUPS = ("e2e",  # ~30 s the run, ~15 s the tests reading it
               "quickstart",  # ~42 s
               # then 5-40 s each (per-file sums of `--durations=0`, 2026-12-07, late), longest first
               "test_scaleout_torchrun.py", "test_sweep.py", "test_sweep_postgres.py", "test_data_audit.py",
               "test_distributed.py", "test_frechet.py", "test_bad_inputs.py", "test_attribution.py",
               "test_train.py", "test_embedding.py", "test_truth_suite_hidden.py", "test_fairness.py",
               "test_truth_suite.py", "test_report.py", "test_allocator.py", "test_pipeline.py", "test_progress.py",
               "test_sweep_storage.py", "test_methods_smoke.py", "test_resume.py", "test_models.py",
               "test_real_images.py", "test_adabn.py", "test_architecture.py")


def _group(item) -> str:
    marker = item.get_closest_marker("xdist_group")
    return str(marker.args[0]) if marker and marker.args else item.path.name


def pytest_itemcollected(item):
    # marked as each test is collected, before any pytest_collection_modifyitems runs: xdist
    # turns the markers into group ids in its own, whatever order the hooks are called in
    if item.get_closest_marker("xdist_group"):
        return
    own = OWN_GROUP.get(f"{item.path.name}::{item.name}")
    group = own or ("e2e" if "e2e" in getattr(item, "fixturenames", ()) else item.path.name)
    item.add_marker(pytest.mark.xdist_group(group))


def pytest_collection_modifyitems(config, items):
    # xdist hands out groups in collection order (`--no-loadscope-reorder` in pyproject.toml):
    # the slow groups first, longest first, then the rest by number of tests as xdist would
    # (a stable sort: the tests of a group keep their order)
    slow = {g: i for i, g in enumerate(SLOW_GROUPS)}
    sizes: dict[str, int] = {}
    for item in items:
        sizes[_group(item)] = sizes.get(_group(item), 0) + 1
    items.sort(key=lambda it: (slow.get(_group(it), len(slow)), -sizes[_group(it)]))


@pytest.fixture(scope="module")
def one_thread():
    """One thread for torch and for numpy/scipy's BLAS, restored afterwards: on a shared
    2-core machine oversubscribed threads made the small float64 linear algebra of the
    statistics tests up to 10x slower. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- the e2e run

#: The end-to-end run on the phantom shift that several test files read (tests/test_pipeline.py
#: for accuracies, verdicts, the run folder and resume; tests/test_no_work_twice.py for the
#: work it does): trained once per session.
E2E_RECIPE = """
name: e2e
seed: 0
data:
  source: {kind: phantom-cxr, site: A, n: 1200}
  target: {kind: phantom-cxr, site: B, n: 400}
  image_size: 64
train: {epochs: 6, batch_size: 64, lr: 0.002, device: cpu, patience: 3}
method:
  selection: im
  audit_run: hist
  runs:
    - {name: adabn, adabn: true, epochs: 0}
    - {name: hist, objective: source_only, style: histogram, adabn: true, epochs: 2}
    - {name: hurt, objective: dann, dann: {weight: 30.0}, lr: 0.3, epochs: 2}
diagnostics: {enabled: true, permutations: 200, max_samples: 200, attribution_samples: 32,
              attribution_steps: 8, umap: false}
"""


@dataclass
class E2ERun:
    summary: object  # domaingap.runs.RunSummary
    domains: object  # domaingap.runs.Domains, as the run loaded them
    #: what the run did (see :func:`recorded_run`)
    calls: dict = field(default_factory=dict)


def recorded_run(recipe) -> E2ERun:
    """Run ``recipe`` with spies that call through to the real functions and record what the
    run did — "adabn": the data of every BatchNorm re-estimation; "order": the batch size
    each layer-order probe ran; "on_source": the model of every deployed_on_source call;
    "features": (dataset, model) of every feature extraction; "predict": (dataset, model)
    of every prediction pass; "decided": every deployment decision (decide_deployment);
    "cot": the target probabilities of every COT estimate (an optimal-transport solve)."""
    import adapt.accuracy_estimation.estimate as estimate_mod
    import adapt.evaluate as evaluate_mod
    import adapt.methods.adabn as adabn_mod
    import adapt.selection as selection_mod
    import adapt.train as train_mod
    import diagnostics.drift as drift_mod
    import diagnostics.features as features_mod
    import diagnostics.ranking as ranking_mod
    import domaingap.pipeline as pipeline_mod
    import domaingap.run_audit as audit_mod
    import domaingap.runs as runs_mod

    calls: dict[str, list] = {"adabn": [], "order": [], "on_source": [], "features": [], "predict": [],
                              "decided": [], "cot": []}
    loaded = []
    real = dict(adabn=adabn_mod.adabn, order=adabn_mod._forward_order, on_source=runs_mod.deployed_on_source,
                features=features_mod.extract_features, predict=evaluate_mod.predict,
                decided=runs_mod.decide_deployment, load=pipeline_mod.load_domains, cot=estimate_mod.estimate_cot)

    def adabn_spy(model, data, *a, **kw):
        calls["adabn"].append(getattr(data, "dataset", data))
        return real["adabn"](model, data, *a, **kw)

    def order_spy(model, layers, x):
        calls["order"].append(x.shape[0])
        return real["order"](model, layers, x)

    def on_source_spy(model, domains, device):
        calls["on_source"].append(model)
        return real["on_source"](model, domains, device)

    def features_spy(dataset, model=None, *a, **kw):
        calls["features"].append((dataset, model))
        return real["features"](dataset, model, *a, **kw)

    def predict_spy(model, dataset, *a, **kw):
        calls["predict"].append((dataset, model))
        return real["predict"](model, dataset, *a, **kw)

    def decided_spy(*a, **kw):
        calls["decided"].append(a)
        return real["decided"](*a, **kw)

    def cot_spy(target_probs, *a, **kw):
        calls["cot"].append(target_probs)
        return real["cot"](target_probs, *a, **kw)

    def load_spy(rec):
        loaded.append(real["load"](rec))
        return loaded[-1]

    mp = pytest.MonkeyPatch()
    try:
        for mod in (adabn_mod, train_mod, runs_mod):  # every module that calls adabn by name
            mp.setattr(mod, "adabn", adabn_spy)
        mp.setattr(adabn_mod, "_forward_order", order_spy)
        for mod in (runs_mod, pipeline_mod, audit_mod):
            mp.setattr(mod, "deployed_on_source", on_source_spy, raising=False)
        # every module that calls them by name
        for mod in (features_mod, drift_mod, pipeline_mod, runs_mod, audit_mod):
            mp.setattr(mod, "extract_features", features_spy, raising=False)
        for mod in (evaluate_mod, selection_mod, audit_mod):
            mp.setattr(mod, "predict", predict_spy)
        for mod in (runs_mod, pipeline_mod, audit_mod):  # wherever the deployed model is decided
            mp.setattr(mod, "decide_deployment", decided_spy, raising=False)
        mp.setattr(pipeline_mod, "load_domains", load_spy)
        for mod in (estimate_mod, ranking_mod):  # every module that calls estimate_cot by name
            mp.setattr(mod, "estimate_cot", cot_spy)
        summary = pipeline_mod.run_recipe(recipe, progress=False)
    finally:
        mp.undo()
    return E2ERun(summary, loaded[0], calls)


@pytest.fixture(scope="session")
def e2e(tmp_path_factory) -> E2ERun:
    from adapt.recipe import load_recipe

    root = tmp_path_factory.mktemp("e2e")
    path = root / "e2e.yaml"
    path.write_text(E2E_RECIPE)
    return recorded_run(load_recipe(path, [f"output.dir={root / 'runs'}"]))
