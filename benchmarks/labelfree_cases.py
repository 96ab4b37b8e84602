"""The label-free study's cases (``benchmarks/labelfree_study.py``): the five digit
shifts, the recipe each case trains, and the per-model predictions it caches — with the
source model's features, which the audit's label-shift reading tests.

Each case is trained once and cached in ``OUT/cases/`` (``--reuse`` re-measures from the
cache); :func:`with_source_features` completes a cache written before the features were
kept, from the case's source checkpoint.
"""

from __future__ import annotations

import copy
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(Path(__file__).resolve().parent))  # truth_suite_hidden

from adapt.data.real_images import (  # noqa: E402
    DIGIT_CLASSES, ImageSet, RealShift, ScannerStyle, digit_splits, load_digit_images, make_digits_shift, write_shift,
)
from adapt.evaluate import predict  # noqa: E402
from adapt.io import atomic_write_bytes  # noqa: E402
from adapt.mixval import mixval_score  # noqa: E402
from adapt.recipe import validate_recipe  # noqa: E402
from domaingap.pipeline import run_recipe  # noqa: E402
from domaingap.runs import load_domains  # noqa: E402

SIZE = 16
SHIFTS = ("scanner", "textured", "mild", "labelshift", "clean")
MILD = ScannerStyle(gamma=0.85, contrast=0.85, offset=0.1, blur=0.5, noise=0.04)


def build_shift(kind: str, seed: int) -> RealShift:
    """The shift ``kind`` at 16 px: the scanner, textured (MNIST-M style) and mild scanner
    covariate shifts, a pure label shift (classes 3–9 thinned to 15 % on the target) and no
    shift at all (clean: the target is other images of the same handwritten digits)."""
    if kind in ("scanner", "textured"):
        return make_digits_shift(kind, seed=seed, image_size=SIZE)
    if kind == "mild":
        return make_digits_shift("scanner", seed=seed, image_size=SIZE, scanner=MILD)
    imgs, labels = load_digit_images(SIZE)
    idx = digit_splits(labels, seed)
    rng = np.random.default_rng([seed, 17])

    def part(name: str) -> ImageSet:
        ids = idx[name]
        if kind == "labelshift":
            ids = ids[rng.random(len(ids)) < np.where(labels[ids] < 3, 1.0, 0.15)]
        elif kind != "clean":
            raise ValueError(kind)
        return ImageSet(imgs[ids].contiguous(), labels[ids], ids, kind)

    src = ImageSet(imgs[idx["source"]].contiguous(), labels[idx["source"]], idx["source"], "source")
    return RealShift(kind, list(DIGIT_CLASSES), src, part("target_train"), part("target_test"), seed)


def case_name(kind: str, seed: int, hidden: bool = False) -> str:
    """The case's recipe name (its run folder under ``out/runs``)."""
    return f"{kind}_seed{seed}" + ("_hidden" if hidden else "")


def case_cache(out: Path, kind: str, seed: int, epochs: int, hidden: bool = False) -> Path:
    """Where :func:`run_case` caches the case's predictions."""
    return out / "cases" / f"{kind}_seed{seed}_e{epochs}_v3{'_hidden' if hidden else ''}.pkl"


def recipe_for(kind: str, seed: int, data: dict[str, Path], out: Path, epochs: int, hidden: bool = False):
    runs = [
        {"name": "adabn", "adabn": True, "epochs": 0},
        {"name": "dann", "objective": "dann", "epochs": epochs, "dann": {"weight": 1.0}},
        {"name": "dann+adabn", "objective": "dann", "adabn": True, "epochs": epochs, "dann": {"weight": 0.3}},
        {"name": "shot", "objective": "shot", "epochs": epochs},
        {"name": "tent", "objective": "tent", "epochs": 1},
        # a misconfigured run (domain-loss weight 30, learning rate 0.3): adaptation that hurts
        {"name": "dann-hurt", "objective": "dann", "dann": {"weight": 30.0}, "lr": 0.3, "epochs": epochs},
    ]
    raw = {
        "name": case_name(kind, seed, hidden), "seed": seed,
        "data": {"source": {"kind": "imagefolder", "path": str(data["source"])},
                 "target": {"kind": "imagefolder", "path": str(data["target"]),
                            **({"labeled": False} if hidden else {})},
                 "image_size": SIZE, "channels": 1, "num_workers": 0,
                 "split": {"train": 0.5, "val": 0.2, "test": 0.3}},
        "model": {"arch": "small_cnn"},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.003, "patience": None, "threads": 1},
        "method": {"selection": "mixval", "compare_selectors": True, "runs": runs},
        "diagnostics": {"enabled": False},
        "output": {"dir": str(out / "runs")},
    }
    return validate_recipe(raw, "labelfree study recipe")


