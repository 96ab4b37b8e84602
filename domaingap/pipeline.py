"""What ``adapt-run`` does with a recipe, stage by stage.

1. load both domains with one class mapping; stratified train/val/test splits;
2. train the source model (or load ``model.source_checkpoint``) with the one loop;
3. for every run in ``method.runs``: copy the source model, assemble the run's pieces
   (objective, style, penalties, AdaBN) and train it with the same loop, selecting the
   epoch label-free;
4. optionally train the from-scratch target baseline on the labelled target images;
5. evaluate everything on the source and target test splits and write one comparison;
6. run the diagnostics before/after and write the audit report.

Every stage writes into ``runs/<name>/<stage>/``; with ``resume`` a finished stage is
loaded instead of retrained and an unfinished one continues from its ``last.pt``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapt.data import class_balanced_weights
from adapt.data.augment import SourceAugment
from adapt.device import resolve_device
from adapt.distributed import SINGLE, DistContext, barrier
from adapt.environment import environment_info
from adapt.errors import UserError
from adapt.evaluate import evaluate
from adapt.fingerprint import SOURCE, TARGET_SCRATCH, fingerprint, stage_fields
from adapt.export import check_available, export_onnx, variant_file_name
from adapt.io import atomic_write_json, atomic_write_text
from adapt.methods import build_run_components
from adapt.methods.base import MethodParts
from adapt.methods.source_only import SourceOnly
from adapt.models import build_model, load_checkpoint, save_checkpoint
from adapt.progress import reporter
from adapt.recipe import AdaptRunConfig, Recipe, TrainConfig
from diagnostics.report.deployment_text import deployment_text
from domaingap.comparison import comparison_table, format_table, stage_line, with_estimates
from domaingap.fairness_run import (check_fairness_inputs, fit_safeguards, group_column, group_metrics_section,
                                    source_score_fn)
from domaingap.run_folder import check_run_inputs, run_session
from domaingap.runs import (
    Domains,
    RunSummary,
    StageOutcome,
    adabn_on,
    after_precise_bn,
    batchnorm_statistics,
    decide_deployment,
    deployed_on_source,
    load_domains,
    run_epochs,
    run_train_config,
    trains_on,
    uses_per_domain_bn,
    uses_target_bn,
)
from adapt.selection import make_score_fn, selection_summary
from adapt.train import FitResult, fit, precise_bn_covers
from diagnostics.drift import MIN_BATCH, save_run_reference
from domaingap.run_audit import audit_run
from domaingap.source_contribution import leave_one_source_out
from domaingap.source_weights import measure_sources, sample_weights


# --------------------------------------------------------------------------- stages


def _final_checkpoint(stage_dir: Path) -> Path:
    return stage_dir / "model.pt"


def _save_stage(stage_dir: Path, model: nn.Module, recipe: Recipe, domains: Domains, stage: str,
                **meta: Any) -> None:
    save_checkpoint(
        _final_checkpoint(stage_dir), model,
        classes=domains.classes, image_size=recipe.data.image_size, channels=recipe.data.channels,
        recipe=recipe.to_yaml(), recipe_fingerprint=fingerprint(stage_fields(recipe, stage)), **meta,
    )


def _evaluate_all(model: nn.Module, domains: Domains, device: torch.device, recipe: Recipe,
                  per_domain_bn: bool = False, on_source: nn.Module | None = None) -> dict[str, Any]:
    """Source val/test and target test metrics.

    ``per_domain_bn``: the model carries target BatchNorm statistics (AdaBN); it is
    evaluated on the source with statistics re-estimated on unlabelled source training
    images — each domain with its own, as AdaBN is deployed — so that source accuracy
    measures what the weights retained, not a statistics mismatch. ``on_source``: that
    source-statistics copy when the caller already has it (see :func:`_outcome`).
    Without source images (a source-free recipe) ``source_test`` is None.
    """
    ev = lambda m, ds: evaluate(m, ds, domains.classes, device, num_workers=recipe.data.num_workers)  # noqa: E731
    out: dict[str, Any] = {"source_test": None}
    if domains.has_source:
        if on_source is None:
            on_source = deployed_on_source(model, domains, device) if per_domain_bn else model
        out["source_test"] = ev(on_source, domains.source_split["test"])
        if "val" in domains.source_split:
            out["source_val"] = ev(on_source, domains.source_split["val"])
    out["target_test"] = ev(model, domains.target_split["test"]) if domains.target.has_labels else None
    groups = group_metrics_section(model, domains, group_column(recipe), device, on_source)  # train.fairness / train.guard
    return out if groups is None else {**out, "groups": groups}


def _outcome(name: str, model: nn.Module, domains: Domains, device: torch.device, recipe: Recipe,
             per_domain_bn: bool, on_source: nn.Module | None = None, **info: Any) -> StageOutcome:
    """A finished stage, evaluated. A per-domain-BN model's source-statistics copy is made
    here once (unless given) and kept (``StageOutcome.on_source``): the audit measures the
    same copy."""
    if on_source is None and per_domain_bn and domains.has_source:
        on_source = deployed_on_source(model, domains, device)
    return StageOutcome(name, model, _evaluate_all(model, domains, device, recipe, per_domain_bn, on_source),
                        on_source=on_source, **info)


def train_source(recipe: Recipe, domains: Domains, device: torch.device, run_dir: Path,
                 resume: bool, ctx: DistContext, progress: bool, loaded: nn.Module | None = None) -> StageOutcome:
    """Stage 2: the source model, trained on labelled source data (or ``loaded``, the
    checked ``model.source_checkpoint``: see :func:`load_source_checkpoint`)."""
    stage_dir = run_dir / SOURCE
    t0 = time.perf_counter()
    if recipe.model.source_checkpoint:
        model = loaded if loaded is not None else load_source_checkpoint(recipe, domains)
        model.to(device)
        return StageOutcome("source-only", model, _evaluate_all(model, domains, device, recipe),
                            fit={"loaded_from": recipe.model.source_checkpoint})
    if resume and _final_checkpoint(stage_dir).exists():
        return _load_finished("source-only", stage_dir, domains, device, recipe)

    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model.arch, len(domains.classes), recipe.data.channels, recipe.model.weights)
    model.to(device)
    train_ds = domains.source_split["train"]
    weights = class_balanced_weights(train_ds.labels) if recipe.data.balanced_sampler else None
    val = domains.source_split.get("val")
    score_fn = None
    if val is not None and len(val):
        def score_fn(m: nn.Module) -> tuple[float, dict[str, float]]:
            acc = evaluate(m, val, domains.classes, device)["accuracy"]
            return acc, {"val_accuracy": acc}
    score_fn = source_score_fn(recipe, domains, device) or score_fn  # train.fairness.selection
    objective = SourceOnly(recipe.train.label_smoothing)
    result = fit(
        model, objective, train_ds,
        cfg=recipe.train, out_dir=stage_dir, seed=recipe.seed, score_fn=score_fn,
        strategy=recipe.strategy, sample_weights=weights, resume=resume, desc="source",
        ctx=ctx, progress=progress, num_workers=recipe.data.num_workers, augment=source_augment(recipe),
        recipe_fingerprint=fingerprint(stage_fields(recipe, SOURCE)),
        **fit_safeguards(recipe, domains, objective, train_ds, device, stage_dir),
    )
    seconds = time.perf_counter() - t0 + result.earlier_seconds
    if ctx.is_main:
        _save_stage(stage_dir, model, recipe, domains, SOURCE, fit=result.to_dict(), seconds=seconds)
    return StageOutcome("source-only", model, _evaluate_all(model, domains, device, recipe),
                        fit=result.to_dict(), seconds=seconds)


def source_augment(recipe: Recipe) -> SourceAugment | None:
    """The recipe's ``data.augment`` as a batch transform, or None."""
    return SourceAugment(recipe.data.augment) if recipe.data.augment else None


