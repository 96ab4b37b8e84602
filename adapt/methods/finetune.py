"""Fine-tuning on the few labelled target images: the source-only loss (cross-entropy,
:class:`~adapt.methods.source_only.SourceOnly`) on the k labelled target images per class
(``data.target.labeled_per_class``) instead of the source images."""

from __future__ import annotations

from adapt.method_registry import BuildContext, ObjectiveSpec, register
from adapt.methods.source_only import SourceOnly


def _finetune(ctx: BuildContext):
    return SourceOnly(ctx.label_smoothing), ctx.labeled_target()


register(ObjectiveSpec("finetune", _finetune, trains_on="labeled_target", needs_labeled_target=True))
