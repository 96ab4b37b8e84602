"""The package's shape: imports go one way, down the layers of docs/architecture.md.

The import graph of every module of ``adapt`` and ``diagnostics`` is read with ``ast``
(module-level, in-function and ``TYPE_CHECKING`` imports alike: a late import is still a
dependency) and checked for circles and for imports from a lower layer to a higher one.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("adapt", "diagnostics", "domaingap")

#: (prefix, layer, side). A module belongs to the row with its longest matching prefix
#: (a prefix matches the module itself and everything below it). A module may import
#: one of a lower layer, or of its own layer and side. Training and measurement share
#: layer 1 on different sides, so neither imports the other. The folders are the layers:
#: ``adapt/`` the base and training, ``diagnostics/`` measurement, ``domaingap/`` the
#: orchestration, ordered runs < run_audit < pipeline < sweep < the two commands.
LAYERS: list[tuple[str, int, str]] = [
    # 0. base: both sides use it
    ("adapt", 0, "base"),  # below adapt: every module is listed here (the package root is PACKAGE_ROOTS')
    ("adapt.version", 0, "base"),  # __version__
    ("adapt.lazy", 0, "base"),  # the packages' names imported on first use
    ("adapt.selectors", 0, "base"),  # the selector names and the score each maximises
    ("adapt.errors", 0, "base"),
    ("adapt.io", 0, "base"),
    ("adapt.cli_args", 0, "base"),  # argparse: one-line errors, bounded numbers
    ("adapt.paths", 0, "base"),  # outputs never onto inputs
    ("adapt.environment", 0, "base"),
    ("adapt.device", 0, "base"),
    ("adapt.progress", 0, "base"),
    ("adapt.recipe", 0, "base"),
    ("adapt.recipe_text", 0, "base"),  # YAML that refuses a repeated key; key.path=value overrides
    ("adapt.fingerprint", 0, "base"),
    ("adapt.method_options", 0, "base"),  # a run's objective and options, the ewc section
    ("adapt.method_registry", 0, "base"),  # the registered objectives (their files fill it)
    ("adapt.fairness_config", 0, "base"),  # the recipe's train.fairness / train.guard sections
    ("adapt.group_metrics", 0, "base"),  # per-group metrics by fairlearn (optional extra)
    ("adapt.few_labels_options", 0, "base"),  # MME's section, the few-target-labels recipe checks
    ("adapt.multisource_options", 0, "base"),  # the recipe's multi-source keys
    ("adapt.data", 0, "base"),
    ("adapt.models", 0, "base"),
    ("adapt.evaluate", 0, "base"),
    ("adapt.export", 0, "base"),
    # pure label-free accuracy estimators (numpy, POT): the audit and checkpoint selection use them
    ("adapt.accuracy_estimation", 0, "base"),
    # 1. training
    ("adapt.batch_order", 1, "training"),
    ("adapt.train", 1, "training"),
    ("adapt.strategies", 1, "training"),
    ("adapt.methods", 1, "training"),
    ("adapt.selection", 1, "training"),
    ("adapt.mixval", 1, "training"),
    ("adapt.reverse_validation", 1, "training"),  # fits a small network per model (the deployment rule)
    ("adapt.distributed", 1, "training"),
    ("adapt.fairness", 1, "training"),  # group DRO, parity penalties in the loop
    ("adapt.guard", 1, "training"),  # the per-epoch guard: rollback or stop
    # 1. measurement: statistics, features, attribution, audit, report
    ("diagnostics", 1, "measurement"),
    # 2.-6. orchestration: everything under domaingap/
    ("domaingap", 2, "orchestration"),
    ("domaingap.runs", 2, "orchestration"),  # a run's domains, outcomes, the deployed model's BN
    ("domaingap.comparison", 2, "orchestration"),  # the comparison table of a finished run
    ("domaingap.run_folder", 2, "orchestration"),
    ("domaingap.own_model", 2, "orchestration"),  # adapt_model: one method run on a user's nn.Module
    ("domaingap.data_audit_run", 2, "orchestration"),  # diagnose data; the audit's Data section
    ("domaingap.fairness_run", 2, "orchestration"),  # train.fairness / train.guard in a run
    ("domaingap.source_weights", 2, "orchestration"),  # each source's gap to the target, its weight
    ("domaingap.source_contribution", 2, "orchestration"),  # leave one source out, label-free
    ("domaingap.run_audit", 3, "orchestration"),
    ("domaingap.model_audit", 3, "orchestration"),  # audit_models: two models, two domains
    ("domaingap.pipeline", 4, "orchestration"),
    ("domaingap.sweep_storage", 2, "orchestration"),  # a sweep's storage URL: scheme, driver, timeout
    ("domaingap.sweep", 5, "orchestration"),  # runs the pipeline once per trial
    ("domaingap.drift_report", 5, "orchestration"),  # diagnose drift-report: a run's drift history page
    ("domaingap.experiment", 5, "orchestration"),  # run / load_run: the pipeline from Python
    ("domaingap.adapt_run", 6, "orchestration"),  # the adapt-run command
    ("domaingap.diagnose", 6, "orchestration"),  # the diagnose command
]

#: 7. the Python API: each package's ``__init__`` re-exports public names of any layer,
#: imported on first use from its ``LAZY_EXPORTS`` table (read here as imports), so that
#: ``import adapt.errors`` stays cheap and no module below may import a package root.
PACKAGE_ROOTS: dict[str, tuple[int, str]] = {"adapt": (7, "api"), "diagnostics": (7, "api")}

LINE_LIMIT = 500


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _lazy_exports(node: ast.AST) -> list[str]:
    """The module names of a ``LAZY_EXPORTS = {name: "module", ...}`` table."""
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if any(isinstance(t, ast.Name) and t.id == "LAZY_EXPORTS" for t in targets) and \
                isinstance(node.value, ast.Dict):
            return [v.value for v in node.value.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return []


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports, anywhere in the file (a package's
    ``LAZY_EXPORTS`` table included)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if _lazy_exports(node):
            targets = _lazy_exports(node)
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from pkg import sub`` imports the module pkg.sub when there is one
            # (Python runs pkg/__init__ first, but that is the package's own business);
            # ``from pkg import name`` imports pkg
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # ``import a.b.c`` of a name inside a module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _layer(module: str) -> tuple[int, str]:
    if module in PACKAGE_ROOTS:
        return PACKAGE_ROOTS[module]
    best = max((p for p in LAYERS if module == p[0] or module.startswith(p[0] + ".")),
               key=lambda p: len(p[0]), default=None)
    assert best is not None, f"{module}: not in the layer table; add it"
    return best[1], best[2]


def _allowed(importer: str, imported: str) -> bool:
    (li, si), (lj, sj) = _layer(importer), _layer(imported)
    return lj < li or (lj == li and sj == si)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _violations(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(a, b) for a, targets in graph.items() for b in targets if not _allowed(a, b)}


#: linter pragmas say nothing about why an import is late
_PRAGMA = re.compile(r"noqa(:\s*[A-Z]+[0-9]+(\s*,\s*[A-Z]+[0-9]+)*)?|type:\s*ignore(\[[^\]]*\])?|pragma:\s*no cover")


def _unexplained_late_imports(source: str) -> list[int]:
    """The lines of the in-function imports (inside a ``def``) that carry no comment saying
    why they are late. An import is explained by a comment (not only a linter pragma) on one
    of its own lines, or on the line directly above the block of consecutive imports it is in
    (above the ``try:`` when the block opens a ``try`` body)."""
    comments = {tok.start[0]: tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT and re.search(r"\w", _PRAGMA.sub("", tok.string.lstrip("#")))}
    lines = source.splitlines()

    def above(lineno: int) -> bool:
        return lineno - 1 in comments and lines[lineno - 2].lstrip().startswith("#")

    tree = ast.parse(source)
    late = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    found = []
    for parent in ast.walk(tree):
        for field, body in ast.iter_fields(parent):
            if not isinstance(body, list):
                continue
            for i, node in enumerate(body):
                if id(node) not in late:
                    continue
                start = i  # up the block to its comment line, if any
                while not above(body[start].lineno) and start \
                        and isinstance(body[start - 1], (ast.Import, ast.ImportFrom)):
                    start -= 1
                explained = any(k in comments for k in range(node.lineno, node.end_lineno + 1)) \
                    or above(body[start].lineno) \
                    or (start == 0 and isinstance(parent, ast.Try) and field == "body" and above(parent.lineno))
                if not explained:
                    found.append(node.lineno)
    return sorted(found)


# --------------------------------------------------------------------------- the checker itself


def test_checker_finds_a_circle_and_an_upward_import():
    graph = {"adapt.io": {"adapt.errors"}, "adapt.errors": {"adapt.io"},  # a circle
             "adapt.models": {"adapt.train"},  # base -> training: upward
             "adapt.train": {"diagnostics.gap"},  # training -> measurement: sideways
             "domaingap.pipeline": {"domaingap.runs", "domaingap.run_audit"}}  # fine
    assert _cycles(graph) == [["adapt.errors", "adapt.io"]]
    assert _violations(graph) == {("adapt.models", "adapt.train"), ("adapt.train", "diagnostics.gap")}


def test_checker_reads_late_relative_and_type_only_imports(tmp_path):
    pkg = tmp_path / "adapt"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from adapt.b import X\n"
        "def f():\n    from . import c\n    import adapt.d.e\n"
    )
    known = {"adapt", "adapt.a", "adapt.b", "adapt.c", "adapt.d", "adapt.d.e"}
    assert _imports("adapt.a", pkg / "a.py", known) == {"adapt.b", "adapt.c", "adapt.d.e"}


def test_checker_reads_a_lazy_export_table(tmp_path):
    init = tmp_path / "__init__.py"
    init.write_text('LAZY_EXPORTS = {"run": "domaingap.experiment", "x": "adapt.io"}\n')
    known = {"adapt", "domaingap.experiment", "adapt.io"}
    assert _imports("adapt", init, known) == {"domaingap.experiment", "adapt.io"}
    # a base module importing a package root is upward: roots sit above everything
    assert _violations({"adapt.io": {"adapt"}}) == {("adapt.io", "adapt")}


def test_checker_finds_a_late_import_without_a_reason():
    source = (
        "import json\n"  # module level: no comment needed
        "def f():\n"
        "    import torch  # late: seconds to import\n"  # 3: its own line
        "    # late: optional extra\n"
        "    import onnx\n"  # 5: the block's comment
        "    import onnxruntime\n"  # 6: the block's comment
        "    x = 1\n"
        "    import pathlib\n"  # 8: no comment
        "    import yaml  # noqa: F401\n"  # 9: a pragma says nothing
        "    # late: optional extra\n"
        "    try:\n"
        "        import optuna\n"  # 12: the comment above its try
        "    except ImportError:\n"
        "        import re\n"  # 14: no comment
        "    def g():\n"
        "        from os import path\n"  # 16: nested, no comment
    )
    assert _unexplained_late_imports(source) == [8, 9, 14, 16]


# --------------------------------------------------------------------------- the package


def test_every_module_has_a_layer():
    for module in _graph():
        _layer(module)


def test_no_import_circles():
    assert _cycles(_graph()) == []


def test_imports_only_go_down_the_layers():
    found = _violations(_graph())
    assert not found, "imports against the layers:\n" + "\n".join(
        f"  {a} ({_layer(a)[1]} {_layer(a)[0]}) imports {b} ({_layer(b)[1]} {_layer(b)[0]})"
        for a, b in sorted(found))


def test_the_folders_are_the_layers():
    """``ls`` shows the architecture: nothing under adapt/ or diagnostics/ imports the
    orchestration (domaingap/), nothing under adapt/ imports diagnostics/, and every
    orchestration module lives in domaingap/ — only the packages' API tables (``__init__``,
    layer 7) reach across."""
    graph = _graph()
    wrong = sorted((a, b) for a, targets in graph.items() if a not in PACKAGE_ROOTS for b in targets
                   if (a.startswith(("adapt.", "diagnostics.")) and b.split(".")[0] == "domaingap")
                   or (a.startswith("adapt.") and b.split(".")[0] == "diagnostics"))
    assert not wrong, f"imports across the folders' layers: {wrong}"
    misplaced = sorted(m for m in graph if m not in PACKAGE_ROOTS
                       and (_layer(m)[1] == "orchestration") != m.startswith("domaingap"))
    assert not misplaced, f"orchestration belongs in domaingap/, nothing else does: {misplaced}"


def test_every_late_import_says_why():
    """An import inside a function is there to save start-up time (a heavy or optional
    package only some commands need) or to break a circle, and a comment says which;
    anything else belongs at the top of the module (docs/architecture.md)."""
    found = [f"{path.relative_to(ROOT).as_posix()}:{line}" for path in _modules().values()
             for line in _unexplained_late_imports(path.read_text())]
    assert not found, "in-function imports without a comment saying why (move them up, or say why):\n  " \
        + "\n  ".join(found)


def test_no_source_file_over_the_line_limit():
    over = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            n = len(path.read_text().splitlines())
            if n > LINE_LIMIT:
                over[rel] = n
    assert not over, f"files over {LINE_LIMIT} lines (split them by concern): {over}"
