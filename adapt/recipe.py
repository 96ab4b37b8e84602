"""Recipes: the YAML file that describes one run, its schema, and its errors.

A recipe has the sections ``data``, ``model``, ``strategy``, ``method``, ``train``,
``diagnostics`` and ``output`` (see ``recipes/template_real_data.yaml`` for every key
with a comment). :func:`load_recipe` reads the YAML, applies ``key.path=value``
overrides from the command line and validates the result; any problem becomes a
one-line :class:`~adapt.errors.UserError` that names the file, the key path and the
value, e.g. ``recipes/x.yaml: train.lr: must be greater than 0 (got -1)``.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from adapt import method_registry
from adapt.data.spec import RUN_NAME, DomainSpec
from adapt.errors import UserError
from adapt.fairness_config import FairnessConfig, GuardConfig
from adapt.few_labels_options import check_few_labels
from adapt.method_options import EWCConfig, ObjectiveOptions, RecipeSection
from adapt.models import ARCHS
from adapt.multisource_options import SourceList, SourceWeights, check_multisource, resolve_sources
from adapt.recipe_text import apply_override, parse_yaml
from adapt.selectors import Selector


class SplitConfig(RecipeSection):
    """Fractions of each domain used for training, validation and test (stratified)."""

    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, ge=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1 (got {total:g})")
        return self


class DataConfig(RecipeSection):
    #: None (``source: null``, or omitted when every run is source-free and
    #: model.source_checkpoint is set): no source image is loaded — SHOT/TENT only
    source: DomainSpec | None = Field(default_factory=lambda: DomainSpec(kind="phantom-cxr", site="A"))
    target: DomainSpec = Field(default_factory=lambda: DomainSpec(kind="phantom-cxr", site="B"))
    #: two or more named labelled sources instead of data.source (adapt/multisource_options.py)
    sources: SourceList | None = None
    _sources = model_validator(mode="after")(resolve_sources)
    #: images are resized to image_size x image_size
    image_size: int = Field(64, ge=16, le=1024)
    #: 1 keeps grayscale X-rays single-channel (colour images become luma); 3 keeps colour
    #: and repeats a grey image into three channels (a grey source, a colour target)
    channels: Literal[1, 3] = 1
    #: training-time augmentation of source batches: invert (polarity, p = 1/2), colour
    #: (per-channel gain and offset) — see adapt/data/augment.py
    augment: list[Literal["invert", "colour"]] = Field(default_factory=list)
    split: SplitConfig = Field(default_factory=SplitConfig)
    #: draw source batches with inverse-class-frequency weights (skewed classes)
    balanced_sampler: bool = False
    #: skip (and count) unreadable images instead of stopping with an error
    skip_unreadable: bool = False
    #: all: the target's labels must cover every source class (a class missing from a
    #: labelled target is an error); subset: the target may lack some classes (its
    #: per-class metrics then leave them out, and data.json lists them)
    target_classes: Literal["all", "subset"] = "all"
    num_workers: int = Field(0, ge=0, le=256)


class ModelConfig(RecipeSection):
    arch: Literal[ARCHS] = "small_cnn"  # type: ignore[valid-type]
    #: None (random init), a local weight file, or "imagenet" (torch cache only)
    weights: str | None = None
    #: a checkpoint written by adapt-run: skip source training and load it instead
    source_checkpoint: str | None = None


class StrategyConfig(RecipeSection):
    """How the source model is transferred: which parameters train, at which rate."""

    kind: Literal["feature_extraction", "finetune", "progressive"] = "finetune"
    #: finetune only the top-k backbone blocks (None = all)
    top_k: int | None = Field(None, ge=0, le=10_000)
    #: progressive: unfreeze one more block every this many epochs
    progressive_epochs: int = Field(1, ge=1, le=100_000)
    #: discriminative learning rates: backbone lr = train.lr * backbone_lr_mult
    backbone_lr_mult: float = Field(1.0, gt=0, le=10)


class AdaptRunConfig(ObjectiveOptions):
    """One adaptation run, started from the source model's weights.

    ``objective`` is one of the registered objectives (:mod:`adapt.method_registry`:
    source_only, dann / cdan (adversarial), mcc, coral, dan (statistic alignment), shot / tent
    (source-free), finetune / mme (the data.target.labeled_per_class images), msdann / m3sda
    (several sources), ...); each objective's options sit under its key (``dann:``, ``mcc:``,
    ...), validated by the section model it registered (:class:`~adapt.method_options.
    ObjectiveOptions`: ``run.options``, ``run.section("dann")``).
    """

    name: str = Field(..., min_length=1, pattern=RUN_NAME)
    objective: str = "none"
    #: image-level style alignment of source batches towards the target
    style: Literal["none", "fda", "histogram"] = "none"
    fda_beta: float = Field(0.05, ge=0, le=0.5)
    #: cross-domain MixStyle in early blocks (training only)
    mixstyle: bool = False
    #: re-estimate BatchNorm statistics on target data (after training, and before
    #: each epoch's label-free score)
    adabn: bool = False
    ewc: EWCConfig | None = None  # the objectives' sections are dumped before it
    sections_before = "ewc"
    source_weights: SourceWeights = "uniform"
    #: overrides of train.epochs / train.lr for this run
    epochs: int | None = Field(None, ge=0, le=100_000)
    lr: float | None = Field(None, gt=0)
    #: this run's seed (its initialisation, batch order, style draws); default the recipe's
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    #: train this run k times with seeds seed, seed + 1, ...: the copies are named
    #: ``<name>``, ``<name>-2``, ... ``<name>-k`` (expanded when the recipe is read); their
    #: spread is the run-to-run variance the audit reports, and each one more model for
    #: the agreement estimate (docs/labelfree.md)
    copies: int = Field(1, ge=1, le=20)
    @model_validator(mode="after")
    def _check(self) -> AdaptRunConfig:
        if self.objective == "none" and self.epochs not in (None, 0):
            raise ValueError("objective 'none' trains nothing; set epochs: 0 or choose an objective")
        if self.spec.source_free:
            uses_source = [k for k, on in (("style", self.style != "none"), ("mixstyle", self.mixstyle),
                                           ("ewc", self.ewc is not None)) if on]
            if uses_source:
                raise ValueError(f"objective '{self.objective}' is source-free; {', '.join(uses_source)} "
                                 "needs source images")
        return self

    def seed_in(self, recipe: Recipe) -> int:
        """The seed this run trains with: its own, else the recipe's."""
        return recipe.seed if self.seed is None else self.seed

    def copy_names(self) -> list[str]:
        """The names of this run's copies (``copies``), itself first."""
        return [self.name] + [f"{self.name}-{i}" for i in range(2, self.copies + 1)]

    @property
    def source_free(self) -> bool:
        """Trains (or adapts) without reading a source image."""
        return self.spec.source_free or (
            self.objective == "none" and self.style == "none" and not self.mixstyle)


