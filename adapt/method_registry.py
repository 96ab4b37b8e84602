"""The objective registry: every ``method.runs[].objective`` a recipe may name, declared once.

Each objective's own file (``adapt/methods/<name>.py``) registers one :class:`ObjectiveSpec`
— its name, its recipe section, its BatchNorm convention, what it trains on, its schedule
and its factory — with :func:`register`; everything that used to branch on objective names
(the recipe's validation, the run assembly, the BatchNorm mode of a deployed run, the
learning-rate schedule, ``adapt_model``'s method list, the study scripts' rows) asks the
registry instead. Adding an objective is one new file plus its module's name in
:data:`BUILTIN_MODULES` (docs/architecture.md, "Adding an objective").

Objectives from another package register themselves the same way and are found through
the entry-point group :data:`ENTRY_POINT_GROUP` (``[project.entry-points."domaingap.objectives"]
my_method = "my_package.my_method"``): each entry point names a module imported for its
registration.

The registry is base-layer: the recipe (base) validates against it, the objective files
(training) fill it. It therefore never imports a method module by name in code; it imports
:data:`BUILTIN_MODULES` (strings) on its first lookup — the one place where the base reaches
into ``adapt/methods/``, as a plugin host does.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, Literal

from adapt.errors import UserError

#: the modules whose import registers the built-in objectives, in the order recipes list them
BUILTIN_MODULES = (
    "adapt.methods.adabn",  # none (AdaBN alone, or nothing trained)
    "adapt.methods.source_only",
    "adapt.methods.dann",
    "adapt.methods.cdan",
    "adapt.methods.mcc",
    "adapt.methods.coral",
    "adapt.methods.dan",
    "adapt.methods.shot",
    "adapt.methods.tent",
    "adapt.methods.finetune",
    "adapt.methods.mme",
    "adapt.methods.multisource",  # msdann, m3sda
)
#: the entry-point group through which other packages add objectives
ENTRY_POINT_GROUP = "domaingap.objectives"

#: the BatchNorm statistics an objective trains and is deployed with (adapt/methods/base.py)
BATCHNORM_CONVENTIONS = ("source", "per_domain")
#: what a run's labelled batches are: source images, (unlabelled) target images — source-free —,
#: or the k labelled target images per class (data.target.labeled_per_class)
TrainsOn = Literal["source", "target", "labeled_target"]


@dataclass
class BuildContext:
    """What a factory gets to build one run's objective (types in words: this module sits
    below the recipe and the training code).

    ``run``: the run's :class:`adapt.recipe.AdaptRunConfig`; ``options``: its validated
    section (``run.section(spec.section_key)``, None without one); ``model``: the
    Classifier being adapted (the source model's weights); ``recipe``: the whole recipe;
    ``source_train`` / ``target_train`` / ``target_labeled``: DomainDatasets (source None
    in a source-free recipe, ``target_labeled`` None without data.target.labeled_per_class).
    """

    run: Any
    options: Any  # a RecipeSection, or None
    model: Any
    recipe: Any
    source_train: Any
    target_train: Any
    target_labeled: Any

    @property
    def label_smoothing(self) -> float:
        return self.recipe.train.label_smoothing

    @property
    def seed(self) -> int:
        """The run's seed (its own, else the recipe's)."""
        return self.run.seed_in(self.recipe)

    def labeled_target(self) -> Any:
        """The k labelled target images per class; a UserError naming the run without them."""
        if self.target_labeled is None:
            raise UserError(f"method.runs.{self.run.name}: objective '{self.run.objective}' needs labelled target "
                            "images (set data.target.labeled_per_class: k)")
        return self.target_labeled


#: a factory: (objective for adapt.train.fit, or None to train nothing; the labelled batches it trains on)
Factory = Callable[[BuildContext], "tuple[Any, Any]"]


@dataclass(frozen=True)
class ObjectiveSpec:
    """One objective, as its file registers it."""

    #: the recipe's ``objective:`` value
    name: str
    #: builds the objective and picks its training data (see :class:`BuildContext`)
    factory: Factory
    #: the run options: a :class:`adapt.method_options.RecipeSection` subclass, None without any
    section: type | None = None
    #: the run key they sit under (default: ``name``; ``msdann`` reads ``dann``'s)
    section_key: str | None = None
    #: "source" or "per_domain": the BatchNorm statistics it trains and is deployed with
    #: (adapt.methods.base); per_domain runs are scored, selected and evaluated on the
    #: target with target statistics (AdaBN), on the source with source statistics
    batchnorm: Literal["source", "per_domain"] = "source"
    #: what its labelled batches are (:data:`TrainsOn`); "target" is source-free
    trains_on: TrainsOn = "source"
    #: needs the k labelled target images (data.target.labeled_per_class)
    needs_labeled_target: bool = False
    #: the learning-rate schedule it trains with (train.schedule's values), None: train.schedule;
    #: "dann" for the adversarial ones whose discriminator follows DANN's (dann, cdan)
    schedule: Literal["cosine", "dann", "constant"] | None = None
    #: its default epochs (None: train.epochs); TENT is one online pass
    epochs: int | None = None
    #: labelled sources it needs (2: aligns several sources, data.sources)
    min_sources: int = 1
    #: the rows the method-comparison studies add for it (benchmarks/study_table.py): each a
    #: run entry's keys besides objective (name defaults to the objective's, epochs to the study's)
    study: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.batchnorm not in BATCHNORM_CONVENTIONS:
            raise ValueError(f"objective {self.name!r}: batchnorm must be one of {BATCHNORM_CONVENTIONS}")
        if self.trains_on == "labeled_target" and not self.needs_labeled_target:
            raise ValueError(f"objective {self.name!r}: trains on labelled target images, so needs_labeled_target")

    @property
    def options_key(self) -> str | None:
        """The run key of its options, None without a section."""
        return (self.section_key or self.name) if self.section is not None else None

    @property
    def source_free(self) -> bool:
        """Trains without reading a source image (from model.source_checkpoint)."""
        return self.trains_on == "target"

    @property
    def trains_on_target(self) -> bool:
        """Its training batches are target images: the BatchNorm statistics end up the target's."""
        return self.trains_on in ("target", "labeled_target")


