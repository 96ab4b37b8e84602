"""The bad-input corpus, file-system family: run folders that cannot be half-replaced, a
full or read-only disk, two runs into one folder, and outputs written onto inputs.

Each case: exit code 2, exactly one line ``error: ...`` naming the culprit, no traceback,
the finished run (and every input) byte-identical, and nothing left behind (no staging
folder, lock file or temp file). A full disk and a read-only folder are injected as the
``OSError`` the kernel gives (``ENOSPC``, ``EROFS``) at chosen writes; where ``mount``
works (root), one case also fills a real 3 MB tmpfs and remounts it read-only.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.test_bad_inputs import World, image_folder, invoke, tree_hash, world  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("one_thread")


def leftovers(folder: Path) -> list[str]:
    """Hidden entries adapt-run or an atomic write could leave: staging folders, locks, temps."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def assert_one_error(code: int, out: str, err: str, culprit: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}; stderr: {err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert culprit in lines[0], f"{culprit!r} not in {lines[0]!r}"
    assert "Traceback" not in out + err
    return lines[0]


def fail_write(monkeypatch, code: int, *, at: int | None = None, name: str | None = None) -> None:
    """Make the ``at``-th atomic write (its fsync), or the write of the file ``name`` (its
    rename into place), fail with ``code`` — what a full or read-only disk does."""
    real_fsync, real_replace, calls = os.fsync, os.replace, [0]

    def fsync(fd):
        calls[0] += 1
        if at is not None and calls[0] == at:
            raise OSError(code, os.strerror(code))
        return real_fsync(fd)

    def replace(src, dst, *a, **k):
        if name is not None and Path(dst).name == name:
            raise OSError(code, os.strerror(code), str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)


# ----------------------------------------------------------------------------- a full or read-only disk

FAULTS = [("enospc_first_write", errno.ENOSPC, 1, None), ("enospc_a_checkpoint", errno.ENOSPC, 4, None),
          ("enospc_metrics", errno.ENOSPC, None, "metrics.json"),
          ("enospc_selection", errno.ENOSPC, None, "selection.json"),
          ("erofs_first_write", errno.EROFS, 1, None), ("erofs_comparison", errno.EROFS, None, "comparison.md")]


@pytest.mark.parametrize("label, code, at, name", FAULTS, ids=[f[0] for f in FAULTS])
@pytest.mark.parametrize("mode", ["overwrite", "fresh"])
def test_a_failed_write_is_one_line_and_the_earlier_run_survives(world, tmp_path, capsys, monkeypatch,
                                                                   label, code, at, name, mode):
    """``--overwrite`` of the finished run (or a fresh run beside it) on a disk that fills
    up or turns read-only at a chosen write: the finished run is byte-identical, no
    staging folder or temp file is left."""
    patch = {} if mode == "overwrite" else {"output": {"name": f"fresh_{label}"}}
    recipe = world.recipe(tmp_path, patch)
    argv = [str(recipe), "--quiet"] + (["--overwrite"] if mode == "overwrite" else [])
    before, listing = tree_hash(world.base_run), leftovers(world.runs)
    fail_write(monkeypatch, code, at=at, name=name)
    line = assert_one_error(*invoke("adapt", argv, capsys)[:3], os.strerror(code))
    if name is not None:
        assert name in line  # the file whose write failed is named (not its temp file)
    assert tree_hash(world.base_run) == before
    assert leftovers(world.runs) == listing
    assert not (world.runs / f"fresh_{label}").exists()