def _load_finished(name: str, stage_dir: Path, domains: Domains, device: torch.device, recipe: Recipe,
                   per_domain_bn: bool = False) -> StageOutcome:
    """A stage that finished in an earlier (resumed) run: load its model, re-evaluate."""
    model, meta = load_checkpoint(_final_checkpoint(stage_dir))
    model.to(device)
    return _outcome(name, model, domains, device, recipe, per_domain_bn,
                    fit=meta.get("fit"), selection=meta.get("selection"), seconds=float(meta.get("seconds", 0.0)))


def load_source_checkpoint(recipe: Recipe, domains: Domains) -> nn.Module:
    """``model.source_checkpoint``, loaded and checked against the recipe and the data
    (classes, channels, architecture, image size): a one-line UserError otherwise."""
    path = recipe.model.source_checkpoint
    model, meta = load_checkpoint(path)
    _check_checkpoint_fits(path, meta, model, domains, recipe)
    return model


def _check_checkpoint_fits(path: str, meta: dict[str, Any], model: nn.Module, domains: Domains,
                           recipe: Recipe) -> None:
    if model.arch != recipe.model.arch:
        raise UserError(f"{path}: the checkpoint is a {model.arch} but model.arch is {recipe.model.arch} "
                        f"(set model.arch: {model.arch})")
    size = meta.get("image_size")
    if size is not None and size != recipe.data.image_size:
        raise UserError(f"{path}: the checkpoint was trained on {size}x{size} images but data.image_size is "
                        f"{recipe.data.image_size} (set data.image_size: {size})")
    classes = meta.get("classes")
    if classes is not None and list(classes) != list(domains.classes):
        raise UserError(f"{path}: checkpoint classes {list(classes)} differ from the data's {domains.classes}")
    if getattr(model, "in_channels", recipe.data.channels) != recipe.data.channels:
        raise UserError(f"{path}: checkpoint expects {model.in_channels}-channel images but data.channels is "
                        f"{recipe.data.channels}")


