"""Clean geometry measured (issue 20): defects per 100 regions in what an assignment paints,
before and after `gfsam.geometry.clean_regions`, and the cleaned assignment to score, so the IoU
cost is measured on the same predictions (`eval project --geometry`).

On the oracle encoders the defects come from `--oracle-sam-error` (parts, merges, bleeds) and
from the assignment cutting masks; the figures measure our logic, not a model's masks.
"""

from __future__ import annotations

import dataclasses

from gfsam.assign import Assignment
from gfsam.geometry import NO_DEFECTS, Defects, GeometryParams, clean_regions, count_defects


class GeometryScore:
    """Defects of the regions painted over targets, before and after cleaning."""

    def __init__(self, params: GeometryParams) -> None:
        self.params = params
        self.before = NO_DEFECTS
        self.after = NO_DEFECTS

    def clean(self, asg: Assignment) -> Assignment:
        """Count `asg`'s defects, clean each label's instances, count again; the cleaned
        assignment (a duplicate joins its host; a region left empty is dropped)."""
        accepted = {}
        for label, insts in asg.accepted.items():
            masks = [i.mask.copy() for i in insts]
            self.before += count_defects([i.mask for i in insts], self.params)
            kept = clean_regions(masks, self.params)
            cleaned = [dataclasses.replace(insts[k], mask=masks[k]) for k in kept]
            self.after += count_defects([i.mask for i in cleaned], self.params)
            accepted[label] = cleaned
        return Assignment(accepted=accepted, candidates=asg.candidates)

    def numbers(self) -> dict[str, dict[str, float | int]]:
        """``before`` / ``after``: regions and each defect kind per 100 regions."""
        return {"before": _per100(self.before), "after": _per100(self.after)}


def _per100(d: Defects) -> dict[str, float | int]:
    scale = 100.0 / d.regions if d.regions else 0.0
    return {
        "regions": d.regions,
        "specks": round(d.specks * scale, 2),
        "slivers": round(d.slivers * scale, 2),
        "holes": round(d.holes * scale, 2),
        "duplicates": round(d.duplicates * scale, 2),
    }