def run_case(kind: str, seed: int, out: Path, epochs: int, reuse: bool = False, hidden: bool = False) -> dict[str, Any]:
    """Train every model of one case; return per model its hidden truth and label-free inputs
    (cached in ``out/cases/``: ``--reuse`` re-measures from the cache without training).

    ``hidden``: ``adapt-run`` gets the target as a flat folder with ``labeled: false`` (its
    split and order are then those of an unlabelled target); the labels come from a key file
    outside it (:func:`truth_suite_hidden.hide_labels`), read after training. Per-epoch
    oracle accuracy is then unknown to the run, so there is no regret over epochs."""
    cache = case_cache(out, kind, seed, epochs, hidden)
    if reuse and cache.is_file():
        return pickle.loads(cache.read_bytes())
    root = out / "data" / kind / f"seed{seed}"
    if not (root / "target").is_dir():
        write_shift(build_shift(kind, seed), root, merge_target=True)
    target, key = root / "target", None
    if hidden:
        from truth_suite_hidden import hide_labels

        target, key = root / "target_flat", root / "target_key.json"
        hide_labels(root / "target", target, key, seed=seed)
    recipe = recipe_for(kind, seed, {"source": root / "source", "target": target}, out, epochs, hidden)
    summary = run_recipe(recipe, progress=False, diagnostics=False, overwrite=True)
    domains = load_domains(recipe)
    device = torch.device("cpu")
    t_test, s_val = domains.target_split["test"], domains.source_split["val"]
    models = {"source-only": summary.source, **summary.runs}
    out_models: dict[str, Any] = {}
    truth = None
    if key is not None:  # the hidden labels, by file name, for the images the run tested on
        labels = json.loads(key.read_text())["labels"]
        truth = np.array([domains.classes.index(labels[Path(i).name]) for i in t_test.ids])
    for name, st in models.items():
        t = predict(st.model, t_test, device, return_features=name == "source-only")
        if truth is not None:
            assert bool((t["labels"] < 0).all()), "the label-hidden run's target carries labels"
            t["labels"] = truth
        # as deployed on the source: a per-domain-BN run's source-statistics copy, kept by the run
        s = predict(st.source_model, s_val, device, return_features=name == "source-only")
        # the source model's features: what the audit's label-shift reading tests (case_rows)
        extra = {"source_features": s["features"], "target_features": t["features"]} if name == "source-only" else {}
        out_models[name] = {**extra,
            "target_probs": t["probs"], "hidden_target_labels": t["labels"],
            "source_probs": s["probs"], "source_labels": s["labels"],
            "mixval": mixval_score(copy.deepcopy(st.model), t_test, device, seed=seed),
            "epochs": (st.selection or {}).get("epochs") or [],
        }
    atomic_write_bytes(cache, pickle.dumps(out_models))
    return out_models


def with_source_features(kind: str, seed: int, out: Path, epochs: int, models: dict[str, Any],
                         hidden: bool = False) -> dict[str, Any]:
    """``models`` with the source model's features on the held-out source and target images
    (``source_features``, ``target_features`` of ``models["source-only"]``), taken from the
    run folder's source checkpoint when a cache written before they were kept lacks them
    (checked: the same probabilities as cached)."""
    if "source_features" in models["source-only"]:
        return models
    from adapt.models.checkpoints import load_checkpoint
    from adapt.recipe import load_recipe

    run_dir = out / "runs" / case_name(kind, seed, hidden)
    recipe = load_recipe(run_dir / "recipe.yaml")
    domains = load_domains(recipe)
    model, _ = load_checkpoint(run_dir / "source" / "model.pt")
    device = torch.device("cpu")
    s = predict(model, domains.source_split["val"], device, return_features=True)
    t = predict(model, domains.target_split["test"], device, return_features=True)
    cached = models["source-only"]
    for got, want, what in ((s["probs"], cached["source_probs"], "source"), (t["probs"], cached["target_probs"], "target")):
        if got.shape != want.shape or not np.allclose(got, want, atol=1e-5):
            raise RuntimeError(f"{run_dir}: the source checkpoint's {what} probabilities differ from the cache")
    models = {**models, "source-only": {**cached, "source_features": s["features"], "target_features": t["features"]}}
    atomic_write_bytes(case_cache(out, kind, seed, epochs, hidden), pickle.dumps(models))
    return models
