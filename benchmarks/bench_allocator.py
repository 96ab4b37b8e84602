"""glibc's allocator as it comes against freed memory kept in the process
(:func:`adapt.allocator.retain_freed_memory`, what ``adapt-run`` and ``diagnose`` set), on
what a run does on the CPU: an AdaBN / precise-BN estimate (batches of 256), an inference
pass and a training epoch (batches of 64, cross-entropy, backward, AdamW) of the small CNN.

The allocator's settings hold for a whole process, so each measurement is a child process
(``DOMAINGAP_KEEP_FREED_MEMORY=0`` or ``1``), the two alternating (off, on, off, ...) so that a
loaded machine slows both alike.

    python benchmarks/bench_allocator.py [--n 840] [--size 64] [--threads 1] [--rounds 3]

Prints the median time of each task under each setting, the ratio (> 1: keeping the memory is
faster), and whether the two settings gave bit-identical BatchNorm statistics, logits and
trained weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mapped_bytes_of_a_large_tensor() -> int | None:
    """How much glibc's own mappings grow while a 64 MiB tensor (above its largest mmap
    threshold) is alive: ~64 MiB as glibc comes, ~0 with freed memory kept; None without
    ``mallinfo2`` (glibc < 2.33, or not glibc)."""
    import ctypes

    import torch

    class MallInfo2(ctypes.Structure):
        _fields_ = [(f, ctypes.c_size_t) for f in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        info = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    info.restype = MallInfo2
    before = info().hblkhd
    big = torch.ones(16 << 20)
    grown = info().hblkhd - before
    del big
    return grown


def child(n: int, size: int, threads: int) -> dict:
    """One measurement in this process: whether the setting holds (and what a large tensor
    maps), the times and a digest of what each task produced."""
    sys.path.insert(0, str(ROOT))
    from adapt.allocator import retain_freed_memory

    kept = retain_freed_memory()
    import copy

    import torch

    from adapt.methods.adabn import adabn, batchnorm_layers
    from adapt.models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model("small_cnn", 2, 1)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(n, 1, size, size, generator=g), torch.randint(0, 2, (n,), generator=g)

    def digest(tensors) -> str:
        h = hashlib.sha256()
        for t in tensors:
            h.update(t.detach().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def estimate():
        m = copy.deepcopy(model)
        adabn(m, x, torch.device("cpu"), batch_size=256)
        return digest(t for bn in batchnorm_layers(m) for t in (bn.running_mean, bn.running_var))

    @torch.no_grad()
    def infer():
        model.eval()
        return digest(model(x[i:i + 256]) for i in range(0, n, 256))

    def train_epoch():
        m = copy.deepcopy(model)
        m.train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        for i in range(0, n, 64):
            loss = torch.nn.functional.cross_entropy(m(x[i:i + 64]), y[i:i + 64])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return digest(m.state_dict().values())

    out = {"kept": kept, "mapped": mapped_bytes_of_a_large_tensor()}
    for name, fn in (("AdaBN estimate", estimate), ("inference pass", infer), ("training epoch", train_epoch)):
        fn()  # warm-up: the first pass also grows the heap
        t0 = time.perf_counter()
        out[name] = {"digest": fn(), "s": time.perf_counter() - t0}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=840, help="images (the quickstart's training split)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.n, args.size, args.threads)))
        return
    cmd = [sys.executable, __file__, "--child", "--n", str(args.n), "--size", str(args.size),
           "--threads", str(args.threads)]
    results: dict[str, list[dict]] = {"0": [], "1": []}
    for _ in range(args.rounds):
        for keep in ("0", "1"):
            env = {**os.environ, "DOMAINGAP_KEEP_FREED_MEMORY": keep, "OMP_NUM_THREADS": str(args.threads)}
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            results[keep].append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert not any(r["kept"] for r in results["0"]) and all(r["kept"] for r in results["1"]), "setting not applied"
    print(f"small_cnn, {args.n} images {args.size}x{args.size}, {args.threads} thread(s), "
          f"median of {args.rounds} alternating child processes")
    print("| task | glibc default s | freed memory kept s | ratio | bit-identical |\n| --- | ---: | ---: | ---: | --- |")
    for task in ("AdaBN estimate", "inference pass", "training epoch"):
        off, on = (statistics.median(r[task]["s"] for r in results[k]) for k in ("0", "1"))
        same = len({r[task]["digest"] for k in ("0", "1") for r in results[k]}) == 1
        print(f"| {task} | {off:.2f} | {on:.2f} | {off / on:.2f}x | {same} |")


if __name__ == "__main__":
    main()
