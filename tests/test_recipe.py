"""Recipes: validation messages a user reads, overrides, and the CLI's exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from domaingap.adapt_run import main
from adapt.errors import UserError
from adapt.recipe import load_recipe
from adapt.recipe_text import apply_override

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "x.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def message(path: Path, overrides=()) -> str:
    with pytest.raises(UserError) as err:
        load_recipe(path, overrides)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_shipped_recipes_validate():
    for p in sorted((REPO / "recipes").glob("*.yaml")):
        r = load_recipe(p)
        assert r.method.runs, p


def test_negative_lr_names_file_key_and_value(tmp_path):
    p = write(tmp_path, "train:\n  lr: -1\n")
    assert message(p) == f"{p}: train.lr: must be greater than 0 (got -1)"


def test_unknown_top_level_key_suggests_the_close_one(tmp_path):
    p = write(tmp_path, "trian:\n  lr: 0.1\n")
    assert message(p) == f"{p}: unknown key 'trian' (did you mean 'train'?)"


def test_unknown_nested_key(tmp_path):
    p = write(tmp_path, "train:\n  epoch: 3\n")
    assert message(p) == f"{p}: train: unknown key 'epoch' (did you mean 'epochs'?)"


def test_a_key_an_earlier_version_read_names_its_replacement(tmp_path):
    """data.target_labeled became data.target.labeled_per_class: a recipe written for the
    earlier version is told the new key, not offered the unrelated 'target'."""
    p = write(tmp_path, "data:\n  target_labeled: 3\n")
    assert message(p) == (f"{p}: data: unknown key 'target_labeled' (an earlier version's key: it is now "
                          "data.target.labeled_per_class (k labelled target images per class))")


def test_unknown_key_inside_a_list_item(tmp_path):
    p = write(tmp_path, "method:\n  runs:\n    - name: a\n      objektive: dann\n")
    assert message(p) == f"{p}: method.runs.0: unknown key 'objektive' (did you mean 'objective'?)"


def test_bad_choice_lists_allowed_values(tmp_path):
    p = write(tmp_path, "train:\n  optimizer: adam\n")
    msg = message(p)
    assert msg.startswith(f"{p}: train.optimizer: must be 'sgd' or 'adamw'")
    assert "(got 'adam')" in msg


def test_yaml_syntax_error_has_its_line(tmp_path):
    p = write(tmp_path, "train:\n  lr: 0.1\n epochs: [1, 2\n")
    msg = message(p)
    assert msg.startswith(f"{p}: YAML syntax error at line 3")


def test_missing_file(tmp_path):
    assert message(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: recipe file not found"


def test_split_must_sum_to_one(tmp_path):
    p = write(tmp_path, "data:\n  split: {train: 0.5, val: 0.1, test: 0.1}\n")
    assert message(p) == f"{p}: data.split: train + val + test must sum to 1 (got 0.7)"


def test_phantom_needs_a_site(tmp_path):
    p = write(tmp_path, "data:\n  source: {kind: phantom-cxr}\n")
    assert "data.source" in message(p) and "site" in message(p)


def test_overrides_are_typed_and_nested(tmp_path):
    p = write(tmp_path, "name: t\n")
    r = load_recipe(p, ["train.lr=1e-3", "train.epochs=3", "train.amp=false", "data.source.n=50",
                        "method.runs=[{name: a, objective: dann, epochs: 1}]", "method.runs.0.dann.weight=0.5"])
    assert r.train.lr == pytest.approx(1e-3) and isinstance(r.train.lr, float)
    assert r.train.epochs == 3 and r.train.amp is False
    assert r.data.source.n == 50
    assert r.method.runs[0].objective == "dann" and r.method.runs[0].options.weight == 0.5


def test_override_errors(tmp_path):
    p = write(tmp_path, "name: t\n")
    assert message(p, ["train.lr"]) == "override 'train.lr': expected key.path=value"
    assert message(p, ["train.lr=abc"]) == f"{p}: train.lr: must be a valid number, unable to parse string as a number (got 'abc')"
    assert message(p, ["trian.lr=1"]) == f"{p}: unknown key 'trian' (did you mean 'train'?)"
    assert "no list item 3" in message(p, ["method.runs.3.epochs=1"])
    raw = {"train": {"lr": 1}}
    with pytest.raises(UserError, match="train.lr is a value, not a section"):
        apply_override(raw, "train.lr.x=1")


def test_resolved_recipe_round_trips(tmp_path):
    p = write(tmp_path, "name: t\ndata:\n  target: {kind: phantom-cxr, site: B, labeled_per_class: 3}\n"
              "method:\n  runs:\n    - {name: e, objective: finetune, ewc: {lambda: 5}}\n")
    r = load_recipe(p)
    again = write(tmp_path, r.to_yaml(), "again.yaml")
    r2 = load_recipe(again)
    assert r2.model_dump() == r.model_dump()
    assert yaml.safe_load(r.to_yaml())["method"]["runs"][0]["ewc"]["lambda"] == 5


def test_cli_bad_recipe_exits_2_with_one_line(tmp_path, capsys):
    p = write(tmp_path, "train:\n  lr: -1\n")
    assert main([str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {p}: train.lr: must be greater than 0 (got -1)"


def test_cli_subprocess_no_traceback(tmp_path):
    p = write(tmp_path, "trian: {}\n")
    proc = subprocess.run([sys.executable, "-m", "domaingap.adapt_run", str(p)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {p}: unknown key 'trian' (did you mean 'train'?)"
