"""``adapt-run RECIPE [key.path=value ...]`` — train the source model, adapt it, audit it.

``adapt-run RECIPE --sweep SWEEP.yaml [--storage URL]`` — a label-free sweep (domaingap/sweep.py).

Also the torchrun entry point: ``torchrun --nproc-per-node N -m domaingap.adapt_run RECIPE``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from adapt.allocator import retain_freed_memory
from adapt.cli_args import OneLineParser, int_in
from adapt.errors import UserError, one_line, os_error_line


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="adapt-run",
        description="Train (or load) a source model, adapt it to the target domain with the "
        "recipe's methods, compare them, and write runs/<name>/ with metrics and an audit report.",
    )
    p.add_argument("recipe", help="YAML recipe, e.g. recipes/xray_to_xray.yaml")
    p.add_argument("overrides", nargs="*", metavar="key.path=value",
                   help="override recipe fields, e.g. train.epochs=3 method.runs.0.adabn=false")
    p.add_argument("--resume", action="store_true",
                   help="continue a killed run from its checkpoints (finished stages are loaded; the "
                   "recipe must be the same but for output-only keys)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the earlier run in the run folder (without it, a folder that holds a "
                   "run is only ever continued with --resume)")
    p.add_argument("--nproc", type=int_in(1, 1024), default=1, metavar="N",
                   help="train with N processes (torch.distributed; gloo on CPU, NCCL on GPU)")
    p.add_argument("--no-diagnostics", action="store_true", help="skip the audit report")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--sweep", metavar="SWEEP.yaml",
                   help="run a label-free hyper-parameter sweep over recipe keys (Optuna; see domaingap/sweep.py); "
                   "start the same command again to add a worker or resume a killed sweep")
    p.add_argument("--storage", metavar="URL",
                   help="with --sweep: an Optuna storage URL shared by several workers, e.g. "
                   "postgresql://USER:PASSWORD@HOST/DB (pip install 'domaingap[postgres]'; docs/scaleout.md) "
                   "(default: SQLite in runs/<name>/sweep/)")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_intermixed_args(argv)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    retain_freed_memory()  # large activations reused, not faulted in again (adapt/allocator.py)
    try:
        if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
            return _relaunch_with_torchrun(args, argv if argv is not None else sys.argv[1:])
        if args.nproc < 1:
            raise UserError(f"--nproc: must be at least 1 (got {args.nproc})")
        if args.storage and not args.sweep:
            raise UserError("--storage: only with --sweep SWEEP.yaml")
        if args.sweep:
            return _sweep(args)
        return _run(args)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused (full disk, read-only folder): not a bug, one line
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = "the same command (the sweep resumes)" if args.sweep else "adapt-run RECIPE --resume"
        print(f"interrupted; continue with: {again}", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    # late: torch and the pipeline take seconds to import; `adapt-run --help` and bad
    # arguments should answer at once
    from adapt import distributed
    from adapt.device import resolve_device
    from domaingap.pipeline import run_recipe
    from adapt.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    ctx = distributed.init_from_env(resolve_device(recipe.train.device, "train.device"))
    try:
        with distributed.stop_if_a_rank_is_lost(ctx):
            summary = run_recipe(recipe, resume=args.resume, overwrite=args.overwrite, ctx=ctx,
                                 progress=not args.quiet, diagnostics=False if args.no_diagnostics else None)
    except distributed.RankLost as lost:  # a machine of a multi-node run went away: not a bug, one line
        print(f"error: {lost}", file=sys.stderr)
        return 1
    finally:
        distributed.shutdown()
    if ctx.is_main:
        print(f"wrote {summary.run_dir}/ (metrics.json, comparison.md"
              + (", audit.html" if summary.audit_path else "") + ")")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from domaingap.sweep import run_sweep  # late, as in _run: torch, optuna and the pipeline are slow to import

    if args.nproc > 1 or args.resume:
        raise UserError("--sweep: runs single-process trials and resumes by itself (drop --nproc/--resume)")
    result = run_sweep(args.recipe, args.sweep, args.overrides, storage=args.storage, progress=not args.quiet)
    done = sum(r["state"] == "complete" for r in result.rows)
    print(f"wrote {result.sweep_dir}/ (trials.csv, trials.md, sweep.json"
          + (", best_recipe.yaml" if result.best_recipe_path else "") + f"); {done} trials complete")
    return 0


def _relaunch_with_torchrun(args: argparse.Namespace, argv: list[str]) -> int:
    """``--nproc N`` is shorthand for ``torchrun --standalone --nproc-per-node N -m domaingap.adapt_run``."""
    rest = [a for a in argv if not a.startswith("--nproc")]
    if "--nproc" in argv:  # "--nproc N" as two words
        i = argv.index("--nproc")
        rest = argv[:i] + argv[i + 2:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={args.nproc}", "-m", "domaingap.adapt_run", *rest]
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
