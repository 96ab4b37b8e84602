"""The one training loop: resume, NaN guard, early stopping with rollback, schedules."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from adapt.data import DomainSpec, load_domain
from adapt.methods.source_only import SourceOnly
from adapt.models import build_model, load_checkpoint
from adapt.recipe import TrainConfig
from adapt.train import TrainingDiverged, epoch_order, fit, lr_factor
from domaingap.adapt_run import main as adapt_main


@pytest.fixture(scope="module")
def tiny():
    ds = load_domain(DomainSpec(kind="phantom-cxr", site="A", n=96), image_size=32, seed=0)
    return ds


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=32, lr=3e-3, device="cpu", patience=None)
    base.update(kw)
    return TrainConfig(**base)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fresh_model():
    torch.manual_seed(0)
    return build_model("small_cnn", 2, 1)


class Interrupt(Exception):
    pass


def test_resume_after_interruption_gives_identical_weights(tiny, tmp_path):
    full = fresh_model()
    fit(full, SourceOnly(), tiny, cfg=cfg(), out_dir=tmp_path / "full", seed=3, progress=False)

    calls = {"n": 0}

    def dies_in_epoch_two(model):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Interrupt  # killed before epoch 2's checkpoint was written
        return 0.0, {}

    part = fresh_model()
    with pytest.raises(Interrupt):
        fit(part, SourceOnly(), tiny, cfg=cfg(), out_dir=tmp_path / "part", seed=3, progress=False,
            score_fn=dies_in_epoch_two)
    assert (tmp_path / "part" / "last.pt").exists()

    resumed = fresh_model()
    torch.manual_seed(1234)  # the caller's RNG state must not matter
    res = fit(resumed, SourceOnly(), tiny, cfg=cfg(), out_dir=tmp_path / "part", seed=3, progress=False,
              resume=True, score_fn=lambda m: (float(calls.__setitem__("n", calls["n"] + 1) or calls["n"]), {}))
    assert res.epochs_run == 3
    w_full, w_res = weights(full), weights(resumed)
    for k in w_full:
        assert torch.equal(w_full[k], w_res[k]), k


def test_same_seed_same_weights_different_seed_different(tiny, tmp_path):
    a, b, c = fresh_model(), fresh_model(), fresh_model()
    for m, seed, d in ((a, 1, "a"), (b, 1, "b"), (c, 2, "c")):
        fit(m, SourceOnly(), tiny, cfg=cfg(epochs=1), out_dir=tmp_path / d, seed=seed, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(weights(a).values(), weights(b).values()))
    assert not all(torch.equal(x, y) for x, y in zip(weights(a).values(), weights(c).values()))


class NaNAtEpoch(SourceOnly):
    def __init__(self, epoch_progress: float):
        super().__init__()
        self.at = epoch_progress

    def loss(self, model, xs, ys, xt, progress):
        loss, logs = super().loss(model, xs, ys, xt, progress)
        if progress >= self.at:
            loss = loss * float("nan")
        return loss, logs


def test_nan_guard_stops_with_one_line_and_keeps_last_good_checkpoint(tiny, tmp_path):
    model = fresh_model()
    with pytest.raises(TrainingDiverged) as err:
        fit(model, NaNAtEpoch(0.5), tiny, cfg=cfg(epochs=2), out_dir=tmp_path, seed=0, progress=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert "loss became nan at epoch 2, step 1" in msg and str(tmp_path / "last.pt") in msg
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["state"]["epoch"] == 0  # epoch 1 (0-based 0) is the last good one
    assert all(torch.isfinite(v).all() for v in ckpt["trainable"].values() if v.is_floating_point())


def test_early_stopping_rolls_back_to_best_epoch(tiny, tmp_path):
    scores = iter([0.5, 0.9, 0.4, 0.3, 0.2, 0.1])
    snapshots = []

    def score(model):
        snapshots.append(weights(model))
        return next(scores), {}

    model = fresh_model()
    res = fit(model, SourceOnly(), tiny, cfg=cfg(epochs=6, patience=2), out_dir=tmp_path, seed=0,
              progress=False, score_fn=score)
    assert res.stopped_early and res.epochs_run == 4 and res.best_epoch == 2
    final = weights(model)
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)


def test_lr_schedules():
    assert lr_factor("cosine", 0) == 1 and lr_factor("cosine", 1) == pytest.approx(0)
    assert lr_factor("dann", 0) == 1
    assert lr_factor("dann", 1) == pytest.approx(1 / 11 ** 0.75)
    assert lr_factor("constant", 0.7) == 1


def test_epoch_order_shards_are_disjoint_and_balanced_sampler_balances():
    from adapt.distributed import DistContext

    a = epoch_order(100, 0, 0, DistContext(0, 2))
    b = epoch_order(100, 0, 0, DistContext(1, 2))
    assert len(a) == len(b) == 50 and not set(a) & set(b)
    assert epoch_order(100, 1, 0) != epoch_order(100, 0, 0)
    labels = np.array([0] * 90 + [1] * 10)
    w = np.where(labels == 1, 1 / 10, 1 / 90)
    drawn = labels[epoch_order(100, 0, 0, weights=w * 0 + w)]
    assert 0.35 < drawn.mean() < 0.65


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cli_killed_run_resumes_to_the_same_model(tmp_path):
    """SIGKILL the real `adapt-run` mid-training, `--resume`, compare with an uninterrupted run."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "name: tiny\nseed: 1\n"
        "data: {source: {kind: phantom-cxr, site: A, n: 160}, target: {kind: phantom-cxr, site: B, n: 80},"
        " image_size: 32}\n"
        "train: {epochs: 4, batch_size: 16, device: cpu, patience: null, threads: 1}\n"
        "method: {runs: [{name: adabn, adabn: true, epochs: 0}]}\n"
        "diagnostics: {enabled: false}\n"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    base = [sys.executable, "-m", "domaingap.adapt_run", str(recipe), "--quiet"]
    # the uninterrupted run: the same command in this process (one interpreter start fewer)
    assert adapt_main([str(recipe), "--quiet", f"output.dir={tmp_path / 'a'}"]) == 0

    out_b = tmp_path / "b"
    proc = subprocess.Popen(base + [f"output.dir={out_b}"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # a fresh run trains in its staging folder and moves into out_b/tiny only when finished
    last = out_b / ".tiny.partial" / "source" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not last.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists(), "the run never wrote a checkpoint"
    epoch_at_kill = torch.load(last, weights_only=True)["state"]["epoch"]
    assert epoch_at_kill < 3, "the run finished before it could be killed"
    done = subprocess.run(base + [f"output.dir={out_b}", "--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ma, _ = load_checkpoint(tmp_path / "a" / "tiny" / "source" / "model.pt")
    mb, _ = load_checkpoint(out_b / "tiny" / "source" / "model.pt")
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(va, vb), k


class RecordsTarget(SourceOnly):
    """SourceOnly that notes whether each step got a target batch."""

    def __init__(self, uses_target: bool):
        super().__init__()
        self.uses_target = uses_target
        self.seen: list[bool] = []

    def loss(self, model, xs, ys, xt, progress):
        self.seen.append(xt is not None)
        return super().loss(model, xs, ys, xt, progress)


class TargetStyle:
    """An image style that declares it needs the target batch (as FDA does)."""

    name = "needs_target"
    uses_target = True

    def __call__(self, xs, xt, generator=None):
        assert xt is not None
        return xs


def test_target_batches_are_drawn_iff_a_part_declares_uses_target(tiny, tmp_path):
    run = lambda objective, **kw: fit(fresh_model(), objective, tiny, cfg=cfg(epochs=1),  # noqa: E731
                                      out_dir=tmp_path, seed=0, progress=False, **kw)
    idle = RecordsTarget(uses_target=False)
    run(idle, target_train=tiny)
    assert idle.seen and not any(idle.seen)  # given, but nobody asked for it
    wants = RecordsTarget(uses_target=True)
    run(wants, target_train=tiny)
    assert all(wants.seen)
    styled = RecordsTarget(uses_target=False)
    run(styled, target_train=tiny, style=TargetStyle())
    assert all(styled.seen)  # the style's declaration is enough
    with pytest.raises(ValueError, match="target_train"):
        run(RecordsTarget(uses_target=True))
