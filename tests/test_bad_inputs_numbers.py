"""The bad-input corpus, numbers and options family: every number is bounded where it is
parsed (the bound in the message), a boolean is not a number, and an argument error is one
``error:`` line with exit code 2 — never a usage block, a hang or an out-of-memory crash.

Each case runs the CLI's ``main`` in-process and must not touch the finished run.
"""

from __future__ import annotations

import pytest

from tests.test_bad_inputs import invoke, tree_hash, world  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("one_thread")

HUGE = "99999999999999999999"
GAP = ["gap", "--source", "phantom-cxr:A:20", "--target", "phantom-cxr:B:20"]
DRIFT = ["drift", "RUN", "--batch", "phantom-cxr:B:20"]

#: name -> (cli, argv, culprit); "RUN" and "MODEL" stand for the finished run and its model.pt
OPTION_CASES: dict[str, tuple[str, list[str], str]] = {
    "gap_permutations_huge": ("diagnose", GAP + ["--permutations", HUGE], "--permutations: must be at most 100000"),
    "gap_permutations_not_a_number": ("diagnose", GAP + ["--permutations", "many"],
                                      "--permutations: must be an integer between 1 and 100000"),
    "gap_bootstrap_huge": ("diagnose", GAP + ["--bootstrap", "1000000000"], "--bootstrap: must be at most 10000"),
    "gap_max_samples_huge": ("diagnose", GAP + ["--max-samples", HUGE], "--max-samples: must be at most 100000"),
    "gap_batch_size_huge": ("diagnose", GAP + ["--batch-size", "1000000000"], "--batch-size: must be at most 65536"),
    "gap_workers_huge": ("diagnose", GAP + ["--workers", "100000"], "--workers: must be at most 256"),
    "gap_image_size_huge": ("diagnose", GAP + ["--image-size", "100000"], "--image-size: must be at most 1024"),
    "gap_seed_float": ("diagnose", GAP + ["--seed", "1.5"], "--seed: must be an integer"),
    "gap_phantom_count_huge": ("diagnose", ["gap", "--source", "phantom-cxr:A:99999999999", "--target",
                                            "phantom-cxr:B:20"], "less than or equal to 100000"),
    "gap_unknown_option": ("diagnose", GAP + ["--bogus", "5"], "unrecognized arguments: --bogus 5"),
    "gap_missing_target": ("diagnose", ["gap", "--source", "phantom-cxr:A:20"], "the following arguments are "
                                                                                 "required: --target"),
    "no_command": ("diagnose", [], "the following arguments are required: COMMAND"),
    "unknown_command": ("diagnose", ["gapp"], "invalid choice: 'gapp'"),
    "phantom_image_size_huge": ("diagnose", ["phantom", "OUT", "--image-size", "100000"],
                                "--image-size: must be at most 1024"),
    "phantom_n_huge": ("diagnose", ["phantom", "OUT", "--n", "1000000000000"], "--n: must be at most 100000"),
    "phantom_site_unknown": ("diagnose", ["phantom", "OUT", "--site", "D"], "--site: invalid choice: 'D'"),
    "export_check_images_huge": ("diagnose", ["export", "MODEL", "OUT.onnx", "--check-images", "1000000000"],
                                 "--check-images: must be at most 4096"),
    "export_tolerance_nan": ("diagnose", ["export", "MODEL", "OUT.onnx", "--tolerance", "nan"],
                             "--tolerance: must be a number in (0, 1e+06]"),
    "export_tolerance_negative": ("diagnose", ["export", "MODEL", "OUT.onnx", "--tolerance", "-1"], "--tolerance"),
    "drift_alpha_above_one": ("diagnose", DRIFT + ["--alpha", "1.5"], "--alpha: must be a number in (0, 1)"),
    "drift_alpha_inf": ("diagnose", DRIFT + ["--alpha", "inf"], "--alpha"),
    "drift_permutations_huge": ("diagnose", DRIFT + ["--permutations", HUGE], "--permutations: must be at most"),
    "drift_max_samples_zero": ("diagnose", DRIFT + ["--max-samples", "0"], "--max-samples: must be at least 1"),
    "adapt_nproc_huge": ("adapt", ["RECIPE", "--nproc", "1000000000"], "--nproc: must be at most 1024"),
    "adapt_nproc_word": ("adapt", ["RECIPE", "--nproc", "two"], "--nproc: must be an integer"),
    "adapt_unknown_option": ("adapt", ["RECIPE", "--bogus"], "unrecognized arguments: --bogus"),
    "adapt_no_recipe": ("adapt", [], "the following arguments are required: recipe"),
}

