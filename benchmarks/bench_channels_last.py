"""Memory layout on the CPU: NCHW against channels-last for what ``adapt-run`` spends its
time on — a training epoch (forward, backward, AdamW step) and an inference pass
(evaluation, AdaBN, feature extraction) — same model, same images, the two layouts
interleaved in one process (a loaded machine slows both alike).

    python benchmarks/bench_channels_last.py [--arch small_cnn] [--n 840] [--size 64]
                                             [--batch 64] [--threads 1] [--rounds 3]

Prints the median time of each, the ratio NCHW / channels-last (> 1: channels-last is
faster), and the largest difference of the logits and of the trained weights between them.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapt.models import build_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="small_cnn")
    ap.add_argument("--n", type=int, default=840, help="images (the quickstart's source train split)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = build_model(args.arch, 2, 1)
    x = torch.rand(args.n, 1, args.size, args.size)
    y = torch.randint(0, 2, (args.n,))
    layouts = {"NCHW": torch.contiguous_format, "channels-last": torch.channels_last}
    models = {k: copy.deepcopy(base).to(memory_format=f) for k, f in layouts.items()}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, m in models.items()}

    def epoch(k: str) -> None:
        m, opt, fmt = models[k], opts[k], layouts[k]
        m.train()
        for i in range(0, args.n, args.batch):
            xb = x[i:i + args.batch].contiguous(memory_format=fmt)
            loss = torch.nn.functional.cross_entropy(m(xb), y[i:i + args.batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    @torch.no_grad()
    def infer(k: str) -> torch.Tensor:
        m, fmt = models[k], layouts[k]
        m.eval()
        return torch.cat([m(x[i:i + 256].contiguous(memory_format=fmt)) for i in range(0, args.n, 256)])

    logits = {k: infer(k) for k in layouts}  # warm-up; same weights: compare outputs
    logit_diff = float((logits["NCHW"] - logits["channels-last"]).abs().max())
    times = {(k, what): [] for k in layouts for what in ("epoch", "infer")}
    for _ in range(args.rounds):
        for what, fn in (("epoch", epoch), ("infer", infer)):
            for k in layouts:
                t0 = time.perf_counter()
                fn(k)
                times[(k, what)].append(time.perf_counter() - t0)
    weight_diff = max(float((a - b).abs().max()) for a, b in
                      zip(models["NCHW"].state_dict().values(), models["channels-last"].state_dict().values())
                      if a.is_floating_point())
    med = {key: statistics.median(v) for key, v in times.items()}
    print(f"{args.arch}, {args.n} images {args.size}x{args.size}, {args.threads} thread(s), "
          f"median of {args.rounds} interleaved rounds")
    print("| pass | NCHW s | channels-last s | ratio (NCHW / channels-last) |")
    print("| --- | ---: | ---: | ---: |")
    for what, label in (("epoch", f"training epoch (batch {args.batch})"), ("infer", "inference (batch 256)")):
        a, b = med[("NCHW", what)], med[("channels-last", what)]
        print(f"| {label} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    print(f"max |logit diff| same weights: {logit_diff:.1e}; "
          f"max |weight diff| after {1 + args.rounds} epochs: {weight_diff:.1e}")


if __name__ == "__main__":
    main()
