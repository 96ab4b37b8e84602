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
from adapt.distributed import SINGLE, DistContext
from adapt.environment import environment_info
from adapt.errors import UserError
from adapt.evaluate import evaluate
from adapt.io import atomic_write_json, atomic_write_text
from adapt.methods import RunComponents, build_run_components
from adapt.methods.source_only import SourceOnly
from adapt.models import build_model, load_checkpoint, save_checkpoint
from adapt.progress import reporter
from adapt.recipe import AdaptRunConfig, Recipe
from adapt.runs import (
    Domains,
    RunSummary,
    StageOutcome,
    adabn_on,
    deployed_on_source,
    load_domains,
    uses_per_domain_bn,
    uses_target_bn,
)
from adapt.selection import make_score_fn, selection_summary
from adapt.train import FitResult, fit
from diagnostics.run_audit import audit_run


# --------------------------------------------------------------------------- stages


def _final_checkpoint(stage_dir: Path) -> Path:
    return stage_dir / "model.pt"


def _save_stage(stage_dir: Path, model: nn.Module, recipe: Recipe, domains: Domains, **meta: Any) -> None:
    save_checkpoint(
        _final_checkpoint(stage_dir), model,
        classes=domains.classes, image_size=recipe.data.image_size, channels=recipe.data.channels,
        recipe=recipe.to_yaml(), **meta,
    )


def _evaluate_all(model: nn.Module, domains: Domains, device: torch.device, recipe: Recipe,
                  per_domain_bn: bool = False) -> dict[str, Any]:
    """Source val/test and target test metrics.

    ``per_domain_bn``: the model carries target BatchNorm statistics (AdaBN); it is
    evaluated on the source with statistics re-estimated on unlabelled source training
    images — each domain with its own, as AdaBN is deployed — so that source accuracy
    measures what the weights retained, not a statistics mismatch.
    """
    on_source = deployed_on_source(model, domains, device) if per_domain_bn else model
    ev = lambda m, ds: evaluate(m, ds, domains.classes, device, num_workers=recipe.data.num_workers)  # noqa: E731
    out = {"source_test": ev(on_source, domains.source_split["test"])}
    if "val" in domains.source_split:
        out["source_val"] = ev(on_source, domains.source_split["val"])
    out["target_test"] = ev(model, domains.target_split["test"]) if domains.target.has_labels else None
    return out


def train_source(recipe: Recipe, domains: Domains, device: torch.device, run_dir: Path,
                 resume: bool, ctx: DistContext, progress: bool) -> StageOutcome:
    """Stage 2: the source model, trained on labelled source data (or loaded)."""
    stage_dir = run_dir / "source"
    t0 = time.perf_counter()
    if recipe.model.source_checkpoint:
        model, meta = load_checkpoint(recipe.model.source_checkpoint)
        _check_checkpoint_fits(recipe.model.source_checkpoint, meta, model, domains, recipe)
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
    result = fit(
        model, SourceOnly(recipe.train.label_smoothing), train_ds,
        cfg=recipe.train, out_dir=stage_dir, seed=recipe.seed, score_fn=score_fn,
        strategy=recipe.strategy, sample_weights=weights, resume=resume, desc="source",
        ctx=ctx, progress=progress, num_workers=recipe.data.num_workers, augment=source_augment(recipe),
    )
    seconds = time.perf_counter() - t0
    if ctx.is_main:
        _save_stage(stage_dir, model, recipe, domains, fit=result.to_dict(), seconds=seconds)
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
    return StageOutcome(name, model, _evaluate_all(model, domains, device, recipe, per_domain_bn),
                        fit=meta.get("fit"), selection=meta.get("selection"),
                        seconds=float(meta.get("seconds", 0.0)))


def _check_checkpoint_fits(path: str, meta: dict[str, Any], model: nn.Module, domains: Domains,
                           recipe: Recipe) -> None:
    classes = meta.get("classes")
    if classes is not None and list(classes) != list(domains.classes):
        raise UserError(f"{path}: checkpoint classes {list(classes)} differ from the data's {domains.classes}")
    if getattr(model, "in_channels", recipe.data.channels) != recipe.data.channels:
        raise UserError(f"{path}: checkpoint expects {model.in_channels}-channel images but data.channels is "
                        f"{recipe.data.channels}")