def test_a_failed_write_in_diagnose_is_one_line_and_leaves_no_file(world, tmp_path, capsys, monkeypatch):
    out = tmp_path / "gap.json"
    fail_write(monkeypatch, errno.ENOSPC, at=1)
    assert_one_error(*invoke("diagnose", ["gap", "--source", "phantom-cxr:A:20", "--target", "phantom-cxr:B:20",
                                          "--permutations", "19", "--bootstrap", "0", "--quiet",
                                          "--json", str(out)], capsys)[:3], f"{out}: No space left on device")
    assert not out.exists() and leftovers(tmp_path) == []


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MB tmpfs (root only; skipped where mount is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None or not _mount("-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_real_full_then_read_only_disk(world, small_disk, tmp_path, capsys):
    runs = small_disk / "runs"
    shutil.copytree(world.base_run, runs / "base")
    before = tree_hash(runs / "base")
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * max(0, free - 64 * 1024))  # 64 KB left: a checkpoint won't fit
    recipe = world.recipe(tmp_path, {"output": {"dir": str(runs)}})
    assert_one_error(*invoke("adapt", [str(recipe), "--quiet", "--overwrite"], capsys)[:3],
                     "No space left on device")
    assert tree_hash(runs / "base") == before and leftovers(runs) == []
    (small_disk / "filler").unlink()
    if not _mount("-o", "remount,ro", str(small_disk)):
        pytest.skip("cannot remount read-only")
    recipe = world.recipe(tmp_path, {"output": {"dir": str(runs), "name": "other"}})
    assert_one_error(*invoke("adapt", [str(recipe), "--quiet"], capsys)[:3], "Read-only file system")
    assert tree_hash(runs / "base") == before and leftovers(runs) == []


# ----------------------------------------------------------------------------- replacing, interrupting, locking


def _copy_base(world: World, tmp: Path) -> tuple[Path, Path]:
    runs = tmp / "runs"
    shutil.copytree(world.base_run, runs / "base")
    return runs, runs / "base"


def test_overwrite_keeps_every_file_it_did_not_write(world, tmp_path, capsys):
    runs, run = _copy_base(world, tmp_path)
    mine = {"source/mydata.png": b"png", "methods/notes.txt": b"notes", "methods/adabn/keep.txt": b"k",
            "sweep/trials.md": b"t", "drift/x.json": b"{}"}
    for rel, data in mine.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(data)
    recipe = world.recipe(tmp_path, {"output": {"dir": str(runs)}, "seed": 3})
    code, _, err, _ = invoke("adapt", [str(recipe), "--quiet", "--overwrite"], capsys)
    assert code == 0, err
    assert {rel: (run / rel).read_bytes() for rel in mine} == mine
    assert "seed: 3" in (run / "recipe.yaml").read_text() and leftovers(runs) == []


def test_a_fresh_run_into_a_folder_of_user_files_keeps_them(world, tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "base" / "source").mkdir(parents=True)
    (runs / "base" / "source" / "mydata.png").write_bytes(b"x")
    recipe = world.recipe(tmp_path, {"output": {"dir": str(runs)}})
    assert invoke("adapt", [str(recipe), "--quiet"], capsys)[0] == 0
    assert (runs / "base" / "source" / "mydata.png").read_bytes() == b"x"
    assert (runs / "base" / "metrics.json").is_file()


def test_an_interrupted_overwrite_leaves_the_old_run_and_resume_finishes_the_new(world, tmp_path, capsys,
                                                                                monkeypatch):
    import adapt.train as train_mod

    runs, run = _copy_base(world, tmp_path)
    before = tree_hash(run)
    recipe = world.recipe(tmp_path, {"output": {"dir": str(runs)}, "seed": 4})
    original = train_mod._select_and_checkpoint

    def killing(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_select_and_checkpoint", killing)
    assert invoke("adapt", [str(recipe), "--quiet", "--overwrite"], capsys)[0] == 130
    assert tree_hash(run) == before  # the old run is whole; the new one waits in the staging folder
    assert leftovers(runs) == [".base.partial"]
    assert_one_error(*invoke("adapt", [str(recipe), "--quiet"], capsys)[:3], "continue it with --resume")
    monkeypatch.setattr(train_mod, "_select_and_checkpoint", original)
    code, _, err, _ = invoke("adapt", [str(recipe), "--quiet", "--resume"], capsys)
    assert code == 0, err
    assert "seed: 4" in (run / "recipe.yaml").read_text() and leftovers(runs) == []
    assert torch.load(run / "source" / "model.pt", weights_only=True)["meta"]["fit"]["best_checkpoint"] == "best.pt"


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_holder(world, tmp_path, capsys):
    from domaingap.run_folder import run_folder_lock

    before = tree_hash(world.base_run)
    with run_folder_lock(world.base_run):
        assert_one_error(*invoke("adapt", [str(world.recipe(tmp_path)), "--quiet", "--overwrite"], capsys)[:3],
                         f"in use by another adapt-run (pid {os.getpid()}")
    assert tree_hash(world.base_run) == before and leftovers(world.runs) == []


# ----------------------------------------------------------------------------- outputs onto inputs


def _gap(*extra: str) -> list[str]:
    return ["gap", "--permutations", "19", "--bootstrap", "0", "--quiet", *extra]


OUTPUT_ON_INPUT = {
    "export_onto_its_checkpoint": lambda w, t: (["export", str(w.model_pt), str(w.model_pt)], "is the MODEL.pt input"),
    "gap_json_onto_the_model": lambda w, t: (
        _gap("--source", "phantom-cxr:A:20", "--target", "phantom-cxr:B:20", "--model", str(w.model_pt),
             "--json", str(w.model_pt)), "is the --model input"),
    "gap_json_onto_the_manifest": lambda w, t: (
        _gap("--source", str(_manifest(t)), "--target", "phantom-cxr:B:20", "--json", str(t / "m.csv")),
        "is the --source input"),
    "gap_json_through_a_symlink_onto_the_manifest": lambda w, t: (
        _gap("--source", str(_manifest(t)), "--target", "phantom-cxr:B:20", "--json", str(_link(t, "m.csv"))),
        "is the --source input"),
    "gap_html_into_the_data_folder": lambda w, t: (
        _gap("--source", str(_folder(t)), "--target", "phantom-cxr:B:20", "--html", str(t / "a" / "r.html")),
        "lies inside the --source folder"),
    "gap_json_onto_an_image": lambda w, t: (
        _gap("--source", str(_manifest(t)), "--target", "phantom-cxr:B:20", "--json", str(t / "a" / "cat" / "0.png")),
        "is the --source input"),
    "drift_json_onto_the_reference": lambda w, t: (
        ["drift", str(w.base_run), "--batch", "phantom-cxr:B:20", "--quiet",
         "--json", str(w.base_run / "drift_reference.npz")], "is the drift reference input"),
    "drift_json_into_the_batch_folder": lambda w, t: (
        ["drift", str(w.base_run), "--batch", str(_folder(t)), "--quiet", "--json", str(t / "a" / "d.json")],
        "lies inside the --batch folder"),
    "phantom_into_a_data_folder": lambda w, t: (["phantom", str(_folder(t)), "--n", "4"], "not empty"),
    "export_out_is_a_folder": lambda w, t: (["export", str(w.model_pt), str(t)], "is a folder"),
    "drift_json_is_a_folder": lambda w, t: (["drift", str(w.base_run), "--batch", "phantom-cxr:B:20", "--quiet",
                                             "--json", str(t)], "is a folder"),
}


def _folder(t: Path) -> Path:
    return image_folder(t / "a", {"cat": 3, "dog": 3})


def _manifest(t: Path) -> Path:
    _folder(t)
    rows = [f"a/{c}/{i}.png,{c}" for c in ("cat", "dog") for i in range(3)]
    (t / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return t / "m.csv"


def _link(t: Path, target: str) -> Path:
    (t / "out").mkdir(exist_ok=True)
    (t / "out" / "link.json").symlink_to(t / target)
    return t / "out" / "link.json"


@pytest.mark.parametrize("name", sorted(OUTPUT_ON_INPUT))
def test_an_output_onto_an_input_is_refused(name, world, tmp_path, capsys):
    argv, culprit = OUTPUT_ON_INPUT[name](world, tmp_path)
    inputs = {p: tree_hash(p) if p.is_dir() else p.read_bytes() for p in (tmp_path, world.base_run)}
    assert_one_error(*invoke("diagnose", argv, capsys)[:3], culprit)
    assert inputs == {p: tree_hash(p) if p.is_dir() else p.read_bytes() for p in inputs}


def _data(t: Path, source: Path | None = None) -> dict:
    src = source or image_folder(t / "a", {"cat": 8, "dog": 8})
    kind = "csv" if src.suffix == ".csv" else "imagefolder"
    return {"source": {"kind": kind, "path": str(src)},
            "target": {"kind": "imagefolder", "path": str(image_folder(t / "b", {"cat": 8, "dog": 8}, 1))}}


RUN_FOLDER_ON_INPUT = {
    "run_folder_inside_the_data_folder": (
        lambda t: {"data": _data(t), "output": {"dir": str(t / "a" / "cat"), "name": "r"}},
        "lies inside the data.source"),
    "run_folder_holds_the_data_folder": (
        lambda t: {"data": _data(t, image_folder(t / "a" / "data", {"cat": 8, "dog": 8})),
                   "output": {"dir": str(t), "name": "a"}}, "holds the data.source input"),
    "run_folder_holds_a_listed_image": (
        lambda t: {"data": _data(t, _manifest(t)), "output": {"dir": str(t), "name": "a"}},
        "holds the data.source input"),
    "source_checkpoint_inside_the_run_folder": (
        lambda t: {"model": {"source_checkpoint": str(_copy_base_at(t) / "source" / "model.pt")},
                   "output": {"dir": str(t / "runs")}}, "holds the model.source_checkpoint input"),
    "output_dir_is_a_file": (lambda t: {"output": {"dir": str(_a_file(t / "runs.txt"))}},
                             "runs.txt: a file, so the run folder"),
    "name_dot_dot": (lambda t: {"name": ".."}, "name: String should match pattern"),
    "output_name_dot": (lambda t: {"output": {"name": "."}}, "output.name: String should match pattern"),
    "output_name_two_components": (lambda t: {"output": {"name": "a/b"}}, "output.name"),
    "run_name_hidden": (lambda t: {"method": {"runs": [{"name": ".x", "adabn": True, "epochs": 0}]}},
                        "method.runs.0.name"),
}


def _a_file(path: Path) -> Path:
    path.write_text("mine")
    return path


def _copy_base_at(t: Path) -> Path:
    return t / "runs" / "base"  # copied there by the test before the patch is built


@pytest.mark.parametrize("name", sorted(RUN_FOLDER_ON_INPUT))
def test_a_run_folder_onto_an_input_is_refused(name, world, tmp_path, capsys):
    patch, culprit = RUN_FOLDER_ON_INPUT[name]
    _copy_base(world, tmp_path)
    patch_dict = patch(tmp_path)
    before, base_before = tree_hash(tmp_path), tree_hash(world.base_run)
    recipe = world.recipe(tmp_path.parent, patch_dict, name=f"{tmp_path.name}.yaml")
    assert_one_error(*invoke("adapt", [str(recipe), "--quiet", "--overwrite"], capsys)[:3], culprit)
    assert tree_hash(tmp_path) == before and tree_hash(world.base_run) == base_before
