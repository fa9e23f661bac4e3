"""Evaluation data: a label-map folder, and adapters for the official few-shot layouts.

Every dataset becomes a `Dataset`: `Item`s (image + label map) and class names. A label map is
int32 [H, W]: 0 = background, 255 = ignore (unless the class ids go above 254), k = class k.

Layouts read:
- **label-map folder** (ours): ``DIR/images/<name>.jpg|png``, ``DIR/masks/<name>.png`` (uint8 or
  uint16 class id per pixel), optional ``DIR/classes.txt``: line k is the name of class k + 1,
  or ``<idx>\\t<name>`` lines with a 0-based idx (COCO style, class = idx + 1).
- **FSS-1000**: ``ROOT/<class>/<n>.jpg`` + ``<n>.png`` (official) or
  ``ROOT/images/<class>/<n>.jpg`` + ``ROOT/masks/<class>/<n>.png``; binary masks (>= 128).
- **COCO-20i** (HSNet): label maps ``annotations/val2014/COCO_val2014_<id>.png`` (class idx + 1)
  with the fold lists of ``splits/coco/val/fold<i>.pkl``, or a TSV with the columns
  ``image_id class_idx fold`` resolved into a label-map folder (``coco20i_val_overlap.tsv``).
- **PASCAL-5i** (HSNet): ``VOC2012/JPEGImages``, ``VOC2012/SegmentationClassAug`` and
  ``splits/pascal/val/fold<i>.txt`` lines ``<name>__<class>``.
"""

from __future__ import annotations

import csv
import hashlib
import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from gfsam.image import load_mask

IGNORE = 255
HALVES = ("tune", "report", "all")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
COCO_FOLDS, PASCAL_FOLDS = 4, 4


@dataclass(frozen=True)
class Item:
    """One image and its label map.

    Attributes:
        key: unique name inside the dataset.
        image: path of the RGB image.
        mask: path of the label map (or of a binary mask when `fixed_class` is set).
        fixed_class: for binary-mask datasets (FSS-1000): the class id of the foreground.
    """

    key: str
    image: Path
    mask: Path
    fixed_class: int | None = None


@dataclass
class Dataset:
    """Items, class names and the classes each item holds (filled lazily by `classes_of`)."""

    items: list[Item]
    names: dict[int, str]
    fold_classes: list[int] | None = None
    _present: dict[str, frozenset[int]] = field(default_factory=dict, repr=False)

    def classes_of(self, item: Item) -> frozenset[int]:
        """Class ids present in an item's label map (background and ignore excluded)."""
        if item.key not in self._present:
            if item.fixed_class is not None:
                self._present[item.key] = frozenset({item.fixed_class})
            else:
                ids = np.unique(load_labels(item))
                self._present[item.key] = frozenset(int(i) for i in ids if i not in (0, IGNORE))
        return self._present[item.key]

    def by_class(self, classes: Iterable[int] | None = None) -> dict[int, list[Item]]:
        """class id -> the items holding it (item order kept), for `classes` or all."""
        wanted = None if classes is None else set(classes)
        out: dict[int, list[Item]] = {}
        for item in self.items:
            for c in sorted(self.classes_of(item)):
                if wanted is None or c in wanted:
                    out.setdefault(c, []).append(item)
        return out


def load_labels(item: Item) -> np.ndarray:
    """The label map of an item.

    Returns:
        int32 [H, W]: class ids, 0 background, 255 ignore.
    """
    if item.fixed_class is not None:
        return load_mask(item.mask).astype(np.int32) * item.fixed_class
    with Image.open(item.mask) as img:
        if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
            raise ValueError(f"label map {item.mask} must be single-channel, got mode {img.mode}")
        return np.asarray(img).astype(np.int32)


def read_class_names(path: Path) -> dict[int, str]:
    """``classes.txt``: plain lines (line k = class k + 1) or ``<idx>\\t<name>`` (class idx + 1)."""
    out: dict[int, str] = {}
    for k, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        head, sep, tail = line.partition("\t")
        if sep and head.strip().isdigit():
            out[int(head) + 1] = tail.strip()
        else:
            out[k + 1] = line.strip()
    return out


