"""Adapt a model built elsewhere with a named method, without writing a recipe.

:func:`adapt_model` is one ``method.runs`` entry of ``adapt-run`` applied to your own
model: the method's pieces come from :func:`adapt.methods.build_run_components`, the
training from the one loop :func:`adapt.train.fit` (same optimiser, schedule,
gradient clipping, label-free checkpoint selection), AdaBN from
:func:`domaingap.runs.adabn_on` — nothing is trained differently from a recipe run.

What the model needs: to be a :class:`~adapt.models.Classifier` — images in [0, 1] ->
``features(x)`` ``[B, D]`` -> ``head`` (one ``nn.Linear``). A model from
:func:`adapt.models.build_model` or a checkpoint is one already; any other
``nn.Module`` becomes one with ``head="<name of its final nn.Linear>"`` (see
:func:`adapt.models.wrap.wrap_model`; a torchvision ResNet: ``head="fc"``). DANN and
CDAN put their discriminator on the features, MCC/SHOT/TENT act on the head's output,
CORAL and DAN align the features; AdaBN and TENT need BatchNorm layers.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from adapt.data.inputs import as_domain
from adapt.device import resolve_device
from adapt.errors import UserError
from adapt.evaluate import evaluate
from adapt.methods import build_run_components
from adapt.models import is_classifier
from adapt.models.wrap import wrap_model
from adapt.method_registry import objectives
from adapt.recipe import validate_recipe
from domaingap.runs import adabn_on, run_epochs, run_train_config, uses_target_bn
from adapt.selection import make_score_fn, selection_summary
from adapt.train import fit

__all__ = ["METHODS", "AdaptResult", "adapt_model"]

#: the methods :func:`adapt_model` takes: ``adabn`` (BatchNorm statistics only) and the
#: registered objectives that need neither labelled target images nor several sources
#: (finetune, mme, msdann, m3sda: use a recipe)
METHODS: tuple[str, ...] = ("adabn", *(n for n, o in objectives().items()
                                       if n != "none" and not o.needs_labeled_target and o.min_sources == 1))
#: the label-free selectors that need no source validation split
SELECTIONS: tuple[str, ...] = ("im", "snd", "last")


@dataclass
class AdaptResult:
    """What :func:`adapt_model` did: the adapted ``model`` and how it got there.

    ``target_accuracy_before`` / ``_after``: on the target images when their labels are
    known (reported only; they never select anything), else None.
    """

    model: nn.Module
    method: str
    epochs_run: int
    #: the epoch the label-free selector kept (1-based), None when nothing trained
    best_epoch: int | None
    selection: dict[str, Any]
    target_accuracy_before: float | None = None
    target_accuracy_after: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (the model left out)."""
        return {"method": self.method, "epochs_run": self.epochs_run, "best_epoch": self.best_epoch,
                "selection": self.selection, "target_accuracy_before": self.target_accuracy_before,
                "target_accuracy_after": self.target_accuracy_after, "history": self.history}


def _run_entry(method: str, options: Mapping[str, Any] | None, epochs: int | None) -> dict[str, Any]:
    if method not in METHODS:
        raise UserError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    if method == "adabn":
        if options:
            raise UserError("options: adabn has no options")
        return {"name": "adabn", "objective": "none", "adabn": True, "epochs": 0}
    entry: dict[str, Any] = {"name": method, "objective": method}
    if epochs is not None:
        entry["epochs"] = epochs
    if options:
        key = objectives()[method].options_key
        if key is None:
            raise UserError(f"options: {method} has no options")
        entry[key] = dict(options)
    return entry


def _accuracy(model: nn.Module, data, device: torch.device) -> float | None:
    if not data.has_labels:
        return None
    return evaluate(model, data, data.classes, device)["accuracy"]


