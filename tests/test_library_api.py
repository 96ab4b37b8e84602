"""The Python API: what a notebook user relies on.

Each test checks a behaviour (known answer, invariant, error naming the argument); the
docstring examples of the public modules run in tests/test_doctests.py.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch

import adapt
import diagnostics
from adapt.errors import UserError


# --------------------------------------------------------------------------- UserError


def test_user_error_is_a_value_error_and_the_cli_still_prints_one_line(capsys):
    from domaingap.diagnose import main

    assert issubclass(UserError, ValueError)
    code = main(["gap", "--source", "no/such/folder", "--target", "phantom-cxr:B:20"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: no/such/folder")


def test_a_library_caller_catching_value_error_catches_bad_input():
    with pytest.raises(ValueError, match="^alpha: must lie in"):
        diagnostics.domain_gap(np.zeros((10, 2)), np.ones((10, 2)), alpha=2.0)


# --------------------------------------------------------------------------- exports


@pytest.mark.parametrize("package", [adapt, diagnostics])
def test_every_public_name_resolves(package):
    for name in package.__all__:
        assert getattr(package, name) is not None, name
    assert set(package.LAZY_EXPORTS) <= set(package.__all__)
    with pytest.raises(AttributeError):
        package.no_such_name  # noqa: B018


def test_importing_the_base_does_not_load_the_api():
    """The exports are lazy: ``import adapt.errors`` (every CLI does) loads no torch."""
    code = "import sys, adapt.errors, diagnostics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# --------------------------------------------------------------------------- domain_gap


def test_domain_gap_on_arrays_is_measure_gap_unchanged():
    """The wrapper adds no statistics: its MMD and C2ST are those of the pure functions."""
    from diagnostics.mmd import mmd_permutation_test
    from diagnostics.two_sample import classifier_two_sample_test

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 3)).astype(np.float32), rng.normal(0.5, 1, size=(50, 3)).astype(np.float32)
    gap = diagnostics.domain_gap(a, b, permutations=49, bootstrap=10, seed=3)
    assert gap.mmd.p_value == mmd_permutation_test(a, b, permutations=49, seed=3).p_value
    c2st = classifier_two_sample_test(a.astype(np.float64), b.astype(np.float64), permutations=49, seed=3,
                                      folds=5, max_points=2000)
    assert gap.classifier_test.p_value == c2st.p_value
    low, high = gap.frechet_interval.low, gap.frechet_interval.high
    assert low <= high and gap.n_source == 40 and gap.n_target == 50
    assert gap.to_dict()["mmd"]["p_value"] == gap.mmd.p_value


def test_domain_gap_is_reproducible_with_a_seed_and_accepts_tensors():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 4)), rng.normal(size=(30, 4)) + 0.3
    one = diagnostics.domain_gap(a, b, permutations=29, bootstrap=5, seed=7).to_dict()
    two = diagnostics.domain_gap(torch.from_numpy(a), torch.from_numpy(b), permutations=29, bootstrap=5,
                                 seed=7).to_dict()
    assert one == two


@pytest.mark.parametrize("source,target,message", [
    (np.zeros((3, 2)), np.zeros((10, 2)), "^source.*at least 5"),
    (np.zeros((10, 2)), np.zeros((10, 3)), "source has 2 dimensions, target 3"),
    (np.zeros((10, 2)), torch.rand(10, 1, 8, 8), "^source, target: one is a feature array"),
    (np.zeros((10, 2, 3)), np.zeros((10, 2)), r"^source: expected features \[N, D\] or images"),
    (torch.rand(10, 1, 8, 8) * 2, torch.rand(10, 1, 8, 8), r"^source: image values must be finite and lie in \[0, 1\]"),
    ("phantom-cxr:D", np.zeros((10, 2)), "phantom site must be A, B or C"),
])
def test_domain_gap_errors_name_the_argument(source, target, message):
    with pytest.raises(UserError, match=message):
        diagnostics.domain_gap(source, target, permutations=19, bootstrap=0)


# --------------------------------------------------------------------------- drift


def _phantom(site: str, n: int, seed: int) -> torch.Tensor:
    from adapt.data import make_phantom

    return make_phantom(site, n, seed=seed, image_size=32).images


@pytest.fixture(scope="module")
def model():
    from adapt.models import build_model

    torch.manual_seed(0)
    return build_model("small_cnn", num_classes=2, in_channels=1).eval()


def test_drift_detector_on_images_flags_the_other_site_only(model):
    detector = diagnostics.DriftDetector(_phantom("B", 120, seed=1), model=model, permutations=199, seed=0)
    same = detector.predict(_phantom("B", 80, seed=2))
    other = detector.predict(_phantom("A", 80, seed=3))
    assert not same.drift and other.drift
    assert other.to_dict()["verdict"]["drift"] is True


def test_drift_detector_is_compare_to_reference_and_survives_save_load(model, tmp_path):
    from diagnostics.drift import build_reference, compare_to_reference
    from diagnostics.features import extract_features
    from adapt.data.inputs import as_domain

    ref_images, batch = _phantom("B", 60, seed=1), _phantom("A", 40, seed=3)
    detector = diagnostics.DriftDetector(ref_images, model=model, permutations=99, seed=4, alpha=0.05)
    got = detector.predict(batch).to_dict()
    fs_ref = extract_features(as_domain(ref_images, argument="x_ref"), model, "model", progress=False)
    fs = extract_features(as_domain(batch, argument="x"), model, "model", progress=False)
    want = compare_to_reference(build_reference(fs_ref, ["0", "1"], seed=4), fs, alpha=0.05,
                                permutations=99, seed=4).to_dict()
    assert got == want
    path = detector.save(tmp_path / "ref.npz")
    again = diagnostics.DriftDetector.load(path, model=model, permutations=99, seed=4, alpha=0.05)
    assert again.predict(batch).to_dict() == got


def test_drift_detector_needs_probabilities_and_names_the_argument():
    x = np.random.default_rng(0).normal(size=(40, 3))
    with pytest.raises(UserError, match="^x_ref: the drift tests need the classifier's outputs"):
        diagnostics.DriftDetector(x)
    p = np.full((40, 2), 0.5)
    detector = diagnostics.DriftDetector(x, probs_ref=p, permutations=19)
    with pytest.raises(UserError, match="^probs: this detector was built from features"):
        detector.predict(x)
    with pytest.raises(UserError, match=r"^probs: expected \[40, K\] probabilities"):
        detector.predict(x, probs=p[:10])
    with pytest.raises(UserError, match=r"^alpha: must lie in \(0, 1\)"):
        diagnostics.DriftDetector(x, probs_ref=p, alpha=0)


# --------------------------------------------------------------------------- adapt_model


def test_adapt_methods_are_the_recipe_objectives():
    """adapt_model takes every recipe objective that needs no labelled target images and
    one source (finetune and mme train on data.target.labeled_per_class images; msdann and
    m3sda need several sources: recipes only)."""
    from adapt.method_registry import objectives

    assert set(adapt.METHODS) == set(objectives()) - {"none", "finetune", "mme", "msdann", "m3sda"} | {"adabn"}


def test_adapt_model_adabn_moves_only_batchnorm_statistics(model):
    m = copy.deepcopy(model)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    res = adapt.adapt_model(m, None, _phantom("B", 40, seed=1), method="adabn", seed=0)
    after = res.model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in moved)
    assert res.epochs_run == 0 and res.target_accuracy_before is None


def test_adapt_model_wraps_a_plain_module_and_trains_it():
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2))
    first = net[0].weight.detach().clone()
    res = adapt.adapt_model(net, "phantom-cxr:A:32", "phantom-cxr:B:32", method="dann", head="5", epochs=1,
                            batch_size=16, image_size=16, seed=0)
    assert res.model.feature_dim == 4 and res.epochs_run == 1 and res.best_epoch == 1
    assert not torch.equal(first, res.model.backbone.stages[0][0].weight)  # shared and trained
    assert 0.0 <= res.target_accuracy_after <= 1.0  # phantom target labels are known: reported


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="fancy"), "^method: 'fancy' is not one of adabn"),
    (dict(method="dann", options={"wieght": 1}), "wieght"),
    (dict(method="tent", options={"weight": 1}), "^options: tent has no options"),
    (dict(selection="dev"), "^selection: 'dev' is not one of im, snd, last"),
    (dict(method="dann", source=None), "^source: method dann needs labelled source images"),
    (dict(method="mcc", source=torch.rand(8, 1, 16, 16)), "^source: the source images need labels"),
])
def test_adapt_model_errors_name_the_argument(model, kwargs, message):
    kwargs = {"source": "phantom-cxr:A:20", **kwargs}
    source = kwargs.pop("source")
    with pytest.raises(UserError, match=message):
        adapt.adapt_model(copy.deepcopy(model), source, "phantom-cxr:B:20", image_size=32, **kwargs)


def test_wrap_model_errors_name_the_argument():
    from torchvision.models import resnet18

    from adapt.models.wrap import wrap_model

    with pytest.raises(UserError, match="^head: ResNet has no submodule 'head'"):
        wrap_model(resnet18(num_classes=2), head="head", in_channels=3)
    with pytest.raises(UserError, match="^head: 'layer4' is a Sequential, expected the final nn.Linear"):
        wrap_model(resnet18(num_classes=2), head="layer4", in_channels=3)
    with pytest.raises(UserError, match="^mean: 1 values for 3 channels"):
        wrap_model(resnet18(num_classes=2), head="fc", in_channels=3, mean=[0.5])


# --------------------------------------------------------------------------- run / load_run


def test_run_with_dict_overrides_and_load_run_agree(tmp_path):
    overrides = {"data.source.n": 40, "data.target.n": 40, "data.image_size": 32, "train.epochs": 1,
                 "method.runs": [{"name": "adabn", "adabn": True, "epochs": 0}], "output.dir": str(tmp_path)}
    result = adapt.run(adapt.Recipe(name="api"), overrides, diagnostics=False)
    assert result.run_dir == tmp_path / "api" and result.recipe.train.epochs == 1
    again = adapt.load_run(tmp_path / "api")
    assert again.to_dict() == result.to_dict()
    assert again.target_accuracy("adabn") == result.metrics["runs"]["adabn"]["metrics"]["target_test"]["accuracy"]
    assert again.model("adabn").num_classes == 2
    with pytest.raises(UserError, match="^stage: 'dann' is not one of source, adabn"):
        again.model("dann")
    # the folder holds a run now: a second run neither resumes nor overwrites silently
    with pytest.raises(UserError):
        adapt.run(adapt.Recipe(name="api"), overrides, diagnostics=False)


def test_run_overrides_are_validated_like_the_command_line(tmp_path):
    with pytest.raises(UserError, match=r"train: unknown key 'epocs' \(did you mean 'epochs'\?\)"):
        adapt.run(adapt.Recipe(), {"train.epocs": 1, "output.dir": str(tmp_path)})
    with pytest.raises(UserError, match="^overrides: expected a dict"):
        adapt.run(adapt.Recipe(), ["train.epochs=1"])
    with pytest.raises(UserError, match="^recipe: expected a Recipe or a YAML path"):
        adapt.run(42)


# --------------------------------------------------------------------------- audit_models


def test_audit_models_refuses_models_that_do_not_match(model):
    from adapt.models import build_model

    three = build_model("small_cnn", num_classes=3, in_channels=1)
    with pytest.raises(UserError, match="^after: 3 classes on 1 channels, but before has 2 on 1"):
        diagnostics.audit_models(model, three, "phantom-cxr:A:20", "phantom-cxr:B:20", "unused")
    with pytest.raises(UserError, match="^before: expected a Classifier"):
        diagnostics.audit_models(torch.nn.Linear(2, 2), model, "phantom-cxr:A:20", "phantom-cxr:B:20", "unused")


@pytest.mark.parametrize("package", [adapt, diagnostics])
def test_no_public_name_is_shadowed_by_a_submodule(package):
    """``import diagnostics.X`` sets the attribute X on the package: a public name that is
    also a submodule's name would turn into that module once anything imports it."""
    import pkgutil

    submodules = {m.name for m in pkgutil.iter_modules(package.__path__)}
    assert not submodules & set(package.__all__)
