"""A corpus of bad inputs: each one must stop ``adapt-run`` or ``diagnose`` with exit code 2
and exactly one line ``error: ...`` that names the culprit — no traceback, no warning
lines — and must leave an existing run folder byte-identical.

The corpus covers recipes (keys, values, YAML), ``key=value`` overrides, data folders,
CSV manifests and image files (a decompression bomb, a PNG whose checksums are valid but
whose compressed data is garbage), checkpoints (corrupt, another model, an absurd class
count, another image size, a pickle), ``--resume`` on a damaged run, and CLI options.
Every case runs the CLI's ``main`` in-process (a few also as a real subprocess), and no
case trains more than a few batches: the one finished run they must not disturb is made
once per module (40 phantom images a domain, 32 px, one epoch of a small CNN).
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import random
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_thread")

BASE: dict = {
    "name": "base",
    "seed": 0,
    "data": {"source": {"kind": "phantom-cxr", "site": "A", "n": 40},
             "target": {"kind": "phantom-cxr", "site": "B", "n": 40}, "image_size": 32},
    "model": {"arch": "small_cnn"},
    "method": {"runs": [{"name": "adabn", "adabn": True, "epochs": 0}]},
    "train": {"epochs": 1, "batch_size": 16, "device": "cpu", "threads": 1, "precise_bn": False},
    "diagnostics": {"enabled": False},
}


# ----------------------------------------------------------------------------- helpers


def tree_hash(root: Path) -> str:
    """sha256 over every path and file content under ``root`` (empty string if absent)."""
    if not root.exists():
        return ""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def deep_merge(base: dict, patch: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, idat: bytes) -> bytes:
    """A grayscale 8-bit PNG with the given IDAT payload; every chunk checksum is valid."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def bomb_png() -> bytes:
    """Claims 20000 x 20000 pixels (400 Mpx, past Pillow's decompression-bomb limit)."""
    return png_bytes(20000, 20000, zlib.compress(b"\0" * 20001))


def garbage_deflate_png() -> bytes:
    """32 x 32, valid signature and CRCs, but the IDAT bytes are not a zlib stream."""
    rnd = random.Random(7)
    return png_bytes(32, 32, bytes(rnd.randrange(256) for _ in range(300)))


