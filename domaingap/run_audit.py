"""The audit of an ``adapt-run``: diagnose the model before and after adaptation, judge,
and write ``runs/<name>/audit.html`` + ``audit.json``.

This module only wires the measuring functions together (features → gap statistics,
collapse, attributions, embeddings) into the report's data contract
(:mod:`diagnostics.audit`); every statistic lives in its own module.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from adapt.environment import environment_info
from adapt.evaluate import classification_metrics, predict
from adapt.errors import UserError
from adapt.io import atomic_write_text
from adapt.progress import reporter
from adapt.selection import label_free_scores
from domaingap.data_audit_run import run_data_section
from domaingap.runs import Deployment, Domains, RunSummary, decide_deployment, held_out_sample
from diagnostics.attribution import compare_reliance, spurious_analysis
from diagnostics.audit import Coverage, StageResult, build_audit
from diagnostics.embedding import umap_embedding
from diagnostics.features import extract_features
from diagnostics.gap import collapse_section, measure_gap
from diagnostics.label_shift import change_bound_under_label_shift
from diagnostics.labelfree_estimates import accuracy_estimates, estimate_text
from diagnostics.paired import accuracy_change
from diagnostics.ranking import rank_runs
from diagnostics.report import render_html, write_report
from diagnostics.report.spurious_view import spurious_section
from diagnostics.threads import single_threaded

if TYPE_CHECKING:  # pragma: no cover
    from adapt.recipe import DiagnosticsConfig, Recipe


def _same_images(a, b) -> bool:
    """Whether two held-out samples are the same images in the same order."""
    if a is None or b is None:
        return False
    return a is b or (len(a) == len(b) and list(a.ids) == list(b.ids))


def _ranking_rows(summary: RunSummary, recipe: Recipe, deployment: Deployment) -> list[dict[str, Any]]:
    """The label-free ranking the methods table shows: the deployment's estimate ranking
    (every model, the source model too; score = what ordered them) when it
    made one, else the runs by the checkpoint selector's score; each with its oracle rank
    by target test accuracy when target labels are known."""
    stages = {"source-only": summary.source, **summary.runs}
    acc = {n: (st.metrics.get("target_test") or {}).get("accuracy") for n, st in stages.items()}
    if deployment.ranking is not None:
        return deployment.ranking.rows(acc)
    return rank_runs({n: st.selection for n, st in summary.runs.items()}, recipe.method.selection,
                     {n: acc[n] for n in summary.runs})


def _masks(ds) -> torch.Tensor | None:
    first = ds.mask(0) if len(ds) else None
    if first is None:
        return None
    return torch.stack([ds.mask(i) for i in range(len(ds))])


def group_metrics(model: nn.Module, ds, classes: list[str], device: torch.device,
                  probs: np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy / macro-F1 per value of every group column (site, sex, age band...).
    ``probs``: the model's predictions on ``ds`` when the caller has them (not run again)."""
    if not ds.groups or not ds.has_labels:
        return {}
    if probs is None:
        probs = predict(model, ds, device)["probs"]
    preds, labels = probs.argmax(1), np.asarray(ds.labels)
    result: dict[str, Any] = {}
    for col, values in ds.groups.items():
        values = np.asarray(values)
        per = {}
        for v in sorted(set(values.tolist())):
            sel = values == v
            m = classification_metrics(labels[sel], preds[sel], classes)
            per[str(v)] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"]}
        result[col] = per
    return result


def _embedding_job(fs: np.ndarray, ft: np.ndarray, ls: np.ndarray, lt: np.ndarray, seed: int,
                   max_points: int) -> dict[str, Any]:
    """UMAP of pooled source+target features (run in a worker process: see audit_run)."""
    return umap_embedding(fs, ft, ls, lt, seed=seed, max_points=max_points).to_dict()


