"""The truth suite: planted cases with a known answer, judged by the real CLIs.

    python benchmarks/truth_suite.py [--out runs/truth] [--small] [--cases NAME ...] [--keep]

Every case is built at run time from images that ship inside packages — scikit-learn's
handwritten digits (``sklearn.datasets.load_digits``) and scikit-image's bundled
photographs, through :mod:`adapt.data.real_images` — so nothing is downloaded and nobody
chose the images to suit the tool. Each case knows its truth (no shift, a covariate shift,
a collapse, a pure label shift, a shortcut the model uses, a cue it ignores, adaptation
that helps or hurts, a model still near chance), runs ``diagnose gap`` or ``adapt-run``
exactly as a user would (``python -m domaingap.diagnose`` / ``python -m domaingap.adapt_run`` in a
subprocess), reads the JSON they write, and prints

    case | truth | expected verdict | obtained | match

A case matches when every expected field equals the obtained one. ``--small`` runs the
cases that need no adaptation run beyond the one source model (the CI test,
``tests/test_truth_suite.py``). Exit code 0 when every case matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapt.data.real_images import (  # noqa: E402
    DIGIT_CLASSES,
    ImageSet,
    ScannerStyle,
    digit_splits,
    load_digit_images,
    load_photos,
    scan_digits,
    texture_digits,
    write_image_folder,
)

IMAGE_SIZE = 16
#: the digit is drawn at 10×10 inside a 3-pixel black margin, as MNIST draws its 20×20
#: digits inside 28×28: the attribution's 2-pixel border band then holds background only
#: (a window counts as "in the border" when half of it is, so the margin is wider)
DIGIT_SIZE = 10
ALPHA = 0.05
#: a milder scanner than :class:`ScannerStyle`'s default: the source model keeps working
#: on part of the target and its predictions lean onto a few classes instead of one
MILD_SCANNER = ScannerStyle(gamma=0.85, contrast=0.85, offset=0.1, blur=0.5, noise=0.04)


# ----------------------------------------------------------------------------- data


def _write(images, labels, ids, root: Path, labelled: bool = True) -> Path:
    """An ImageFolder (``root/<class>/<i>.png``) or, unlabelled, a flat folder of PNGs."""
    s = ImageSet(images, np.asarray(labels), np.asarray(ids), root.name)
    if labelled:
        return write_image_folder(s, root, DIGIT_CLASSES)
    tmp = root.with_name(root.name + ".tmp")
    write_image_folder(ImageSet(images, np.zeros(len(ids), dtype=np.int64), np.asarray(ids), root.name),
                       tmp, ["all"])
    (tmp / "all").rename(root)
    tmp.rmdir()
    return root


def add_cue(images, cue_labels: np.ndarray):
    """A 2×2 bright square in the top (labels 0–4) or bottom (5–9) border band, at column
    3·(label mod 5) + 1: a cue that encodes ``cue_labels`` exactly. Returns a copy."""
    out = images.clone()
    s = out.shape[-1]
    for i, c in enumerate(np.asarray(cue_labels)):
        y0 = 0 if c < 5 else s - 2
        x0 = 3 * (int(c) % 5) + 1
        out[i, :, y0:y0 + 2, x0:x0 + 2] = 1.0
    return out


def build_data(root: Path, small: bool = False) -> dict[str, Path]:
    """Every folder the cases use, from disjoint per-class splits of the 1,797 digits:

    Digits are drawn at 10×10 in a 16×16 frame (:data:`DIGIT_SIZE`).

    * ``src_train`` (≈ 898): what the source model is trained on;
    * ``src_heldout`` (≈ 449): labelled source images the model never saw (BBSE's
      confusion, the label-shift check, the source side of every ``diagnose gap``);
    * from the other ≈ 450 (``tgt_*``): clean digits (no shift); the scanner shift and a
      milder one (covariate shifts), labelled and unlabelled; a pure label shift (classes
      0–2 kept whole, the rest thinned to 15%), labelled and unlabelled; MNIST-M-style
      textured digits (scikit-image photographs, converted to grey by the loader);
    * ``cue_src``/``cue_heldout``: the source with :func:`add_cue` encoding the label (a
      shortcut) and ``rand_src``: with the cue at random (uninformative).
    """
    import torch.nn.functional as F

    root.mkdir(parents=True, exist_ok=True)
    imgs, labels = load_digit_images(DIGIT_SIZE)
    pad = (IMAGE_SIZE - DIGIT_SIZE) // 2
    imgs = F.pad(imgs, (pad, pad, pad, pad))
    idx = digit_splits(labels, seed=0)
    src, held, tst = idx["source"], idx["target_train"], idx["target_test"]
    rng = np.random.default_rng(0)
    paths: dict[str, Path] = {}

    def put(name, x, ids, labelled=True):
        paths[name] = _write(x, labels[ids], ids, root / name, labelled)

    put("src_train", imgs[src], src)
    put("src_heldout", imgs[held], held)
    put("tgt_clean", imgs[tst], tst)
    for name, style in (("tgt_scanner", ScannerStyle()), ("tgt_mild", MILD_SCANNER)):
        x = scan_digits(imgs[tst], style, np.random.default_rng(1))
        put(name, x, tst)
        put(name + "_u", x, tst, labelled=False)
    keep = np.sort(tst[rng.random(len(tst)) < np.where(labels[tst] < 3, 1.0, 0.15)])
    put("tgt_labelshift", imgs[keep], keep)
    put("tgt_labelshift_u", imgs[keep], keep, labelled=False)
    if small:
        return paths
    put("tgt_textured", texture_digits(imgs[tst], load_photos(), np.random.default_rng(2), "test"), tst)
    pool = np.sort(np.concatenate([held, tst]))  # a larger pure label shift, for adaptation runs
    big = np.sort(pool[rng.random(len(pool)) < np.where(labels[pool] < 3, 1.0, 0.15)])
    put("tgt_labelshift_big", imgs[big], big)
    put("cue_src", add_cue(imgs[src], labels[src]), src)
    put("cue_heldout", add_cue(imgs[held], labels[held]), held)
    random_cue = rng.integers(0, 10, size=len(src))
    put("rand_src", add_cue(imgs[src], random_cue), src)
    put("rand_heldout", add_cue(imgs[held], rng.integers(0, 10, size=len(held))), held)
    return paths


# ----------------------------------------------------------------------------- CLIs


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


#: ``--in-process``: the CLIs are called through their ``main`` in this process (the same
#: argument parsing, code paths and exit codes, without an interpreter start per call —
#: ~3 s each on a small CPU, half the small suite's time); the default starts each as a user would
IN_PROCESS = False


def _cli(module: str, args: list[str], log: Path) -> int:
    """Run ``python -m module args`` as a user would (or its ``main(args)`` here, with
    ``--in-process``); stdout+stderr to ``log``."""
    with open(log, "w") as f:
        if IN_PROCESS:
            # the threads a started process gets from _env(): the same float sums
            threads, before = int(_env()["OMP_NUM_THREADS"]), torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f), threadpool_limits(limits=threads):
                    return int(importlib.import_module(module).main(args) or 0)
            except SystemExit as e:  # argparse's own exits
                return e.code if isinstance(e.code, int) else 1
            finally:
                torch.set_num_threads(before)
        proc = subprocess.run([sys.executable, "-m", module, *args], stdout=f, stderr=subprocess.STDOUT,
                              env=_env(), cwd=ROOT)
    return proc.returncode


def recipe_text(name: str, source: Path, target: Path, out: Path, runs: list[dict], *,
                epochs: int = 4, audit_run: str | None = None, diagnostics: bool = True,
                source_checkpoint: Path | None = None, channels: int = 1, target_labeled: bool = True) -> str:
    import yaml

    recipe = {
        "name": name, "seed": 0,
        "data": {"source": {"kind": "imagefolder", "path": str(source)},
                 "target": {"kind": "imagefolder", "path": str(target),
                            **({} if target_labeled else {"labeled": False})},
                 "image_size": IMAGE_SIZE, "channels": channels, "num_workers": 0,
                 # half the images held out: the audit's paired tests need a few hundred
                 "split": {"train": 0.5, "val": 0.25, "test": 0.25}},
        "model": {"arch": "small_cnn",
                  **({"source_checkpoint": str(source_checkpoint)} if source_checkpoint else {})},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.003, "patience": None, "threads": 1},
        "method": {"selection": "im", "runs": runs, **({"audit_run": audit_run} if audit_run else {})},
        "diagnostics": {"enabled": diagnostics, "permutations": 200, "max_samples": 400,
                        "attribution": True, "attribution_samples": 200, "umap": False},
        "output": {"dir": str(out)},
    }
    return yaml.safe_dump(recipe, sort_keys=False)


def adapt_run(name: str, work: Path, source: Path, target: Path, runs: list[dict], **kw) -> Path:
    """``adapt-run`` a recipe written to ``work/<name>.yaml``; returns the run folder."""
    path = work / f"{name}.yaml"
    path.write_text(recipe_text(name, source, target, work / "runs", runs, **kw))
    code = _cli("domaingap.adapt_run", [str(path)], work / f"{name}.log")
    if code != 0:
        raise RuntimeError(f"adapt-run {path} exited {code}; see {work / (name + '.log')}")
    return work / "runs" / name


def diagnose_gap(name: str, work: Path, source: Path, target: Path, model: Path | None) -> dict:
    """``diagnose gap`` with ``--json``; returns the JSON document."""
    out = work / f"{name}.json"
    args = ["gap", "--source", str(source), "--target", str(target), "--permutations", "200",
            "--bootstrap", "30", "--max-samples", "600", "--json", str(out), "--quiet"]
    if model is not None:
        args += ["--model", str(model)]
    code = _cli("domaingap.diagnose", args, work / f"{name}.log")
    if code not in (0, 1):
        raise RuntimeError(f"diagnose gap ({name}) exited {code}; see {work / (name + '.log')}")
    return json.loads(out.read_text())


# ----------------------------------------------------------------------------- reading


def gap_different(gap: dict) -> bool:
    """The gap is real when either two-sample test rejects at α (MMD or classifier)."""
    p = [gap["mmd"]["p_value"]]
    if gap.get("classifier_test"):
        p.append(gap["classifier_test"]["p_value"])
    return min(p) < ALPHA


def read_gap_case(doc: dict) -> dict[str, str]:
    out = {"gap": "different" if gap_different(doc["gap"]) else "none"}
    if doc.get("collapse"):
        out["collapse"] = doc["collapse"]["verdict"]
        out["label shift claimed"] = "yes" if out["collapse"] == "label_shift" else "no"
    return out


def read_audit(run_dir: Path) -> dict:
    return json.loads((run_dir / "audit.json").read_text())


def verdict_of(audit: dict, name: str) -> dict:
    return next((v for v in audit["verdicts"] if v["name"] == name), {})


# ----------------------------------------------------------------------------- cases


@dataclass
class Case:
    name: str
    truth: str
    expected: dict[str, str]
    run: Callable[[dict, Path], dict[str, str]]
    small: bool = False
    obtained: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    #: (source, target, runs) of an adapt-run case on a labelled target: its label-hidden twin
    #: (``--hide-labels``, benchmarks/truth_suite_hidden.py)
    hidden: tuple[str, str, list[dict]] | None = None

    @property
    def match(self) -> bool:
        return self.error is None and all(self.obtained.get(k) == v for k, v in self.expected.items())


class Suite:
    """Shared artefacts (data folders, the source model), built once and reused."""

    def __init__(self, work: Path, small: bool):
        self.work = work
        self.small = small
        self._paths: dict[str, Path] | None = None
        self._source_model: Path | None = None

    @property
    def paths(self) -> dict[str, Path]:
        if self._paths is None:
            self._paths = build_data(self.work / "data", small=self.small)
        return self._paths

    @property
    def source_model(self) -> Path:
        """The source-only model: small CNN on ``src_train`` (no adaptation, no audit)."""
        if self._source_model is None:
            run = adapt_run("source", self.work, self.paths["src_train"], self.paths["tgt_clean"],
                            [{"name": "adabn", "adabn": True, "epochs": 0}], diagnostics=False)
            self._source_model = run / "source" / "model.pt"
        return self._source_model

    def gap(self, name: str, target: str, source: str = "src_heldout", model: bool = True) -> dict[str, str]:
        doc = diagnose_gap(name, self.work, self.paths[source], self.paths[target],
                           self.source_model if model else None)
        return read_gap_case(doc)


def read_run_case(audit: dict) -> dict[str, str]:
    """What an audit concluded, in the suite's words."""
    out = {"banner": audit["overall"]["level"]}
    gap = verdict_of(audit, "gap")
    if gap:
        ev = gap.get("evidence") or {}
        out["gap"] = ("none" if ev.get("gap_detected_before") is False else
                      "closed" if ev.get("gap_detected_after") is False else "detected")
    tr = verdict_of(audit, "negative_transfer")
    if tr:
        ev = tr.get("evidence") or {}
        out["transfer"] = ("not needed" if tr["title"] == "Adaptation not needed"
                           else str(ev.get("paired_change", "unpaired")))
    out["usable"] = "no" if verdict_of(audit, "usability") else "yes"
    sp = (((audit.get("before") or {}).get("spurious") or {}).get("source") or {}).get("verdict") or {}
    if sp:
        out["shortcut"] = str(sp.get("level"))
    return out