def adapt_run(run_cfg: AdaptRunConfig, source: StageOutcome, recipe: Recipe, domains: Domains,
              device: torch.device, run_dir: Path, resume: bool, ctx: DistContext,
              progress: bool, sources: dict[str, Any] | None = None) -> StageOutcome:
    """Stage 3: one adaptation run from the source model's weights."""
    stage = f"methods/{run_cfg.name}"
    stage_dir = run_dir / stage
    # deployed on each domain with its own BatchNorm statistics (see uses_per_domain_bn)
    per_domain_bn = uses_per_domain_bn(run_cfg)
    if resume and _final_checkpoint(stage_dir).exists():
        return _load_finished(run_cfg.name, stage_dir, domains, device, recipe, per_domain_bn=per_domain_bn)
    t0 = time.perf_counter()
    seed = run_cfg.seed_in(recipe)  # its own (a copy's), else the recipe's
    torch.manual_seed(seed)
    model = copy.deepcopy(source.model).to(device)
    target_train = domains.target_split["train"]
    parts: MethodParts = build_run_components(
        run_cfg, model=model, recipe=recipe, source_train=domains.source_split.get("train"),
        target_train=target_train, target_labeled=domains.target_labeled, device=device, out_dir=stage_dir,
    )
    # scored, selected and evaluated on the target with the statistics it trained with
    on_target_stats = uses_target_bn(run_cfg)
    # Source-validation accuracy is measured as the model is deployed on the source
    # (see uses_per_domain_bn), or `selection: source_val` would judge these runs by a
    # BatchNorm mismatch rather than by what the weights retained.
    source_train = domains.source_split.get("train")
    source_prepare = ((lambda m: adabn_on(m, source_train, device))
                      if per_domain_bn and domains.has_source else None)
    selector = recipe.method.selection
    oracle = domains.target_split["test"] if domains.target.has_labels else None
    score_kw = dict(target=target_train, source_val=domains.source_split.get("val"),
                    source_train=source_train, class_names=domains.classes,
                    device=device, source_prepare=source_prepare, seed=seed, oracle=oracle,
                    few_labels=domains.target_labeled, compare=recipe.method.compare_selectors)
    trains_on_source = domains.has_source and trains_on(parts.train_data, source_train)
    weights = (sample_weights(parts.train_data, sources["names"], sources["weights"])
               if run_cfg.source_weights == "similarity" and trains_on_source else None)
    # each epoch's scoring comes right after its precise-BN pass: its source statistics are reused
    fit_source_prepare = after_precise_bn(source_prepare, recipe, parts.train_data, source_train)
    score_fn = make_score_fn(selector, target_adabn=on_target_stats, **{**score_kw, "source_prepare": fit_source_prepare})
    epochs = run_epochs(run_cfg, recipe)
    fit_info: dict[str, Any] | None = None
    selection = None
    earlier = 0.0
    if parts.objective is not None and epochs > 0:
        result: FitResult = fit(
            model, parts.objective, parts.train_data,
            cfg=run_train_config(run_cfg, recipe), out_dir=stage_dir, seed=seed, score_fn=score_fn,
            target_train=parts.target_data, style=parts.style, feature_style=parts.feature_style,
            penalties=parts.penalties, strategy=recipe.strategy, epochs=epochs, lr=run_cfg.lr, sample_weights=weights,
            resume=resume, desc=run_cfg.name, ctx=ctx, progress=progress,
            num_workers=recipe.data.num_workers,
            # data.augment is for source batches: SHOT/TENT train on target images (whose
            # pseudo-labels and entropy are those of the unaugmented images), fine-tuning
            # on labelled target ones
            augment=source_augment(recipe) if trains_on_source else None,
            recipe_fingerprint=fingerprint(stage_fields(recipe, stage)),
            **fit_safeguards(recipe, domains, parts.objective, parts.train_data, device, stage_dir,
                             uses_per_domain_bn(run_cfg)),
        )
        fit_info = result.to_dict()
        earlier = result.earlier_seconds  # the time of an interrupted earlier part counts too
        selection = selection_summary(result.history, selector, result.best_epoch)
    # the final model as deployed on the source: made once, for the score below, the
    # evaluation and the audit — a copy taken before the target statistics go in when the
    # model already holds the source statistics that an estimate would give, bit for bit
    kept = source_prepare is not None and _holds_source_statistics(model, source, fit_info if trains_on_source else {},
                                                                   run_train_config(run_cfg, recipe), recipe, source_train)
    on_source = copy.deepcopy(model) if kept else None
    # the target statistics of the final (best-scored) state were estimated when it was
    # scored: taken from there, else estimated now (nothing trained, a resumed run)
    if on_target_stats and not (selection is not None and fit_info is not None
                                and score_fn.deployed_on_target(model)):
        adabn_on(model, target_train, device)
    if source_prepare is not None and on_source is None:
        on_source = deployed_on_source(model, domains, device)
    if selection is None:  # nothing was trained: score the final model once, for the table
        final_kw = {**score_kw, "source_prepare": (lambda _copy: on_source) if on_source is not None else None}
        _, logs = make_score_fn(selector, **final_kw)(model)
        selection = selection_summary([{"epoch": 0, **logs}], selector, 0)
    seconds = time.perf_counter() - t0 + earlier
    if ctx.is_main:
        _save_stage(stage_dir, model, recipe, domains, stage, fit=fit_info, selection=selection, seconds=seconds,
                    run=run_cfg.model_dump(by_alias=True),
                    batchnorm_statistics=batchnorm_statistics(run_cfg))
        atomic_write_json(stage_dir / "selection.json", selection)
    return _outcome(run_cfg.name, model, domains, device, recipe, per_domain_bn,
                    on_source=on_source, fit=fit_info, selection=selection, seconds=seconds)


