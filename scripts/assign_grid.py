"""The assignment grid of issue 18: argmax / label-gate / split / present over oracle regimes,
shots and datasets, with the issue's goals checked per regime.

Runs ``python -m gfsam eval project`` once per (dataset, regime, shots) in a fresh process (each
prints its exact command), keeps every JSON under ``--out`` and prints one markdown table per
dataset with a goal column (``.`` met, a letter per goal missed: m = split mIoU more than 10
points below present, g = more than 1 point below label-gate, r = recall under 0.85 of
present's, c = contamination above half of label-gate's where that is above 5 %, f = false
paint above 0.15). ORACLE encoders only: the figures measure the assignment's logic, never model
quality. Datasets: coco128 ``report`` half (the split's constants were chosen on its ``tune``
half), the FSS-1000 subset (nothing tuned on it), and a synthetic look-alike folder drawn by
``eval draw`` with ``--seed 1`` (the constants were chosen on another draw, seed 0, tune half).

    .venv/bin/python scripts/assign_grid.py --out /tmp/grid [--limit 30] [--full] [--only coco]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import bootstrap  # noqa: F401  (the repository root on sys.path)
from bootstrap import COCO, DATA

CORNERS = [(0.6, 0.0, 0.0), (0.9, 0.2, 0.5)]  # (confuse R, sam-error P, bg-share B)
MODES = ("argmax", "label-gate", "split", "present")


def regimes(full: bool) -> list[tuple[float, float, float, float]]:
    """(class-cos C, R, P, B): the issue's full grid, or its corners (every C x 2 corners)."""
    if full:
        return list(itertools.product((1.0, 0.8, 0.65), (0.6, 0.9), (0.0, 0.2), (0.0, 0.5)))
    return [(c, *rpb) for c in (1.0, 0.8, 0.65) for rpb in CORNERS]


def goals(by: dict[str, Any]) -> str:
    """The issue's goals for split (module docstring: the letters)."""
    s, g, p = by["split"], by["label-gate"], by["present"]
    missed = ""
    missed += "m" if (s["seen_miou"] or 0) < (p["seen_miou"] or 0) - 10 else ""
    missed += "g" if (s["seen_miou"] or 0) < (g["seen_miou"] or 0) - 1 else ""
    missed += "r" if (s["seen_recall"] or 0) < 0.85 * (p["seen_recall"] or 0) else ""
    gc = g["contamination"] or 0
    missed += "c" if gc > 0.05 and (s["contamination"] or 0) > gc / 2 else ""
    missed += "f" if (s["false_paint"] or 0) > 0.15 else ""
    return missed or "."


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=30)
    ap.add_argument("--full", action="store_true", help="all 24 regimes, not the 6 corners")
    ap.add_argument("--only", choices=("coco", "fss", "syn"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    syn = args.out / "synthetic"
    if not (syn / "classes.txt").exists():
        draw = [sys.executable, "-m", "gfsam", "eval", "draw", "--out", str(syn), "--seed", "1"]
        subprocess.run(draw, check=True)
    datasets = {
        "coco": ["--data", str(COCO), "--split", "report", "--seen", "1,3,17,42,46"],
        "fss": ["--data", str(DATA / "fss1000_subset"), "--layout", "fss1000", "--seen", "1,2"],
        "syn": ["--data", str(syn), "--seen", "1,3,5"],
    }
    for name, flags in datasets.items():
        if args.only and name != args.only:
            continue
        rows = []
        for (c, r, p, b), k in itertools.product(regimes(args.full), (1, 3)):
            tag = f"{name}_C{c}_R{r}_P{p}_B{b}_K{k}"
            out = args.out / f"{tag}.json"
            knobs = ["--oracle-noise", "0.1", "--oracle-class-cos", str(c)]
            knobs += ["--oracle-confuse", str(r), "--oracle-sam-error", str(p)]
            knobs += ["--oracle-bg-share", str(b)]
            cmd = [sys.executable, "-m", "gfsam", "eval", "project", *flags, *knobs]
            cmd += ["--assign", ",".join(MODES), "--shots", str(k), "--limit", str(args.limit)]
            cmd += ["--json", str(out)]
            if not out.exists():
                print("$", shlex.join(cmd), flush=True)
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            by = json.loads(out.read_text())["by_assign"]
            rows.append((c, r, p, b, k, by))
        print(f"\n{name} (oracle encoders: the assignment's logic, NOT model quality)")
        print(
            "| C | R | P | B | K | seen mIoU: argmax / gate / split / present | recall | "
            "false paint | contamination | goals |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for c, r, p, b, k, by in rows:

            def cells(key: str, pct: bool, by: dict[str, Any] = by) -> str:
                vals = [by[m][key] for m in MODES]
                fmt = [
                    ("-" if v is None else f"{100 * v:.1f}" if pct else f"{v:.1f}") for v in vals
                ]
                return " / ".join(fmt)

            print(
                f"| {c} | {r} | {p} | {b} | {k} | {cells('seen_miou', False)} | "
                f"{cells('seen_recall', True)} | {cells('false_paint', True)} | "
                f"{cells('contamination', True)} | {goals(by)} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