def run_case(name: str, truth: str, source: str, target: str, runs: list[dict],
             expected: dict[str, str], cue: tuple[str, str] | None = None) -> Case:
    """An ``adapt-run`` case; with ``cue`` = (cued held-out, clean held-out) the suite also
    removes the cue and measures the source model's accuracy drop with ``diagnose gap``."""

    def go(s: Suite, work: Path) -> dict[str, str]:
        run = adapt_run(name, work, s.paths[source], s.paths[target], runs)
        out = read_run_case(read_audit(run))
        if cue is not None:
            doc = diagnose_gap(f"{name}_cue_removed", work, s.paths[cue[0]], s.paths[cue[1]],
                               run / "source" / "model.pt")
            with_cue = doc["metrics"]["source_test"]["accuracy"]
            without = doc["metrics"]["target_test"]["accuracy"]
            out["cue_removed"] = (f"drop {100 * (with_cue - without):.0f} points"
                                  if with_cue - without >= 0.2 else "no large drop")
            out["cue_removed_drop"] = "large" if with_cue - without >= 0.2 else "small"
        return out

    return Case(name, truth, expected, go, hidden=(source, target, runs))


def gap_case(name: str, truth: str, target: str, expected: dict[str, str]) -> Case:
    return Case(name, truth, expected, lambda s, _w: s.gap(name, target), small=True)