def _holds_source_statistics(model: nn.Module, source: StageOutcome, fit_info: dict[str, Any] | None,
                             cfg: TrainConfig, recipe: Recipe, source_train) -> bool:
    """Whether ``model``'s BatchNorm layers hold what :func:`deployed_on_source` would
    estimate: it was trained on ``source_train`` (``fit_info``; None: nothing was trained
    and it is still the source model, trained so) and every epoch ended with precise BN
    over all of it, every layer trainable throughout (fine-tuning everything): the
    estimate of :func:`adapt.train.precise_bn_covers`, bit-identical."""
    if fit_info is None:
        same = zip(model.state_dict().values(), source.model.state_dict().values())
        if not all(a.shape == b.shape and torch.equal(a, b.to(a.device)) for a, b in same):
            return False
        fit_info, cfg = source.fit, recipe.train
    history = (fit_info or {}).get("history")
    return bool(history) and cfg.precise_bn and recipe.strategy.kind == "finetune" \
        and recipe.strategy.top_k is None and precise_bn_covers(model, source_train)


def target_scratch(recipe: Recipe, domains: Domains, device: torch.device, run_dir: Path,
                   resume: bool, ctx: DistContext, progress: bool) -> StageOutcome:
    """Stage 4: the same architecture trained from scratch on the labelled target images."""
    stage_dir = run_dir / TARGET_SCRATCH
    if resume and _final_checkpoint(stage_dir).exists():
        return _load_finished("target-scratch", stage_dir, domains, device, recipe)
    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model.arch, len(domains.classes), recipe.data.channels, recipe.model.weights)
    model.to(device)
    result = fit(model, SourceOnly(recipe.train.label_smoothing), domains.target_labeled,
                 cfg=recipe.train.model_copy(update={"patience": None}), out_dir=stage_dir,
                 seed=recipe.seed, resume=resume, desc="target-scratch", ctx=ctx, progress=progress,
                 recipe_fingerprint=fingerprint(stage_fields(recipe, TARGET_SCRATCH)))
    seconds = time.perf_counter() - t0 + result.earlier_seconds
    if ctx.is_main:
        _save_stage(stage_dir, model, recipe, domains, TARGET_SCRATCH, fit=result.to_dict(), seconds=seconds)
    return StageOutcome("target-scratch", model, _evaluate_all(model, domains, device, recipe),
                        fit=result.to_dict(), seconds=seconds)


