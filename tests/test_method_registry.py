"""The objective registry (adapt/method_registry.py): an objective is one file and one
registration, and nothing else in the project names it.

The end-to-end test writes a toy objective into a temporary folder — its own file with its
registration, and an entry point naming it (the plugin hook, ``domaingap.objectives``) —
and runs ``adapt-run`` (its ``main``) on a recipe that uses it, with no other file of the
project touched.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from adapt import method_registry
from adapt.errors import UserError
from adapt.method_options import RecipeSection
from adapt.methods.base import BATCHNORM_CONVENTIONS
from adapt.recipe import load_recipe, validate_recipe

ROOT = Path(__file__).resolve().parents[1]

TOY = '''
"""A toy objective: source cross-entropy + weight x the mean entropy of the target predictions."""

from pydantic import Field
from torch import nn

from adapt.method_options import RecipeSection
from adapt.method_registry import ObjectiveSpec, register


class ToyConfig(RecipeSection):
    weight: float = Field(0.1, ge=0)


class Toy:
    name = "toy"
    uses_target = True

    def __init__(self, weight):
        self.weight = weight
        self.ce = nn.CrossEntropyLoss()

    def modules(self):
        return {}

    def loss(self, model, xs, ys, xt, progress):
        ce = self.ce(model(xs), ys)
        p = model(xt).float().softmax(1)
        ent = -(p * p.clamp_min(1e-12).log()).sum(1).mean()
        return ce + self.weight * ent, {"class_loss": ce.item(), "toy_entropy": ent.item()}


register(ObjectiveSpec("toy", lambda ctx: (Toy(ctx.options.weight), ctx.source_train), section=ToyConfig))
'''

RECIPE = """
name: toy
seed: 0
data:
  source: {kind: phantom-cxr, site: A, n: 48}
  target: {kind: phantom-cxr, site: B, n: 48}
  image_size: 32
train: {epochs: 1, batch_size: 16, device: cpu, patience: null, precise_bn: false}
method:
  selection: im
  runs:
    - {name: toy, objective: toy, epochs: 1, toy: {weight: 0.5}}
