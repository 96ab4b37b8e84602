"""Reverse validation (adapt/reverse_validation.py): known answers on feature clouds whose
truth is set by construction, and the blind spot the label-free study found."""

import numpy as np
import pytest

from adapt.reverse_validation import reverse_validation_accuracy


def _clouds(rng, means, per_class, spread=0.3):
    x = np.concatenate([m + spread * rng.standard_normal((per_class, len(m))) for m in means])
    y = np.repeat(np.arange(len(means)), per_class)
    return x, y


MEANS = np.eye(3) * 4.0  # three well-separated classes in 3-d


def test_right_target_labels_transfer_to_the_source():
    rng = np.random.default_rng(0)
    xs, ys = _clouds(rng, MEANS, 100)
    xt, yt = _clouds(rng, MEANS + 0.5, 80)  # a covariate shift that keeps the classes apart
    assert reverse_validation_accuracy(xt, yt, xs, ys) >= 0.98


def test_swapped_target_labels_are_exposed():
    rng = np.random.default_rng(1)
    xs, ys = _clouds(rng, MEANS, 100)
    xt, yt = _clouds(rng, MEANS, 80)
    swapped = np.array([1, 0, 2])[yt]  # classes 0 and 1 exchanged: 2/3 of the target wrong
    rv = reverse_validation_accuracy(xt, swapped, xs, ys)
    assert rv == pytest.approx(1 / 3, abs=0.03)


def test_collapsed_predictions_score_the_share_of_that_class():
    rng = np.random.default_rng(2)
    xs, ys = _clouds(rng, MEANS, 50)
    ys = ys[20:]  # class 0: 30 of 130 images
    xs = xs[20:]
    xt, _ = _clouds(rng, MEANS, 40)
    assert reverse_validation_accuracy(xt, np.zeros(len(xt), int), xs, ys) == pytest.approx(30 / 130)


def test_a_merged_class_costs_its_share():
    rng = np.random.default_rng(3)
    xs, ys = _clouds(rng, MEANS, 100)
    xt, yt = _clouds(rng, MEANS, 100)
    merged = np.where(yt == 2, 1, yt)  # the model calls class 2 class 1 on the target
    assert reverse_validation_accuracy(xt, merged, xs, ys) == pytest.approx(2 / 3, abs=0.02)


def test_symmetric_label_noise_barely_moves_it():
    """A limit, not a virtue: 60 % of the target labels re-drawn at random (target accuracy
    ≈ 60 %) still let the reverse classifier find the classes — RV falls, but by little."""
    rng = np.random.default_rng(3)
    xs, ys = _clouds(rng, MEANS, 100, spread=1.5)  # overlapping classes
    xt, yt = _clouds(rng, MEANS, 100, spread=1.5)
    noisy = yt.copy()
    flip = rng.random(len(yt)) < 0.6
    noisy[flip] = rng.integers(0, 3, flip.sum())
    right, wrong = reverse_validation_accuracy(xt, yt, xs, ys), reverse_validation_accuracy(xt, noisy, xs, ys)
    assert np.mean(noisy == yt) < 0.7
    assert right > wrong > 0.75


def test_blind_to_a_model_whose_target_features_moved_to_another_class():
    """The limit documented in docs/labelfree.md: the model's predictions are a linear
    function of its features, so a reverse classifier on those features can learn the head
    back. A target whose class c lands where the source's class c+1 lies is labelled wrong
    everywhere by a nearest-mean head — target accuracy 0 — and still scores RV ≈ 1."""
    rng = np.random.default_rng(4)
    xs, ys = _clouds(rng, MEANS, 100)
    xt, yt = _clouds(rng, np.roll(MEANS, -1, axis=0), 100)  # target class c sits at source mean c+1
    head = lambda x: ((x[:, None, :] - MEANS[None]) ** 2).sum(-1).argmin(1)  # noqa: E731
    pred = head(xt)
    assert np.mean(pred == yt) == 0.0
    assert reverse_validation_accuracy(xt, pred, xs, ys) >= 0.98


def test_bad_shapes_name_the_problem():
    rng = np.random.default_rng(5)
    xs, ys = _clouds(rng, MEANS, 10)
    with pytest.raises(ValueError, match="same d"):
        reverse_validation_accuracy(xs[:, :2], ys, xs, ys)
    with pytest.raises(ValueError, match="predictions"):
        reverse_validation_accuracy(xs, ys[:-1], xs, ys)


# ------------------------------------------------------------ from the images (the tool's rule)

import torch  # noqa: E402

from adapt.data.domain import DomainDataset  # noqa: E402
from adapt.models import build_model  # noqa: E402
from adapt.reverse_validation import reverse_validation_images, shrink  # noqa: E402

SIZE = 16


def _squares(n: int, seed: int, shift: float = 0.0) -> tuple[torch.Tensor, np.ndarray]:
    """Two classes by construction: a bright square top-left (class 0) or bottom-right
    (class 1) under noise; ``shift`` darkens the whole image (the target's scanner)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = 0.4 + 0.15 * torch.randn(n, 1, SIZE, SIZE, generator=g)
    x[y == 0, :, 2:7, 2:7] += 0.4
    x[y == 1, :, 9:14, 9:14] += 0.4
    return (x - shift).clamp(0, 1), y.numpy()


def _domain(name: str, x: torch.Tensor, y: np.ndarray) -> DomainDataset:
    return DomainDataset(name=name, classes=["a", "b"], labels=y, ids=[f"{name}/{i}" for i in range(len(x))],
                         channels=1, image_size=SIZE, images=x)


@pytest.fixture(scope="module")
def squares():
    xs, ys = _squares(200, 0)
    xv, yv = _squares(60, 1)
    xt, yt = _squares(160, 2, shift=0.15)
    return _domain("source", xs, ys), _domain("val", xv, yv), _domain("target", xt, np.full(len(xt), -1)), yt


def _rv(squares, labels, seed=0):
    source, val, target, _ = squares
    return reverse_validation_images(lambda: build_model("small_cnn", 2, 1), target, labels, source, [val], seed=seed)


def test_images_right_labels_beat_wrong_ones(squares):
    *_, yt = squares
    right = _rv(squares, yt)
    swapped = _rv(squares, 1 - yt)
    collapsed = _rv(squares, np.zeros_like(yt))
    rng = np.random.default_rng(0)
    half = np.where(rng.random(len(yt)) < 0.5, yt, 1 - yt)  # half right: chance
    assert right >= 0.9
    assert swapped <= 0.1  # confidently, consistently wrong: the source contradicts it
    assert collapsed == pytest.approx(0.5, abs=0.02)  # one class: that class's share of the source
    assert right > _rv(squares, half) + 0.2


def test_images_same_seed_same_score(squares):
    *_, yt = squares
    assert _rv(squares, yt, seed=3) == _rv(squares, yt, seed=3)


def test_images_predictions_must_match_the_target(squares):
    *_, yt = squares
    with pytest.raises(ValueError, match="predictions for"):
        _rv(squares, yt[:-1])


def test_shrink_keeps_small_images_and_averages_large_ones():
    small = torch.rand(1, 16, 16)
    assert shrink(small) is small
    big = torch.arange(64.0).reshape(1, 8, 8).repeat(1, 8, 8)  # 64 × 64
    out = shrink(big)
    assert out.shape == (1, 32, 32)
    assert torch.allclose(out[0, 0, 0], big[0, :2, :2].mean())


def test_images_leave_the_callers_random_stream_alone(squares):
    *_, yt = squares
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _rv(squares, yt)
    assert torch.equal(torch.rand(3), expected)
