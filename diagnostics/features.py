"""Batched feature extraction with streaming moments (mergeable across batches and ranks).

``extract_features(dataset, model=None, kind=...)`` runs one pass over a dataset through
a DataLoader (workers, pinned memory on CUDA), in ``torch.inference_mode`` with the model
in eval mode, and returns a :class:`FeatureSet`:

* ``features`` [N, D] float32 (numpy), ``labels`` [N] int64 (-1 = unknown);
* ``probs`` [N, K] float32 softmax outputs when a classifier model is given (whatever
  ``kind`` is: the classifier runs on the same batch), else None;
* ``moments``: :class:`~diagnostics.moments.Moments` (n, Σx, ΣxxT in float64),
  accumulated batch by batch on the device — the Fréchet distance needs only these;
* ``extractor``: one plain sentence naming the features.

Extractors (``kind``):

* ``"model"`` — the classifier's penultimate layer, ``Classifier.features(x)``;
* ``"pixels"`` — the image averaged down to ``pixel_size`` × ``pixel_size`` (area
  interpolation) and flattened: a model-free fallback that sees intensity, contrast and
  layout differences (exactly what separates two scanners);
* a torchvision architecture name, e.g. ``"inception_v3"`` (the standard FID features,
  pool3, 2048-d) or ``"resnet50"`` — ImageNet weights, used ONLY when the file already
  sits in the torch hub cache (nothing is ever downloaded; otherwise a one-line
  :class:`UserError` says where to put it). Grayscale is replicated to 3 channels, the
  image resized (299 for Inception, 224 otherwise) and ImageNet-normalised. For
  ``inception_v3`` pytorch-fid's FID weights (``pt_inception-2015-12-05-*.pth``, the
  TF-Inception port every published FID uses) are preferred when present; torchvision's
  ImageNet Inception gives FID-like numbers that are not comparable with published ones.

Under ``torch.distributed`` (initialised, world size > 1) each rank extracts a strided
shard, the moments are summed with :meth:`Moments.all_reduce` and the per-sample arrays
gathered, so every rank returns the FeatureSet of the whole dataset in dataset order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from adapt.device import resolve_device
from adapt.errors import UserError
from adapt.models import IMAGENET_MEAN, IMAGENET_STD, hub_checkpoint_path, is_classifier, unwrap_model
from adapt.progress import progress_bar
from diagnostics.moments import Moments

# resolve_device and the ImageNet statistics are defined once, in adapt.device and
# adapt.models.normalization; re-exported here for callers that import them from this module.
__all__ = ["FeatureSet", "extract_features", "resolve_device", "IMAGENET_MEAN", "IMAGENET_STD"]

#: pytorch-fid's port of the TF Inception used for FID (Heusel et al. 2017)
FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)


@dataclass
class FeatureSet:
    """Features of one domain and what produced them.

    features: float32 [N, D]; labels: int64 [N] (-1 = unknown); probs: float32 [N, K]
    softmax outputs of the classifier, or None; moments: float64 sums over the N rows;
    extractor: a sentence naming the features; kind: "model", "pixels" or the arch name;
    name: the domain's name.
    """

    features: np.ndarray
    labels: np.ndarray
    probs: np.ndarray | None
    moments: Moments
    extractor: str
    kind: str = "model"
    name: str = ""

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def subset(self, indices) -> FeatureSet:
        """The rows ``indices`` (moments recomputed from those rows)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        feats = self.features[idx]
        return FeatureSet(
            features=feats,
            labels=self.labels[idx],
            probs=None if self.probs is None else self.probs[idx],
            moments=Moments.from_features(torch.from_numpy(feats)),
            extractor=self.extractor,
            kind=self.kind,
            name=self.name,
        )


# ----------------------------------------------------------------------------- extractors


@dataclass
class _Extractor:
    """One way to turn a batch [B, C, H, W] in [0, 1] (on the device) into [B, D]."""

    kind: str
    description: str
    dim: int
    fn: Callable[[Tensor], Tensor]
    modules: tuple[nn.Module, ...] = ()