CASES: list[Case] = [
    gap_case("no_shift", "held-out digits of the same distribution", "tgt_clean",
             {"gap": "none", "collapse": "no_shift"}),
    gap_case("covariate_shift", "mild scanner change, labels known: predictions lean onto one class",
             "tgt_mild", {"gap": "different", "collapse": "biased", "label shift claimed": "no"}),
    gap_case("collapse_covariate_shift", "strong scanner change: the model predicts one class", "tgt_scanner",
             {"gap": "different", "collapse": "collapsed"}),
    gap_case("covariate_shift_unlabelled", "mild scanner change, labels unknown", "tgt_mild_u",
             {"gap": "different", "collapse": "covariate_shift"}),
    gap_case("label_shift_labelled", "classes 3–9 thinned to 15%, images unchanged, labels known",
             "tgt_labelshift", {"gap": "different", "collapse": "label_shift"}),
    gap_case("label_shift_unlabelled", "classes 3–9 thinned to 15%, images unchanged, labels unknown",
             "tgt_labelshift_u", {"gap": "different", "collapse": "label_shift"}),
    run_case("same_distribution", "two disjoint halves of the digits: nothing to adapt", "src_train", "tgt_clean",
             [{"name": "adabn", "adabn": True, "epochs": 0}],
             {"banner": "ok", "gap": "none", "transfer": "not needed"}),
    run_case("adaptation_helps", "scanner shift that AdaBN undoes", "src_train", "tgt_scanner",
             [{"name": "adabn", "adabn": True, "epochs": 0}],
             {"gap": "detected", "transfer": "helped", "usable": "yes"}),
    run_case("negative_transfer", "DANN with domain weight 100 (default 0.3) aligns a pure label shift away",
             "src_train", "tgt_labelshift_big",
             [{"name": "dann", "objective": "dann", "epochs": 6, "dann": {"weight": 100.0}}],
             {"transfer": "hurt"}),
    run_case("near_chance", "strong scanner shift, MixStyle without AdaBN: still near chance", "src_train",
             "tgt_scanner", [{"name": "mixstyle", "objective": "source_only", "mixstyle": True, "epochs": 1}],
             {"usable": "no"}),
    run_case("learned_shortcut", "a corner cue that encodes the label; removing it must hurt", "cue_src",
             "tgt_clean", [{"name": "adabn", "adabn": True, "epochs": 0}],
             {"shortcut": "fail", "cue_removed_drop": "large"}, cue=("cue_heldout", "src_heldout")),
    run_case("cue_not_used", "the same cue at random: planted, not predictive", "rand_src", "tgt_clean",
             [{"name": "adabn", "adabn": True, "epochs": 0}],
             {"shortcut": "ok", "cue_removed_drop": "small"}, cue=("rand_heldout", "src_heldout")),
]


