"""Recipe schema for the issue-12 methods: each objective by its name with options under its
own key; source-free recipes (no data.source) only for SHOT/TENT from a source checkpoint;
DEV and source_val refused without source images; typos named."""

from __future__ import annotations

import pytest

from adapt.errors import UserError
from adapt.recipe import validate_recipe


def _runs(*runs, **extra):
    return {"method": {"runs": list(runs)}, **extra}


@pytest.mark.parametrize("objective", ["cdan", "mcc", "coral", "dan", "shot", "tent"])
def test_every_new_objective_is_a_recipe_name(objective):
    r = validate_recipe(_runs({"name": "x", "objective": objective}, model={"source_checkpoint": "s.pt"}))
    assert r.method.runs[0].objective == objective


def test_options_under_their_own_keys():
    r = validate_recipe(_runs(
        {"name": "c", "objective": "cdan", "cdan": {"entropy": True, "randomized_dim": 512, "weight": 0.5}},
        {"name": "m", "objective": "mcc", "mcc": {"temperature": 2.0}},
        {"name": "d", "objective": "dan", "dan": {"layers": ["features", "logits"], "kernel_low": -3}},
        {"name": "s", "objective": "shot", "shot": {"pseudo_label_weight": 0.1}}))
    c, m, d, s = r.method.runs
    assert (c.options.entropy, c.options.randomized_dim, c.options.weight) == (True, 512, 0.5)
    assert m.options.temperature == 2.0 and d.options.layers == ["features", "logits"]
    assert s.section("shot").pseudo_label_weight == 0.1


def test_source_free_recipe_omits_the_source():
    r = validate_recipe(_runs({"name": "s", "objective": "shot"}, {"name": "t", "objective": "tent"},
                              model={"source_checkpoint": "s.pt"}))
    assert r.data.source is None
    # round trip (what load_recipe does with overrides) keeps it source-free
    assert validate_recipe(r.model_dump(mode="json", by_alias=True)).data.source is None
    # a run that needs the source: the phantom default source stays
    r = validate_recipe(_runs({"name": "s", "objective": "shot"}, {"name": "d", "objective": "dann"},
                              model={"source_checkpoint": "s.pt"}))
    assert r.data.source is not None


@pytest.mark.parametrize("raw, match", [
    (_runs({"name": "s", "objective": "shot"}, data={"source": None}), "data.source: without source images"),
    (_runs({"name": "d", "objective": "dann"}, data={"source": None}, model={"source_checkpoint": "s"}),
     "runs d need source images"),
    ({"method": {"selection": "dev", "runs": [{"name": "t", "objective": "tent"}]}, "data": {"source": None},
      "model": {"source_checkpoint": "s"}}, "'dev' needs source images"),
    (_runs({"name": "s", "objective": "shot", "mixstyle": True}), "source-free; mixstyle"),
    (_runs({"name": "c", "objective": "cdan", "cdan": {"entropie": True}}), "did you mean 'entropy'"),
    (_runs({"name": "d", "objective": "dan", "dan": {"kernel_low": 3, "kernel_high": 1}}), "kernel_low"),
])
def test_bad_method_recipes_are_one_line_errors(raw, match):
    with pytest.raises(UserError, match=match) as e:
        validate_recipe(raw, "r.yaml")
    assert "\n" not in str(e.value) and str(e.value).startswith("r.yaml: ")
