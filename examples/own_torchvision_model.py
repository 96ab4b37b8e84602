"""Adapt your own torchvision model with a named method — no YAML.

A model built elsewhere needs one thing: the name of its final ``nn.Linear``
(``head="fc"`` for a ResNet), which splits it into features and head. Here a small
torchvision ResNet (one BasicBlock per stage, random weights; ``resnet18()`` or your own
trained model work the same way) is adapted from phantom site A to site B with DANN, and the target accuracy is reported before and after (the phantom's
target labels are known; they never select anything).
Run:  python examples/own_torchvision_model.py --method dann --epochs 2
"""

from __future__ import annotations

import argparse

import torch
from torchvision.models.resnet import BasicBlock, ResNet

from adapt import METHODS, adapt_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="dann", choices=METHODS)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--n", type=int, default=48, help="images per site")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=2)  # 3 channels in: the grey phantom is repeated
    result = adapt_model(
        net, f"phantom-cxr:A:{args.n}", f"phantom-cxr:B:{args.n}", method=args.method, head="fc",
        epochs=args.epochs, batch_size=16, image_size=args.image_size, seed=args.seed,
        # the normalisation your network expects (images arrive in [0, 1]); ImageNet's here
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
    )
    print(f"{args.method}: target accuracy {result.target_accuracy_before:.2f} -> "
          f"{result.target_accuracy_after:.2f}; kept epoch {result.best_epoch} of {result.epochs_run} "
          f"(selector {result.selection['selector']})")
    # result.model is a Classifier sharing net's parameters (net.fc became its head, net.fc an Identity):
    # save it with torch.save(result.model.state_dict(), ...) or use it as is


if __name__ == "__main__":
    main()