def adapt_run(run_cfg: AdaptRunConfig, source: StageOutcome, recipe: Recipe, domains: Domains,
              device: torch.device, run_dir: Path, resume: bool, ctx: DistContext,
              progress: bool) -> StageOutcome:
    """Stage 3: one adaptation run from the source model's weights."""
    stage_dir = run_dir / "methods" / run_cfg.name
    if resume and _final_checkpoint(stage_dir).exists():
        return _load_finished(run_cfg.name, stage_dir, domains, device, recipe,
                              per_domain_bn=uses_per_domain_bn(run_cfg))
    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    model = copy.deepcopy(source.model).to(device)
    target_train = domains.target_split["train"]
    parts: RunComponents = build_run_components(
        run_cfg, model=model, recipe=recipe, source_train=domains.source_split["train"],
        target_train=target_train, target_labeled=domains.target_labeled, device=device, out_dir=stage_dir,
    )
    # scored, selected and evaluated on the target with the statistics it trained with
    on_target_stats = uses_target_bn(run_cfg)
    prepare = (lambda m: adabn_on(m, target_train, device)) if on_target_stats else None
    # Source-validation accuracy is measured as the model is deployed on the source
    # (see uses_per_domain_bn), or `selection: source_val` would judge these runs by a
    # BatchNorm mismatch rather than by what the weights retained.
    source_prepare = ((lambda m: adabn_on(m, domains.source_split["train"], device))
                      if uses_per_domain_bn(run_cfg) else None)
    selector = recipe.method.selection
    oracle = domains.target_split["test"] if domains.target.has_labels else None
    score_fn = make_score_fn(selector, target=target_train, source_val=domains.source_split.get("val"),
                             class_names=domains.classes, device=device, prepare=prepare,
                             source_prepare=source_prepare, oracle=oracle)
    epochs = recipe.train.epochs if run_cfg.epochs is None else run_cfg.epochs
    fit_info: dict[str, Any] | None = None
    selection = None
    if parts.objective is not None and epochs > 0:
        train_cfg = recipe.train.model_copy(update={"schedule": "dann"}) if run_cfg.objective == "dann" \
            else recipe.train
        result: FitResult = fit(
            model, parts.objective, parts.train_data,
            cfg=train_cfg, out_dir=stage_dir, seed=recipe.seed, score_fn=score_fn,
            target_train=parts.target_data, style=parts.style, feature_style=parts.feature_style,
            penalties=parts.penalties, strategy=recipe.strategy, epochs=epochs, lr=run_cfg.lr,
            resume=resume, desc=run_cfg.name, ctx=ctx, progress=progress,
            num_workers=recipe.data.num_workers, augment=source_augment(recipe),
        )
        fit_info = result.to_dict()
        selection = selection_summary(result.history, selector, result.best_epoch)
    if on_target_stats:
        adabn_on(model, target_train, device)
    if selection is None:  # nothing was trained: score the final model once, for the table
        _, logs = make_score_fn(selector, target=target_train, source_val=domains.source_split.get("val"),
                                class_names=domains.classes, device=device,
                                source_prepare=source_prepare, oracle=oracle)(model)
        selection = {"selector": selector, "selected_epoch": 0, "epochs": [{"epoch": 0, **logs}]}
    seconds = time.perf_counter() - t0
    if ctx.is_main:
        _save_stage(stage_dir, model, recipe, domains, fit=fit_info, selection=selection, seconds=seconds,
                    run=run_cfg.model_dump(by_alias=True))
        atomic_write_json(stage_dir / "selection.json", selection)
    return StageOutcome(run_cfg.name, model,
                        _evaluate_all(model, domains, device, recipe, per_domain_bn=uses_per_domain_bn(run_cfg)),
                        fit=fit_info, selection=selection, seconds=seconds)


def target_scratch(recipe: Recipe, domains: Domains, device: torch.device, run_dir: Path,
                   resume: bool, ctx: DistContext, progress: bool) -> StageOutcome:
    """Stage 4: the same architecture trained from scratch on the labelled target images."""
    stage_dir = run_dir / "baselines" / "target_scratch"
    if resume and _final_checkpoint(stage_dir).exists():
        return _load_finished("target-scratch", stage_dir, domains, device, recipe)
    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model.arch, len(domains.classes), recipe.data.channels, recipe.model.weights)
    model.to(device)
    result = fit(model, SourceOnly(recipe.train.label_smoothing), domains.target_labeled,
                 cfg=recipe.train.model_copy(update={"patience": None}), out_dir=stage_dir,
                 seed=recipe.seed, resume=resume, desc="target-scratch", ctx=ctx, progress=progress)
    seconds = time.perf_counter() - t0
    if ctx.is_main:
        _save_stage(stage_dir, model, recipe, domains, fit=result.to_dict(), seconds=seconds)
    return StageOutcome("target-scratch", model, _evaluate_all(model, domains, device, recipe),
                        fit=result.to_dict(), seconds=seconds)


# --------------------------------------------------------------------------- reporting