def _embedding_section(d: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    return {
        "coords": d["coords"],
        "domain": ["source" if v == 0 else "target" for v in d["domain"]],
        "label": [classes[v] if v >= 0 else "unknown" for v in d["label"]],
        "method": d["method"],
        "seconds": d.get("seconds"),
    }


def measure_stage(
    name: str,
    model: nn.Module,
    metrics: dict[str, Any],
    fs,
    ft,
    *,
    source,
    target,
    classes: list[str],
    device: torch.device,
    cfg: DiagnosticsConfig,
    seed: int,
    reference_boxes: dict[str, list[int]] | None = None,
    source_model: nn.Module | None = None,
    collapse: dict[str, Any] | None = None,
) -> tuple[StageResult, dict[str, Any]]:
    """Everything but the embedding for one model, from its features ``fs``/``ft`` of the
    held-out ``source``/``target`` images: gap statistics, collapse, label-free scores,
    spurious-feature analysis per domain, per-group metrics. A source-free run passes
    ``fs`` and ``source`` None: the gap statistics are left out and everything else is
    measured on the target alone.

    ``collapse``: the collapse section of these very features, when it was already read
    (the deployment ranking reads the source model's: :func:`domaingap.runs.estimate_ranking`).

    Returns the report's :class:`StageResult` and the raw result objects (for
    before/after comparisons such as :func:`diagnostics.attribution.compare_reliance`).
    """
    timings: dict[str, float] = {}
    gap = None
    if fs is not None:
        t = time.perf_counter()
        gap = measure_gap(fs, ft, permutations=cfg.permutations, seed=seed, bootstrap=50)
        timings["gap"] = time.perf_counter() - t
    # target labels (when known) make the true mix the judge; without them a label-shift
    # reading is checked against the features with the run's permutation budget
    if collapse is None:
        collapse = collapse_section(fs, ft, classes, seed=seed, permutations=cfg.permutations)
    label_free = label_free_scores(ft.probs)
    # each domain's images, the model that meets them, and its features (with its predictions) there
    domains = [(n, ds, m, f) for n, ds, m, f in (("source", source, source_model or model, fs),
                                                 ("target", target, model, ft)) if ds is not None]

    raw: dict[str, Any] = {"gap": gap}
    spurious: dict[str, Any] = {}
    if cfg.attribution:
        t = time.perf_counter()
        for dom_name, ds, m, _ in domains:
            sub = held_out_sample(ds, cfg.attribution_samples, seed)
            images = sub.images()
            res = spurious_analysis(
                m, images, sub.labels, dom_name, masks=_masks(sub),
                known_boxes=getattr(sub, "marker_boxes", None),
                reference_box=(reference_boxes or {}).get(dom_name),
                method=cfg.attribution_method, n_steps=cfg.attribution_steps,
                max_samples=cfg.attribution_samples, seed=seed,
            )
            raw[f"spurious_{dom_name}"] = res
            spurious[dom_name] = spurious_section(res, images, classes)
        timings["attribution"] = time.perf_counter() - t

    groups: dict[str, Any] = {}
    for dom_name, ds, m, f in domains:
        for col, per in group_metrics(m, ds, classes, device, probs=f.probs).items():
            groups[f"{dom_name} {col}"] = per

    stage = StageResult(
        name=name,
        metrics={"source_test": metrics.get("source_test"), "target_test": metrics.get("target_test"),
                 # train.fairness / train.guard: fairlearn's group report and the guard's record
                 **{k: metrics[k] for k in ("groups", "guard") if metrics.get(k)}},
        label_free={"im_score": label_free["im"], "snd": label_free["snd"]},
        gap={} if gap is None else {**gap.to_dict(), "seconds": {k: round(v, 2) for k, v in timings.items()}},
        collapse=collapse,
        spurious=spurious,
        groups=groups,
    )
    return stage, raw


def audit_run(summary: RunSummary, recipe: Recipe, domains: Domains, device: torch.device,
              progress: bool = True) -> Path:
    """Diagnose the source model (before) and the audited run (after); write the report.

    Measured on held-out validation + test images of each domain (never trained on).
    UMAP's first call in a process compiles numba code (6-9 s; more in a fresh venv, whose
    pynndescent compiles once on import); it runs in a worker process while this one computes
    the gap statistics and attributions, so the two overlap.
    """
    t0 = time.perf_counter()
    cfg = recipe.diagnostics
    say = reporter(progress)
    has_source = domains.source_eval is not None
    source = held_out_sample(domains.source_eval, cfg.max_samples, recipe.seed) if has_source else None
    target = held_out_sample(domains.target_eval, cfg.max_samples, recipe.seed)
    # the run a user would deploy, as the run decided it once (a pair of models handed to
    # audit_models has no run: decided here, its target features only if they serve below)
    reusable = cfg.features == "model" and target is domains.target_eval
    deployment = summary.deployment or decide_deployment(summary, recipe, domains, device, target_features=reusable)
    ranking = _ranking_rows(summary, recipe, deployment)
    # the run compared with the source model: the deployed run, or the best-ranked run
    # when the source model is deployed (what adaptation would have done)
    after_name = deployment.audited
    after_stage = summary.runs[after_name] if after_name is not None else None
    # (stage name, stage, the model as it meets the source images): a per-domain-BN run
    # meets them with source BatchNorm statistics, the copy its evaluation made
    stages = [("source-only", summary.source, summary.source.model)]
    if after_stage is not None:
        on_source = deployment.on_source if after_stage is deployment.stage else (
            after_stage.source_model if has_source else None)
        stages.append((f"adapted ({after_name})", after_stage, on_source))
    # every model's features on these target images, extracted once when the ranking read them
    ranked = deployment.ranked_features if cfg.features == "model" and _same_images(deployment.ranked_on, target) \
        else {}

    def on_target(st) -> Any:
        # the deployed model's held-out target features, extracted once with the deployment
        kept = deployment.target_features if st is deployment.stage else None
        if kept is not None and reusable:
            return kept
        if st.name in ranked:
            return ranked[st.name]
        return extract_features(target, st.model, cfg.features, device=device, progress=False, shard=False)

    # the source model's features on these source images, extracted once when the ranking's
    # label-shift reading read them (with that reading: the before stage's collapse section)
    read_before = cfg.features == "model" and deployment.source_features is not None \
        and _same_images(deployment.source_on, source) and _same_images(deployment.ranked_on, target)

    def on_source(st, sm) -> Any:
        if read_before and st is summary.source and sm is summary.source.model:
            return deployment.source_features
        # the audit runs on the main rank alone: no sharding across a process group
        return extract_features(source, sm, cfg.features, device=device, progress=False, shard=False)

    feats = [(on_source(st, sm) if has_source else None, on_target(st)) for _, st, sm in stages]
    pool = futures = None
    if cfg.umap and has_source:  # the embedding shows the two domains together
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        futures = [pool.submit(_embedding_job, fs.features, ft.features, fs.labels, ft.labels,
                               recipe.seed, 2 * cfg.max_samples) for fs, ft in feats]
    try:
        common = dict(source=source, target=target, classes=domains.classes, device=device, cfg=cfg,
                      seed=recipe.seed)
        results = []
        refs: dict[str, list[int]] = {}
        for (name, st, sm), (fs, ft) in zip(stages, feats):
            say(f"audit: diagnosing the {name} model")
            # beside UMAP's worker (one core: single-threaded with a seed) the measurements
            # take one thread: no oversubscription (diagnostics.threads), the same numbers
            with single_threaded() if pool is not None else contextlib.nullcontext():
                known = deployment.source_reading if read_before and fs is deployment.source_features \
                    and ft is ranked.get(st.name) else None
                stage, raw = measure_stage(name, st.model, {**st.metrics, "guard": (st.fit or {}).get("guard")}, fs,
                                           ft, reference_boxes=refs or None, source_model=sm, collapse=known,
                                           **common)
            if not refs:  # the after-model is tested on the before-model's suspect regions
                for dom in ("source", "target"):
                    r = raw.get(f"spurious_{dom}")
                    if r is not None:
                        region = r.verdict.get("region")
                        refs[dom] = list(region) if isinstance(region, (list, tuple)) else list(r.hot_box)
            results.append((stage, raw))
        if futures is not None:
            for (stage, _), fut in zip(results, futures):
                stage.embedding = _embedding_section(fut.result(), domains.classes)
        if pool is not None:
            # every job is done: the worker's exit (interpreter and torch teardown, ~1.5 s)
            # overlaps the report instead of holding the audit
            pool.shutdown(wait=False)
            pool = None
    finally:
        if pool is not None:  # an error: stop what has not started, wait for the rest
            pool.shutdown(cancel_futures=True)

    before = results[0][0]
    after = results[1][0] if len(results) > 1 else None
    if after is not None:
        _add_reliance(after, results[0][1], results[1][1])
        _add_paired_changes(after, feats[0], feats[1], recipe.seed)
    estimates: dict[str, Any] = {}
    if bool((feats[0][1].labels < 0).all()):  # target labels unknown: estimate, with measured bands
        say("audit: estimating target accuracy without labels")
        measured = {name: (None, f) for name, f in ranked.items()}
        measured.update({st.name: f for (_, st, _), f in zip(stages, feats)})
        # the ranking's COT read the same target probabilities (``ranked``: these images, the
        # models' own features) and the same source labels (``source_on``: these images)
        known = deployment.ranking.estimates if deployment.ranking is not None and ranked \
            and _same_images(deployment.source_on, source) else None
        estimates = _label_free_estimates(summary, measured, source, target, device, recipe.seed, known)
        before.label_free["accuracy"] = estimates.get("source-only")
        if after is not None:
            after.label_free["accuracy"] = estimates.get(after_name)
            fs, ft = feats[0]
            # a pure label shift (the before stage's reading): the estimates are blind there,
            # the change's bound is not (diagnostics/audit/labelfree_policy.py)
            if (before.collapse or {}).get("verdict") == "label_shift" and fs is not None \
                    and after.label_free["accuracy"] is not None:
                after.label_free["accuracy"] = {**after.label_free["accuracy"], "label_shift_bound":
                                                change_bound_under_label_shift(fs.probs, fs.labels, ft.probs,
                                                                               feats[1][1].probs, seed=recipe.seed)}
    data = None
    if cfg.data_audit:  # opt-in: it reads every image of both domains (docs/data_audit.md)
        data = run_data_section(domains, recipe.seed, progress)
    env = environment_info(device)
    audit = build_audit(
        before, after, classes=domains.classes,
        run={"name": recipe.name, "recipe_text": recipe.to_yaml(), "seed": recipe.seed,
             "device": env["device"], "versions": env["versions"]},
        methods_table=methods_rows(summary.table, ranking, after_name, recipe, estimates), sources=summary.sources,
        coverage=Coverage(source_images=has_source, target_missing_classes=tuple(domains.target_missing or ())),
        data=data, deployment=deployment.to_dict(),
    )
    html, _ = write_report(audit, summary.run_dir / "audit.html", summary.run_dir / "audit.json")
    say(f"audit: {time.perf_counter() - t0:.1f} s")
    return html


def methods_rows(table: list[dict], ranking: list[dict], audited: str | None, recipe: Recipe,
                 estimates: dict[str, Any] | None = None) -> list[dict]:
    """The comparison table with each adapted run's label-free rank (1 = what the selector
    recommends), its oracle rank by target accuracy (when target labels are known), which
    run the audit judged (★ = recommended and audited) and, when target labels are
    unknown, each model's estimated target accuracy with its measured band."""
    ranks = {r["run"]: r for r in ranking}
    rows = []
    for row in table:
        r = ranks.get(row.get("model"))
        extra: dict[str, Any] = {}
        if r is not None:
            extra["label_free_rank"] = r["rank"]
            if r["oracle_rank"] is not None:
                extra["oracle_rank"] = r["oracle_rank"]
            mark = ("★ recommended" if r["rank"] == 1 else "") + (", audited" if row["model"] == audited else "")
            extra["audit"] = mark.lstrip(", ") or None
        text = estimate_text((estimates or {}).get(row.get("model")))
        if text:
            extra["target_acc_estimated"] = text
        rows.append({**row, "seed": recipe.seed, "selector": recipe.method.selection, **extra})
    return rows


def _label_free_estimates(summary: RunSummary, measured: dict[str, tuple[Any, Any]], source, target,
                          device: torch.device, seed: int,
                          known: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """Every model's label-free accuracy estimates on the audit's target images (agreement
    with the other models; ATC, DoC, COT from the held-out source images as the model is
    deployed there: a per-domain-BN run's kept source-statistics copy):
    {model name: :func:`diagnostics.labelfree_estimates.accuracy_estimates`}.

    ``measured``: {stage name: (source, target) FeatureSets} of the models the audit has
    already run over these same images; their predictions are reused, not computed again;
    ``known``: {model name: estimates} the deployment ranking computed on these same target
    and source images (its COT is taken, not solved again)."""
    stages = {"source-only": summary.source, **summary.runs}
    t_probs, s_out = {}, {}
    for name, st in stages.items():
        fs, ft = measured.get(name, (None, None))
        if ft is not None and ft.probs is not None:
            t_probs[name] = ft.probs
        else:
            t_probs[name] = predict(st.model, target, device)["probs"]
        if source is None:
            s_out[name] = None
        elif fs is not None and fs.probs is not None:
            s_out[name] = (fs.probs, fs.labels)
        else:
            p = predict(st.source_model, source, device)
            s_out[name] = (p["probs"], p["labels"])
    out = {}
    for name in stages:
        others = [p.argmax(1) for n, p in t_probs.items() if n != name]
        s_probs, s_labels = s_out[name] or (None, None)
        out[name] = accuracy_estimates(t_probs[name], s_probs, s_labels, others or None, seed=seed,
                                       known=(known or {}).get(name))
    return out


def _add_paired_changes(after: StageResult, before_feats, after_feats, seed: int) -> None:
    """Paired accuracy changes on the audit's held-out images (the same images, both models):
    ``after.metrics["target_change"]`` / ``["source_change"]`` (McNemar + paired bootstrap)."""
    for dom, b, a in (("source", before_feats[0], after_feats[0]), ("target", before_feats[1], after_feats[1])):
        if b is None or a is None:  # a source-free run has no source images
            continue
        if b.probs is None or a.probs is None or len(b.labels) == 0 or bool((b.labels < 0).any()):
            continue
        if len(b.labels) != len(a.labels) or not bool((b.labels == a.labels).all()):
            continue  # not the same images in the same order: no pairing
        after.metrics[f"{dom}_change"] = accuracy_change(b.labels, b.probs, a.probs, seed=seed).to_dict()


def _add_reliance(after: StageResult, raw_before: dict, raw_after: dict) -> None:
    for dom in ("source", "target"):
        b, a = raw_before.get(f"spurious_{dom}"), raw_after.get(f"spurious_{dom}")
        if b is not None and a is not None and dom in after.spurious:
            after.spurious[dom]["reliance_change"] = compare_reliance(b, a)


def rerender(run_dir: str | Path) -> Path:
    """``diagnose audit RUN_DIR``: render ``audit.html`` again from ``audit.json``.

    ``audit.json`` is the input here: it is read, never written.
    """
    run_dir = Path(run_dir)
    src = run_dir / "audit.json"
    if not src.is_file():
        raise UserError(f"{run_dir}: no audit.json (run adapt-run with diagnostics.enabled: true first)")
    try:
        data = json.loads(src.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{src}: not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{src}: not valid JSON (line {e.lineno})") from None
    not_audit = f"{src}: not an audit written by adapt-run"
    if not isinstance(data, dict):
        raise UserError(f"{not_audit} (a JSON {_json_kind(data)}, expected an object)")
    missing = [k for k in ("before", "verdicts", "run", "classes") if k not in data]
    if missing:
        raise UserError(f"{not_audit} (no {', '.join(repr(k) for k in missing)})")
    try:
        html = render_html(data)
    except (TypeError, KeyError, ValueError, AttributeError, IndexError) as e:
        raise UserError(f"{not_audit} ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return atomic_write_text(run_dir / "audit.html", html)


def _json_kind(value: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")
