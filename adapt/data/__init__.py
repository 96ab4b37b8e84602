"""Domain datasets: ImageFolder folders, CSV manifests, DICOM, and the built-in phantom.

Public API (see docs/interfaces.md, section adapt/data)::

    spec = parse_domain_arg("phantom-cxr:A")          # or DomainSpec(kind=..., path=...)
    source = load_domain(spec, image_size=64, seed=0)
    target = load_domain(parse_domain_arg("site_b/"), classes=source.classes)
    check_same_classes(source, target)
    parts = stratified_split(source.labels, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)
    sampler = class_balanced_sampler(source.labels[parts["train"]], seed=0)
"""

from __future__ import annotations

from adapt.data.domain import DomainDataset, check_same_classes, check_trainable_classes, load_domain
from adapt.data.phantom import CLASSES, SITES, PhantomBatch, SiteStyle, make_phantom, write_phantom
from adapt.data.sampling import class_balanced_sampler, class_balanced_weights
from adapt.data.spec import DomainSpec, parse_domain_arg
from adapt.data.splits import labeled_per_class, stratified_split

__all__ = [
    "CLASSES",
    "SITES",
    "DomainDataset",
    "DomainSpec",
    "PhantomBatch",
    "SiteStyle",
    "check_same_classes",
    "check_trainable_classes",
    "class_balanced_sampler",
    "class_balanced_weights",
    "labeled_per_class",
    "load_domain",
    "make_phantom",
    "parse_domain_arg",
    "stratified_split",
    "write_phantom",
]
