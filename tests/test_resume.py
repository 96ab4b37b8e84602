"""Kill and resume: a run interrupted after any epoch and continued with ``--resume``
ends with the weights, scores, selected epochs and early stops of the uninterrupted run —
for every method family (DANN, MixStyle, FDA, EWC) and for ``selection: last`` — and
``--resume`` with a recipe that changed what the weights depend on is refused, naming
the changed keys. Tiny data (40 phantom images a domain, 32 px), a few epochs, one thread.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import adapt.train as train_mod
from adapt.errors import UserError
from domaingap.pipeline import run_recipe
from adapt.recipe import load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = {
    "name": "r",
    "seed": 3,
    "data": {"source": {"kind": "phantom-cxr", "site": "A", "n": 40},
             "target": {"kind": "phantom-cxr", "site": "B", "n": 40}, "image_size": 32},
    "train": {"epochs": 2, "batch_size": 16, "device": "cpu", "threads": 1, "patience": 1},
    "method": {"runs": [
        {"name": "dann", "objective": "dann", "epochs": 3},
        {"name": "mix", "objective": "source_only", "mixstyle": True, "epochs": 3},
        {"name": "fda", "objective": "source_only", "style": "fda", "epochs": 3},
        {"name": "ewc", "objective": "dann", "ewc": {"lambda": 10.0, "samples": 16}, "epochs": 3},
    ]},
    "diagnostics": {"enabled": False},
}


def recipe_at(tmp: Path, name: str, patch: dict | None = None, overrides: tuple[str, ...] = ()):
    data = json.loads(json.dumps(RECIPE))
    data["output"] = {"dir": str(tmp), "name": name}
    for k, v in (patch or {}).items():
        data.setdefault(k, {}).update(v) if isinstance(v, dict) else data.__setitem__(k, v)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_recipe(path, list(overrides))


def run_with_kills(recipe, kills: set[tuple[str, int]], monkeypatch) -> int:
    """Run ``recipe``, interrupting it (KeyboardInterrupt, as Ctrl-C) right after the
    checkpoint of each (run, 0-based epoch) in ``kills``, and resume until it finishes.
    Returns how many times it was started."""
    original = train_mod._select_and_checkpoint
    pending = set(kills)

    def killing(loop, state, epoch, score, record):
        improved = original(loop, state, epoch, score, record)
        if (loop.desc, epoch) in pending:
            pending.discard((loop.desc, epoch))
            raise KeyboardInterrupt
        return improved

    monkeypatch.setattr(train_mod, "_select_and_checkpoint", killing)
    starts = 0
    while True:
        starts += 1
        try:
            run_recipe(recipe, resume=starts > 1, progress=False)
            return starts
        except KeyboardInterrupt:
            assert starts <= len(kills)


def stage_facts(run_dir: Path) -> dict:
    """Everything a stage produced except wall time: weights, history, selection."""
    out = {}
    for model_pt in sorted(run_dir.rglob("model.pt")):
        ck = torch.load(model_pt, weights_only=True)
        fit = dict(ck["meta"].get("fit") or {})
        for k in ("seconds", "earlier_seconds", "best_checkpoint"):
            fit.pop(k, None)
        out[str(model_pt.relative_to(run_dir))] = {
            "weights": ck["state_dict"], "fit": fit, "selection": ck["meta"].get("selection")}
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for stage in a:
        wa, wb = a[stage]["weights"], b[stage]["weights"]
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), f"{stage}: {k} differs"
        assert a[stage]["fit"] == b[stage]["fit"], stage
        assert a[stage]["selection"] == b[stage]["selection"], stage


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight")
    run_recipe(recipe_at(tmp, "all"), progress=False)
    return tmp / "all"


def test_every_method_resumes_to_the_uninterrupted_result(straight, tmp_path, monkeypatch):
    recipe = recipe_at(tmp_path, "all")
    kills = {("source", 0), ("dann", 0), ("mix", 1), ("fda", 0), ("ewc", 1)}
    assert run_with_kills(recipe, kills, monkeypatch) == len(kills) + 1
    resumed = tmp_path / "all"
    assert_same(stage_facts(straight), stage_facts(resumed))
    m_straight = json.loads((straight / "metrics.json").read_text())
    m_resumed = json.loads((resumed / "metrics.json").read_text())
    for name in ("dann", "mix", "fda", "ewc"):
        assert m_resumed["runs"][name]["metrics"] == m_straight["runs"][name]["metrics"]
    # wall time adds up over the interrupted parts: the resumed stage reports both
    src = torch.load(resumed / "source" / "model.pt", weights_only=True)["meta"]["fit"]
    assert 0 < src["earlier_seconds"] < src["seconds"]


def test_selection_last_counts_epochs_across_a_resume(tmp_path, monkeypatch):
    patch = {"method": {"selection": "last", "runs": [{"name": "dann", "objective": "dann", "epochs": 3}]},
             "train": {"epochs": 1, "batch_size": 16, "device": "cpu", "threads": 1, "patience": 1}}
    run_recipe(recipe_at(tmp_path, "straight", patch), progress=False)
    run_with_kills(recipe_at(tmp_path, "killed", patch), {("dann", 0)}, monkeypatch)
    a, b = stage_facts(tmp_path / "straight"), stage_facts(tmp_path / "killed")
    assert b["methods/dann/model.pt"]["selection"]["selected_epoch"] == 3
    assert b["methods/dann/model.pt"]["fit"]["stopped_early"] is False
    assert_same(a, b)


def test_resume_with_a_changed_recipe_names_the_changed_keys(straight, tmp_path):
    import shutil

    run = tmp_path / "all"
    shutil.copytree(straight, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for overrides, changed in [(("seed=4",), "seed"),
                               (("method.runs.0.epochs=4",), "method.runs.dann.epochs"),
                               (("train.lr=0.01", "data.image_size=48"), "data.image_size, train.lr")]:
        with pytest.raises(UserError, match=f"changed: {changed} "):
            run_recipe(recipe_at(tmp_path, "all", overrides=overrides), resume=True, progress=False)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing touched


def test_resume_accepts_output_only_changes_and_new_runs(straight, tmp_path):
    import shutil

    run = tmp_path / "all"
    shutil.copytree(straight, run)
    old = stage_facts(run)
    patch = {"method": {"audit_run": "dann", "runs": RECIPE["method"]["runs"] + [
        {"name": "more", "adabn": True, "epochs": 0}]}}
    recipe = recipe_at(tmp_path, "all", patch, overrides=("diagnostics.max_samples=50", "data.num_workers=0"))
    summary = run_recipe(recipe, resume=True, progress=False)
    assert "more" in summary.runs
    new = stage_facts(run)
    assert_same(old, {k: v for k, v in new.items() if k in old})


def test_a_run_folder_is_replaced_only_with_overwrite(straight, tmp_path):
    import shutil

    run = tmp_path / "all"
    shutil.copytree(straight, run)
    (run / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds a finished run; continue it with --resume, replace it with "
                                        "--overwrite"):
        run_recipe(recipe_at(tmp_path, "all"), progress=False)
    patch = {"method": {"runs": [{"name": "adabn", "adabn": True, "epochs": 0}]}, "seed": 5}
    run_recipe(recipe_at(tmp_path, "all", patch), overwrite=True, progress=False)
    assert sorted(p.name for p in (run / "methods").iterdir()) == ["adabn"]  # the old runs are gone
    assert yaml.safe_load((run / "recipe.yaml").read_text())["seed"] == 5
    assert (run / "notes.txt").read_text() == "mine"  # files adapt-run did not write stay


@pytest.mark.parametrize("scores, patience, kill_after, stopped", [
    ([1.0, 0.5, 0.7], 3, 2, False),  # ran every epoch; the last one did not improve
    ([1.0, 0.5, 0.4, 0.3], 2, 2, True),  # out of patience after the third of four epochs
])
def test_stopped_early_and_seconds_survive_a_kill_after_the_last_checkpoint(
        tmp_path, monkeypatch, scores, patience, kill_after, stopped):
    from torch.utils.data import TensorDataset

    from adapt.methods.source_only import SourceOnly
    from adapt.models import build_model
    from adapt.recipe import TrainConfig

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(8, 1, 32, 32, generator=g), torch.randint(0, 2, (8,), generator=g))
    cfg = TrainConfig(epochs=len(scores), batch_size=4, device="cpu", patience=patience, precise_bn=False)

    def fit_once(out: Path, resume: bool):
        torch.manual_seed(0)
        feed = iter(scores)
        return train_mod.fit(build_model("small_cnn", 2, 1), SourceOnly(), data, cfg=cfg, out_dir=out, seed=0,
                             score_fn=lambda m: (next(feed), {}), resume=resume, progress=False)

    straight = fit_once(tmp_path / "a", resume=False)
    original = train_mod._select_and_checkpoint

    def killing(loop, state, epoch, score, record):
        improved = original(loop, state, epoch, score, record)
        if epoch == kill_after:
            raise KeyboardInterrupt
        return improved

    monkeypatch.setattr(train_mod, "_select_and_checkpoint", killing)
    with pytest.raises(KeyboardInterrupt):
        fit_once(tmp_path / "b", resume=False)
    monkeypatch.setattr(train_mod, "_select_and_checkpoint", original)
    resumed = fit_once(tmp_path / "b", resume=True)
    assert straight.stopped_early is resumed.stopped_early is stopped
    assert (resumed.best_epoch, resumed.epochs_run) == (straight.best_epoch, straight.epochs_run)
    assert 0 < resumed.earlier_seconds <= resumed.seconds
