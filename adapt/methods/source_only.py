"""Source-only training: the baseline every adaptation is compared against."""

from __future__ import annotations

from torch import nn

from adapt.method_registry import BuildContext, ObjectiveSpec, register


class SourceOnly:
    """Plain supervised training on the labelled source batch: CE(C(G(x_s)), y_s)."""

    name = "source_only"
    uses_target = False

    def __init__(self, label_smoothing: float = 0.0):
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def loss(self, model, xs, ys, xt, progress):
        logits = model(xs)
        loss = self.criterion(logits, ys)
        acc = (logits.argmax(1) == ys).float().mean().item()
        return loss, {"class_loss": loss.item(), "train_acc": acc}


def _source_only(ctx: BuildContext):
    return SourceOnly(ctx.label_smoothing), ctx.source_train


register(ObjectiveSpec("source_only", _source_only))