_SPECS: dict[str, ObjectiveSpec] = {}
_loaded = False


def register(spec: ObjectiveSpec) -> ObjectiveSpec:
    """Add ``spec`` (at import of its module); a name registered twice is an error, as is a
    section key that another objective registered with another model."""
    if spec.name in _SPECS and _SPECS[spec.name] != spec:
        raise ValueError(f"objective {spec.name!r} is registered twice")
    key = spec.options_key
    for other in _SPECS.values():
        if key is not None and other.options_key == key and other.section is not spec.section:
            raise ValueError(f"objective {spec.name!r}: section key {key!r} is {other.name!r}'s, with another model")
    _SPECS[spec.name] = spec
    return spec


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True  # before the imports: a module that looks an objective up while it loads sees this one
    try:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()
            except Exception as e:  # a broken plugin names itself, never a traceback deep in the recipe
                raise UserError(f"objective plugin {ep.name!r} ({ep.value}): cannot import it "
                                f"({e.__class__.__name__}: {e})") from None
    except BaseException:
        _loaded = False  # the next lookup tries again (and says the same)
        raise


def objectives() -> dict[str, ObjectiveSpec]:
    """Every registered objective by name, built-ins first (in :data:`BUILTIN_MODULES`' order)."""
    _load()
    return dict(_SPECS)


def objective(name: str) -> ObjectiveSpec:
    """The objective registered as ``name`` (KeyError for another name; the recipe rejects it first)."""
    _load()
    return _SPECS[name]


def sections() -> dict[str, type]:
    """Every run key that holds an objective's options, and its model."""
    return {s.options_key: s.section for s in objectives().values() if s.options_key is not None}