def _match_channels(x: Tensor, channels: int) -> Tensor:
    """Gray → RGB by replication, RGB → gray by the channel mean; else unchanged."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    raise UserError(f"images have {x.shape[1]} channels, the feature extractor needs {channels}")


def _model_extractor(model: nn.Module, model_source: str | None) -> _Extractor:
    m = unwrap_model(model)
    in_ch = int(getattr(m, "in_channels", 0) or 0)
    arch = str(getattr(m, "arch", type(m).__name__))
    dim = int(getattr(m, "feature_dim", 0) or 0)
    if is_classifier(m):
        def fn(x: Tensor) -> Tensor:
            return m.features(_match_channels(x, in_ch) if in_ch else x)
    else:  # any module: its output is the feature vector
        def fn(x: Tensor) -> Tensor:
            out = m(_match_channels(x, in_ch) if in_ch else x)
            return out.flatten(1)
    where = f", {model_source}" if model_source else ""
    desc = f"model penultimate layer ({arch}, {dim}-d{where})" if dim else f"model output ({arch}{where})"
    return _Extractor("model", desc, dim, fn, (m,))


def _pixel_extractor(channels: int, pixel_size: int) -> _Extractor:
    if pixel_size < 1:
        raise UserError(f"pixel_size: must be positive, got {pixel_size}")
    s = int(pixel_size)
    dim = channels * s * s

    def fn(x: Tensor) -> Tensor:
        # area interpolation = the mean over each output pixel's footprint (anti-aliased)
        return F.interpolate(x.float(), size=(s, s), mode="area").flatten(1)

    chans = "" if channels == 1 else f" × {channels} channels"
    return _Extractor("pixels", f"pixels downsampled to {s}×{s}{chans} ({dim}-d; model-free fallback)", dim, fn)


def _imagenet_prep(size: int) -> Callable[[Tensor], Tensor]:
    """[B, C, H, W] in [0, 1] → 3 channels, ``size``², ImageNet mean/std."""

    def prep(x: Tensor) -> Tensor:
        x = _match_channels(x.float(), 3)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    return prep


def _load_state_dict(path: Path) -> dict:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated download, a wrong file
        raise UserError(f"{path}: not a readable weights file ({type(exc).__name__})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise UserError(f"{path}: not a state dict")
    return sd


def _fid_inception_extractor(path: Path) -> _Extractor:
    """pytorch-fid's FID Inception (pool3, 2048-d), weights read from ``path`` ourselves."""
    # late: pytorch-fid (test extra) and torchvision.models take seconds to import
    from pytorch_fid import inception as fid
    from torchvision.models import inception_v3

    # the 1008-class torchvision Inception the FID weights were converted into; no random
    # init (every weight is loaded below)
    net = inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    # the FID network differs from torchvision's in a few blocks (pytorch-fid patches them)
    net.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fid.FIDInceptionE_1(1280)
    net.Mixed_7c = fid.FIDInceptionE_2(2048)
    try:
        net.load_state_dict(_load_state_dict(path))
    except RuntimeError:
        raise UserError(f"{path}: does not fit pytorch-fid's FID Inception") from None
    net.fc = nn.Identity()

    def fn(x: Tensor) -> Tensor:
        x = _match_channels(x.float(), 3)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return net(2.0 * x - 1.0)  # the TF Inception expects [-1, 1]

    return _Extractor("inception_v3", f"inception_v3 pool3 (2048-d, FID Inception weights from {path})", 2048,
                      fn, (net,))


