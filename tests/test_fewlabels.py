"""A few labelled target images: ``data.target.labeled_per_class: k``, ``objective: mme``
and the ``few_labels`` selector (docs/fewlabels.md).

What a user relies on: exactly k labelled images of every class, taken from the target's
training split only (the test split the same as without them), seeded; MME, given them
and the unlabelled rest, beats the source model on a target where the source model fails;
its deployed model reloads to the same predictions; bad settings are one error line.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from adapt.data.few_labels import split_few_labels
from adapt.methods.mme import MME, entropy
from adapt.models import build_model, load_checkpoint
from adapt.models.cosine_head import CosineHead
from adapt.recipe import validate_recipe
from adapt.errors import UserError
from domaingap.runs import load_domains

pytestmark = pytest.mark.usefixtures("one_thread")


def _raw(tmp_path, k=3, runs=(), **target) -> dict:
    return {
        "name": "few", "seed": 0,
        "data": {"source": {"kind": "phantom-cxr", "site": "A", "n": 200},
                 "target": {"kind": "phantom-cxr", "site": "B", "n": 200, "labeled_per_class": k, **target},
                 "image_size": 32},
        "model": {"arch": "small_cnn"},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.002, "device": "cpu", "patience": None, "threads": 1},
        "method": {"selection": "im", "runs": list(runs)},
        "diagnostics": {"enabled": False},
        "output": {"dir": str(tmp_path / "runs")},
    }


# --------------------------------------------------------------------------- the split


def test_k_per_class_from_the_train_split_only_and_seeded(tmp_path):
    plain = validate_recipe({**_raw(tmp_path), "data": {**_raw(tmp_path)["data"], "target":
                             {"kind": "phantom-cxr", "site": "B", "n": 200}}})
    without = load_domains(plain)
    d = load_domains(validate_recipe(_raw(tmp_path, k=3)))
    labeled, rest, test = d.target_labeled, d.target_split["train"], d.target_split["test"]
    assert np.bincount(labeled.labels).tolist() == [3, 3]  # exactly k of each class
    # labelled + unlabelled rest = the training split of the run without labels; disjoint
    assert set(labeled.ids).isdisjoint(rest.ids)
    assert sorted(labeled.ids + rest.ids) == sorted(without.target_split["train"].ids)
    # the held-out splits are not touched
    assert test.ids == without.target_split["test"].ids
    assert d.target_split["val"].ids == without.target_split["val"].ids
    assert set(labeled.ids).isdisjoint(test.ids)
    # seeded: the same seed picks the same images, another seed others
    again = load_domains(validate_recipe(_raw(tmp_path, k=3)))
    assert again.target_labeled.ids == labeled.ids
    other = split_few_labels(without.target_split["train"], 3, seed=1)[0]
    assert other.ids != labeled.ids and np.bincount(other.labels).tolist() == [3, 3]
    assert torch.equal(labeled.images(), again.target_labeled.images())


def test_k_larger_than_the_smallest_class_names_it(tmp_path):
    d = load_domains(validate_recipe(_raw(tmp_path, k=1)))
    train = d.target.subset(np.flatnonzero(d.target.labels == 0).tolist() + [int(np.flatnonzero(d.target.labels == 1)[0])])
    with pytest.raises(UserError, match=r"^data\.target\.labeled_per_class: 2 is more than the 1 training images "
                                        r"of target class 'opacity'"):
        split_few_labels(train, 2, seed=0)


# --------------------------------------------------------------------------- MME


def test_mme_gradients_are_the_minimax(tmp_path):
    """The classifier ascends the unlabelled entropy, the feature extractor descends it."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 2, 1)
    xl, yl = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 0, 1])
    xs, ys, xt = torch.rand(6, 1, 32, 32), torch.tensor([0, 1, 1, 0, 1, 0]), torch.rand(5, 1, 32, 32)
    labeled = type("L", (), {"images": lambda self: xl, "labels": yl.numpy()})()
    mme = MME.for_model(model, labeled, lam=0.1, temperature=0.05, seed=0)
    assert isinstance(model.head, CosineHead)
    model.eval()  # fixed BatchNorm statistics: every forward below sees the same function
    mme.start_epoch(model, 0)
    loss, logs = mme.loss(model, xs, ys, xt, 0.5)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    # the same draw of labelled images, the two parts of the objective without reversal
    mme.start_epoch(model, 0)
    idx = torch.randint(len(xl), (len(xs),), generator=mme.generator)
    ce = torch.nn.functional.cross_entropy(torch.cat([model(xs), model(xl[idx])]), torch.cat([ys, yl[idx]]))
    h = entropy(model(xt))
    assert logs["target_entropy"] == pytest.approx(h.item(), rel=1e-5)
    g_ce = torch.autograd.grad(ce, list(model.parameters()), allow_unused=True)
    g_h = torch.autograd.grad(h, list(model.parameters()), allow_unused=True)
    for (name, _), gc, gh in zip(model.named_parameters(), g_ce, g_h):
        gc = torch.zeros_like(grads[name]) if gc is None else gc
        gh = torch.zeros_like(grads[name]) if gh is None else gh
        sign = -1.0 if name.startswith("head.") else 1.0  # head: CE − λH; features: CE + λH
        torch.testing.assert_close(grads[name], gc + sign * 0.1 * gh, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_mme_beats_the_source_model_and_reloads(tmp_path):
    """Phantom site A → B at 32 px: the source model predicts one class on site B (50%);
    MME with 3 labelled site-B images per class reaches well above it."""
    from domaingap.pipeline import run_recipe

    runs = [{"name": "mme", "objective": "mme", "epochs": 4}]
    summary = run_recipe(validate_recipe(_raw(tmp_path, k=3, runs=runs)), progress=False)
    before = summary.source.metrics["target_test"]["accuracy"]
    after = summary.runs["mme"].metrics["target_test"]["accuracy"]
    assert after >= before + 0.15, (before, after)
    epochs = summary.runs["mme"].selection["epochs"]
    assert all(0.0 <= e["few_labels_accuracy"] <= 1.0 for e in epochs)  # logged every epoch
    # the deployed model (cosine head, target BatchNorm statistics) reloads exactly
    model, _ = load_checkpoint(summary.run_dir / "methods" / "mme" / "model.pt")
    assert isinstance(model.head, CosineHead) and model.head.temperature == 0.05
    x = summary.runs["mme"].model.head.weight.new_empty(0)  # device/dtype only
    images = torch.rand(8, 1, 32, 32, dtype=x.dtype)
    deployed = copy.deepcopy(summary.runs["mme"].model).cpu().eval()
    torch.testing.assert_close(model(images), deployed(images))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("patch, message", [
    ({"data": {"target": {"labeled_per_class": 0}}}, "data.target.labeled_per_class: must be greater than or equal to 1"),
    ({"data": {"target": {"labeled_per_class": -2}}}, "data.target.labeled_per_class: must be greater than or equal to 1"),
    ({"data": {"target": {"labeled": False}}}, "data.target.labeled_per_class: k labelled images per class need a "
                                                "labelled target (labeled is false)"),
    ({"data": {"source": {"labeled_per_class": 2}}}, "data.source.labeled_per_class: only the target"),
    ({"data": {"target": {"labeled_per_class": None}}, "method": {"runs": [{"name": "m", "objective": "mme"}]}},
     "method.runs.m: objective 'mme' needs labelled target images (set data.target.labeled_per_class: k)"),
    ({"data": {"target": {"labeled_per_class": None}}, "method": {"selection": "few_labels"}},
     "method.selection: few_labels needs labelled target images"),
])
def test_bad_settings_are_one_line_exit_2(tmp_path, capsys, patch, message):
    import yaml

    from domaingap.adapt_run import main

    raw = _raw(tmp_path)
    for section, values in patch.items():
        for key, value in values.items():
            if isinstance(value, dict):
                raw[section][key] = {**raw[section][key], **value}
            else:
                raw[section][key] = value
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main([str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err


def test_k_above_the_smallest_class_is_exit_2_before_writing(tmp_path, capsys):
    import yaml

    from domaingap.adapt_run import main

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_raw(tmp_path, k=500)))
    assert main([str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: data.target.labeled_per_class: 500 is more than the ") and "of target class '" in err
    assert not (tmp_path / "runs" / "few").exists()