# ----------------------------------------------------------------------------- main


def run_cases(cases: list[Case], work: Path, small: bool) -> list[Case]:
    suite = Suite(work, small)
    for case in cases:
        t = time.perf_counter()
        try:
            case.obtained = case.run(suite, work)
        except Exception as err:  # a case that crashes is a mismatch, reported, not fatal
            case.error = f"{type(err).__name__}: {err}"
        case.seconds = time.perf_counter() - t
    return cases


def _fmt(d: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def table(cases: list[Case]) -> str:
    lines = ["| case | truth | expected | obtained | match | s |", "| --- | --- | --- | --- | :---: | ---: |"]
    for c in cases:
        got = c.error or _fmt({k: c.obtained.get(k, "—") for k in c.expected})
        lines.append(f"| {c.name} | {c.truth} | {_fmt(c.expected)} | {got} | "
                     f"{'yes' if c.match else '**NO**'} | {c.seconds:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/truth_suite", help="work folder (data, runs, logs)")
    ap.add_argument("--small", action="store_true", help="only the cases without adaptation runs (CI)")
    ap.add_argument("--cases", nargs="*", help="run only these cases")
    ap.add_argument("--keep", action="store_true", help="keep the work folder of an earlier run")
    ap.add_argument("--hide-labels", action="store_true",
                    help="run the adapt-run cases with the target's labels hidden (benchmarks/truth_suite_hidden.py)")
    ap.add_argument("--in-process", action="store_true",
                    help="call adapt-run and diagnose through their main() in this process (the tests: no "
                         "interpreter start per call); by default each runs as its own process, as a user's would")
    args = ap.parse_args(argv)
    global IN_PROCESS
    IN_PROCESS = args.in_process
    work = Path(args.out).resolve()
    if work.exists() and not args.keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    cases = [c for c in CASES if (c.small or not args.small) and (not args.cases or c.name in args.cases)]
    t0 = time.perf_counter()
    if args.hide_labels:
        return _main_hidden(cases, work, t0, args.cases)
    run_cases(cases, work, args.small)
    print(table(cases))
    ok = sum(c.match for c in cases)
    print(f"\n{ok}/{len(cases)} cases match ({time.perf_counter() - t0:.0f} s; work folder {work})")
    return 0 if ok == len(cases) else 1


def _main_hidden(cases: list[Case], work: Path, t0: float, names: list[str] | None) -> int:
    """``--hide-labels``: the label-hidden twins; exit 1 when a verdict is wrong or a case crashes."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import truth_suite_hidden as hidden

    done = hidden.run_hidden_cases(hidden.hidden_cases(cases, names), Suite(work, small=False), work,
                                   sys.modules[__name__])
    print(hidden.hidden_table(done))
    import labelfree_combos as combos

    regrets = hidden.selector_regrets(done, work)
    if regrets:  # which model each run selector would deploy, against the hidden truth
        print(combos.summary_table(regrets, "over each case's models (hidden labels)"))
    bad = sum(c.error is not None or c.obtained["wrong"] for c in done)
    print(f"\n{len(done) - bad}/{len(done)} label-hidden cases without a wrong verdict "
          f"({time.perf_counter() - t0:.0f} s; work folder {work})")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
