"""Which run should be deployed when the target has no labels? Every run selector's regret,
pooled over every label-hidden case set this project has (issue 17, item 2).

    python benchmarks/run_selection_study.py [--study runs/labelfree_study]
                                             [--study-hidden runs/labelfree_study_hidden]
                                             [--truth runs/truth_suite_hidden]

Reads what the three studies left (nothing is trained here):

* ``labelfree_study.json`` of ``benchmarks/labelfree_study.py`` (10 cases: 5 shifts × 2
  seeds, seven models each; the run saw the target labels, the selectors did not),
* ``labelfree_study_hidden.json`` of ``labelfree_study.py --hide-labels`` (the same shifts,
  the labels hidden from ``adapt-run`` too: other splits, other models),
* the work folder of ``truth_suite.py --hide-labels`` (9 cases, three or four models each:
  the source model, the case's run and the cheap peers),

and scores every single and combined selector of :mod:`labelfree_combos` on every case:
regret = best true accuracy among the case's models − that of the pick (points). Per set
and pooled: mean and worst; against ``im`` (the tool's run ranking before this study) a
95 % paired bootstrap interval; and **leave one set out**: for each set, the selector with
the lowest pooled mean regret on the two other sets, applied to it — the figure for
"choose the default by measured regret" that no set chooses for itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(Path(__file__).resolve().parent))

import labelfree_combos as combos  # noqa: E402
from labelfree_study import estimator_errors  # noqa: E402

BASE = "im"
#: the rule ``method.deploy: estimate`` (the default) applies (diagnostics.ranking.rank_by_estimate);
#: ``deploy: reverse_validation`` trains a network per model and is scored from the saved
#: models by ``reverse_validation_study.py``
TOOL_RULE = "labelshift>estimate"


def study_regrets(path: Path) -> dict[str, dict[tuple, float]]:
    """{selector: {case: regret}} of one label-free study's JSON (its rows and verdict rows);
    the agreement band of each shift measured on the other shifts, as the study does."""
    doc = json.loads(path.read_text())
    rows, verdicts = doc["rows"], doc["verdict_rows"]
    shifts = {r["shift"] for r in rows}
    bands = {s: estimator_errors([r for r in rows if r["shift"] != s])["agreement"]["change_abs_error_p90"]
             for s in shifts}
    return combos.run_regrets(rows, bands, verdicts)


def truth_regrets(work: Path) -> dict[str, dict[tuple, float]]:
    import truth_suite_hidden as hidden

    cases = [hidden.HiddenCase(p.name[: -len("_hidden_scores.json")], "", "", "", [{"name": ""}])
             for p in sorted((work / "hidden").glob("*_hidden_scores.json"))]
    return hidden.selector_regrets(cases, work)


def study_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"]


def truth_rows(work: Path) -> list[dict]:
    import truth_suite_hidden as hidden

    rows = []
    for p in sorted((work / "hidden").glob("*_hidden_scores.json")):
        got = hidden.hidden_case_rows(work, p.name[: -len("_hidden_scores.json")])
        rows += got[0] if got else []
    return rows


def two_model_regrets(rows: list[dict]) -> np.ndarray:
    """Every (case, run) pair of a one-run recipe: regret of always deploying the run and of
    the tool's ranking over the two (:data:`TOOL_RULE`: COT for two models, the source model
    under a pure label shift). [pairs, 2]."""
    got = combos.one_run_regrets(rows, (TOOL_RULE,))
    return np.column_stack([got["always the run"], got[TOOL_RULE]])


def pooled_table(sets: dict[str, dict[str, dict[tuple, float]]]) -> tuple[str, dict[str, dict]]:
    rules = sorted(set.intersection(*(set(r) for r in sets.values())))
    out: dict[str, dict] = {}
    for rule in rules:
        allv = [x for s in sets.values() for x in s[rule].values()]
        out[rule] = {name: (float(np.mean(list(s[rule].values()))), float(np.max(list(s[rule].values()))))
                     for name, s in sets.items()}
        out[rule]["pooled"] = (float(np.mean(allv)), float(np.max(allv)))
    head = "| selector | " + " | ".join(f"{n} mean / worst" for n in (*sets, "pooled")) + " | target met |"
    lines = [head, "| --- | " + " | ".join("---:" for _ in (*sets, "pooled")) + " | :---: |"]
    for rule in sorted(out, key=lambda r: out[r]["pooled"]):
        cells = [f"{100 * m:.1f} / {100 * w:.1f}" for m, w in out[rule].values()]
        ok = "yes" if out[rule]["pooled"][0] <= 0.02 and out[rule]["pooled"][1] <= 0.05 else "no"
        lines.append(f"| {rule} | " + " | ".join(cells) + f" | {ok} |")
    return "\n".join(lines), out


def leave_one_set_out(sets: dict[str, dict[str, dict[tuple, float]]]) -> tuple[dict[str, str], list[float]]:
    rules = sorted(set.intersection(*(set(r) for r in sets.values())))
    chosen, regrets = {}, []
    for held in sets:
        def score(rule: str) -> tuple[float, float]:
            v = [x for n, s in sets.items() if n != held for x in s[rule].values()]
            return (float(np.mean(v)), float(np.max(v)))
        best = min(rules, key=score)
        chosen[held] = best
        regrets += list(sets[held][best].values())
    return chosen, regrets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="runs/labelfree_study")
    ap.add_argument("--study-hidden", default="runs/labelfree_study_hidden")
    ap.add_argument("--truth", default="runs/truth_suite_hidden")
    args = ap.parse_args(argv)
    sets = {"study": study_regrets(Path(args.study) / "labelfree_study.json"),
            "study, labels hidden": study_regrets(Path(args.study_hidden) / "labelfree_study_hidden.json"),
            "truth suite, labels hidden": truth_regrets(Path(args.truth))}
    # prefix the case keys by set: the same shift name means other models in each set
    sets = {n: {rule: {(n, *k): v for k, v in r.items()} for rule, r in s.items()} for n, s in sets.items()}
    text, table = pooled_table(sets)
    print("## Run selection regret (points; best true accuracy of a case's models − the pick's)\n")
    print(text)
    chosen, loso = leave_one_set_out(sets)
    print(f"\nleave one set out: chosen {chosen}; regret mean {100 * np.mean(loso):.1f}, worst {100 * np.max(loso):.1f} "
          f"over {len(loso)} cases")
    pooled = {rule: {k: v for s in sets.values() for k, v in s[rule].items()} for rule in table}
    print(f"\nagainst {BASE} on the same {len(pooled[BASE])} cases (mean regret difference, 95 % paired bootstrap):")
    for rule in sorted(table, key=lambda r: table[r]["pooled"]):
        if rule != BASE:
            p = combos.paired(pooled[rule], pooled[BASE])
            print(f"  {rule} − {BASE}: {100 * p['mean']:+.1f} [{100 * p['ci_low']:+.1f}, {100 * p['ci_high']:+.1f}]")
    if TOOL_RULE in pooled and "estimate" in pooled:
        p = combos.paired(pooled[TOOL_RULE], pooled["estimate"])
        differ = sum(abs(pooled[TOOL_RULE][k] - pooled["estimate"][k]) > 1e-12 for k in pooled["estimate"])
        print(f"\n{TOOL_RULE} − estimate: {100 * p['mean']:+.1f} [{100 * p['ci_low']:+.1f}, {100 * p['ci_high']:+.1f}] "
              f"({differ} of {len(pooled['estimate'])} cases differ)")
    # each set's cases apart (the same shift name means other models in each set)
    tag = lambda rows, name: [{**r, "shift": f"{name}/{r['shift']}"} for r in rows]  # noqa: E731
    rows = (tag(study_rows(Path(args.study) / "labelfree_study.json"), "study")
            + tag(study_rows(Path(args.study_hidden) / "labelfree_study_hidden.json"), "hidden")
            + tag(truth_rows(Path(args.truth)), "truth"))
    for title, keep in (("every run", rows),
                        # the misconfigured runs (domain weight 30, lr 0.3) were built to hurt
                        ("without the misconfigured runs", [r for r in rows if r["model"] != "dann-hurt"])):
        pairs = two_model_regrets(keep)
        d = pairs[:, 1] - pairs[:, 0]
        rng = np.random.default_rng(0)
        boot = [rng.choice(d, len(d)).mean() for _ in range(2000)]
        print(f"\none run, {title} (source model + that run, {len(pairs)} pairs): always the run "
              f"{100 * pairs[:, 0].mean():.1f} / {100 * pairs[:, 0].max():.1f}, {TOOL_RULE} {100 * pairs[:, 1].mean():.1f} / "
              f"{100 * pairs[:, 1].max():.1f} (mean / worst); difference {100 * d.mean():+.1f} "
              f"[{100 * np.quantile(boot, 0.025):+.1f}, {100 * np.quantile(boot, 0.975):+.1f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
