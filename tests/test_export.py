"""ONNX export: onnxruntime reproduces PyTorch's logits at any batch size, the file says
how to preprocess, a per-domain-BatchNorm model goes out with its target statistics and
a name that says so, and a failed check or a missing extra is one line with no file."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from adapt.errors import UserError
from adapt.export import export_checkpoint, export_onnx, read_onnx_metadata, variant_file_name
from adapt.methods.adabn import adabn
from adapt.models import build_model, save_checkpoint

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n: int, c: int, size: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, c, size, size, generator=g) * scale + shift).clamp(0, 1)


def _onnx_logits(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x.numpy()})[0]


def _trained_bn(model: torch.nn.Module, seed: int) -> None:
    """Give the BatchNorm layers non-default running statistics (as training would)."""
    adabn(model, _images(64, model.in_channels, 32, seed, scale=0.6, shift=0.2))
    model.eval()


@pytest.mark.parametrize("arch,channels", [("small_cnn", 1), ("resnet18", 3)])
def test_onnxruntime_matches_pytorch_at_any_batch_size(arch, channels, tmp_path):
    torch.manual_seed(0)
    model = build_model(arch, 3, channels).eval()
    _trained_bn(model, seed=1)
    out = tmp_path / "model.onnx"
    result = export_onnx(model, out, image_size=32, classes=["a", "b", "c"])
    assert out.is_file() and result.bytes == out.stat().st_size
    assert result.check_images == 64 and result.max_abs_diff <= 1e-4
    # fresh images, batch sizes other than the export example's: the batch axis is dynamic
    for n in (1, 64, 5):
        x = _images(n, channels, 32, seed=10 + n)
        with torch.inference_mode():
            want = model(x).numpy()
        got = _onnx_logits(out, x)
        assert got.shape == (n, 3)
        assert np.abs(got - want).max() <= 1e-4


def test_metadata_documents_the_preprocessing(tmp_path):
    model = build_model("small_cnn", 2, 1).eval()
    out = tmp_path / "m.onnx"
    export_onnx(model, out, image_size=48, classes=["normal", "opacity"], metadata={"run": "adabn"})
    meta = read_onnx_metadata(out)
    assert meta["image_size"] == "48" and meta["channels"] == "1" and meta["input_range"] == "[0, 1]"
    assert json.loads(meta["classes"]) == ["normal", "opacity"]
    mean, std = model.normalize.stats()
    norm = json.loads(meta["normalisation"])
    assert norm["mean"] == pytest.approx(mean) and norm["std"] == pytest.approx(std)
    assert meta["arch"] == "small_cnn" and meta["run"] == "adabn"
    assert meta["batchnorm_statistics"] == "as trained"
    # onnxruntime's own reader sees the same (what a deployment would use)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["image_size"] == "48"
    assert session.get_inputs()[0].shape[1:] == [1, 48, 48]


def test_per_domain_bn_model_exports_its_target_statistics_under_its_own_name(tmp_path):
    torch.manual_seed(0)
    source_model = build_model("small_cnn", 2, 1).eval()
    _trained_bn(source_model, seed=1)
    target_model = build_model("small_cnn", 2, 1)
    target_model.load_state_dict(source_model.state_dict())
    # AdaBN on darker, low-contrast "target" images: other BatchNorm statistics
    adabn(target_model, _images(128, 1, 32, seed=2, scale=0.3, shift=0.05))
    target_model.eval()
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, target_model, classes=["normal", "opacity"], image_size=32, channels=1,
                    batchnorm_statistics="target")

    out = variant_file_name(tmp_path / "model.onnx", "target")
    assert out.name == "model.target_bn.onnx"
    assert variant_file_name(tmp_path / "model.onnx", "as trained").name == "model.onnx"
    result = export_checkpoint(ckpt, out)
    assert result.batchnorm_statistics == "target"
    assert read_onnx_metadata(out)["batchnorm_statistics"].startswith("target")

    x = _images(16, 1, 32, seed=3, scale=0.3, shift=0.05)
    got = _onnx_logits(out, x)
    with torch.inference_mode():
        with_target = target_model(x).numpy()
        with_source = source_model(x).numpy()
    assert np.abs(got - with_target).max() <= 1e-4
    # the source-statistics model gives other logits: the export really is the variant
    assert np.abs(got - with_source).max() > 100 * 1e-4


def test_failed_check_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    real_run = ort.InferenceSession.run

    def off_by_a_little(self, names, feeds, *args, **kwargs):
        return [o + 1e-3 for o in real_run(self, names, feeds, *args, **kwargs)]

    monkeypatch.setattr(ort.InferenceSession, "run", off_by_a_little)
    out = tmp_path / "m.onnx"
    with pytest.raises(UserError) as err:
        export_onnx(build_model("small_cnn", 2, 1).eval(), out, image_size=32)
    msg = str(err.value)
    assert "\n" not in msg and "differ" in msg and "nothing written" in msg
    assert not out.exists() and not list(tmp_path.iterdir())


def test_missing_onnxruntime_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(UserError, match=r"onnxruntime.*domaingap\[deploy\]"):
        export_onnx(build_model("small_cnn", 2, 1).eval(), tmp_path / "m.onnx", image_size=32)
    assert not (tmp_path / "m.onnx").exists()


def test_bad_inputs_are_user_errors(tmp_path):
    model = build_model("small_cnn", 2, 1).eval()
    with pytest.raises(UserError, match="classes"):
        export_onnx(model, tmp_path / "m.onnx", image_size=32, classes=["only-one"])
    with pytest.raises(UserError, match="batchnorm_statistics"):
        export_onnx(model, tmp_path / "m.onnx", image_size=32, batchnorm_statistics="source")
    with pytest.raises(UserError, match="checkpoint not found"):
        export_checkpoint(tmp_path / "missing.pt", tmp_path / "m.onnx")
