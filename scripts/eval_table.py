"""The quality table of issue 17: four assign modes x oracle knob settings x shots x datasets.

Runs ``python -m gfsam eval project`` once per (dataset, knob setting, shots) in a fresh process
(each run prints its exact command), keeps every JSON under ``--out``, and prints one markdown
table per dataset. Oracle encoders only: the figures measure the pipeline's logic, never model
quality. coco128 is scored on its ``report`` half (constants were set on coco128 before the halves
existed: see README "Measuring quality"); the FSS-1000 subset was never used to set anything.

    .venv/bin/python scripts/eval_table.py --out /tmp/table [--limit 40] [--only coco]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import bootstrap  # noqa: F401  (the repository root on sys.path)
from bootstrap import COCO, DATA, REPO

# knob settings: name -> flags (noise 0.1 everywhere: tokens are never exact)
SETTINGS: dict[str, list[str]] = {
    "easy": ["--oracle-noise", "0.1", "--oracle-confuse", "0.6"],
    "C0.8 B0.5 P0.2 R0.6": [
        "--oracle-noise",
        "0.1",
        "--oracle-confuse",
        "0.6",
        "--oracle-class-cos",
        "0.8",
        "--oracle-bg-share",
        "0.5",
        "--oracle-sam-error",
        "0.2",
    ],
    "C0.6 B0.8 P0.4 R0.95": [
        "--oracle-noise",
        "0.1",
        "--oracle-confuse",
        "0.95",
        "--oracle-class-cos",
        "0.6",
        "--oracle-bg-share",
        "0.8",
        "--oracle-sam-error",
        "0.4",
    ],
}
# dataset -> (flags, discovery on): coco128's report half with its 5 most frequent classes
# there as labels (person, car, dog, cup, bowl; cup and bowl are even classes: with --oracle-
# confuse they look like wine glass and spoon, which are not labels); the FSS-1000 subset
# (apple, basketball: one class per image, so each label is absent from half the images).
DATASETS: dict[str, tuple[list[str], bool]] = {
    "coco": (["--data", str(COCO), "--split", "report", "--seen", "1,3,17,42,46"], True),
    "fss": (
        ["--data", str(DATA / "fss1000_subset"), "--layout", "fss1000", "--seen", "1,2"],
        False,
    ),
}
MODES = "argmax,label-gate,split,present"
COLUMNS = (
    ("seen_miou", "seen mIoU", False),
    ("seen_recall", "recall", True),
    ("false_paint", "false paint", True),
    ("background_paint", "bg paint", True),
    ("contamination", "contam.", True),
    ("reject_seen", "rej. seen", True),
    ("reject_unseen", "rej. unseen", True),
)


def run(name: str, flags: list[str], out: Path) -> dict[str, Any]:
    cmd = [".venv/bin/python", "-m", "gfsam", "eval", "project", *flags, "--json", str(out)]
    print("$ " + shlex.join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True, stderr=subprocess.DEVNULL)
    result: dict[str, Any] = json.loads(out.read_text())
    result["command"] = shlex.join(cmd)
    result["setting"] = name
    return result


def cell(value: float | None, pct: bool) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if pct else f"{value:.1f}"


def table(results: list[dict[str, Any]]) -> list[str]:
    head = "| knobs | K | assign | " + " | ".join(c for _, c, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (3 + len(COLUMNS))]
    for res in results:
        for mode, n in res["by_assign"].items():
            label = {"none": "none (do nothing)", "present": "present (oracle UB)"}.get(mode, mode)
            cells = " | ".join(cell(n[k], pct) for k, _, pct in COLUMNS)
            lines.append(f"| {res['setting']} | {res['shots']} | {label} | {cells} |")
    return lines


def compact(results: list[dict[str, Any]]) -> list[str]:
    """One row per (knobs, K): each metric as argmax / label-gate / split / present (UB)."""
    modes = ("argmax", "label-gate", "split", "present")
    keys = (
        ("seen_miou", "seen mIoU", False),
        ("seen_recall", "recall %", True),
        ("false_paint", "false paint %", True),
        ("contamination", "contamination %", True),
    )
    head = "| knobs | K | " + " | ".join(f"{name}: {' / '.join(modes)}" for _, name, _ in keys)
    lines = [head + " |", "|" + "---|" * (2 + len(keys))]
    for res in results:
        by = res["by_assign"]
        cells = [" / ".join(cell(by[m][k], pct) for m in modes) for k, _, pct in keys]
        lines.append(f"| {res['setting']} | {res['shots']} | " + " | ".join(cells) + " |")
    return lines


def discovery(results: list[dict[str, Any]]) -> list[str]:
    keys = (
        "candidate_recall",
        "candidate_precision",
        "candidates_per_image",
        "candidate_iou_median",
        "group_ari",
        "singleton_ari",
        "group_nmi",
        "singleton_nmi",
        "classes_multi_hit",
    )
    lines = ["| knobs | K | " + " | ".join(keys) + " |", "|" + "---|" * (2 + len(keys))]
    for res in results:
        d = res.get("discovery") or {}
        vals = " | ".join("-" if d.get(k) is None else f"{d[k]:.3g}" for k in keys)
        lines.append(f"| {res['setting']} | {res['shots']} | {vals} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=40, help="targets per run")
    parser.add_argument("--only", choices=sorted(DATASETS), help="one dataset")
    parser.add_argument("--shots", default="1,3")
    parser.add_argument(
        "--render", action="store_true", help="only print the tables of the JSONs in --out"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for ds, (flags, discover) in DATASETS.items():
        if args.only and ds != args.only:
            continue
        results = []
        for name, knobs in SETTINGS.items():
            for k in args.shots.split(","):
                extra = ["--assign", MODES, "--shots", k, "--limit", str(args.limit)]
                extra += ["--discover"] if discover else []
                slug = f"{ds}_{name.replace(' ', '_')}_{k}shot.json"
                if args.render:
                    result = json.loads((args.out / slug).read_text())
                    results.append(result | {"setting": name})
                else:
                    results.append(run(name, [*flags, *knobs, *extra], args.out / slug))
        print(f"\n### {ds} (oracle encoders: the pipeline's logic, NOT model quality)\n")
        print("\n".join(table(results)))
        print("\n".join(["", *compact(results)]))
        if discover:
            print(f"\n{ds} discovery after split:\n")
            print("\n".join(discovery(results)))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
