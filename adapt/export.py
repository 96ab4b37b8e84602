"""ONNX export of a classifier, verified with onnxruntime before the file is written.

The exported graph is the whole :class:`~adapt.models.Classifier` — normalisation
included — so a deployment feeds it exactly what domaingap models take:

* input ``images``: float32 ``[batch, channels, image_size, image_size]`` with pixel
  values in [0, 1] (the batch axis is dynamic);
* output ``logits``: float32 ``[batch, num_classes]`` (softmax gives class probabilities).

The preprocessing a deployment must reproduce is written into the file's metadata
(``metadata_props``, readable with ``onnx.load(path).metadata_props`` or onnxruntime's
``get_modelmeta().custom_metadata_map``): ``image_size``, ``channels``, ``input_range``,
``normalisation`` (mean/std per channel, applied inside the graph), ``classes`` (JSON,
index = logit column), ``arch`` and ``batchnorm_statistics``. Models with per-domain
BatchNorm statistics (AdaBN, fine-tuning on the target) are exported with the target's
statistics; the caller says so with ``batchnorm_statistics="target"`` and
:func:`variant_file_name` gives the file a name that says it too.

Before anything is written, onnxruntime runs the exported graph on ``check_images``
seeded random images and compares the logits with PyTorch's: a max |difference| above
``tolerance`` (default 1e-4) is a one-line :class:`UserError` and no file is written.

``onnx`` and ``onnxruntime`` are an optional extra (``pip install 'domaingap[deploy]'``).
"""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from adapt.errors import UserError, exception_line
from adapt.io import atomic_write_bytes
from adapt.models import Classifier, load_checkpoint, unwrap_model

__all__ = ["ExportResult", "check_available", "export_onnx", "export_checkpoint", "variant_file_name", "read_onnx_metadata"]

#: ONNX opset: 17 is supported by every onnxruntime >= 1.14
OPSET = 17
BN_STATISTICS = ("as trained", "target")
_DEPLOY_EXTRA = "pip install 'domaingap[deploy]'"


@dataclass
class ExportResult:
    """What was exported: where, which variant, and how closely onnxruntime agrees."""

    path: Path
    arch: str
    image_size: int
    channels: int
    classes: list[str]
    batchnorm_statistics: str
    max_abs_diff: float
    check_images: int
    tolerance: float
    opset: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _onnx_modules():
    """(onnx, onnxruntime), or a one-line UserError naming the extra.

    Imported here, not at module level: both are an optional dependency (``.[deploy]``)
    that only export needs.
    """
    # late: an optional extra (.[deploy]) that only export needs
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise UserError(f"ONNX export needs the '{err.name}' package: {_DEPLOY_EXTRA}") from None
    return onnx, onnxruntime


def check_available() -> None:
    """Raise the one-line UserError now if onnx/onnxruntime are missing (before a run trains)."""
    _onnx_modules()


def variant_file_name(path: str | os.PathLike, batchnorm_statistics: str) -> Path:
    """``model.onnx`` → ``model.target_bn.onnx`` for the target-statistics variant."""
    path = Path(path)
    if batchnorm_statistics != "target" or path.stem.endswith(".target_bn"):
        return path
    return path.with_name(f"{path.stem}.target_bn{path.suffix or '.onnx'}")


def _metadata(model: Classifier, image_size: int, classes: list[str], batchnorm_statistics: str,
              extra: dict[str, str]) -> dict[str, str]:
    mean, std = model.normalize.stats()
    bn_text = ("target: BatchNorm statistics re-estimated on target images (per-domain BatchNorm; "
               "use this model on the target domain only)" if batchnorm_statistics == "target"
               else "as trained")
    return {
        "producer": "domaingap",
        "arch": model.arch,
        "image_size": str(image_size),
        "channels": str(model.in_channels),
        "input": f"float32 [batch, {model.in_channels}, {image_size}, {image_size}], pixel values in [0, 1]",
        "input_range": "[0, 1]",
        "resize": f"to {image_size}x{image_size} (bilinear, antialiased, as domaingap's loaders do)",
        "normalisation": json.dumps({"mean": mean, "std": std, "applied": "inside the graph"}),
        "classes": json.dumps(list(classes)),
        "output": f"logits float32 [batch, {len(classes)}]; softmax for probabilities",
        "batchnorm_statistics": bn_text,
        **{k: str(v) for k, v in extra.items()},
    }


