"""Feature extraction: streaming moments, the extractors, no downloads, DDP merging."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adapt.data import load_domain, parse_domain_arg, write_phantom
from adapt.errors import UserError
from adapt.models import build_model
from diagnostics.features import FeatureSet, extract_features


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def site_a():
    return load_domain(parse_domain_arg("phantom-cxr:A:90"), image_size=32, seed=3)


def _np_cov(x: np.ndarray) -> np.ndarray:
    return np.cov(x.astype(np.float64), rowvar=False)


@pytest.mark.parametrize("batch_size", [7, 64, 500])
def test_moments_equal_numpy_mean_and_cov_of_the_features(site_a, batch_size):
    fs = extract_features(site_a, kind="pixels", batch_size=batch_size, progress=False)
    assert isinstance(fs, FeatureSet)
    assert fs.moments.n == len(site_a) == len(fs)
    np.testing.assert_allclose(fs.moments.mean.numpy(), fs.features.astype(np.float64).mean(0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(fs.moments.cov.numpy(), _np_cov(fs.features), rtol=1e-6, atol=1e-9)


def test_pixel_features_are_block_means_of_the_image(site_a):
    fs = extract_features(site_a, kind="pixels", pixel_size=16, progress=False)
    assert fs.features.shape == (len(site_a), 256) and fs.features.dtype == np.float32
    assert fs.probs is None and fs.kind == "pixels"
    assert "16×16" in fs.extractor and "256-d" in fs.extractor
    img = site_a.images().numpy()[:, 0]  # [N, 32, 32]
    blocks = img.reshape(len(img), 16, 2, 16, 2).mean(axis=(2, 4)).reshape(len(img), -1)
    np.testing.assert_allclose(fs.features, blocks, atol=1e-6)
    np.testing.assert_array_equal(fs.labels, site_a.labels)


def test_model_features_are_the_penultimate_layer_with_probs(site_a):
    torch.manual_seed(0)
    model = build_model("small_cnn", 2)
    model.train()  # extract_features must switch to eval (BatchNorm running stats) and back
    fs = extract_features(site_a, model, "model", batch_size=16, progress=False, model_source="ckpt/model.pt")
    assert model.training
    model.eval()
    with torch.no_grad():
        x = site_a.images()
        ref = model.features(x).numpy()
        ref_p = torch.softmax(model(x), 1).numpy()
    np.testing.assert_allclose(fs.features, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fs.probs, ref_p, rtol=1e-5, atol=1e-6)
    assert fs.extractor == "model penultimate layer (small_cnn, 128-d, ckpt/model.pt)"
    np.testing.assert_allclose(fs.moments.cov.numpy(), _np_cov(fs.features), rtol=1e-5, atol=1e-8)


def test_a_model_also_gives_probs_with_pixel_features(site_a):
    model = build_model("small_cnn", 2).eval()
    fs = extract_features(site_a, model, "pixels", progress=False)
    assert fs.features.shape == (len(site_a), 256)
    assert fs.probs.shape == (len(site_a), 2)
    np.testing.assert_allclose(fs.probs.sum(1), 1.0, atol=1e-5)


def test_rgb_model_on_gray_images_replicates_the_channel(site_a):
    model = build_model("small_cnn", 2, in_channels=3).eval()
    fs = extract_features(site_a, model, progress=False)
    with torch.no_grad():
        ref = model.features(site_a.images().expand(-1, 3, -1, -1)).numpy()
    np.testing.assert_allclose(fs.features, ref, rtol=1e-5, atol=1e-5)


def test_model_kind_without_model_is_a_user_error(site_a):
    with pytest.raises(UserError, match="needs a model"):
        extract_features(site_a, kind="model", progress=False)


def test_inception_without_cached_weights_is_a_one_line_user_error(site_a, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError) as err:
        extract_features(site_a, kind="inception_v3", progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "nothing is downloaded" in msg
    assert str(tmp_path / "hub" / "checkpoints" / "inception_v3_google-0cc3c7bd.pth") in msg
    assert not any((tmp_path / "hub").rglob("*.pth"))  # and nothing was fetched


def test_unknown_extractor_is_a_user_error(site_a):
    with pytest.raises(UserError, match="unknown"):
        extract_features(site_a, kind="no_such_net", progress=False)


def test_torchvision_extractor_uses_the_cached_imagenet_file(site_a, tmp_path, monkeypatch):
    """A resnet18 file in the hub cache is used as is: pooled 512-d features of the
    ImageNet-normalised, 224-px, 3-channel image."""
    import torchvision.models as tvm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = tvm.get_model_weights("resnet18").DEFAULT.url
    path = tmp_path / "hub" / "checkpoints" / os.path.basename(url)
    path.parent.mkdir(parents=True)
    torch.manual_seed(1)
    net = tvm.resnet18(weights=None).eval()
    torch.save(net.state_dict(), path)
    small = site_a.subset(np.arange(6))
    fs = extract_features(small, kind="resnet18", batch_size=4, progress=False)
    assert fs.features.shape == (6, 512) and str(path) in fs.extractor
    net.fc = torch.nn.Identity()
    x = F.interpolate(small.images().expand(-1, 3, -1, -1), size=(224, 224), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = net((x - mean) / std).numpy()
    np.testing.assert_allclose(fs.features, ref, rtol=1e-4, atol=1e-5)


def test_file_backed_domain_with_workers_matches_single_process(tmp_path):
    root = write_phantom(tmp_path / "a", "A", 24, seed=0, image_size=32)
    ds = load_domain(parse_domain_arg(str(root / "manifest.csv")), image_size=32)
    f0 = extract_features(ds, kind="pixels", batch_size=5, num_workers=0, progress=False)
    f1 = extract_features(ds, kind="pixels", batch_size=5, num_workers=1, progress=False)
    np.testing.assert_array_equal(f0.features, f1.features)
    np.testing.assert_array_equal(f0.labels, f1.labels)
    assert f0.moments.n == f1.moments.n == 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ds = load_domain(parse_domain_arg("phantom-cxr:A:45"), image_size=16, seed=3)
        fs = extract_features(ds, kind="pixels", pixel_size=8, batch_size=4, progress=False)
        torch.save({"features": torch.from_numpy(fs.features), "labels": torch.from_numpy(fs.labels),
                    "n": fs.moments.n, "sum": fs.moments.sum, "outer": fs.moments.outer},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ranks_merge_moments_and_return_the_whole_dataset(tmp_path):
    """Two gloo ranks each extract half; both return all 45 rows in order and the summed moments."""
    import torch.multiprocessing as mp

    # fork: the children inherit the imported modules (spawn would re-import torch twice)
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    ds = load_domain(parse_domain_arg("phantom-cxr:A:45"), image_size=16, seed=3)
    single = extract_features(ds, kind="pixels", pixel_size=8, progress=False)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["n"] == 45
        np.testing.assert_array_equal(got["features"].numpy(), single.features)
        np.testing.assert_array_equal(got["labels"].numpy(), single.labels)
        np.testing.assert_allclose(got["sum"].numpy(), single.moments.sum.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got["outer"].numpy(), single.moments.outer.numpy(), rtol=1e-12, atol=1e-12)