class MethodConfig(RecipeSection):
    #: adaptation runs, each from the source model; compared in one table
    runs: list[AdaptRunConfig] = Field(
        default_factory=lambda: [AdaptRunConfig(name="adabn", adabn=True, epochs=0)]
    )
    #: checkpoint selection: im | snd | dev | source_val | mixval | atc | doc | cot | last (label-free;
    #: dev, source_val, atc, doc, cot need labelled source images; docs/labelfree.md) | few_labels
    selection: Selector = "im"
    #: also score every epoch by the selectors that cost extra work (DEV, MixVal, COT), to
    #: compare their picks in selection.json (the studies); off, only the selecting one runs
    compare_selectors: bool = False
    #: which model is deployed (and audited) when ``audit_run`` names none, among the source
    #: model and every run: ``estimate`` — the highest estimated target accuracy, by the
    #: estimator the audit shows for that many models; ``reverse_validation`` — the highest
    #: reverse-validation score (a small network trained on the held-out target images as each
    #: model labels them, scored on the labelled source images; lower mean regret, a worse
    #: worst case and a result that depends on the reverse network's seed: not the default);
    #: ``selection`` — the run that ``selection`` scores highest at its chosen epoch (never the
    #: source model; the rule before 2026-12-07). docs/labelfree.md measures the three
    deploy: Literal["estimate", "reverse_validation", "selection"] = "estimate"
    #: the run the audit compares against the source model, deployed (default: by ``deploy``;
    #: see diagnostics.ranking)
    audit_run: str | None = None
    #: also train from scratch on the labelled target images (data.target.labeled_per_class)
    target_scratch: bool = False
    leave_one_source_out: bool = False

    @model_validator(mode="after")
    def _check(self) -> MethodConfig:
        names = [n for r in self.runs for n in r.copy_names()]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"run names must be unique (repeated: {', '.join(sorted(dup))})")
        if self.audit_run is not None and self.audit_run not in names:
            raise ValueError(f"audit_run '{self.audit_run}' is not one of the runs ({', '.join(names)})")
        return self