def _torchvision_extractor(name: str) -> _Extractor:
    import torchvision.models as tvm  # late: seconds to import; only named extractors need it

    try:
        weights = tvm.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        raise UserError(
            f"features '{name}': unknown; use model, pixels or a torchvision architecture (e.g. inception_v3)"
        ) from None
    path = hub_checkpoint_path(weights.url)
    if name == "inception_v3":
        fid_path = hub_checkpoint_path(FID_WEIGHTS_URL)
        if fid_path.is_file():
            try:
                import pytorch_fid  # noqa: F401 - late: is the (test extra) package installed?
            except ImportError:
                pass
            else:
                return _fid_inception_extractor(fid_path)
    if not path.is_file():
        also = f" (or pytorch-fid's FID weights {FID_WEIGHTS_URL} at {hub_checkpoint_path(FID_WEIGHTS_URL)})" \
            if name == "inception_v3" else ""
        raise UserError(
            f"features '{name}': ImageNet weights not found at {path}; nothing is downloaded - "
            f"fetch {weights.url} yourself and put it there{also}"
        )
    kwargs = {"aux_logits": True, "transform_input": True, "init_weights": False} if name == "inception_v3" else {}
    net = tvm.get_model(name, weights=None, **kwargs)
    try:
        net.load_state_dict(_load_state_dict(path))
    except RuntimeError:
        raise UserError(f"{path}: does not fit torchvision's {name}") from None
    # drop the ImageNet classifier: what is left ends in the global pool (pool3 for Inception)
    for head in ("fc", "classifier", "heads", "head"):
        if isinstance(getattr(net, head, None), nn.Module):
            setattr(net, head, nn.Identity())
            break
    else:
        raise UserError(f"features '{name}': cannot find its classifier head to remove")
    size = 299 if name == "inception_v3" else 224
    prep = _imagenet_prep(size)
    net.eval()
    with torch.inference_mode():
        dim = int(net(torch.zeros(1, 3, size, size)).flatten(1).shape[1])

    def fn(x: Tensor) -> Tensor:
        return net(prep(x)).flatten(1)

    layer = "pool3" if name == "inception_v3" else "pooled features"
    return _Extractor(name, f"{name} {layer} ({dim}-d, ImageNet weights from {path})", dim, fn, (net,))


def _build_extractor(kind: str, model: nn.Module | None, channels: int, pixel_size: int,
                     model_source: str | None) -> _Extractor:
    if kind == "model":
        if model is None:
            raise UserError("features 'model': needs a model (--model CKPT); or use pixels")
        return _model_extractor(model, model_source)
    if kind == "pixels":
        return _pixel_extractor(channels, pixel_size)
    if not isinstance(kind, str) or not kind.isidentifier():
        raise UserError(f"features '{kind}': use model, pixels or a torchvision architecture name")
    return _torchvision_extractor(kind)


# ----------------------------------------------------------------------------- loading


class _BatchFetch(Dataset):
    """Serves whole batches from an in-memory dataset: one index op instead of B items + collate."""

    def __init__(self, dataset, batches: list[np.ndarray]):
        self.dataset, self.batches = dataset, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> tuple[Tensor, Tensor]:
        idx = self.batches[b]
        return self.dataset.images(idx), torch.from_numpy(np.asarray(self.dataset.labels)[idx])


def _loader(dataset, indices: np.ndarray, batch_size: int, num_workers: int, pin: bool) -> DataLoader:
    if getattr(dataset, "in_memory", False) and hasattr(dataset, "images"):
        batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
        return DataLoader(_BatchFetch(dataset, batches), batch_size=None, shuffle=False,
                          num_workers=num_workers, pin_memory=pin)
    ds = dataset if len(indices) == len(dataset) and (indices == np.arange(len(dataset))).all() \
        else Subset(dataset, indices.tolist())
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin)


def _dist_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_rows(local: np.ndarray | None, world: int) -> list:
    parts: list = [None] * world
    dist.all_gather_object(parts, local)
    return parts


def _interleave(parts: list[np.ndarray], n: int, world: int) -> np.ndarray:
    """Undo the strided sharding ``rank::world``: rows back into dataset order."""
    out = np.empty((n,) + parts[0].shape[1:], dtype=parts[0].dtype)
    for r, p in enumerate(parts):
        out[r::world] = p
    return out


# ----------------------------------------------------------------------------- main entry


