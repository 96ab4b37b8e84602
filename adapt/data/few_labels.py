"""A few labelled target images: ``data.target.labeled_per_class: k``.

A radiologist at the target site labels k images per class; the rest of the target
stays unlabelled. :func:`split_few_labels` takes the k images per class from the
target's *training* split only (seeded, stratified: exactly k of every class, by
:func:`adapt.data.splits.labeled_per_class`), so the validation and test splits are
never touched, and returns the labelled images and the unlabelled rest — disjoint, and
together the training split. Semi-supervised methods (``objective: mme``) train on both,
fine-tuning (``objective: finetune``) on the k alone.
"""

from __future__ import annotations

import numpy as np

from adapt.data.domain import DomainDataset
from adapt.data.splits import labeled_per_class
from adapt.errors import UserError

#: the recipe key, named in every error
KEY = "data.target.labeled_per_class"


def split_few_labels(train: DomainDataset, k: int, seed: int) -> tuple[DomainDataset, DomainDataset]:
    """``(labelled, unlabelled)``: k images of every class of ``train`` (the target's
    training split) with their labels, and the other images of ``train``.

    Raises a one-line :class:`UserError` naming :data:`KEY` when the target has no labels,
    k < 1, or k exceeds the training images of the smallest class (naming that class).
    Classes without any training image (a target with ``data.target_classes: subset``)
    are left out; ``check_trainable_classes`` refuses them otherwise.
    """
    if k < 1:
        raise UserError(f"{KEY}: must be at least 1 (got {k})")
    if not train.has_labels:
        raise UserError(f"{KEY}: needs target labels, but the target domain is unlabelled")
    counts = train.class_counts()
    present = np.flatnonzero(counts > 0)
    smallest = int(present[np.argmin(counts[present])])
    if k > counts[smallest]:
        raise UserError(f"{KEY}: {k} is more than the {int(counts[smallest])} training images of target class "
                        f"{train.classes[smallest]!r} (its smallest class); choose k <= {int(counts[smallest])}")
    picked = labeled_per_class(train.labels, k, seed=seed)
    rest = np.setdiff1d(np.arange(len(train)), picked)
    return train.subset(picked), train.subset(rest)