# --------------------------------------------------------------------------- the run


def run_recipe(recipe: Recipe, *, resume: bool = False, overwrite: bool = False, ctx: DistContext = SINGLE,
               progress: bool = True, diagnostics: bool | None = None) -> RunSummary:
    """Run every stage of ``recipe``; return the models and the comparison.

    Every input (data, ``model.source_checkpoint``, the run folder's state — see
    :mod:`domaingap.run_folder`) is checked before the run folder is touched. A folder holding
    an earlier run is continued with ``resume`` or replaced with ``overwrite``, never
    otherwise written into.
    """
    t0 = time.perf_counter()
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    device = resolve_device(recipe.train.device, "train.device")
    if device.type == "cuda" and ctx.enabled:
        device = torch.device("cuda", ctx.rank % torch.cuda.device_count())
    run_dir = recipe.run_dir
    if recipe.output.onnx:
        check_available()  # the deploy extra, before anything trains

    domains = load_domains(recipe)
    loaded = load_source_checkpoint(recipe, domains) if recipe.model.source_checkpoint else None
    check_run_inputs(run_dir, recipe, domains)
    check_fairness_inputs(recipe, domains)
    with run_session(run_dir, recipe, resume=resume, overwrite=overwrite, main=ctx.is_main) as out_dir:
        barrier(ctx)  # every rank has looked at the folder before the main rank writes into it
        summary = _run_stages(recipe, out_dir, domains, loaded, device, resume=resume, ctx=ctx, progress=progress,
                              diagnostics=diagnostics, t0=t0)
        barrier(ctx)  # every rank is done with the folder before it is moved into place
    summary.run_dir = run_dir
    if summary.audit_path is not None:
        summary.audit_path = run_dir / summary.audit_path.relative_to(out_dir)
    return summary