def _find_image(folder: Path, stem: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.exists():
            return path
    raise FileNotFoundError(f"no image {stem}.jpg|png in {folder}")


def read_label_folder(root: Path) -> Dataset:
    """Read our label-map folder layout (see the module docstring).

    Raises:
        FileNotFoundError: no ``masks/`` or ``images/`` folder, or an image missing.
    """
    masks = sorted((root / "masks").glob("*.png"))
    if not masks:
        raise FileNotFoundError(f"{root}/masks/*.png: no label maps")
    items = [Item(m.stem, _find_image(root / "images", m.stem), m) for m in masks]
    names_path = root / "classes.txt"
    names = read_class_names(names_path) if names_path.exists() else {}
    return Dataset(items, names)


def read_fss1000(root: Path, split_file: Path | None = None) -> Dataset:
    """FSS-1000 in its official or images/masks layout; class ids follow sorted class names.

    Args:
        root: dataset root.
        split_file: optional HSNet ``splits/fss/test.txt`` (one class name per line).
    """
    nested = (root / "images").is_dir() and (root / "masks").is_dir()
    image_root = root / "images" if nested else root
    classes = sorted(p.name for p in image_root.iterdir() if p.is_dir())
    if split_file is not None:
        wanted = set(split_file.read_text().split())
        classes = [c for c in classes if c in wanted]
    names = {k + 1: c for k, c in enumerate(classes)}
    items = []
    for cid, cname in names.items():
        for img in sorted((image_root / cname).glob("*.jpg"), key=lambda p: (len(p.stem), p.stem)):
            mask = (root / "masks" / cname if nested else image_root / cname) / f"{img.stem}.png"
            items.append(Item(f"{cname}/{img.stem}", img, mask, fixed_class=cid))
    return Dataset(items, names)


def _coco_item(root: Path, image_id: str, coco_path: str) -> Item:
    """Resolve a COCO val image in the HSNet layout, else in a label-map folder."""
    hsnet_img = root / coco_path
    if hsnet_img.exists():
        ann = root / "annotations" / Path(coco_path).with_suffix(".png")
        return Item(image_id, hsnet_img, ann)
    return Item(
        image_id, _find_image(root / "images", image_id), root / "masks" / f"{image_id}.png"
    )


class _ListsOnly(pickle.Unpickler):
    """HSNet fold pickles hold dict[int, list[str]]; refuse any other global."""

    def find_class(self, module: str, name: str) -> type:
        raise pickle.UnpicklingError(f"refusing global {module}.{name} in a split file")


def read_coco20i(root: Path, fold: int, split: Path) -> Dataset:
    """COCO-20i validation fold (HSNet classes: 0-based idx with idx % 4 == fold).

    Args:
        root: HSNet COCO root (``val2014/``, ``annotations/val2014/``) or a label-map folder.
        fold: 0..3.
        split: HSNet ``fold<i>.pkl`` or a TSV with ``image_id class_idx fold coco2014_val_path``.
    """
    if not 0 <= fold < COCO_FOLDS:
        raise ValueError(f"COCO-20i fold must be in 0..3, got {fold}")
    rows: list[tuple[str, int, str]] = []
    if split.suffix == ".pkl":
        with split.open("rb") as fh:
            per_class = _ListsOnly(fh).load()
        for idx, paths in per_class.items():
            for p in paths:
                rows.append((Path(p).stem.split("_")[-1], int(idx), str(p)))
    else:
        with split.open() as fh:
            for r in csv.DictReader(fh, delimiter="\t"):
                if int(r["fold"]) == fold:
                    rows.append((r["image_id"], int(r["class_idx"]), r["coco2014_val_path"]))
    classes = sorted({idx + 1 for _, idx, _ in rows if idx % COCO_FOLDS == fold})
    items = {iid: _coco_item(root, iid, path) for iid, _, path in rows}
    names_path = root / "classes.txt"
    names = read_class_names(names_path) if names_path.exists() else {}
    return Dataset(sorted(items.values(), key=lambda i: i.key), names, fold_classes=classes)


def read_pascal5i(root: Path, fold: int, split: Path) -> Dataset:
    """PASCAL-5i validation fold (classes 5 * fold + 1 .. 5 * fold + 5).

    Args:
        root: HSNet VOC root holding ``VOC2012/JPEGImages`` and ``VOC2012/SegmentationClassAug``.
        fold: 0..3.
        split: HSNet ``splits/pascal/val/fold<i>.txt`` (``<name>__<class>`` lines).
    """
    if not 0 <= fold < PASCAL_FOLDS:
        raise ValueError(f"PASCAL-5i fold must be in 0..3, got {fold}")
    voc = root / "VOC2012" if (root / "VOC2012").is_dir() else root
    stems = sorted({line.split("__")[0] for line in split.read_text().split()})
    items = [
        Item(s, voc / "JPEGImages" / f"{s}.jpg", voc / "SegmentationClassAug" / f"{s}.png")
        for s in stems
    ]
    return Dataset(items, {}, fold_classes=list(range(5 * fold + 1, 5 * fold + 6)))


def half_of(key: str) -> str:
    """``tune`` or ``report``: a fixed hash of an item's key (first byte of its sha256, even =
    tune), so a dataset halves the same way on every machine and in every version."""
    return "tune" if hashlib.sha256(key.encode()).digest()[0] % 2 == 0 else "report"


def select_half(ds: Dataset, half: str) -> Dataset:
    """The items of one half (``all``: the dataset itself). Constants are chosen on ``tune``
    only; figures are reported on ``report`` (and on datasets nothing was tuned on).

    Raises:
        ValueError: `half` not in `HALVES`.
    """
    if half not in HALVES:
        raise ValueError(f"--split takes {', '.join(HALVES)}, got {half!r}")
    if half == "all":
        return ds
    items = [i for i in ds.items if half_of(i.key) == half]
    return Dataset(items, ds.names, ds.fold_classes)