def write_png(path: Path, seed: int, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(arr, mode="L").save(path)


def image_folder(root: Path, classes: dict[str, int], seed: int = 0) -> Path:
    for ci, (c, n) in enumerate(classes.items()):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            write_png(root / c / f"{i}.png", seed * 1000 + ci * 100 + i)
    return root


@dataclass
class World:
    root: Path
    runs: Path
    base_run: Path
    model_pt: Path

    def recipe(self, where: Path, patch: dict | None = None, text: str | None = None,
               name: str = "r.yaml") -> Path:
        """A recipe file: BASE (output into the finished run's folder) + patch, or raw text."""
        path = where / name
        if text is None:
            data = deep_merge(deep_merge(BASE, {"output": {"dir": str(self.runs)}}), patch or {})
            text = yaml.safe_dump(data, sort_keys=False)
        path.write_text(text)
        return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    from domaingap.adapt_run import main as adapt_main

    root = tmp_path_factory.mktemp("bad_inputs")
    runs = root / "runs"
    w = World(root, runs, runs / "base", runs / "base" / "source" / "model.pt")
    recipe = w.recipe(root, name="base.yaml")
    assert adapt_main([str(recipe), "--quiet"]) == 0
    assert (w.base_run / "metrics.json").is_file() and w.model_pt.is_file()
    return w


def invoke(cli: str, argv: list[str], capsys) -> tuple[int, str, str, list]:
    """Run a CLI's main in-process; returns (exit code, stdout, stderr, warnings raised)."""
    from domaingap.adapt_run import main as adapt_main
    from domaingap.diagnose import main as diagnose_main

    main = adapt_main if cli == "adapt" else diagnose_main
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(argv)
    out, err = capsys.readouterr()
    caught = [c for c in caught if not issubclass(c.category, (DeprecationWarning, PendingDeprecationWarning))]
    return code, out, err, caught


# ----------------------------------------------------------------------------- the corpus

#: each case: (world, tmp_path) -> (cli, argv, culprit text the error line must contain,
#: folder that must stay byte-identical — None: the finished base run)
Case = Callable[[World, Path], tuple]
CASES: dict[str, Case] = {}


def case(name: str):
    def register(fn: Case) -> Case:
        assert name not in CASES, name
        CASES[name] = fn
        return fn
    return register


def recipe_case(name: str, patch: dict | None = None, culprit: str = "", text: str | None = None,
                extra: tuple[str, ...] = ()) -> None:
    def build(w: World, tmp: Path):
        return "adapt", [str(w.recipe(tmp, patch, text)), "--quiet", *extra], culprit, None
    case(name)(build)


# -- recipe keys, values and YAML
recipe_case("yaml_duplicate_section", culprit="duplicate key 'train' at line 3",
            text="name: x\ntrain: {epochs: 1}\ntrain: {epochs: 2}\n")
recipe_case("yaml_duplicate_nested_key", culprit="duplicate key 'lr' at line 4",
            text="name: x\ntrain:\n  lr: 0.1\n  lr: 0.2\n")
recipe_case("yaml_duplicate_in_flow_mapping", culprit="duplicate key 'n' at line 2",
            text="data:\n  source: {kind: phantom-cxr, n: 10, n: 20}\n")
recipe_case("yaml_syntax", culprit="YAML syntax error at line", text="train:\n  lr: 1\n bad: [\n")
recipe_case("yaml_not_a_mapping", culprit="a recipe must be a mapping", text="- 1\n- 2\n")
recipe_case("yaml_tab_indent", culprit="YAML syntax error", text="train:\n\tlr: 1\n")
recipe_case("unknown_key", {"trian": {}}, "unknown key 'trian' (did you mean 'train'?)")
recipe_case("unknown_nested_key", {"train": {"lrr": 1}}, "train: unknown key 'lrr'")
recipe_case("lr_negative", {"train": {"lr": -1}}, "train.lr: must be greater than 0 (got -1)")
recipe_case("lr_infinite", {"train": {"lr": float("inf")}}, "train.lr: must be a finite number")
recipe_case("lr_1e400", text="train: {lr: 1e400}\n", culprit="train.lr: must be a finite number")
recipe_case("lr_nan", {"train": {"lr": float("nan")}}, "train.lr: must be a finite number")
recipe_case("run_lr_infinite", {"method": {"runs": [{"name": "a", "objective": "dann", "lr": float("inf")}]}},
            "method.runs.0.lr: must be a finite number")
recipe_case("dann_weight_nan", {"method": {"runs": [{"name": "a", "objective": "dann",
                                                     "dann": {"weight": float("nan")}}]}},
            "method.runs.0.dann.weight: must be a finite number")
recipe_case("max_grad_norm_inf", {"train": {"max_grad_norm": float("inf")}}, "train.max_grad_norm")
recipe_case("seed_negative", {"seed": -1}, "seed: must be between 0 and 2^31-1 (got -1)")
recipe_case("seed_too_large", {"seed": 2**31}, "seed: must be between 0 and 2^31-1")
recipe_case("seed_not_int", {"seed": "abc"}, "seed:")
recipe_case("epochs_zero", {"train": {"epochs": 0}}, "train.epochs")
recipe_case("batch_size_zero", {"train": {"batch_size": 0}}, "train.batch_size")
recipe_case("image_size_tiny", {"data": {"image_size": 8}}, "data.image_size")
recipe_case("channels_two", {"data": {"channels": 2}}, "data.channels")
recipe_case("split_sum", {"data": {"split": {"train": 0.5, "val": 0.2, "test": 0.2}}}, "must sum to 1")
recipe_case("arch_unknown", {"model": {"arch": "resnet9"}}, "model.arch")
recipe_case("run_names_repeated", {"method": {"runs": [{"name": "a", "adabn": True, "epochs": 0}] * 2}},
            "run names must be unique")
recipe_case("audit_run_unknown", {"method": {"audit_run": "nope"}}, "audit_run 'nope'")
recipe_case("selection_unknown", {"method": {"selection": "best"}}, "method.selection")
recipe_case("selection_source_val_without_val",
            {"method": {"selection": "source_val"}, "data": {"split": {"train": 0.85, "val": 0, "test": 0.15}}},
            "method.selection: source_val needs a source validation split")
recipe_case("name_with_slash", {"name": "a/b"}, "name:")
recipe_case("domain_kind_unknown", {"data": {"source": {"kind": "zip", "path": "x"}}}, "data.source")
recipe_case("target_classes_unknown", {"data": {"target_classes": "some"}}, "data.target_classes")
recipe_case("permutations_too_few", {"diagnostics": {"permutations": 5}}, "diagnostics.permutations")


@case("recipe_missing")
def _(w, tmp):
    return "adapt", [str(tmp / "nope.yaml")], "nope.yaml: recipe file not found", None


@case("recipe_is_a_folder")
def _(w, tmp):
    return "adapt", [str(tmp)], f"{tmp}: recipe file not found", None


@case("recipe_not_utf8")
def _(w, tmp):
    p = tmp / "latin1.yaml"
    p.write_bytes("name: caf\xe9\n".encode("latin-1"))
    return "adapt", [str(p)], f"{p}: cannot read recipe", None


# -- overrides
def override_case(name: str, override: str, culprit: str) -> None:
    def build(w: World, tmp: Path):
        return "adapt", [str(w.recipe(tmp)), override, "--quiet"], culprit, None
    case(name)(build)


override_case("override_without_equals", "train.lr", "override 'train.lr': expected key.path=value")
override_case("override_empty_key", "=3", "empty key path")
override_case("override_empty_part", "train..lr=3", "empty key path")
override_case("override_bad_value", "train.lr=abc", "train.lr")
override_case("override_list_index", "method.runs.5.epochs=2", "no list item 5")
override_case("override_into_value", "train.lr.x=1", "train.lr is a value, not a section")
override_case("override_unknown_key", "trian.lr=1", "unknown key 'trian'")
override_case("override_seed_negative", "seed=-1", "seed: must be between 0 and 2^31-1 (got -1)")
override_case("override_lr_1e400", "train.lr=1e400", "train.lr: must be a finite number")
override_case("override_lr_inf", "train.lr=.inf", "train.lr: must be a finite number")
override_case("override_epochs_float", "train.epochs=1.5", "train.epochs")


# -- data folders, manifests, images
def data_case(name: str, make: Callable[[Path], tuple[dict, str]]) -> None:
    """make(tmp) -> (data section patch, culprit)."""
    def build(w: World, tmp: Path):
        patch, culprit = make(tmp)
        return "adapt", [str(w.recipe(tmp, {"data": patch})), "--quiet"], culprit, None
    case(name)(build)


def folder(p: Path) -> dict:
    return {"kind": "imagefolder", "path": str(p)}


data_case("source_folder_missing", lambda t: ({"source": folder(t / "nope")}, f"{t / 'nope'}: folder not found"))
data_case("source_is_a_file", lambda t: (
    {"source": folder(t / "r.yaml")}, "not a folder"))
data_case("source_folder_empty", lambda t: (
    (t / "e").mkdir() or {"source": folder(t / "e")}, f"{t / 'e'}: empty domain"))


def _empty_class(t: Path):
    root = image_folder(t / "a", {"normal": 3, "opacity": 3})
    (root / "third").mkdir()
    return {"source": folder(root)}, "class 'third' has no images"


data_case("empty_class_folder", _empty_class)


def _single_class(t: Path):
    a = image_folder(t / "a", {"normal": 6})
    b = image_folder(t / "b", {"normal": 6}, seed=1)
    return {"source": folder(a), "target": folder(b)}, "at least two classes"


data_case("single_class_in_both_domains", _single_class)


def _target_missing_class(t: Path):
    a = image_folder(t / "a", {"cat": 6, "dog": 6, "eel": 6})
    b = image_folder(t / "b", {"cat": 6, "dog": 6}, seed=1)
    return {"source": folder(a), "target": folder(b)}, "target has no images of class(es) ['eel']"


data_case("target_missing_a_class", _target_missing_class)


def _target_extra_class(t: Path):
    a = image_folder(t / "a", {"cat": 6, "dog": 6})
    b = image_folder(t / "b", {"cat": 6, "dog": 6, "eel": 2}, seed=1)
    return {"source": folder(a), "target": folder(b)}, "['eel']"


data_case("target_extra_class", _target_extra_class)


def _unlabelled_source(t: Path):
    a = t / "flat"
    for i in range(6):
        write_png(a / f"{i}.png", i)
    return {"source": {**folder(a), "labeled": False}}, "the source domain needs labels"


data_case("unlabelled_source", _unlabelled_source)


def _bad_file(kind: str, skip: bool):
    def make(t: Path):
        a = image_folder(t / "a", {"normal": 6, "opacity": 6})
        bad = a / "opacity" / "bad.png"
        bad.write_bytes({"bomb": bomb_png, "garbage": garbage_deflate_png,
                         "random": lambda: os.urandom(300), "empty": lambda: b""}[kind]())
        return {"source": folder(a), "skip_unreadable": skip}, str(bad)
    return make


data_case("decompression_bomb_png", _bad_file("bomb", False))
data_case("random_bytes_png", _bad_file("random", False))
data_case("empty_png", _bad_file("empty", False))


def _all_skipped(t: Path):
    a = image_folder(t / "a", {"normal": 2, "opacity": 2})
    for p in a.rglob("*.png"):
        p.write_bytes(bomb_png())
    return {"source": folder(a), "skip_unreadable": True}, "no readable images"


data_case("every_image_a_bomb_skipped", _all_skipped)


def _one_class_all_skipped(t: Path):
    a = image_folder(t / "a", {"normal": 4, "opacity": 2})
    for p in (a / "opacity").glob("*.png"):
        p.write_bytes(garbage_deflate_png())
    return {"source": folder(a), "skip_unreadable": True}, "class 'opacity' has no readable images"


data_case("garbage_deflate_empties_a_class_when_skipped", _one_class_all_skipped)


def _csv(t: Path, text: str) -> Path:
    image_folder(t / "imgs", {"normal": 3, "opacity": 3})
    p = t / "m.csv"
    p.write_text(text)
    return p


data_case("csv_missing", lambda t: ({"source": {"kind": "csv", "path": str(t / "no.csv")}}, "CSV manifest not found"))
data_case("csv_no_label_column", lambda t: (
    {"source": {"kind": "csv", "path": str(_csv(t, "path\nimgs/normal/0.png\n"))}}, "no column 'label'"))
data_case("csv_empty", lambda t: ({"source": {"kind": "csv", "path": str(_csv(t, "path,label\n"))}}, "no rows"))
data_case("csv_missing_file", lambda t: (
    {"source": {"kind": "csv", "path": str(_csv(t, "path,label\nimgs/normal/0.png,normal\nghost.png,opacity\n"))}},
    "ghost.png: file not found"))
data_case("csv_empty_label", lambda t: (
    {"source": {"kind": "csv", "path": str(_csv(t, "path,label\nimgs/normal/0.png,\n"))}}, "m.csv:2: empty 'label'"))


def _csv_not_utf8(t: Path):
    p = _csv(t, "")
    p.write_bytes(b"path,label\n\xff\xfe\xfa.png,b\n")
    return {"source": {"kind": "csv", "path": str(p)}}, f"{p}: cannot read CSV"


data_case("csv_not_utf8", _csv_not_utf8)


def _mid_run(workers: int):
    def build(w: World, tmp: Path):
        a = image_folder(tmp / "a", {"normal": 6, "opacity": 6})
        b = image_folder(tmp / "b", {"normal": 4, "opacity": 4}, seed=1)
        bad = a / "opacity" / "bad.png"
        bad.write_bytes(garbage_deflate_png())  # passes the load-time check (valid CRCs)
        r = w.recipe(tmp, {"data": {"source": folder(a), "target": folder(b), "num_workers": workers,
                                    "split": {"train": 0.8, "val": 0.1, "test": 0.1}},
                           "output": {"dir": str(tmp / "runs")}})
        return "adapt", [str(r), "--quiet"], f"{bad}: cannot decode image", None
    return build


case("garbage_deflate_png_met_mid_training")(_mid_run(0))
case("garbage_deflate_png_met_mid_training_in_a_worker")(_mid_run(1))


# -- checkpoints (model.source_checkpoint in a recipe, --model for diagnose gap)
def _checkpoint_dict(w: World) -> dict:
    return torch.load(w.model_pt, map_location="cpu", weights_only=True)


def _ckpt(kind: str, w: World, tmp: Path) -> tuple[Path, str]:
    """A bad checkpoint file and the culprit its error line must name."""
    p = tmp / f"{kind}.pt"
    if kind == "corrupt":
        p.write_bytes(w.model_pt.read_bytes()[:2000])
        return p, f"{p}: not a readable checkpoint"
    if kind == "random":
        p.write_bytes(os.urandom(5000))
        return p, f"{p}: not a readable checkpoint"
    if kind == "other_model":
        torch.save(torch.nn.Linear(4, 2).state_dict(), p)
        return p, f"{p}: not a domaingap checkpoint"
    if kind == "pickle":
        import argparse

        torch.save({"format": "domaingap", "namespace": argparse.Namespace(a=1)}, p)
        return p, f"{p}: not a readable checkpoint (it holds pickled Python objects"
    if kind == "missing":
        return tmp / "nope.pt", "nope.pt: checkpoint not found"
    if kind == "folder":
        p.mkdir()
        return p, f"{p}: checkpoint not found"
    ck = _checkpoint_dict(w)
    if kind == "classes_2e40":
        ck["num_classes"] = 2**40
        culprit = f"{p}: damaged domaingap checkpoint, num_classes is 1099511627776"
    elif kind == "classes_negative":
        ck["num_classes"] = -3
        culprit = f"{p}: damaged domaingap checkpoint, num_classes is -3"
    elif kind == "channels_string":
        ck["in_channels"] = "three"
        culprit = f"{p}: damaged domaingap checkpoint, in_channels is 'three'"
    elif kind == "arch_unknown":
        ck["arch"] = "vgg99"
        culprit = "unknown arch 'vgg99'"
    elif kind == "state_dict_missing_key":
        ck["state_dict"].pop(next(iter(ck["state_dict"])))
        culprit = "is missing"
    elif kind == "classes_meta_mismatch":
        ck["meta"]["classes"] = ["a", "b", "c"]
        culprit = "lists 3 classes for a 2-class head"
    elif kind == "image_size_meta_bad":
        ck["meta"]["image_size"] = 10**9
        culprit = f"{p}: damaged domaingap checkpoint, meta image_size is 1000000000"
    else:
        raise AssertionError(kind)
    torch.save(ck, p)
    return p, culprit


CKPT_KINDS = ["corrupt", "random", "other_model", "pickle", "missing", "folder", "classes_2e40",
              "classes_negative", "channels_string", "arch_unknown", "state_dict_missing_key",
              "classes_meta_mismatch", "image_size_meta_bad"]

for _kind in CKPT_KINDS:
    def _adapt_ckpt(w, tmp, _kind=_kind):
        p, culprit = _ckpt(_kind, w, tmp)
        return "adapt", [str(w.recipe(tmp, {"model": {"source_checkpoint": str(p)}})), "--quiet"], culprit, None
    case(f"source_checkpoint_{_kind}")(_adapt_ckpt)

for _kind in ["corrupt", "other_model", "pickle", "classes_2e40", "channels_string", "classes_meta_mismatch"]:
    def _gap_ckpt(w, tmp, _kind=_kind):
        p, culprit = _ckpt(_kind, w, tmp)
        return "diagnose", ["gap", "--source", "phantom-cxr:A:20", "--target", "phantom-cxr:B:20",
                            "--model", str(p), "--quiet"], culprit, None
    case(f"gap_model_{_kind}")(_gap_ckpt)


@case("source_checkpoint_other_classes")
def _(w, tmp):
    from adapt.models import build_model, save_checkpoint

    p = tmp / "three.pt"
    save_checkpoint(p, build_model("small_cnn", 3, 1), classes=["a", "b", "c"], image_size=32)
    return ("adapt", [str(w.recipe(tmp, {"model": {"source_checkpoint": str(p)}})), "--quiet"],
            "checkpoint classes ['a', 'b', 'c'] differ", None)


@case("source_checkpoint_other_channels")
def _(w, tmp):
    from adapt.models import build_model, save_checkpoint

    p = tmp / "rgb.pt"
    save_checkpoint(p, build_model("small_cnn", 2, 3), classes=["normal", "opacity"], image_size=32)
    return ("adapt", [str(w.recipe(tmp, {"model": {"source_checkpoint": str(p)}})), "--quiet"],
            "expects 3-channel images but data.channels is 1", None)


@case("source_checkpoint_other_image_size")
def _(w, tmp):
    from adapt.models import build_model, save_checkpoint

    p = tmp / "big.pt"
    save_checkpoint(p, build_model("small_cnn", 2, 1), classes=["normal", "opacity"], image_size=128)
    return ("adapt", [str(w.recipe(tmp, {"model": {"source_checkpoint": str(p)}})), "--quiet"],
            f"{p}: the checkpoint was trained on 128x128 images but data.image_size is 32", None)


@case("source_checkpoint_other_arch")
def _(w, tmp):
    from adapt.models import build_model, save_checkpoint

    p = tmp / "mobile.pt"
    save_checkpoint(p, build_model("mobilenet_v3_small", 2, 1), classes=["normal", "opacity"], image_size=32)
    return ("adapt", [str(w.recipe(tmp, {"model": {"source_checkpoint": str(p)}})), "--quiet"],
            f"{p}: the checkpoint is a mobilenet_v3_small but model.arch is small_cnn", None)


# -- --resume on a damaged or changed run
def _killed_run(w: World, tmp: Path, name: str) -> Path:
    """A copy of the base run as if killed after its last source epoch, before model.pt."""
    run = tmp / "runs" / name
    shutil.copytree(w.base_run, run)
    for p in list(run.iterdir()):
        if p.name not in ("recipe.yaml", "data.json", "source"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    (run / "source" / "model.pt").unlink()
    return run


@case("resume_corrupt_best_pt")
def _(w, tmp):
    run = _killed_run(w, tmp, "killed")
    best = run / "source" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    r = w.recipe(tmp, {"output": {"dir": str(run.parent), "name": "killed"}})
    return "adapt", [str(r), "--resume", "--quiet"], f"{best}: not a readable checkpoint to resume from", run


@case("resume_corrupt_last_pt")
def _(w, tmp):
    run = _killed_run(w, tmp, "killed")
    last = run / "source" / "last.pt"
    last.write_bytes(b"not a checkpoint")
    r = w.recipe(tmp, {"output": {"dir": str(run.parent), "name": "killed"}})
    return "adapt", [str(r), "--resume", "--quiet"], f"{last}: not a readable checkpoint to resume from", run


@case("resume_with_changed_seed")
def _(w, tmp):
    return "adapt", [str(w.recipe(tmp)), "seed=1", "--resume", "--quiet"], "changed: seed", None


@case("resume_with_changed_data")
def _(w, tmp):
    return ("adapt", [str(w.recipe(tmp)), "data.source.n=50", "--resume", "--quiet"],
            "changed: data.source.n", None)


@case("rerun_without_resume_or_overwrite")
def _(w, tmp):
    return "adapt", [str(w.recipe(tmp)), "--quiet"], f"{w.base_run}: holds a finished run", None


@case("rerun_with_resume_and_overwrite")
def _(w, tmp):
    return ("adapt", [str(w.recipe(tmp)), "--resume", "--overwrite", "--quiet"],
            "--resume and --overwrite exclude each other", None)


@case("overwrite_with_missing_data")
def _(w, tmp):
    r = w.recipe(tmp, {"data": {"target": folder(tmp / "gone")}})
    return "adapt", [str(r), "--overwrite", "--quiet"], f"{tmp / 'gone'}: folder not found", None


@case("overwrite_with_checkpoint_of_another_arch")
def _(w, tmp):
    from adapt.models import build_model, save_checkpoint

    p = tmp / "mobile.pt"
    save_checkpoint(p, build_model("mobilenet_v3_small", 2, 1), classes=["normal", "opacity"], image_size=32)
    r = w.recipe(tmp, {"model": {"source_checkpoint": str(p)}})
    return "adapt", [str(r), "--overwrite", "--quiet"], "the checkpoint is a mobilenet_v3_small", None


@case("run_folder_is_a_file")
def _(w, tmp):
    (tmp / "runs").mkdir()
    (tmp / "runs" / "base").write_text("a file")
    r = w.recipe(tmp, {"output": {"dir": str(tmp / "runs")}})
    return "adapt", [str(r), "--quiet"], f"{tmp / 'runs' / 'base'}: the run folder is a file", tmp / "runs"


@case("training_diverges")
def _(w, tmp):
    r = w.recipe(tmp, {"train": {"lr": 1e30}, "output": {"dir": str(tmp / "runs")}})
    return "adapt", [str(r), "--quiet"], "source: loss became", None


@case("resume_with_changed_run_settings")
def _(w, tmp):
    r = w.recipe(tmp, {"method": {"runs": [{"name": "adabn", "adabn": False, "epochs": 0}]}})
    return "adapt", [str(r), "--resume", "--quiet"], "changed: method.runs.adabn.adabn", None


@case("nproc_zero")
def _(w, tmp):
    return "adapt", [str(w.recipe(tmp)), "--nproc", "0"], "--nproc: must be at least 1 (got 0)", None


# -- diagnose
def gap_case(name: str, extra: Callable[[World, Path], tuple[list[str], str]],
             source: str = "phantom-cxr:A:20", target: str = "phantom-cxr:B:20") -> None:
    def build(w: World, tmp: Path):
        args, culprit = extra(w, tmp)
        return "diagnose", ["gap", "--source", source, "--target", target, "--quiet", *args], culprit, None
    case(name)(build)


gap_case("gap_seed_negative", lambda w, t: (["--seed", "-1"], "--seed: must be between 0 and 2^31-1 (got -1)"))
gap_case("gap_seed_too_large", lambda w, t: (["--seed", str(2**40)], "--seed: must be between 0 and 2^31-1"))
gap_case("gap_json_is_a_folder", lambda w, t: (["--json", str(t)], f"--json {t}: is a folder"))
gap_case("gap_html_is_a_folder", lambda w, t: (["--html", str(t)], f"--html {t}: is a folder"))
gap_case("gap_json_parent_is_a_file", lambda w, t: (
    ["--json", str(w.recipe(t) / "x.json")], "--json"))
gap_case("gap_permutations_zero", lambda w, t: (["--permutations", "0"], "--permutations"))
gap_case("gap_max_samples_tiny", lambda w, t: (["--max-samples", "2"], "--max-samples"))
gap_case("gap_batch_size_zero", lambda w, t: (["--batch-size", "0"], "--batch-size"))
gap_case("gap_image_size_zero", lambda w, t: (["--image-size", "0"], "--image-size"))
gap_case("gap_workers_negative", lambda w, t: (["--workers", "-1"], "--workers"))
gap_case("gap_bootstrap_negative", lambda w, t: (["--bootstrap", "-1"], "--bootstrap"))
gap_case("gap_fail_on_unknown_metric", lambda w, t: (["--fail-on", "bogus<1"], "--fail-on"))
gap_case("gap_features_unknown", lambda w, t: (["--features", "vgg99"], "vgg99"))
gap_case("gap_source_missing", lambda w, t: ([], "nope"), source="/nonexistent/nope")


def _bomb_folder(t: Path) -> str:
    a = image_folder(t / "bombs", {"x": 3, "y": 3})
    (a / "x" / "bomb.png").write_bytes(bomb_png())
    return str(a)


@case("gap_decompression_bomb")
def _(w, tmp):
    src = _bomb_folder(tmp)
    return ("diagnose", ["gap", "--source", src, "--target", src, "--quiet"],
            f"{src}/x/bomb.png: not a readable image (decompression bomb", None)


@case("phantom_out_is_a_file")
def _(w, tmp):
    f = tmp / "taken"
    f.write_text("mine")
    return "diagnose", ["phantom", str(f), "--n", "2"], f"{f}: exists and is not a folder", tmp


@case("phantom_n_zero")
def _(w, tmp):
    return "diagnose", ["phantom", str(tmp / "o"), "--n", "0"], "--n: must be at least 1", tmp


@case("phantom_image_size_tiny")
def _(w, tmp):
    return "diagnose", ["phantom", str(tmp / "o"), "--n", "2", "--image-size", "4"], "--image-size: must be at least 16", tmp


@case("phantom_seed_negative")
def _(w, tmp):
    return "diagnose", ["phantom", str(tmp / "o"), "--n", "2", "--seed", "-1"], "--seed", tmp


def audit_case(name: str, content: bytes | None, culprit: str) -> None:
    def build(w: World, tmp: Path):
        run = tmp / "run"
        run.mkdir()
        if content is not None:
            (run / "audit.json").write_bytes(content)
            (run / "audit.html").write_text("<html>the user's report</html>")
        return "diagnose", ["audit", str(run)], culprit.format(run=run), run
    case(name)(build)


audit_case("audit_json_list", b"[]", "{run}/audit.json: not an audit written by adapt-run (a JSON list")
audit_case("audit_json_empty_object", b"{}", "{run}/audit.json: not an audit written by adapt-run")
audit_case("audit_json_not_utf8", b'{"a": "\xff\xfe"}', "{run}/audit.json: not UTF-8")
audit_case("audit_json_invalid", b"{'a': 1", "{run}/audit.json: not valid JSON")
audit_case("audit_json_number", b"3", "{run}/audit.json: not an audit written by adapt-run")
audit_case("audit_json_missing", None, "{run}: no audit.json")


@case("audit_run_missing")
def _(w, tmp):
    return "diagnose", ["audit", str(tmp / "nope")], f"{tmp / 'nope'}: no audit.json", None


def test_the_corpus_is_large():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_error_line_and_exit_2(name, world, tmp_path, capsys):
    cli, argv, culprit, protected = CASES[name](world, tmp_path)
    protected = world.base_run if protected is None else protected
    before, base_before = tree_hash(protected), tree_hash(world.base_run)
    code, out, err, caught = invoke(cli, argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}; stderr: {err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert culprit in lines[0], f"{culprit!r} not in {lines[0]!r}"
    assert "Traceback" not in err + out and "\x1b[" not in lines[0]
    assert not caught, [str(c.message) for c in caught]
    assert tree_hash(protected) == before, f"{protected} changed"
    assert tree_hash(world.base_run) == base_before, "the finished run changed"


# ----------------------------------------------------------------------------- as a user sees it

@pytest.mark.slow
@pytest.mark.parametrize("name", ["source_checkpoint_pickle", "gap_model_pickle", "decompression_bomb_png"])
def test_real_process_prints_one_line_and_no_warnings(name, world, tmp_path):
    """The same cases through a fresh interpreter: what the terminal shows is one line (torch
    warns through ``warnings`` at import and load time, which the in-process run may hide)."""
    cli, argv, culprit, _ = CASES[name](world, tmp_path)
    module = "domaingap.adapt_run" if cli == "adapt" else "domaingap.diagnose"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and culprit in lines[0], proc.stderr


def test_seed_error_says_got_once(world, tmp_path, capsys):
    code, _, err, _ = invoke("adapt", [str(world.recipe(tmp_path, {"seed": -1}))], capsys)
    assert code == 2 and err.count("(got -1)") == 1, err


# ----------------------------------------------------------------------------- what is accepted


def _two_folders(tmp: Path, target_classes: dict[str, int]) -> tuple[Path, Path]:
    return (image_folder(tmp / "a", {"cat": 6, "dog": 6, "eel": 6}),
            image_folder(tmp / "b", target_classes, seed=1))


def test_skip_unreadable_skips_a_bomb_and_garbage_deflate_and_lists_them(world, tmp_path, capsys):
    import json

    a, b = _two_folders(tmp_path, {"cat": 4, "dog": 4, "eel": 4})
    bomb, garbage = a / "cat" / "bomb.png", a / "dog" / "garbage.png"
    bomb.write_bytes(bomb_png())
    garbage.write_bytes(garbage_deflate_png())
    r = world.recipe(tmp_path, {"data": {"source": folder(a), "target": folder(b), "skip_unreadable": True},
                                "output": {"dir": str(tmp_path / "runs")}})
    code, _, err, caught = invoke("adapt", [str(r), "--quiet"], capsys)
    assert code == 0, err
    assert not caught, [str(c.message) for c in caught]
    skipped = json.loads((tmp_path / "runs" / "base" / "data.json").read_text())["source"]["skipped"]
    reasons = dict(skipped)
    assert sorted(reasons) == sorted([str(bomb), str(garbage)])
    assert "decompression bomb" in reasons[str(bomb)]


def test_a_target_without_some_classes_is_accepted_when_the_recipe_says_subset(world, tmp_path, capsys):
    import json

    a, b = _two_folders(tmp_path, {"cat": 12, "dog": 12})  # enough held-out images for the audit's gap
    r = world.recipe(tmp_path, {"data": {"source": folder(a), "target": folder(b), "target_classes": "subset"},
                                "output": {"dir": str(tmp_path / "runs")},
                                "diagnostics": {"enabled": True, "attribution": False, "umap": False,
                                                "permutations": 19}})
    code, _, err, _ = invoke("adapt", [str(r), "--quiet"], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "runs" / "base" / "data.json").read_text())
    assert data["target"]["missing_classes"] == ["eel"]
    # ... and the audit says so
    audit = json.loads((tmp_path / "runs" / "base" / "audit.json").read_text())
    partial = [v for v in audit["verdicts"] if v["name"] == "partial_target_classes"]
    assert partial and partial[0]["evidence"]["missing_classes"] == ["eel"]


def test_written_files_are_readable_under_the_users_umask(tmp_path):
    from adapt.io import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o027)
        atomic_write_text(tmp_path / "b.txt", "x")
        (tmp_path / "c.txt").write_text("mine")
        (tmp_path / "c.txt").chmod(0o640)
        atomic_write_text(tmp_path / "c.txt", "replaced")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "c.txt").stat().st_mode & 0o777 == 0o640  # a replaced file keeps its mode
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_duplicate_keys_in_an_override_value_are_an_error():
    from adapt.errors import UserError
    from adapt.recipe_text import apply_override

    with pytest.raises(UserError, match="duplicate key 'name'"):
        apply_override({}, "method.runs=[{name: a, name: b}]")


def test_yaml_merge_keys_and_repeated_keys_in_different_mappings_are_fine(tmp_path):
    from adapt.recipe import load_recipe

    p = tmp_path / "m.yaml"
    p.write_text("x-defaults: &d {epochs: 2, lr: 0.01}\n".replace("x-defaults", "train") +
                 "method:\n  runs:\n    - {name: a, <<: {adabn: true}, epochs: 0}\n    - {name: b, epochs: 0}\n")
    recipe = load_recipe(p)
    assert recipe.train.epochs == 2 and recipe.method.runs[0].adabn and recipe.method.runs[1].name == "b"


def test_gap_warns_when_the_image_size_differs_from_the_checkpoints(world, capsys):
    argv = ["gap", "--source", "phantom-cxr:A:20", "--target", "phantom-cxr:B:20", "--model", str(world.model_pt),
            "--permutations", "19", "--bootstrap", "0", "--max-samples", "20"]
    code, _, err, _ = invoke("diagnose", [*argv, "--image-size", "48"], capsys)
    assert code == 0, err
    assert f"note: {world.model_pt} was trained on 32x32 images; at --image-size 48" in err
    code, _, err, _ = invoke("diagnose", argv, capsys)
    assert code == 0 and "was trained on" not in err
