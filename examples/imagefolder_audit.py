"""Your own folders, A -> B, with the audit: the recipe run from Python.

Writes two ImageFolder domains (``<root>/<class>/<image>.png``: here tiny phantom
chest X-rays of two scanner sites, as ``diagnose phantom`` writes them; put your own
folders there instead), adapts a small CNN from A to B with AdaBN and DANN, and writes
the audit. Run:  python examples/imagefolder_audit.py --out runs/example
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adapt import Recipe, run
from adapt.data import write_phantom


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/example", help="folder for the data and the run")
    parser.add_argument("--n", type=int, default=60, help="images per site")
    args = parser.parse_args(argv)
    out = Path(args.out)

    site_a = write_phantom(out / "data" / "site_a", "A", args.n, seed=0, image_size=32)
    site_b = write_phantom(out / "data" / "site_b", "B", args.n, seed=1, image_size=32)

    recipe = Recipe(name="a_to_b")
    result = run(recipe, {
        "data.source": {"kind": "imagefolder", "path": str(site_a)},
        "data.target": {"kind": "imagefolder", "path": str(site_b)},
        "data.image_size": 32,
        "train.epochs": 1,
        "train.batch_size": 16,
        "method.runs": [{"name": "adabn", "adabn": True, "epochs": 0},
                        {"name": "dann", "objective": "dann", "epochs": 1}],
        # small and quick: gradcam attributions, few permutations, no UMAP
        "diagnostics.permutations": 50,
        "diagnostics.max_samples": 20,
        "diagnostics.attribution_method": "gradcam",
        "diagnostics.attribution_samples": 10,
        "diagnostics.umap": False,
        "output.dir": str(out / "runs"),
    }, overwrite=True)

    for row in result.comparison:
        acc = row.get("target_acc")
        print(f"{row['model']:<12} target accuracy {'?' if acc is None else f'{acc:.2f}'}")
    for verdict in result.verdicts:
        print(f"[{verdict['level']}] {verdict['title']}: {verdict['summary']}")
    print(f"audit: {result.audit_html}")


if __name__ == "__main__":
    main()