class TrainConfig(RecipeSection):
    epochs: int = Field(8, ge=1, le=100_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    #: cosine: cosine decay over all steps; dann: mu0/(1+10p)^0.75; constant
    schedule: Literal["cosine", "dann", "constant"] = "cosine"
    #: stop after this many epochs without improvement, then roll back to the best
    patience: int | None = Field(3, ge=1, le=100_000)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: bf16 autocast on CUDA (ignored on CPU)
    amp: bool = True
    #: clip the gradient norm (None = off)
    max_grad_norm: float | None = Field(5.0, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    #: re-estimate BatchNorm statistics on (up to 1024) training images at the end of each
    #: epoch ("precise BN"): running averages lag weights that move fast, and a model
    #: evaluated with stale statistics can score at chance while it trains well
    precise_bn: bool = True
    #: CPU threads for torch (None = torch's default)
    threads: int | None = Field(None, ge=1, le=1024)
    fairness: FairnessConfig | None = None  # docs/fairness.md
    guard: GuardConfig | None = None


class DiagnosticsConfig(RecipeSection):
    enabled: bool = True
    #: features for the gap statistics: the model's penultimate layer, or raw pixels
    features: Literal["model", "pixels"] = "model"
    permutations: int = Field(500, ge=10, le=100_000)
    #: images per domain used by the diagnostics (subsampled, stratified)
    max_samples: int = Field(600, ge=20, le=100_000)
    attribution: bool = True
    #: integrated_gradients (pixel-exact, convergence delta reported) or gradcam (fast, coarse)
    attribution_method: Literal["integrated_gradients", "gradcam"] = "integrated_gradients"
    #: held-out images per domain whose attributions are computed
    attribution_samples: int = Field(64, ge=10, le=10_000)
    #: Integrated Gradients path steps (the cost is samples x steps forward+backward passes)
    attribution_steps: int = Field(12, ge=2, le=1000)
    umap: bool = True
    data_audit: bool = False  # the audit's "Data" section (balance, duplicates, label errors): docs/data_audit.md


class OutputConfig(RecipeSection):
    dir: str = "runs"
    #: run folder name (default: the recipe's name)
    name: str | None = Field(None, min_length=1, pattern=RUN_NAME)
    #: also write each adapted model as ONNX (model.onnx; model.target_bn.onnx for
    #: per-domain-BatchNorm runs), verified with onnxruntime (needs the deploy extra)
    onnx: bool = False


class Recipe(RecipeSection):
    name: str = Field("run", min_length=1, pattern=RUN_NAME)
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, v: int) -> int:
        if not 0 <= v < 2**31:
            raise ValueError("must be between 0 and 2^31-1")  # the formatter adds "(got v)"
        return v

    @model_validator(mode="after")
    def _selection_has_data(self) -> Recipe:
        if self.method.selection in ("source_val", "atc", "doc", "cot") and self.data.split.val == 0:
            raise ValueError(f"method.selection: {self.method.selection} needs a source validation split "
                             "(data.split.val is 0; choose im, snd or last, or set data.split.val)")
        return self

    @model_validator(mode="after")
    def _few_labels(self) -> Recipe:
        check_few_labels(self)
        return self

    @model_validator(mode="after")
    def _source_free(self) -> Recipe:
        """No source data: allowed when every run is source-free and the source model is given.
        An omitted ``data.source`` means "none" exactly then (otherwise the phantom default)."""
        all_free = bool(self.method.runs) and all(r.source_free for r in self.method.runs)
        if ("source" not in self.data.model_fields_set and all_free and self.model.source_checkpoint
                and any(r.spec.source_free for r in self.method.runs)):
            self.data.source = None
        if self.data.source is None and not self.data.sources:
            if not self.model.source_checkpoint:
                raise ValueError("data.source: without source images, model.source_checkpoint must give the "
                                 "source model")
            bad = [r.name for r in self.method.runs if not r.source_free]
            if bad:
                free = [n for n, o in method_registry.objectives().items() if o.source_free]
                raise ValueError(f"data.source: runs {', '.join(bad)} need source images (only {', '.join(free)} and "
                                 "objective none without style/mixstyle adapt without them)")
            if self.method.selection in ("dev", "source_val", "atc", "doc", "cot"):
                raise ValueError(f"method.selection: '{self.method.selection}' needs source images "
                                 "(data.source is none); use im or snd")
        return self

    _multisource = model_validator(mode="after")(check_multisource)

    @model_validator(mode="after")
    def _expand_copies(self) -> Recipe:
        """A run with ``copies: k`` becomes k runs, seeds s, s + 1, ... (s: its seed, else
        the recipe's), named by :meth:`AdaptRunConfig.copy_names`."""
        if all(r.copies == 1 for r in self.method.runs):
            return self
        runs = []
        for r in self.method.runs:
            base = r.seed_in(self)
            for i, name in enumerate(r.copy_names()):
                runs.append(r.model_copy(update={"name": name, "copies": 1,
                                                 "seed": r.seed if i == 0 else base + i}))
        self.method.runs = runs
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output.dir) / (self.output.name or self.name)

    def to_yaml(self) -> str:
        """The fully resolved recipe (defaults filled in) as YAML."""
        data = self.model_dump(mode="json", by_alias=True)
        return yaml.safe_dump(data, sort_keys=False)