def export_onnx(
    model: torch.nn.Module,
    out_path: str | os.PathLike,
    *,
    image_size: int,
    classes: list[str] | None = None,
    batchnorm_statistics: str = "as trained",
    check_images: int = 64,
    tolerance: float = 1e-4,
    seed: int = 0,
    metadata: dict[str, str] | None = None,
) -> ExportResult:
    """Export ``model`` (a Classifier, in eval mode) to ONNX at ``out_path``, verified.

    Args:
        model: the classifier; a copy is exported on the CPU (the original is untouched).
        out_path: the ``.onnx`` file, written atomically and only after verification.
        image_size: the side of the square images the model was trained on (pixels).
        classes: class names, one per logit (default "0", "1", ...).
        batchnorm_statistics: ``"as trained"`` or ``"target"`` (per-domain BatchNorm
            models carrying the target's statistics); written into the metadata.
        check_images: random images [0, 1] (seeded) on which onnxruntime must match PyTorch.
        tolerance: largest allowed max |logit difference|.
        metadata: extra ``key: value`` strings for the file (e.g. the source checkpoint).

    Returns: :class:`ExportResult`. Raises :class:`UserError` (one line) when onnx or
    onnxruntime is missing, the model cannot be exported, or the check fails.
    """
    onnx, ort = _onnx_modules()
    model = unwrap_model(model)
    if not isinstance(model, Classifier):
        raise UserError(f"ONNX export needs a domaingap Classifier, got {type(model).__name__}")
    if batchnorm_statistics not in BN_STATISTICS:
        raise UserError(f"batchnorm_statistics {batchnorm_statistics!r}: choose one of {', '.join(BN_STATISTICS)}")
    if not isinstance(image_size, int) or image_size < 1:
        raise UserError(f"image_size {image_size!r}: must be a positive integer")
    if check_images < 1:
        raise UserError(f"check_images {check_images}: must be at least 1")
    classes = [str(c) for c in classes] if classes else [str(i) for i in range(model.num_classes)]
    if len(classes) != model.num_classes:
        raise UserError(f"classes: {len(classes)} names for a {model.num_classes}-class model")
    out_path = Path(out_path)

    net = copy.deepcopy(model).cpu().float().eval()
    gen = torch.Generator().manual_seed(int(seed))
    images = torch.rand(check_images, model.in_channels, image_size, image_size, generator=gen)
    example = images[: min(2, check_images)]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export, which needs
        # onnxscript (not in the deploy extra); the tracer warns about the shape check
        # in Classifier.features, which is constant for a fixed channel count.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                net, (example,), buf, dynamo=False, opset_version=OPSET,
                input_names=["images"], output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )
        except Exception as exc:  # an operator without an ONNX form, a tracing failure
            raise UserError(f"{out_path}: ONNX export of {model.arch} failed ({exception_line(exc)})") from None
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in _metadata(net, image_size, classes, batchnorm_statistics, metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"domaingap {model.arch} classifier ({len(classes)} classes); see metadata_props"
    data = proto.SerializeToString()

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": images.numpy()})[0]
    with torch.inference_mode():
        want = net(images).numpy()
    diff = float(abs(got - want).max())
    if not diff <= tolerance:  # also catches NaN
        raise UserError(f"{out_path}: onnxruntime logits differ from PyTorch's by up to {diff:.3g} "
                        f"(tolerance {tolerance:g}) on {check_images} images; nothing written")
    atomic_write_bytes(out_path, data)
    return ExportResult(
        path=out_path, arch=model.arch, image_size=image_size, channels=model.in_channels, classes=classes,
        batchnorm_statistics=batchnorm_statistics, max_abs_diff=diff, check_images=check_images,
        tolerance=tolerance, opset=OPSET, bytes=len(data),
    )


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    batchnorm_statistics: str | None = None,
    **kwargs: Any,
) -> ExportResult:
    """Export a domaingap checkpoint (``model.pt``); image size and classes from its meta.

    ``batchnorm_statistics``: None reads ``meta["batchnorm_statistics"]`` (written by
    adapt-run), else "as trained".
    """
    model, meta = load_checkpoint(checkpoint)
    image_size = meta.get("image_size")
    if image_size is None:
        raise UserError(f"{checkpoint}: checkpoint does not record its image size (meta 'image_size')")
    bn = batchnorm_statistics or meta.get("batchnorm_statistics") or "as trained"
    extra = {"checkpoint": Path(checkpoint).name, **(kwargs.pop("metadata", None) or {})}
    return export_onnx(model, out_path, image_size=int(image_size), classes=meta.get("classes"),
                       batchnorm_statistics=bn, metadata=extra, **kwargs)


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (what a deployment reads)."""
    onnx, _ = _onnx_modules()
    if not Path(path).is_file():
        raise UserError(f"{path}: ONNX file not found")
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