#: name -> (recipe patch or override, culprit)
RECIPE_CASES: dict[str, tuple[dict | str, str]] = {
    "epochs_true": ({"train": {"epochs": True}}, "train.epochs: must be a number, not a boolean"),
    "epochs_true_override": ("train.epochs=true", "train.epochs: must be a number, not a boolean"),
    "lr_true": ({"train": {"lr": True}}, "train.lr: must be a number, not a boolean"),
    "seed_false": ({"seed": False}, "seed: must be a number, not a boolean"),
    "phantom_n_true": ({"data": {"source": {"kind": "phantom-cxr", "site": "A", "n": True}}},
                       "data.source.n: must be a number, not a boolean"),
    "run_epochs_true": ({"method": {"runs": [{"name": "a", "adabn": True, "epochs": True}]}},
                        "method.runs.0.epochs: must be a number, not a boolean"),
    "dann_weight_true": ({"method": {"runs": [{"name": "a", "objective": "dann", "dann": {"weight": True}}]}},
                         "method.runs.0.dann.weight: must be a number, not a boolean"),
    "batch_size_1e20": ("train.batch_size=1e20", "train.batch_size: must be less than or equal to 65536"),
    "epochs_huge": ({"train": {"epochs": 10**12}}, "train.epochs: must be less than or equal to 100000"),
    "phantom_n_huge": ({"data": {"target": {"kind": "phantom-cxr", "site": "B", "n": 99999999999}}},
                       "data.target.n: must be less than or equal to 100000"),
    "num_workers_huge": ({"data": {"num_workers": 100000}}, "data.num_workers: must be less than or equal to 256"),
    "threads_huge": ({"train": {"threads": 10**6}}, "train.threads: must be less than or equal to 1024"),
    "permutations_huge": ({"diagnostics": {"permutations": 10**12}}, "diagnostics.permutations: must be less"),
    "attribution_steps_huge": ({"diagnostics": {"attribution_steps": 10**9}}, "diagnostics.attribution_steps"),
    "dann_hidden_huge": ({"method": {"runs": [{"name": "a", "objective": "dann", "dann": {"hidden": 10**9}}]}},
                         "method.runs.0.dann.hidden: must be less than or equal to 65536"),
    "labeled_per_class_huge": ({"data": {"target": {"kind": "phantom-cxr", "site": "B", "labeled_per_class": 10**12}}},
                               "data.target.labeled_per_class: must be less"),
}


def _fill(argv: list[str], world, tmp_path) -> list[str]:
    subst = {"RUN": str(world.base_run), "MODEL": str(world.model_pt), "OUT": str(tmp_path / "out"),
             "OUT.onnx": str(tmp_path / "m.onnx"), "RECIPE": str(world.recipe(tmp_path))}
    return [subst.get(a, a) for a in argv]


def _check(code: int, out: str, err: str, culprit: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}; stderr: {err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert culprit in lines[0], f"{culprit!r} not in {lines[0]!r}"
    assert "Traceback" not in out + err and "usage:" not in out + err


@pytest.mark.parametrize("name", sorted(OPTION_CASES))
def test_a_bad_option_is_one_error_line(name, world, tmp_path, capsys):
    cli, argv, culprit = OPTION_CASES[name]
    before = tree_hash(world.base_run)
    _check(*invoke(cli, _fill(argv, world, tmp_path), capsys)[:3], culprit)
    assert tree_hash(world.base_run) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(RECIPE_CASES))
def test_a_bad_recipe_number_is_one_error_line(name, world, tmp_path, capsys):
    patch, culprit = RECIPE_CASES[name]
    argv = ([str(world.recipe(tmp_path, patch))] if isinstance(patch, dict)
            else [str(world.recipe(tmp_path)), patch])
    before = tree_hash(world.base_run)
    _check(*invoke("adapt", [*argv, "--quiet", "--overwrite"], capsys)[:3], culprit)
    assert tree_hash(world.base_run) == before


@pytest.mark.parametrize("cli, argv", [("diagnose", ["--help"]), ("diagnose", ["gap", "--help"]),
                                       ("adapt", ["--help"])])
def test_help_is_unchanged(cli, argv, capsys):
    from domaingap.adapt_run import main as adapt_main
    from domaingap.diagnose import main as diagnose_main

    with pytest.raises(SystemExit) as exit_:
        (adapt_main if cli == "adapt" else diagnose_main)(argv)
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith("usage: ") and "options:" in out


def test_bounds_accept_their_edges(world, tmp_path):
    """The bounds refuse only what is out of range: the recipe's and the options' edges pass."""
    from adapt.cli_args import int_in
    from adapt.recipe import validate_recipe

    r = validate_recipe({"train": {"batch_size": 65536, "epochs": 100000, "patience": None},
                         "data": {"source": {"kind": "phantom-cxr", "site": "A", "n": 100000}, "num_workers": 256}})
    assert (r.train.batch_size, r.train.epochs, r.data.source.n, r.data.num_workers) == (65536, 100000, 100000, 256)
    assert validate_recipe({"train": {"epochs": 3.0, "lr": 1}}).train.epochs == 3  # 3.0 is a whole number
    assert [int_in(1, 10)(s) for s in ("1", "10")] == [1, 10]
