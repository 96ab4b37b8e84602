"""``diagnose data DOMAIN [DOMAIN ...]`` and the "Data" section of the adapt-run audit:
load the domains, split them as adapt-run does, and run the data audit
(:mod:`diagnostics.data_audit`) on every image.

Splits: each domain is split train/val/test like a recipe's ``data.split`` (stratified;
the i-th domain with ``seed + i``, so a source and a target get the splits adapt-run
gives them), or not at all (``--split none``: one part, ``all``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from adapt.data import DomainDataset, load_domain, stratified_split
from adapt.data.inputs import domain_spec
from adapt.device import resolve_device
from adapt.errors import UserError
from adapt.io import atomic_write_json
from adapt.models import load_checkpoint
from adapt.paths import check_outputs
from adapt.progress import reporter
from diagnostics.data_audit import require_data_extra
from diagnostics.data_audit.balance import class_balance, group_representation
from diagnostics.data_audit.duplicates import BLUR, MAX_HASH_DISTANCE, MAX_RELATIVE_RMSE, MAX_SHIFT, SIDE, find_duplicates
from diagnostics.data_audit.findings import data_findings, pair_location
from diagnostics.data_audit.label_issues import find_label_issues
from diagnostics.features import extract_features

#: pixel features of the out-of-fold model without --model: images averaged down to this side
PIXEL_SIDE = 16


def grey_uint8(ds: DomainDataset, chunk: int = 512) -> np.ndarray:
    """Every image of ``ds`` as uint8 grey [N, S, S] (channel mean)."""
    out = []
    for start in range(0, len(ds), chunk):
        x = ds.images(np.arange(start, min(len(ds), start + chunk))).float().mean(1)
        out.append((x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy())
    return np.concatenate(out) if out else np.zeros((0, ds.image_size, ds.image_size), np.uint8)


def audit_data(domains: Sequence[DomainDataset], splits: Sequence[dict[str, np.ndarray]], *,
               model: torch.nn.Module | None = None, model_name: str | None = None, seed: int = 0,
               device: torch.device | str = "cpu", progress: bool = True) -> dict[str, Any]:
    """The data-audit section of ``domains`` (each split into named index arrays).

    Class balance per domain and split, group representation across domains, duplicate
    pairs among all images, likely label errors per labelled domain (out-of-fold
    probabilities of a small model on pixels, or on ``model``'s features), and the
    findings with thumbnails. Every image is named by domain, split, id and label.
    """
    require_data_extra()
    say = reporter(progress)
    t0 = time.perf_counter()
    names = [d.name for d in domains]
    if len(set(names)) != len(names):
        raise UserError(f"domains: {names} name one domain twice")
    for d in domains:
        if len(d) < 2:
            raise UserError(f"{d.name}: {len(d)} image(s); the data audit needs at least two")
    say("data audit: reading the images")
    images = [grey_uint8(d) for d in domains]
    side = max(im.shape[-1] for im in images)
    stack = np.concatenate([_resized(im, side) for im in images])
    records, offset = [], 0
    for d, part in zip(domains, splits):
        split_of = np.empty(len(d), dtype=object)
        for name, idx in part.items():
            split_of[idx] = name
        records += [{"k": offset + i, "domain": d.name, "split": str(split_of[i]), "id": d.ids[i],
                     "label": d.classes[y] if y >= 0 else None} for i, y in enumerate(d.labels.tolist())]
        offset += len(d)
    section: dict[str, Any] = {
        "domains": [{"name": d.name, "n": len(d), "classes": d.classes,
                     "splits": {k: class_balance(d.labels[v], d.classes) for k, v in part.items()}}
                    for d, part in zip(domains, splits)],
        "groups": group_representation({d.name: d.groups for d in domains}),
    }
    say(f"data audit: duplicates among {len(stack)} images")
    pairs = find_duplicates(stack)
    section["duplicates"] = {
        "settings": {"max_hash_distance": MAX_HASH_DISTANCE, "max_relative_rmse": MAX_RELATIVE_RMSE, "max_shift": MAX_SHIFT,
                     "blur_sigma": BLUR, "side": SIDE, "images": len(stack)},
        "pairs": [{**p.to_dict(), "a": records[p.i], "b": records[p.j],
                   "where": pair_location(records[p.i], records[p.j])} for p in pairs]}
    section["label_issues"] = {}
    offset = 0
    for d, im in zip(domains, images):
        known = np.flatnonzero(d.labels >= 0)
        if len(known) >= 2 and len(np.unique(d.labels[known])) >= 2:
            say(f"data audit: label issues in {d.name}")
            section["label_issues"][d.name] = _label_issues(d, im, known, records[offset:offset + len(d)],
                                                            model, model_name, seed, device)
        offset += len(d)
    section["findings"] = data_findings(section, lambda k: stack[k])
    section["seconds"] = round(time.perf_counter() - t0, 2)
    return section


def _resized(images: np.ndarray, side: int) -> np.ndarray:
    if images.shape[-1] == side:
        return images
    x = torch.nn.functional.interpolate(torch.from_numpy(images).float()[:, None], size=(side, side),
                                        mode="bilinear", align_corners=False)
    return x[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def _label_issues(d: DomainDataset, images: np.ndarray, known: np.ndarray, records: list[dict],
                  model, model_name, seed: int, device) -> dict[str, Any]:
    if model is not None:
        feats = extract_features(d.subset(known), model, "model", device=device, progress=False,
                                 shard=False).features
        what = f"RBF SVM on the features of {model_name or 'the model'}"
    else:
        x = torch.from_numpy(images[known]).float()[:, None] / 255.0
        feats = torch.nn.functional.adaptive_avg_pool2d(x, PIXEL_SIDE).reshape(len(known), -1).numpy()
        what = f"RBF SVM on {PIXEL_SIDE}x{PIXEL_SIDE} pixels"
    res = find_label_issues(feats, d.labels[known], seed=seed)
    out = res.to_dict()
    out["issues"] = [{**records[int(known[it["index"]])], "given": d.classes[it["given"]],
                      "suggested": d.classes[it["suggested"]], "quality": it["quality"]} for it in out["issues"]]
    return {**out, "model": what, "n_labelled": int(len(known))}


def run_data_section(domains, seed: int, progress: bool = True) -> dict[str, Any]:
    """The "Data" section of an adapt-run audit: every image of both domains (a
    :class:`domaingap.runs.Domains`) with the run's own splits; label issues from the
    pixel model (the data as it is, before any model)."""
    full = [d for d in (domains.source, domains.target) if d is not None]
    parts = [domains.source_split, domains.target_split] if domains.source is not None else [domains.target_split]
    splits = []
    for d, part in zip(full, parts):
        where = {i: k for k, sub in part.items() for i in sub.ids}
        names = np.array([where.get(i, "unused") for i in d.ids])
        splits.append({k: np.flatnonzero(names == k) for k in dict.fromkeys(names.tolist())})
    return audit_data(full, splits, seed=seed, progress=progress)


# ----------------------------------------------------------------------------- the command


def parse_split(text: str) -> dict[str, float] | None:
    """``--split``: 'none', or train,val,test fractions like '0.7,0.15,0.15'."""
    if text.strip().lower() == "none":
        return None
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        raise UserError(f"--split {text}: expected 'none' or three fractions like 0.7,0.15,0.15") from None
    if len(parts) != 3:
        raise UserError(f"--split {text}: expected three fractions (train,val,test)")
    return {k: v for k, v in zip(("train", "val", "test"), parts) if v > 0}


def run_data_command(args) -> int:
    """``diagnose data``: audit, print the findings, write --json / --html."""
    require_data_extra()  # before any image is read
    fractions = parse_split(args.split)
    device = resolve_device(args.device)
    model, meta = None, {}
    if args.model:
        model, meta = load_checkpoint(args.model, map_location=device)
    classes = list(meta["classes"]) if meta.get("classes") else None
    size = int(meta.get("image_size") or args.image_size)
    channels = int(getattr(model, "in_channels", 1) or 1) if model is not None else 1
    domains = []
    for text in args.domains:
        try:
            domains.append(load_domain(domain_spec(text), image_size=size, channels=channels, seed=args.seed,
                                       classes=classes))
        except UserError as err:
            if classes is not None and "not among the classes" in str(err):
                raise UserError(f"--model {args.model}: trained on classes {classes}; {err}") from None
            raise
    html_json = Path(args.html).with_suffix(".json") if args.html else None
    if html_json is not None and args.json and Path(args.json).resolve() == html_json.resolve():
        html_json = None  # --json is that file already
    check_outputs({"--json": args.json, "--html": args.html, "--html report's JSON": html_json},
                  {"DOMAIN": [p for t, d in zip(args.domains, domains) for p in
                              ([] if t.lower().startswith("phantom-cxr") else [t, *d.input_files()])],
                   "--model": args.model})
    splits = [{"all": np.arange(len(d))} if fractions is None else
              stratified_split(d.labels, fractions, seed=args.seed + i) for i, d in enumerate(domains)]
    section = audit_data(domains, splits, model=model, model_name=args.model, seed=args.seed, device=device,
                         progress=not args.quiet)
    payload = {"domains_given": list(args.domains), "model": args.model, "seed": args.seed,
               "split": fractions, **section}
    for f in section["findings"]:
        print(f"{f['level']:4}  {f['title']}: {f['summary']}")
    if not section["findings"]:
        print("ok    no finding: balanced classes, no duplicates, no likely label errors")
    if args.json:
        atomic_write_json(args.json, payload)
        print(f"wrote {args.json}")
    if args.html:
        from diagnostics.data_audit.page import write_data_page  # late: jinja2 and matplotlib, ~0.7 s to import

        if html_json is not None:
            atomic_write_json(html_json, payload)
        write_data_page(section, " · ".join(d.name for d in domains), args.html)
        print(f"wrote {args.html} (and {html_json or args.json})")
    return 0