def extract_features(
    dataset,
    model: nn.Module | None = None,
    kind: str = "model",
    *,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    pixel_size: int = 16,
    progress: bool = True,
    model_source: str | None = None,
    shard: bool = True,
) -> FeatureSet:
    """Features of every image of ``dataset`` (``ds[i] -> ([C, H, W] in [0, 1], label)``).

    Args:
        dataset: a DomainDataset (or any dataset of (image, label) pairs).
        model: a :class:`adapt.models.Classifier` (moved to ``device``, run in eval mode,
            its training flag restored afterwards). Needed for ``kind="model"``; with any
            kind it also yields ``probs``.
        kind: ``"model"``, ``"pixels"`` or a torchvision architecture name (``"inception_v3"``).
        batch_size, num_workers: DataLoader settings.
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` or a torch.device.
        pixel_size: side of the downsampled image for ``kind="pixels"``.
        progress: tqdm bar on stderr.
        model_source: where the model came from (checkpoint path), for the extractor text.
        shard: under an initialised process group, split the images across the ranks (every
            rank must call); False for work one rank does alone (a run's audit and drift
            reference, written by the main rank) — a sharded call there would wait forever.

    Returns:
        :class:`FeatureSet`; under torch.distributed the whole dataset on every rank.
    """
    # the interface page once listed (model, dataset): accept that order too
    if isinstance(dataset, nn.Module) and not isinstance(model, nn.Module) and model is not None:
        dataset, model = model, dataset
    if batch_size < 1:
        raise UserError(f"batch_size: must be positive, got {batch_size}")
    if num_workers < 0:
        raise UserError(f"num_workers: must be >= 0, got {num_workers}")
    n = len(dataset)
    if n < 1:
        raise UserError(f"{getattr(dataset, 'name', 'dataset')}: no images to extract features from")
    dev = resolve_device(device)
    channels = int(getattr(dataset, "channels", 0) or dataset[0][0].shape[0])
    ext = _build_extractor(kind, model, channels, pixel_size, model_source)
    classifier = unwrap_model(model) if model is not None and is_classifier(model) else None

    modules = list(ext.modules) + ([classifier] if classifier is not None else [])
    was_training = [m.training for m in modules]
    for m in modules:
        m.to(dev).eval()

    rank, world = _dist_rank_world() if shard else (0, 1)
    indices = np.arange(rank, n, world, dtype=np.int64)
    loader = _loader(dataset, indices, batch_size, num_workers, pin=dev.type == "cuda")
    feats, labels, probs = [], [], []
    moments: Moments | None = Moments.empty(ext.dim, device=dev) if ext.dim else None
    try:
        with torch.inference_mode():
            bar = progress_bar(loader, enabled=progress, total=len(loader), leave=False, unit="batch",
                               desc=f"features {getattr(dataset, 'name', '')}".strip())
            for x, y in bar:
                x = x.to(dev, non_blocking=True).float()
                f = ext.fn(x).float()
                if moments is None:  # a module of unknown width: learn it from the first batch
                    moments = Moments.empty(f.shape[1], device=dev)
                moments.update(f)
                feats.append(f.cpu())
                labels.append(torch.as_tensor(y).reshape(-1).cpu())
                if classifier is not None:
                    # the penultimate features are already there: only the head is left to run
                    logits = (classifier.head(f) if ext.kind == "model"
                              else classifier(_match_channels(x, classifier.in_channels)))
                    probs.append(torch.softmax(logits.float(), dim=1).cpu())
    finally:
        for m, t in zip(modules, was_training):
            m.train(t)

    dim = moments.dim if moments is not None else ext.dim
    if moments is None:  # an empty shard of a module whose width is unknown: a probe tells it
        with torch.inference_mode():
            dim = int(ext.fn(dataset[0][0][None].to(dev).float()).shape[1])
        moments = Moments.empty(dim, device=dev)
    f_np = torch.cat(feats).numpy() if feats else np.zeros((0, dim), np.float32)
    y_np = torch.cat(labels).numpy().astype(np.int64) if labels else np.zeros(0, np.int64)
    p_np = (torch.cat(probs).numpy() if probs else np.zeros((0, classifier.num_classes), np.float32)) \
        if classifier is not None else None

    if world > 1:
        moments.all_reduce()
        f_np = _interleave(_gather_rows(f_np, world), n, world)
        y_np = _interleave(_gather_rows(y_np, world), n, world)
        if p_np is not None:
            p_np = _interleave(_gather_rows(p_np, world), n, world)
    moments = Moments(n=moments.n, sum=moments.sum.cpu(), outer=moments.outer.cpu())
    return FeatureSet(
        features=np.ascontiguousarray(f_np, dtype=np.float32),
        labels=y_np,
        probs=p_np,
        moments=moments,
        extractor=ext.description,
        kind=ext.kind,
        name=str(getattr(dataset, "name", "")),
    )
