"""``diagnose`` — measure a domain gap, look at the phantom data, re-render an audit.

    diagnose gap --source S --target T [--model CKPT] [--features model|pixels|NAME]
                 [--json OUT] [--html OUT] [--fail-on 'mmd_p<0.01'] ...
    diagnose data DOMAIN [DOMAIN ...] [--model CKPT] [--json OUT] [--html OUT]
    diagnose phantom OUT [--site A|B|C] [--n N] [--seed S] [--image-size N]
    diagnose audit RUN_DIR
    diagnose export MODEL.pt OUT.onnx
    diagnose drift RUN_DIR --batch DOMAIN [--fail-on drift] [--json OUT]
    diagnose drift-report RUN_DIR [--out PAGE.html]   (domaingap/drift_report.py)

Exit codes: 0 normally; 1 when a ``--fail-on`` condition holds (for CI pipelines);
2 on bad input (one line ``error: <message>`` on stderr, no traceback).
Every command is a few lines over a public function (library first, CLI thin). Each
command imports what it needs inside its function: ``diagnose --help`` and argument
errors then answer without loading torch.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any

from adapt.allocator import retain_freed_memory
from adapt.cli_args import OneLineParser, float_in, int_in
from adapt.errors import UserError, one_line, os_error_line
from adapt.paths import check_outputs
from domaingap import drift_report
from diagnostics.two_sample import min_permutations

EXIT_OK, EXIT_GATE, EXIT_USER = 0, 1, 2
#: bounds of the numeric options (the recipe's are in adapt/recipe.py): beyond them a
#: command runs for hours or runs out of memory instead of answering
MAX_PERMUTATIONS, MAX_BOOTSTRAP, MAX_SAMPLES = 100_000, 10_000, 100_000
MAX_PHANTOM_IMAGES = 100_000  # adapt.data.spec.MAX_PHANTOM_IMAGES (not imported: it loads pydantic)
SEED, IMAGE_SIZE = int_in(0, 2**31 - 1, hi_text="2^31-1"), int_in(16, 1024)  # the recipe's data.image_size bounds
BATCH_SIZE, WORKERS = int_in(1, 65_536), int_in(0, 256)


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="diagnose",
        description="Domain-gap diagnostics: how different are two image domains, and did a model collapse?",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    g = sub.add_parser(
        "gap", help="measure the gap between a source and a target domain",
        description="MMD permutation test, Fréchet distance, domain-classifier AUC and Wasserstein distance "
        "between two domains; with --model also class-collapse and label-shift checks. Domains: an "
        "ImageFolder folder, a CSV manifest (path,label), a CSV of DICOM files, or phantom-cxr:A / "
        "phantom-cxr:B:600.",
    )
    g.add_argument("--source", required=True, metavar="DOMAIN", help="source domain")
    g.add_argument("--target", required=True, metavar="DOMAIN", help="target domain")
    g.add_argument("--model", metavar="CKPT", help="a domaingap checkpoint (adapt-run's model.pt)")
    g.add_argument("--features", metavar="KIND",
                   help="model (default with --model), pixels (default without), or a torchvision "
                   "architecture with ImageNet weights in the torch hub cache, e.g. inception_v3 (FID)")
    g.add_argument("--json", metavar="OUT", help="write every figure as JSON")
    g.add_argument("--html", metavar="OUT", help="write a self-contained HTML gap report (+ its JSON)")
    g.add_argument("--fail-on", metavar="EXPR",
                   help="exit 1 when any condition holds, e.g. 'mmd_p<0.01' or 'auc>0.9, fid>40' "
                   "(metrics: mmd2 mmd_p fid auc proxy_a wasserstein; ops: < <= > >=)")
    g.add_argument("--permutations", type=int_in(1, MAX_PERMUTATIONS), default=500, metavar="B",
                   help="MMD permutations (500)")
    g.add_argument("--bootstrap", type=int_in(0, MAX_BOOTSTRAP), default=100, metavar="B",
                   help="bootstrap resamples of the Fréchet interval (100; 0 = none)")
    g.add_argument("--max-samples", type=int_in(5, MAX_SAMPLES), default=2000, metavar="N",
                   help="use at most N images per domain (stratified, seeded; 2000)")
    g.add_argument("--seed", type=SEED, default=0, help="seed of subsampling, permutations, bootstrap (0)")
    g.add_argument("--image-size", type=IMAGE_SIZE, default=None, metavar="N",
                   help="resize images to N×N (default: the checkpoint's, else 64)")
    g.add_argument("--batch-size", type=BATCH_SIZE, default=128, metavar="N", help="feature batch size (128)")
    g.add_argument("--workers", type=WORKERS, default=0, metavar="N", help="DataLoader workers (0)")
    g.add_argument("--device", default="auto", metavar="auto|cpu|cuda", help="device (auto)")
    g.add_argument("--quiet", action="store_true", help="no progress bars or notes")

    da = sub.add_parser("data", help="audit the images: balance, groups, duplicates, likely label errors",
                        description="Class balance per domain and split, group representation, exact and near-"
                        "duplicate images (train/test leakage) and likely label errors (cleanlab on out-of-fold "
                        "probabilities). Needs: pip install 'domaingap[data]'. See docs/data_audit.md.")
    da.add_argument("domains", nargs="+", metavar="DOMAIN", help="folder, CSV manifest or phantom-cxr:A[:N]")
    da.add_argument("--model", metavar="CKPT", help="score label issues on this checkpoint's features")
    da.add_argument("--split", default="0.7,0.15,0.15", metavar="TRAIN,VAL,TEST|none",
                    help="split each domain as adapt-run does (0.7,0.15,0.15; domain i with seed + i), or none")
    da.add_argument("--json", metavar="OUT", help="write every finding and pair as JSON")
    da.add_argument("--html", metavar="OUT", help="write a self-contained HTML page with thumbnails (+ its JSON)")
    da.add_argument("--seed", type=SEED, default=0, help="seed of splits and cross-validation (0)")
    da.add_argument("--image-size", type=IMAGE_SIZE, default=64, metavar="N", help="image side (the model's, else 64)")
    da.add_argument("--device", default="auto", metavar="auto|cpu|cuda", help="device (auto)")
    da.add_argument("--quiet", action="store_true", help="no progress notes")

    ph = sub.add_parser("phantom", help="write the built-in phantom chest X-rays as PNGs + manifest.csv",
                        description="Write phantom-cxr images as OUT/<class>/<site>_<i>.png and OUT/manifest.csv "
                        "(the same images phantom-cxr:SITE:N gives at that seed and size).")
    ph.add_argument("out", metavar="OUT", help="output folder")
    ph.add_argument("--site", default="A", type=str.upper, choices=["A", "B", "C"], help="site (A)")
    ph.add_argument("--n", type=int_in(1, MAX_PHANTOM_IMAGES), default=1200,
                    help="number of images, balanced classes (1200)")
    ph.add_argument("--seed", type=SEED, default=0, help="seed (0)")
    ph.add_argument("--image-size", type=IMAGE_SIZE, default=64, metavar="N", help="image side in pixels (64)")
    ph.add_argument("--overwrite", action="store_true",
                    help="write into OUT even if it is not empty (its files of the same names are replaced)")

    au = sub.add_parser("audit", help="re-render the audit report of an adapt-run run folder")
    au.add_argument("run_dir", metavar="RUN_DIR", help="a runs/<name>/ folder written by adapt-run")

    ex = sub.add_parser("export", help="export a checkpoint to ONNX, verified with onnxruntime",
                        description="Write MODEL.pt as ONNX (dynamic batch; image size, channels, normalisation "
                        "and classes in the file's metadata), after checking onnxruntime's logits against "
                        "PyTorch's on random images. Needs: pip install 'domaingap[deploy]'.")
    ex.add_argument("model", metavar="MODEL.pt", help="a domaingap checkpoint (adapt-run's model.pt)")
    ex.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write")
    ex.add_argument("--check-images", type=int_in(1, 4096), default=64, metavar="N", help="images in the check (64)")
    ex.add_argument("--tolerance", type=float_in(0, 1e6, lo_open=True), default=1e-4,
                    help="max |logit difference| allowed (1e-4)")

    dr = sub.add_parser("drift", help="compare a new batch of images with a run's drift reference",
                        description="MMD and classifier two-sample tests on the deployed model's features, a "
                        "chi-square test of the predicted classes and a confidence-drop test against the run's "
                        "drift_reference.npz (Holm-adjusted p-values), plus the Fréchet distance and the "
                        "collapse check. One verdict line; JSON next to it.")
    dr.add_argument("run_dir", metavar="RUN_DIR", help="a runs/<name>/ folder written by adapt-run")
    dr.add_argument("--batch", required=True, metavar="DOMAIN",
                    help="the new images: a folder (flat or with class sub-folders), a CSV manifest, phantom-cxr:B:500")
    dr.add_argument("--fail-on", metavar="EXPR",
                    help="exit 1 when any condition holds: 'drift' (the verdict), 'collapsed', or e.g. "
                    "'mmd_p<0.001, conf_drop>0.1' (metrics: drift mmd_p mmd2 c2st_p auc pred_p conf_p conf_drop "
                    "fid collapsed)")
    dr.add_argument("--json", metavar="OUT", help="where to write the JSON (default RUN_DIR/drift/<time>.json)")
    dr.add_argument("--alpha", type=float_in(0, 1, lo_open=True, hi_open=True), default=0.01,
                    help="family-wise significance level (0.01)")
    dr.add_argument("--permutations", type=int_in(1, MAX_PERMUTATIONS), default=500, metavar="B",
                    help="MMD permutations (500)")
    dr.add_argument("--max-samples", type=int_in(1, MAX_SAMPLES), default=1000, metavar="N",
                    help="batch images used by the MMD and classifier tests (1000; all feed the rest)")
    dr.add_argument("--seed", type=SEED, default=0, help="seed of subsampling and permutations (0)")
    dr.add_argument("--batch-size", type=BATCH_SIZE, default=128, metavar="N", help="feature batch size (128)")
    dr.add_argument("--workers", type=WORKERS, default=0, metavar="N", help="DataLoader workers (0)")
    dr.add_argument("--device", default="auto", metavar="auto|cpu|cuda", help="device (auto)")
    dr.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    drift_report.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UserError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return EXIT_USER
    retain_freed_memory()  # large activations reused, not faulted in again (adapt/allocator.py)
    try:
        if args.command == "gap":
            return cmd_gap(args)
        if args.command == "data":
            from domaingap.data_audit_run import run_data_command  # late: loads torch (module docstring)

            for option in ("json", "html"):
                _check_output_file(f"--{option}", getattr(args, option))
            return run_data_command(args)
        if args.command == "phantom":
            return cmd_phantom(args)
        if args.command == "audit":
            return cmd_audit(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "drift":
            return cmd_drift(args)
        if args.command == "drift-report":
            return drift_report.cmd_drift_report(args)
        raise UserError(f"unknown command {args.command!r}")  # pragma: no cover - argparse catches it
    except UserError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return EXIT_USER
    except OSError as err:  # the file system refused (full disk, read-only folder): not a bug, one line
        print(f"error: {os_error_line(err)}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# ----------------------------------------------------------------------------- gap


def _domain_spec(text: str):
    """parse_domain_arg, plus: a flat folder of images is an unlabelled domain."""
    from adapt.data.inputs import domain_spec  # late: loads torch (module docstring)

    return domain_spec(text)


def _check_args(args: argparse.Namespace) -> None:
    for name in ("permutations", "max_samples", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(args, name)}")
    if args.permutations < min_permutations(0.05):
        # the smallest p-value B permutations can give is 1/(1 + B): below 19 no test can
        # ever say "different" at the 5% level, so the table would only pretend to decide
        raise UserError(f"--permutations: {args.permutations} cannot reach p < 0.05 (smallest p = "
                        f"{1 / (1 + args.permutations):.2g}); use at least {min_permutations(0.05)}")
    if args.max_samples < 5:
        raise UserError(f"--max-samples: must be at least 5, got {args.max_samples}")
    if args.bootstrap < 0 or args.workers < 0:
        raise UserError("--bootstrap, --workers: must be >= 0")
    if args.image_size is not None and args.image_size < 1:
        raise UserError(f"--image-size: must be positive, got {args.image_size}")
    _check_seed(args.seed)
    for option in ("json", "html"):
        _check_output_file(f"--{option}", getattr(args, option))


def _check_seed(seed: int) -> None:
    if not 0 <= seed < 2**31:
        raise UserError(f"--seed: must be between 0 and 2^31-1 (got {seed})")


def _check_output_file(option: str, value: str | None) -> None:
    """An output file must be writable as a file: checked before any work is done."""
    if value is None:
        return
    path = Path(value)
    if path.is_dir():
        raise UserError(f"{option} {value}: is a folder (give a file name)")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"{option} {value}: {parent} is a file, not a folder")


def cmd_gap(args: argparse.Namespace) -> int:
    # late: these load torch (module docstring)
    from adapt.data import load_domain
    from adapt.data.splits import stratified_subsample
    from adapt.io import atomic_write_json
    from adapt.models import load_checkpoint
    from diagnostics.features import extract_features, resolve_device
    from diagnostics.gap import (classification_section, collapse_section, fired_conditions, gap_table,
                                 measure_gap, parse_fail_on)

    _check_args(args)
    conditions = parse_fail_on(args.fail_on) if args.fail_on is not None else []  # fail fast, before work
    device = resolve_device(args.device)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))

    model, meta = None, {}
    if args.model:
        model, meta = load_checkpoint(args.model, map_location=device)
    kind = args.features or ("model" if model is not None else "pixels")
    if kind == "model" and model is None:
        raise UserError("--features model: needs --model CKPT (without a model use pixels or e.g. inception_v3)")
    image_size = args.image_size or int(meta.get("image_size") or 64)
    trained_at = meta.get("image_size")
    if trained_at and image_size != trained_at:
        say(f"note: {args.model} was trained on {trained_at}x{trained_at} images; at --image-size {image_size} "
            "its features (and the gap) are not the ones it sees in use")
    channels = int(getattr(model, "in_channels", 1) or 1) if model is not None else 1
    classes = list(meta["classes"]) if meta.get("classes") else None
    if model is not None and classes is not None and len(classes) != model.num_classes:
        raise UserError(f"{args.model}: checkpoint lists {len(classes)} classes for a {model.num_classes}-class head")

    source = load_domain(_domain_spec(args.source), image_size=image_size, channels=channels,
                         seed=args.seed, classes=classes)
    # without a model the class names of the two domains need not match: nothing is predicted
    target = load_domain(_domain_spec(args.target), image_size=image_size, channels=channels,
                         seed=args.seed, classes=source.classes if model is not None else None)
    if model is not None and classes is None:
        if len(source.classes) != model.num_classes:
            raise UserError(f"{args.model}: a {model.num_classes}-class model, but {source.name} has "
                            f"{len(source.classes)} classes")
        classes = source.classes
    # ties="random": the rule this command has always used, so a seed keeps its subsample
    check_outputs({"--json": args.json, "--html": args.html,
                   "--html report's JSON": _report_json_path(args) if args.html else None},
                  {"--source": _domain_inputs(args.source, source), "--target": _domain_inputs(args.target, target),
                   "--model": args.model})
    source = source.subset(stratified_subsample(source.labels, args.max_samples, args.seed, ties="random"))
    target = target.subset(stratified_subsample(target.labels, args.max_samples, args.seed + 1, ties="random"))

    common = dict(batch_size=args.batch_size, num_workers=args.workers, device=device,
                  progress=not args.quiet, model_source=args.model)
    fs = extract_features(source, model, kind, **common)
    ft = extract_features(target, model, kind, **common)
    if kind == "pixels" and model is None:
        say(f"note: no --model given, so the features are {fs.extractor}")
    gap = measure_gap(fs, ft, permutations=args.permutations, seed=args.seed,
                      max_points=args.max_samples, bootstrap=args.bootstrap)
    for note in gap.notes:
        say(f"note: {note}")

    collapse = collapse_section(fs, ft, classes) if model is not None else None
    metrics: dict[str, Any] = {}
    if model is not None:
        metrics = {"source_test": classification_section(fs, classes or []),
                   "target_test": classification_section(ft, classes or [])}

    print(f"source: {source.name} ({len(source)} images)    target: {target.name} ({len(target)} images)")
    print(gap_table(gap, collapse))

    fired = fired_conditions(conditions, gap.to_dict())
    payload = {
        "source": {"domain": args.source, "name": source.name, "n": len(source), "classes": source.classes},
        "target": {"domain": args.target, "name": target.name, "n": len(target), "classes": target.classes},
        "model": args.model,
        "features": {"kind": fs.kind, "extractor": fs.extractor, "dim": fs.dim},
        "settings": {"permutations": args.permutations, "bootstrap": args.bootstrap,
                     "max_samples": args.max_samples, "seed": args.seed, "image_size": image_size,
                     "device": str(device)},
        "gap": gap.to_dict(),
        "gap_details": gap.details(),
        "collapse": collapse,
        "metrics": metrics or None,
        "fail_on": None if args.fail_on is None else {
            "expression": args.fail_on, "fired": [str(c) for c, _ in fired]},
    }
    if args.json:
        atomic_write_json(args.json, payload)
        print(f"wrote {args.json}")
    if args.html:
        html, report_json = _write_html(args, gap.to_dict(), collapse, metrics, classes or source.classes,
                                        fs.extractor, device)
        print(f"wrote {html} (and {report_json})")

    if fired:
        for cond, value in fired:
            print(f"fail-on: {cond} holds ({cond.metric} = {value:.4g})")
        return EXIT_GATE
    return EXIT_OK


def _write_html(args, gap: dict, collapse: dict | None, metrics: dict, classes: list[str],
                extractor: str, device) -> tuple[Path, Path]:
    """The gap-only report: one StageResult (gap + collapse), rendered by diagnostics.report."""
    # late: the report loads jinja2 and matplotlib (module docstring)
    from diagnostics.audit import StageResult, build_audit
    from diagnostics.report import write_report

    stage = StageResult(
        name=Path(args.model).name if args.model else "no model",
        gap=gap,
        collapse=collapse or {},
        metrics={k: v for k, v in metrics.items() if v is not None},
    )
    audit = build_audit(stage, classes=classes, run={
        "name": f"diagnose gap: {args.source} → {args.target}",
        "seed": args.seed,
        "device": str(device),
        "recipe_text": f"features: {extractor}\npermutations: {args.permutations}\n"
                       f"max_samples: {args.max_samples}\n",
    })
    return write_report(audit, Path(args.html), _report_json_path(args))


def _report_json_path(args) -> Path:
    """The JSON written next to ``--html``: its name with ``.json``, unless that is ``--json``."""
    html = Path(args.html)
    report_json = html.with_suffix(".json")
    if args.json and Path(args.json).resolve() == report_json.resolve():
        report_json = html.with_name(html.stem + ".audit.json")  # don't overwrite --json
    return report_json


def _domain_inputs(text: str, domain) -> list[str]:
    """What a domain argument reads: its folder or manifest, and every file it lists."""
    path = None if text.strip().lower().startswith("phantom-cxr") else text
    return [p for p in (path, *domain.input_files()) if p]


# ----------------------------------------------------------------------------- phantom


def cmd_phantom(args: argparse.Namespace) -> int:
    from adapt.data import write_phantom  # late: loads torch (module docstring)

    if args.n < 1:
        raise UserError(f"--n: must be at least 1, got {args.n}")
    _check_seed(args.seed)
    out = Path(args.out)
    blocker = next((p for p in (out, *out.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise UserError(f"{blocker}: exists and is not a folder" + (f" (OUT is {out})" if blocker != out else ""))
    if out.is_dir() and not args.overwrite:
        first = next(iter(sorted(out.iterdir())), None)
        if first is not None:
            raise UserError(f"{out}: not empty (holds {first.name}); choose an empty folder, or pass --overwrite "
                            "to replace the phantom files in it")
    root = write_phantom(args.out, args.site, args.n, seed=args.seed, image_size=args.image_size)
    print(f"wrote {args.n} phantom-cxr site {args.site} images ({args.image_size}×{args.image_size}) to "
          f"{root}/<class>/ and {Path(root) / 'manifest.csv'}")
    return EXIT_OK


# ----------------------------------------------------------------------------- audit

def cmd_audit(args: argparse.Namespace) -> int:
    from domaingap.run_audit import rerender  # late: loads torch (module docstring)

    print(f"wrote {rerender(args.run_dir)}")
    return EXIT_OK


# ----------------------------------------------------------------------------- export


def cmd_export(args: argparse.Namespace) -> int:
    from adapt.export import export_checkpoint  # late: loads torch (module docstring)

    if args.check_images < 1 or not args.tolerance > 0:
        raise UserError("--check-images, --tolerance: must be positive")
    _check_output_file("OUT.onnx", args.out)
    check_outputs({"OUT.onnx": args.out}, {"MODEL.pt": args.model})
    res = export_checkpoint(args.model, args.out, check_images=args.check_images, tolerance=args.tolerance)
    variant = ", target BatchNorm statistics variant" if res.batchnorm_statistics == "target" else ""
    print(f"wrote {res.path} ({res.arch}, {res.channels}×{res.image_size}×{res.image_size} in [0, 1], "
          f"{len(res.classes)} classes{variant}; onnxruntime max |logit diff| {res.max_abs_diff:.1e} "
          f"on {res.check_images} images)")
    return EXIT_OK


# ----------------------------------------------------------------------------- drift


def cmd_drift(args: argparse.Namespace) -> int:
    # late: these load torch (module docstring)
    from adapt.data import load_domain
    from adapt.io import atomic_write_json
    from diagnostics.drift import (REFERENCE_FILE, drift_fired, load_reference, monitor_batch,
                                   parse_drift_fail_on, reference_summary)
    from diagnostics.drift_history import check_path
    from adapt.device import resolve_device

    conditions = parse_drift_fail_on(args.fail_on) if args.fail_on is not None else []  # fail fast
    for name in ("permutations", "max_samples", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(args, name)}")
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a run folder")
    out = Path(args.json) if args.json else check_path(run_dir)  # RUN_DIR/drift/<time>.json: the history
    _check_output_file("--json", args.json)
    inputs = {"drift reference": run_dir / REFERENCE_FILE,
              "--batch": None if args.batch.strip().lower().startswith("phantom-cxr") else args.batch}
    check_outputs({"--json": out}, inputs)  # before any work; the batch's listed files once it is read
    ref = load_reference(run_dir / REFERENCE_FILE)
    device = resolve_device(args.device)
    batch = load_domain(_domain_spec(args.batch), image_size=int(ref.meta.get("image_size") or 64),
                        channels=int(ref.meta.get("channels") or 1), seed=args.seed)
    check_outputs({"--json": out}, {**inputs, "--batch": _domain_inputs(args.batch, batch)})
    result = monitor_batch(run_dir, batch, alpha=args.alpha, permutations=args.permutations,
                           max_points=args.max_samples, seed=args.seed, batch_size=args.batch_size,
                           num_workers=args.workers, device=device, progress=not args.quiet, reference=ref)
    print(f"{batch.name} ({len(batch)} images) vs {run_dir / REFERENCE_FILE}: {result.verdict}")
    if not args.quiet:
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
    fired = drift_fired(conditions, result)
    atomic_write_json(out, {
        "checked_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
        "batch": {"domain": args.batch, "name": batch.name, "n": len(batch)},
        "reference": reference_summary(ref),
        "settings": {"alpha": args.alpha, "permutations": args.permutations, "max_samples": args.max_samples,
                     "seed": args.seed, "device": str(device)},
        **result.to_dict(),
        "fail_on": None if args.fail_on is None else {"expression": args.fail_on,
                                                      "fired": [str(c) for c, _ in fired]},
    })
    print(f"wrote {out}")
    if fired:
        for cond, value in fired:
            print(f"fail-on: {cond} holds ({cond.metric} = {value:.4g})")
        return EXIT_GATE
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