def adapt_model(
    model: nn.Module,
    source: Any,
    target: Any,
    *,
    method: str = "dann",
    head: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    options: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: str = "adamw",
    selection: str = "im",
    seed: int = 0,
    image_size: int = 64,
    device: str | torch.device = "cpu",
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> AdaptResult:
    """Adapt ``model`` from ``source`` to ``target`` with ``method``.

    Parameters
    ----------
    model : nn.Module
        A :class:`~adapt.models.Classifier`, or any module with ``head`` naming its
        final ``nn.Linear`` (that layer moves into the returned Classifier's ``head``
        and is replaced by ``nn.Identity`` in the module). Trained in place: pass
        ``copy.deepcopy(model)`` to keep the original.
    source : images, DomainDataset, str or Path
        Labelled source images (``[N, C, H, W]`` tensors need labels: pass a
        DomainDataset from :func:`adapt.data.inputs.as_domain`), a folder of class
        sub-folders, a CSV manifest or ``"phantom-cxr:A:N"``. None for ``shot``/``tent``
        (source-free) and ``adabn``.
    target : images, DomainDataset, str or Path
        Target images; their labels, when known, are used only to report accuracy.
    method : str
        One of :data:`METHODS`.
    head : str, optional
        Name of the final ``nn.Linear`` of a module that is not a Classifier.
    mean, std : sequence of float, optional
        With ``head``: the per-channel normalisation the module expects of its input
        (images are given in [0, 1]); default none.
    options : mapping, optional
        The method's recipe options (``method.runs[].<method>``, docs/recipes.md),
        e.g. ``{"weight": 0.3}`` for DANN.
    epochs, lr, batch_size, optimizer
        Training settings (``epochs`` default: 8, TENT 1; ``optimizer`` sgd or adamw).
    selection : str
        Label-free checkpoint selection: ``im``, ``snd`` or ``last``.
    seed : int
        Seeds the batch order, initialisations and selection.
    image_size : int
        Size of images read from files (and of the phantom).
    device : str
        ``cpu``, ``cuda`` or ``auto``.
    out_dir : path, optional
        Where the loop writes ``last.pt``/``best.pt`` (default: a temporary folder).

    Returns
    -------
    AdaptResult

    Examples
    --------
    >>> from adapt import adapt_model, build_model
    >>> model = build_model("small_cnn", num_classes=2, in_channels=1)
    >>> result = adapt_model(model, "phantom-cxr:A:40", "phantom-cxr:B:40", method="mcc", epochs=1,
    ...                      batch_size=16, image_size=32, seed=0)
    >>> result.method, result.epochs_run
    ('mcc', 1)
    >>> sorted(result.to_dict())[:3]
    ['best_epoch', 'epochs_run', 'history']
    """
    if selection not in SELECTIONS:
        raise UserError(f"selection: {selection!r} is not one of {', '.join(SELECTIONS)}")
    entry = _run_entry(method, options, epochs)
    raw = {"seed": seed, "method": {"selection": selection, "runs": [entry]},
           "train": {"lr": lr, "batch_size": batch_size, "optimizer": optimizer,
                     **({"epochs": epochs} if epochs else {})}}
    recipe = validate_recipe(raw, label="adapt_model")
    run_cfg = recipe.method.runs[0]
    dev = resolve_device(device)
    classifier = model if head is None else wrap_model(model, head=head, in_channels=_in_channels(model),
                                                                 mean=mean, std=std)
    if not is_classifier(classifier) or not isinstance(getattr(classifier, "head", None), nn.Linear):
        raise UserError("head: the model is not a Classifier; name its final nn.Linear, e.g. head='fc'")
    channels = int(classifier.in_channels)
    needs_source = run_cfg.objective != "none" and not run_cfg.spec.source_free
    src = None
    if source is not None:
        src = as_domain(source, argument="source", image_size=image_size, channels=channels, seed=seed)
        if not src.has_labels:
            raise UserError("source: the source images need labels")
    elif needs_source:
        raise UserError(f"source: method {method} needs labelled source images")
    classes = src.classes if src is not None else [str(i) for i in range(classifier.num_classes)]
    if len(classes) != classifier.num_classes:
        raise UserError(f"source: {len(classes)} classes for a {classifier.num_classes}-class model")
    tgt = as_domain(target, argument="target", image_size=image_size, channels=channels, seed=seed + 1,
                    classes=classes if src is not None else None)
    classifier.to(dev)
    before = _accuracy(classifier, tgt, dev)

    with tempfile.TemporaryDirectory(prefix="domaingap-") as tmp:
        work = Path(out_dir) if out_dir is not None else Path(tmp)
        torch.manual_seed(seed)
        parts = build_run_components(run_cfg, model=classifier, recipe=recipe, source_train=src,
                                     target_train=tgt, target_labeled=None, device=dev, out_dir=work)
        prepare = (lambda m: adabn_on(m, tgt, dev)) if uses_target_bn(run_cfg) else None
        score_kw = dict(target=tgt, source_val=None, class_names=classes, device=dev, seed=seed,
                        oracle=tgt if tgt.has_labels else None)
        n_epochs = run_epochs(run_cfg, recipe)
        history: list[dict[str, Any]] = []
        best = None
        if parts.objective is not None and n_epochs > 0:
            res = fit(classifier, parts.objective, parts.train_data, cfg=run_train_config(run_cfg, recipe), out_dir=work, seed=seed,
                      score_fn=make_score_fn(selection, prepare=prepare, **score_kw), target_train=parts.target_data,
                      style=parts.style, feature_style=parts.feature_style, penalties=parts.penalties,
                      strategy=recipe.strategy, epochs=n_epochs, desc=method, progress=progress)
            history, best = res.history, res.best_epoch
            chosen = selection_summary(res.history, selection, res.best_epoch)
        if prepare is not None:
            prepare(classifier)
        if best is None:  # nothing trained: score the final model once
            _, logs = make_score_fn(selection, **score_kw)(classifier)
            chosen = selection_summary([{"epoch": 0, **logs}], selection, 0)
    return AdaptResult(model=classifier, method=method, epochs_run=len(history),
                       best_epoch=best, selection=chosen,
                       target_accuracy_before=before, target_accuracy_after=_accuracy(classifier, tgt, dev),
                       history=history)


def _in_channels(module: nn.Module) -> int:
    """The input channels of the module's first convolution (1 or 3)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    raise UserError("model: no nn.Conv2d found to read the input channels from; wrap it with "
                    "adapt.models.wrap.wrap_model(model, head=..., in_channels=...) first")
