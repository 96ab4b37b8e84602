"""Audit two models on two domains from Python: the run audit without a run.

:func:`audit_models` measures a model ``before`` (e.g. the source model) and a model
``after`` (e.g. its adapted version, or a model trained elsewhere) on held-out
``source`` and ``target`` images, exactly as ``adapt-run`` audits a run — features,
gap statistics, collapse, attributions, group metrics, the verdicts — by handing them
to :func:`domaingap.run_audit.audit_run`, and writes ``audit.html`` + ``audit.json``.
Nothing is measured here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapt.data.inputs import as_domain
from adapt.device import resolve_device
from adapt.errors import UserError
from adapt.evaluate import evaluate
from adapt.models import is_classifier
from adapt.recipe import validate_recipe
from domaingap.runs import Domains, RunSummary, StageOutcome
from domaingap.run_audit import audit_run

__all__ = ["ModelAudit", "audit_models"]


@dataclass
class ModelAudit:
    """Where the report went and what it says.

    ``verdicts``: one dict per verdict (``name``, ``level`` (ok / warn / fail), ``title``,
    ``summary`` (one sentence), ``evidence`` — docs/audit.md explains each); ``data``:
    the whole ``audit.json``.
    """

    html: Path
    json: Path
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"html": str(self.html), "json": str(self.json), "verdicts": self.verdicts}


def _stage_metrics(model: nn.Module, source, target, device: torch.device) -> dict[str, Any]:
    ev = lambda ds: evaluate(model, ds, ds.classes, device) if ds.has_labels else None  # noqa: E731
    return {"source_test": ev(source), "target_test": ev(target)}


def audit_models(
    before: nn.Module,
    after: nn.Module,
    source: Any,
    target: Any,
    out_dir: str | os.PathLike,
    *,
    name: str = "audit",
    features: str = "model",
    permutations: int = 200,
    max_samples: int = 200,
    attribution: bool = True,
    attribution_method: str = "gradcam",
    attribution_samples: int = 32,
    umap: bool = False,
    seed: int = 0,
    image_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> ModelAudit:
    """Judge ``after`` against ``before`` on ``source`` and ``target``; write the report.

    Parameters
    ----------
    before, after : Classifier
        Two classifiers with the same classes and input channels
        (:func:`adapt.models.build_model`, a checkpoint, :func:`adapt.models.wrap.wrap_model`).
    source, target : images, DomainDataset, str or Path
        Held-out images of each domain (not the ones trained on); labels, when known,
        add accuracies, per-class metrics and the true target mix to the report.
    out_dir : path
        Folder of ``audit.html`` and ``audit.json`` (created; the two files replaced atomically).
    name : str
        The audit's title.
    features : str
        ``"model"`` (each model's penultimate layer) or ``"pixels"``.
    permutations, max_samples : int
        Permutations of the tests; images per domain measured (stratified subsample).
    attribution, attribution_method, attribution_samples
        The spurious-feature check: ``integrated_gradients`` or ``gradcam`` (fast), on
        this many images per domain.
    umap : bool
        The joint embedding figure (its first call compiles numba code: ~20 s).
    seed : int
        Seeds subsamples, permutations and attributions.
    image_size, device
        Size of images read from files; where the models run.

    Returns
    -------
    ModelAudit

    Examples
    --------
    >>> import tempfile
    >>> from adapt import build_model
    >>> from diagnostics import audit_models
    >>> before = build_model("small_cnn", num_classes=2, in_channels=1)
    >>> after = build_model("small_cnn", num_classes=2, in_channels=1)
    >>> report = audit_models(before, after, "phantom-cxr:A:30", "phantom-cxr:B:30", tempfile.mkdtemp(),
    ...                       image_size=32, permutations=20, attribution=False, seed=0)
    >>> report.html.name, len(report.verdicts) > 0
    ('audit.html', True)
    """
    for label, m in (("before", before), ("after", after)):
        if not is_classifier(m):
            raise UserError(f"{label}: expected a Classifier (wrap your module with adapt.models.wrap.wrap_model)")
    if (before.in_channels, before.num_classes) != (after.in_channels, after.num_classes):
        raise UserError(f"after: {after.num_classes} classes on {after.in_channels} channels, but before has "
                        f"{before.num_classes} on {before.in_channels}")
    raw = {"name": name, "seed": seed,
           "method": {"runs": [{"name": "after", "objective": "source_only", "epochs": 0}], "audit_run": "after"},
           "diagnostics": {"features": features, "permutations": permutations, "max_samples": max_samples,
                           "attribution": attribution, "attribution_method": attribution_method,
                           "attribution_samples": attribution_samples, "umap": umap}}
    recipe = validate_recipe(raw, label="audit_models")
    dev = resolve_device(device)
    channels = int(before.in_channels)
    src = as_domain(source, argument="source", image_size=image_size, channels=channels, seed=seed)
    classes = src.classes
    if len(classes) != before.num_classes:
        raise UserError(f"source: {len(classes)} classes for {before.num_classes}-class models")
    tgt = as_domain(target, argument="target", image_size=image_size, channels=channels, seed=seed + 1,
                    classes=classes)
    for m in (before, after):
        m.to(dev).eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = RunSummary(run_dir=out, source=StageOutcome("source-only", before, _stage_metrics(before, src, tgt, dev)))
    summary.runs["after"] = StageOutcome("after", after, _stage_metrics(after, src, tgt, dev))
    domains = Domains(source=src, target=tgt, source_split={"train": src}, target_split={"test": tgt},
                      target_labeled=None, source_eval=src, target_eval=tgt)
    html = audit_run(summary, recipe, domains, dev, progress=progress)
    data = json.loads((out / "audit.json").read_text(encoding="utf-8"))
    return ModelAudit(html=Path(html), json=out / "audit.json", verdicts=list(data.get("verdicts") or []), data=data)