diagnostics: {enabled: false}
output: {dir: OUT}
"""


def _plugin(folder: Path, module: str = "toy_objective", source: str = TOY) -> Path:
    """An objective as an installed plugin: its module and an entry point naming it."""
    folder.mkdir()
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    info = folder / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{method_registry.ENTRY_POINT_GROUP}]\ntoy = {module}\n")
    return folder


def _install(folder: Path, monkeypatch) -> None:
    """Plugins in ``folder`` (on sys.path, found through their entry points), in a registry
    that forgets them again after the test."""
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(method_registry, "_SPECS", dict(method_registry.objectives()))
    monkeypatch.setattr(method_registry, "_loaded", False)  # the next lookup looks for plugins again


@pytest.fixture
def toy_plugin(tmp_path, monkeypatch):
    _install(_plugin(tmp_path / "plugins"), monkeypatch)
    yield
    sys.modules.pop("toy_objective", None)


def test_a_new_objective_is_one_file_and_one_registration(tmp_path, toy_plugin, capsys):
    from domaingap.adapt_run import main

    recipe = tmp_path / "toy.yaml"
    recipe.write_text(RECIPE.replace("OUT", str(tmp_path / "runs")))
    assert main([str(recipe), "--quiet"]) == 0, capsys.readouterr().err
    run_dir = tmp_path / "runs" / "toy"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = metrics["runs"]["toy"]["fit"]["history"]
    assert len(history) == 1 and "toy_entropy" in history[0]  # the toy's loss trained the run
    assert (run_dir / "methods" / "toy" / "model.pt").exists()
    resolved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert resolved["method"]["runs"][0]["toy"] == {"weight": 0.5}

    # its section is validated like a built-in one: one error line naming the key, exit 2
    recipe.write_text(RECIPE.replace("OUT", str(tmp_path / "runs2")).replace("{weight: 0.5}", "{wieght: 0.5}"))
    capsys.readouterr()
    assert main([str(recipe), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {recipe}: method.runs.0.toy: unknown key 'wieght' (did you mean 'weight'?)")
    assert not (tmp_path / "runs2").exists()


def test_a_broken_plugin_is_one_error_line(tmp_path, monkeypatch, capsys):
    from domaingap.adapt_run import main

    _install(_plugin(tmp_path / "plugins", "broken_objective", "import no_such_module\n"), monkeypatch)
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(RECIPE.replace("OUT", str(tmp_path / "runs")))
    assert main([str(recipe), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {recipe}: method.runs.0: objective plugin 'toy' (broken_objective): cannot import it "
        "(ModuleNotFoundError: No module named 'no_such_module')")
    assert not (tmp_path / "runs").exists()


def test_an_objective_nobody_registered_is_named(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("method:\n  runs:\n    - {name: a, objective: toy}\n")
    with pytest.raises(UserError, match=r"method\.runs\.0\.objective: must be 'none', .* or 'm3sda' \(got 'toy'\)$"):
        load_recipe(p)


def _run_for(name: str, spec: method_registry.ObjectiveSpec):
    """A recipe with one run of objective ``name``, given the data the objective needs."""
    raw: dict = {"method": {"runs": [{"name": "r", "objective": name, "epochs": 0 if name == "none" else 1}]}}
    if spec.source_free:
        raw["model"] = {"source_checkpoint": "source.pt"}
    if spec.needs_labeled_target:
        raw["data"] = {"target": {"kind": "phantom-cxr", "site": "B", "labeled_per_class": 3}}
    if spec.min_sources > 1:
        raw["data"] = {"sources": [{"name": s, "kind": "phantom-cxr", "site": s} for s in ("A", "B")]}
    return validate_recipe(raw).method.runs[0]


@pytest.mark.parametrize("name", list(method_registry.objectives()))
def test_every_objective_has_a_section_a_batchnorm_convention_and_a_factory(name):
    from domaingap.runs import uses_target_bn

    spec = method_registry.objective(name)
    assert callable(spec.factory) and spec.batchnorm in BATCHNORM_CONVENTIONS
    run = _run_for(name, spec)
    assert run.spec is spec
    if spec.section is None:
        assert run.options is None
    else:
        assert issubclass(spec.section, RecipeSection) and isinstance(run.options, spec.section)
        assert run.options == spec.section()  # every option has a default
    assert uses_target_bn(run) == (spec.batchnorm == "per_domain")


def _objectives_of(recipe: str) -> set[str]:
    runs = yaml.safe_load((ROOT / "recipes" / recipe).read_text())["method"]["runs"]
    return {r.get("objective", "none") for r in runs}


def test_the_studies_cover_every_registered_objective():
    """The comparison studies (benchmarks/study_table.py: the study recipe plus the rows the
    registry declares), the few-labels study and the multi-source study together run every
    registered objective, and the added rows are exactly the registry's."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import study_table

    extra = study_table.extra_method_runs(4)
    assert [r["name"] for r in extra] == [row.get("name", n) for n, s in method_registry.objectives().items()
                                          for row in s.study]
    covered = (_objectives_of("phantom_study.yaml") | {r["objective"] for r in extra}
               | _objectives_of("fewlabels_phantom.yaml") | _objectives_of("multisource_phantom.yaml"))
    assert covered == set(method_registry.objectives())


def test_a_name_registered_twice_is_refused(monkeypatch):
    monkeypatch.setattr(method_registry, "_SPECS", dict(method_registry.objectives()))
    with pytest.raises(ValueError, match="'dann' is registered twice"):
        method_registry.register(method_registry.ObjectiveSpec("dann", lambda ctx: (None, None)))


def test_every_file_that_registers_an_objective_is_listed():
    """A registration in a file the registry does not import would count only after
    something else imported that file: every one is in BUILTIN_MODULES."""
    registering = {f"adapt.methods.{p.stem}" for p in (ROOT / "adapt" / "methods").glob("*.py")
                   if "register(ObjectiveSpec(" in p.read_text(encoding="utf-8")}
    assert registering == set(method_registry.BUILTIN_MODULES)
