"""The bad-input corpus, inputs family: every file read is checked for what it claims.

Float images with NaN/inf pixels, broken and looping symlinks, a file listed twice, a
checkpoint whose weights are NaN, damaged drift references, and files of another format
(safetensors, ONNX, a NumPy archive) given as a checkpoint or reference: each is one
``error:`` line naming the file (or, with ``skip_unreadable``, a file skipped and listed
in ``data.json``), exit code 2, no traceback, the finished run untouched.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_bad_inputs import image_folder, invoke, tree_hash, world  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("one_thread")


def float_tiff(path: Path, value: float) -> Path:
    arr = np.random.default_rng(0).random((32, 32), dtype=np.float32)
    arr[3, 5] = value
    Image.fromarray(arr, mode="F").save(path)
    return path


def safetensors_file(path: Path) -> Path:
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0\0\0")
    return path


def onnx_file(path: Path) -> Path:
    path.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x052.5.0" + bytes(64))  # ir_version 8, producer "pytorch"
    return path


def nan_checkpoint(world, tmp: Path) -> Path:
    ck = torch.load(world.model_pt, weights_only=True)
    key = next(k for k, v in ck["state_dict"].items() if v.is_floating_point())
    ck["state_dict"][key] = ck["state_dict"][key].clone().fill_(float("nan"))
    torch.save(ck, tmp / "nan.pt")
    return tmp / "nan.pt"


def folders(tmp: Path) -> tuple[Path, Path]:
    return image_folder(tmp / "a", {"cat": 8, "dog": 8}), image_folder(tmp / "b", {"cat": 8, "dog": 8}, seed=1)


def data_patch(a: Path, b: Path, skip: bool = False, kind: str = "imagefolder") -> dict:
    return {"data": {"source": {"kind": kind, "path": str(a)}, "target": {"kind": "imagefolder", "path": str(b)},
                     "skip_unreadable": skip}}


# -- each builds (tmp, world) -> (recipe patch, the culprit file, text the error names)
def _nan_tiff(t, w):
    a, b = folders(t)
    return data_patch(a, b), float_tiff(a / "cat" / "nan.tif", float("nan")), "non-finite pixel value"


def _inf_tiff(t, w):
    a, b = folders(t)
    return data_patch(a, b), float_tiff(a / "dog" / "inf.tif", float("inf")), "non-finite pixel value"


def _broken_link(t, w):
    a, b = folders(t)
    (a / "cat" / "gone.png").symlink_to(t / "nowhere.png")
    return data_patch(a, b), a / "cat" / "gone.png", "broken or looping symbolic link"


def _looping_link(t, w):
    a, b = folders(t)
    (a / "dog" / "loop.png").symlink_to(a / "dog" / "loop.png")
    return data_patch(a, b), a / "dog" / "loop.png", "broken or looping symbolic link"


DATA_CASES = {"nan_pixels_float_tiff": _nan_tiff, "inf_pixels_float_tiff": _inf_tiff,
              "broken_symlink": _broken_link, "looping_symlink": _looping_link}


@pytest.mark.parametrize("name", sorted(DATA_CASES))
def test_an_unreadable_file_is_named(name, world, tmp_path, capsys):
    patch, culprit, why = DATA_CASES[name](tmp_path, world)
    before = tree_hash(world.base_run)
    code, out, err, _ = invoke("adapt", [str(world.recipe(tmp_path, patch)), "--quiet", "--overwrite"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(culprit) in lines[0] and why in lines[0] and "Traceback" not in out + err
    assert tree_hash(world.base_run) == before


@pytest.mark.parametrize("name", sorted(DATA_CASES))
def test_with_skip_unreadable_it_is_skipped_and_listed(name, world, tmp_path, capsys):
    patch, culprit, why = DATA_CASES[name](tmp_path, world)
    patch["data"]["skip_unreadable"] = True
    patch["output"] = {"dir": str(tmp_path / "runs")}
    code, _, err, _ = invoke("adapt", [str(world.recipe(tmp_path, patch)), "--quiet"], capsys)
    assert code == 0, err
    skipped = dict(json.loads((tmp_path / "runs" / "base" / "data.json").read_text())["source"]["skipped"])
    assert list(skipped) == [str(culprit)] and why in skipped[str(culprit)]


def _manifest_twice(t, w):
    a, b = folders(t)
    rows = [f"a/{c}/{i}.png,{c}" for c in ("cat", "dog") for i in range(8)]
    (t / "m.csv").write_text("path,label\n" + "\n".join(rows + rows[:1]) + "\n")
    return data_patch(t / "m.csv", b, kind="csv"), "a/cat/0.png is listed twice"


def _link_to_listed_file(t, w):
    a, b = folders(t)
    (a / "dog" / "also.png").symlink_to(a / "cat" / "0.png")
    return data_patch(a, b), f"is the same file as {a / 'cat' / '0.png'}"


INPUT_CASES = {
    "manifest_row_twice": _manifest_twice,
    "symlink_to_a_listed_file": _link_to_listed_file,
    "source_checkpoint_nan_weights": lambda t, w: (
        {"model": {"source_checkpoint": str(nan_checkpoint(w, t))}}, "checkpoint weights are not finite"),
    "source_checkpoint_safetensors": lambda t, w: (
        {"model": {"source_checkpoint": str(safetensors_file(t / "m.safetensors"))}}, "it is a safetensors file"),
    "source_checkpoint_onnx": lambda t, w: (
        {"model": {"source_checkpoint": str(onnx_file(t / "m.onnx"))}}, "it is an ONNX model"),
}


@pytest.mark.parametrize("name", sorted(INPUT_CASES))
def test_a_bad_recipe_input_is_one_error_line(name, world, tmp_path, capsys):
    patch, culprit = INPUT_CASES[name](tmp_path, world)
    patch["output"] = {"dir": str(tmp_path / "runs")}
    before = tree_hash(world.base_run)
    code, out, err, _ = invoke("adapt", [str(world.recipe(tmp_path, patch)), "--quiet"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and culprit in lines[0] and "Traceback" not in out + err, err
    assert tree_hash(world.base_run) == before and not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- diagnose: checkpoints, references


def reference_run(world, tmp: Path, damage) -> Path:
    """A copy of the finished run with a drift reference written by ``damage(valid npz bytes)``."""
    from diagnostics.drift import REFERENCE_FORMAT

    run = tmp / "run"
    shutil.copytree(world.base_run, run)
    header = {"format": REFERENCE_FORMAT, "version": 1, "classes": ["a", "b"], "extractor": "model", "n": 4,
              "meta": {"image_size": 32, "channels": 1}, "piled_up": False}
    arrays = {"features": np.ones((4, 3), np.float32), "moments_sum": np.ones(3), "moments_outer": np.ones((3, 3)),
              "counts": np.array([2, 2]), "confidences": np.full(4, 0.9)}
    buf = io.BytesIO()
    arrays = damage(arrays, header)  # before the header is serialised: some cases damage it
    np.savez_compressed(buf, header=np.array(json.dumps(header)), **arrays)
    data = buf.getvalue()
    (run / "drift_reference.npz").write_bytes(data[: len(data) // 2] if "truncate" in header else data)
    return run


def _with(**changes):
    def damage(arrays, header):
        for k, v in changes.items():
            (header if k in ("classes", "n", "truncate") else arrays)[k] = v
        return arrays
    return damage


REFERENCE_CASES = {
    "reference_truncated": (_with(truncate=True), "not a readable drift reference"),
    "reference_nan_features": (_with(features=np.full((4, 3), np.nan, np.float32)), "'features' holds"),
    "reference_counts_wrong_length": (_with(counts=np.array([1, 1, 2])), "'counts' has shape [3]"),
    "reference_confidence_above_one": (_with(confidences=np.full(4, 1.5)), "confidences outside [0, 1]"),
    "reference_moments_wrong_shape": (_with(moments_outer=np.ones((2, 2))), "'moments_outer' has shape"),
    "reference_classes_not_names": (_with(classes=[1, 2]), "classes are not a list of names"),
    "reference_n_zero": (_with(n=0), "n is 0"),
    "reference_missing_array": (lambda arrays, header: {k: v for k, v in arrays.items() if k != "counts"},
                                "not a readable drift reference"),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_CASES))
def test_a_damaged_drift_reference_is_one_error_line(name, world, tmp_path, capsys):
    damage, culprit = REFERENCE_CASES[name]
    run = reference_run(world, tmp_path, damage)
    before = tree_hash(run)
    code, out, err, _ = invoke("diagnose", ["drift", str(run), "--batch", "phantom-cxr:B:20", "--quiet"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and culprit in lines[0] and "drift_reference.npz" in lines[0], err
    assert "Traceback" not in out + err and tree_hash(run) == before


def test_a_valid_reference_passes_the_checks(world, tmp_path):
    from diagnostics.drift import load_reference

    ref = load_reference(reference_run(world, tmp_path, _with()) / "drift_reference.npz")
    assert ref.classes == ["a", "b"] and ref.features.shape == (4, 3)


def test_another_format_as_a_drift_reference_is_named(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world.base_run, run)
    safetensors_file(run / "drift_reference.npz")
    code, _, err, _ = invoke("diagnose", ["drift", str(run), "--batch", "phantom-cxr:B:20", "--quiet"], capsys)
    assert code == 2 and "it is a safetensors file" in err and len(err.strip().splitlines()) == 1, err


CHECKPOINT_CASES = {"nan_weights": (nan_checkpoint, "checkpoint weights are not finite"),
                    "safetensors": (lambda w, t: safetensors_file(t / "m.safetensors"), "it is a safetensors file"),
                    "onnx": (lambda w, t: onnx_file(t / "m.onnx"), "it is an ONNX model"),
                    "npz": (lambda w, t: _npz(t / "m.npz"), "it is a NumPy .npz archive")}


def _npz(path: Path) -> Path:
    np.savez(path, w=np.ones(3))
    return path


@pytest.mark.parametrize("command", ["gap", "export"])
@pytest.mark.parametrize("name", sorted(CHECKPOINT_CASES))
def test_a_bad_checkpoint_for_diagnose_is_one_error_line(name, command, world, tmp_path, capsys):
    make, culprit = CHECKPOINT_CASES[name]
    ckpt = make(world, tmp_path)
    argv = (["gap", "--source", "phantom-cxr:A:20", "--target", "phantom-cxr:B:20", "--model", str(ckpt),
             "--quiet"] if command == "gap" else ["export", str(ckpt), str(tmp_path / "out.onnx")])
    code, out, err, _ = invoke("diagnose", argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and culprit in lines[0] and str(ckpt) in lines[0], err
    assert "Traceback" not in out + err and not (tmp_path / "out.onnx").exists()