def comparison_table(summary: RunSummary) -> list[dict[str, Any]]:
    """One row per model: source/target test accuracy and macro-F1, selected epoch."""

    def row(kind: str, stage: StageOutcome) -> dict[str, Any]:
        m = stage.metrics
        tt = m.get("target_test") or {}
        sel = stage.selection or {}
        last = (sel.get("epochs") or [{}])
        chosen = next((e for e in last if e.get("epoch") == sel.get("selected_epoch")), last[-1] if last else {})
        # the oracle: the best target-test accuracy over the run's epochs (target labels,
        # reporting only) — beside the label-free pick it shows the selection regret
        scored = [e for e in last if e.get("oracle_target_accuracy") is not None]
        oracle = max(scored, key=lambda e: e["oracle_target_accuracy"]) if scored else None
        return {
            "model": stage.name,
            "kind": kind,
            "source_acc": m["source_test"]["accuracy"],
            "source_f1": m["source_test"]["macro_f1"],
            "target_acc": tt.get("accuracy"),
            "target_f1": tt.get("macro_f1"),
            "selected_epoch": sel.get("selected_epoch"),
            "oracle_target_acc": oracle["oracle_target_accuracy"] if oracle else tt.get("accuracy"),
            "oracle_epoch": oracle["epoch"] if oracle else sel.get("selected_epoch"),
            "im": chosen.get("im"),
            "seconds": round(stage.seconds, 1),
        }

    rows = [row("source", summary.source)]
    rows += [row("adapted", s) for s in summary.runs.values()]
    rows += [row("baseline", s) for s in summary.baselines.values()]
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`comparison_table` rows."""
    pct = lambda v: "—" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = ["| model | source acc % | target acc % | target F1 % | selected epoch | IM | time s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        im = "—" if r["im"] is None else f"{r['im']:.3f}"
        ep = "—" if r["selected_epoch"] is None else str(r["selected_epoch"])
        lines.append(f"| {r['model']} | {pct(r['source_acc'])} | {pct(r['target_acc'])} | "
                     f"{pct(r['target_f1'])} | {ep} | {im} | {r['seconds']} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the run


def run_recipe(recipe: Recipe, *, resume: bool = False, ctx: DistContext = SINGLE,
               progress: bool = True, diagnostics: bool | None = None) -> RunSummary:
    """Run every stage of ``recipe``; return the models and the comparison."""
    t0 = time.perf_counter()
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    device = resolve_device(recipe.train.device, "train.device")
    if device.type == "cuda" and ctx.enabled:
        device = torch.device("cuda", ctx.rank % torch.cuda.device_count())
    run_dir = recipe.run_dir
    say = reporter(progress and ctx.is_main)

    domains = load_domains(recipe)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "recipe.yaml", recipe.to_yaml())
        atomic_write_json(run_dir / "data.json", domains.summary())
    say(f"data: {domains.source.name} ({len(domains.source)} images) -> {domains.target.name} "
        f"({len(domains.target)} images), classes {domains.classes}, device {device}")
    for dom in (domains.source, domains.target):
        if dom.skipped:
            say(f"data: skipped {len(dom.skipped)} unreadable file(s) in {dom.name}, e.g. {dom.skipped[0][0]}")

    source = train_source(recipe, domains, device, run_dir, resume, ctx, progress)
    summary = RunSummary(run_dir=run_dir, source=source)
    say(_one_line("source-only", source.metrics))
    for run_cfg in recipe.method.runs:
        stage = adapt_run(run_cfg, source, recipe, domains, device, run_dir, resume, ctx, progress)
        summary.runs[run_cfg.name] = stage
        say(_one_line(run_cfg.name, stage.metrics))
    if recipe.method.target_scratch:
        if domains.target_labeled is None:
            raise UserError("method.target_scratch: needs labelled target images (set data.target_labeled: K)")
        summary.baselines["target_scratch"] = target_scratch(recipe, domains, device, run_dir, resume, ctx,
                                                             progress)
        say(_one_line("target-scratch", summary.baselines["target_scratch"].metrics))

    summary.table = comparison_table(summary)
    if ctx.is_main:
        metrics = {
            "recipe": recipe.name,
            "seed": recipe.seed,
            "classes": domains.classes,
            "source": {"metrics": source.metrics, "fit": source.fit},
            "runs": {k: {"metrics": v.metrics, "fit": v.fit, "selection": v.selection}
                     for k, v in summary.runs.items()},
            "baselines": {k: {"metrics": v.metrics, "fit": v.fit} for k, v in summary.baselines.items()},
            "comparison": summary.table,
            "environment": environment_info(device),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        atomic_write_json(run_dir / "metrics.json", metrics)
        atomic_write_text(run_dir / "comparison.md", format_table(summary.table) + "\n")
    say("\n" + format_table(summary.table))

    run_diag = recipe.diagnostics.enabled if diagnostics is None else diagnostics
    if run_diag and ctx.is_main:
        summary.audit_path = audit_run(summary, recipe, domains, device, progress=progress)
        say(f"audit: {summary.audit_path}")
    return summary


def _one_line(name: str, metrics: dict[str, Any]) -> str:
    s = metrics["source_test"]["accuracy"]
    t = (metrics.get("target_test") or {}).get("accuracy")
    tt = "unknown" if t is None else f"{100 * t:.1f}%"
    return f"{name}: source test accuracy {100 * s:.1f}%, target test accuracy {tt}"