# --------------------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe, apply ``key.path=value`` overrides, validate.

    Relative data paths in the recipe are resolved against the recipe's folder.
    Raises :class:`UserError` with a one-line message on any problem.
    """
    path = Path(path)
    label = str(path)
    if not path.is_file():
        raise UserError(f"{label}: recipe file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{label}: cannot read recipe ({e.__class__.__name__}: {e})") from None
    raw = parse_yaml(text, label)
    if overrides:
        # Overrides apply to the recipe with its defaults filled in, so that
        # data.source.n=50 works when the file never mentions data.source.
        raw = validate_recipe(raw, label).model_dump(mode="json", by_alias=True)
        for item in overrides:
            apply_override(raw, item, label)
    recipe = validate_recipe(raw, label)
    _resolve_paths(recipe, path.parent)
    return recipe


def validate_recipe(raw: dict[str, Any], label: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise UserError(f"{label}: {format_validation_error(e, raw)}") from None


#: keys an earlier version read, and what replaced them: named in the error, not guessed at
RENAMED_KEYS = {"data.target_labeled": "data.target.labeled_per_class (k labelled target images per class)"}


def format_validation_error(err: ValidationError, raw: dict[str, Any]) -> str:
    """The first validation problem as ``key.path: problem (got value)``."""
    first = err.errors(include_url=False)[0]
    loc = [str(p) for p in first["loc"]]
    kind = first["type"]
    if kind == "extra_forbidden":
        bad = loc[-1]
        parent = loc[:-1]
        allowed = _allowed_keys(parent)
        hint = difflib.get_close_matches(bad, allowed, n=1, cutoff=0.6)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else (
            f" (allowed: {', '.join(allowed)})" if allowed else ""
        )
        prefix = f"{'.'.join(parent)}: " if parent else ""
        renamed = RENAMED_KEYS.get(".".join(loc))
        if renamed:
            suggestion = f" (an earlier version's key: it is now {renamed})"
        return f"{prefix}unknown key '{bad}'{suggestion}"
    msg = first["msg"]
    for old, new in (("Input should be", "must be"), ("Value error, ", ""), ("Field required", "is required")):
        msg = msg.replace(old, new)
    if not loc:  # a whole-recipe check: its message names the keys itself
        return msg
    if kind != "missing" and "input" in first and not isinstance(first["input"], (dict, list)):
        msg += f" (got {first['input']!r})" if isinstance(first["input"], str) else f" (got {first['input']})"
    return f"{'.'.join(loc)}: {msg}"


def _allowed_keys(parent: list[str]) -> list[str]:
    """Field names (and aliases) of the section at ``parent`` in the schema."""
    model: Any = Recipe
    for part in parent:
        if part.isdigit():
            continue
        annotation = _fields(model).get(part)
        model = None if annotation is None else _section_type(annotation)
        if model is None:
            return []
    return list(_fields(model))


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    """A section's keys (aliases where set) and their types; a run's include the registered
    objectives' sections."""
    out = {f.alias or name: f.annotation for name, f in model.model_fields.items()}
    if issubclass(model, ObjectiveOptions):
        out.update(method_registry.sections())
    return out


def _section_type(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        t = _section_type(arg)
        if t is not None:
            return t
    return None


def _resolve_paths(recipe: Recipe, base: Path) -> None:
    """Data, weight and checkpoint paths in a recipe are relative to the recipe file
    (output.dir stays relative to the working directory, where a user expects runs/)."""

    def fix(p: str | None) -> str | None:
        if p is None:
            return None
        q = Path(p).expanduser()
        if not q.is_absolute() and not q.exists() and (base / q).exists():
            return str(base / q)
        return str(q)

    for spec in (recipe.data.source, recipe.data.target, *(recipe.data.sources or [])):
        if spec is not None and spec.path is not None:
            spec.path = fix(spec.path)
    if recipe.model.weights not in (None, "imagenet"):
        recipe.model.weights = fix(recipe.model.weights)
    recipe.model.source_checkpoint = fix(recipe.model.source_checkpoint)