def _run_stages(recipe: Recipe, run_dir: Path, domains: Domains, loaded: nn.Module | None, device: torch.device, *,
                resume: bool, ctx: DistContext, progress: bool, diagnostics: bool | None, t0: float) -> RunSummary:
    """The stages of :func:`run_recipe`, written into ``run_dir`` (the staging folder of a
    fresh or replacing run)."""
    say = reporter(progress and ctx.is_main)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "recipe.yaml", recipe.to_yaml())
        atomic_write_json(run_dir / "data.json", domains.summary())
    src_name = (f"{domains.source.name} ({len(domains.source)} images)" if domains.has_source
                else "no source images (source-free)")
    say(f"data: {src_name} -> {domains.target.name} "
        f"({len(domains.target)} images), classes {domains.classes}, device {device}")
    for dom in (domains.source, domains.target):
        if dom is not None and dom.skipped:
            say(f"data: skipped {len(dom.skipped)} unreadable file(s) in {dom.name}, e.g. {dom.skipped[0][0]}")

    source = train_source(recipe, domains, device, run_dir, resume, ctx, progress, loaded)
    summary = RunSummary(run_dir=run_dir, source=source)
    say(stage_line("source-only", source.metrics))
    # several sources: each one's gap to the target and its similarity weight (domaingap/source_weights.py)
    sources = measure_sources(source.model, domains, device, recipe.seed) if domains.source_names else None
    for run_cfg in recipe.method.runs:
        stage = adapt_run(run_cfg, source, recipe, domains, device, run_dir, resume, ctx, progress, sources)
        summary.runs[run_cfg.name] = stage
        say(stage_line(run_cfg.name, stage.metrics))
    if recipe.method.target_scratch:
        if domains.target_labeled is None:
            raise UserError("method.target_scratch: needs labelled target images (set data.target.labeled_per_class: k)")
        summary.baselines["target_scratch"] = target_scratch(recipe, domains, device, run_dir, resume, ctx,
                                                             progress)
        say(stage_line("target-scratch", summary.baselines["target_scratch"].metrics))

    if sources is not None and recipe.method.leave_one_source_out:
        say("sources: leave-one-source-out source models (label-free contribution of each source)")
        sources["leave_one_out"] = leave_one_source_out(source.model, recipe, domains, device, progress)
    summary.sources = sources
    summary.table = comparison_table(summary)
    if ctx.is_main:  # everything below runs on the main rank alone
        summary.deployment = decide_deployment(summary, recipe, domains, device, progress=progress)
        summary.table = with_estimates(summary.table, summary.deployment.ranking)
        deployment = deployment_outputs(summary, recipe, domains, say)
        metrics = {
            "recipe": recipe.name,
            "seed": recipe.seed,
            "classes": domains.classes,
            "source": {"metrics": source.metrics, "fit": source.fit},
            "runs": {k: {"metrics": v.metrics, "fit": v.fit, "selection": v.selection}
                     for k, v in summary.runs.items()},
            "baselines": {k: {"metrics": v.metrics, "fit": v.fit} for k, v in summary.baselines.items()},
            "comparison": summary.table,
            "deployment": deployment,
            "sources": sources,
            "environment": environment_info(device),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        atomic_write_json(run_dir / "metrics.json", metrics)
        atomic_write_text(run_dir / "comparison.md", format_table(summary.table) + "\n")
    say("\n" + format_table(summary.table))
    shipped = deployment_text(deployment) if ctx.is_main else None  # which model ships and why, in the report's words
    if shipped:
        say(shipped)

    run_diag = recipe.diagnostics.enabled if diagnostics is None else diagnostics
    if run_diag and ctx.is_main:
        summary.audit_path = audit_run(summary, recipe, domains, device, progress=progress)
        say(f"audit: {recipe.run_dir / summary.audit_path.relative_to(run_dir)}")
    return summary


def deployment_outputs(summary: RunSummary, recipe: Recipe, domains: Domains, say=lambda msg: None) -> dict[str, Any]:
    """What deployment needs from a finished run (``summary.deployment``, decided once),
    written into the run folder:

    * ``drift_reference.npz`` — the deployed model's features, predictions and confidences
      on the held-out target images (the deployment's, extracted once), for ``diagnose
      drift`` (:mod:`diagnostics.drift`);
    * with ``output.onnx``: every model as ONNX next to its ``model.pt`` — per-domain-
      BatchNorm runs as ``model.target_bn.onnx``, their target-statistics variant; the
      deployed one's entry says ``deployed: true``.
    """
    run_dir, deployment = summary.run_dir, summary.deployment
    out: dict[str, Any] = {**deployment.to_dict(), "drift_reference": None, "onnx": []}
    ckpt = _final_checkpoint(deployment.stage_dir(run_dir))
    if not ckpt.exists() and recipe.model.source_checkpoint:
        ckpt = Path(recipe.model.source_checkpoint).resolve()
    held_out = domains.target_eval
    if held_out is None or len(held_out) < MIN_BATCH:
        say(f"drift reference: skipped ({0 if held_out is None else len(held_out)} held-out target images, "
            f"needs {MIN_BATCH})")
    else:
        rel = ckpt.relative_to(run_dir) if ckpt.is_relative_to(run_dir) else ckpt
        path = save_run_reference(run_dir, deployment.stage.model, held_out, domains.classes, model_path=str(rel),
                                  seed=recipe.seed, features=deployment.target_features,
                                  meta={"run": deployment.name, "batchnorm_statistics": deployment.batchnorm})
        out["drift_reference"] = {"path": path.name, "model": str(rel), "images": len(held_out)}
        # named where it ends up: a fresh run is written into a staging folder first
        shown = recipe.run_dir / path.relative_to(run_dir)
        say(f"drift reference: {shown} ({deployment.name} on {len(held_out)} held-out target images)")
    if recipe.output.onnx:
        stages = [("source", summary.source, run_dir / "source", None)] + [
            (r.name, summary.runs[r.name], run_dir / "methods" / r.name, r) for r in recipe.method.runs
            if r.name in summary.runs]
        for label, stage, folder, cfg in stages:
            bn = batchnorm_statistics(cfg)
            res = export_onnx(stage.model, variant_file_name(folder / "model.onnx", bn),
                              image_size=recipe.data.image_size, classes=domains.classes,
                              batchnorm_statistics=bn, seed=recipe.seed,
                              metadata={"run": label, "recipe": recipe.name})
            out["onnx"].append(res.to_dict() | {"path": str(res.path.relative_to(run_dir)),
                                                "deployed": stage is deployment.stage})
            say(f"onnx: {res.path} (onnxruntime max |logit diff| {res.max_abs_diff:.1e} on {res.check_images} images)")
    return out
