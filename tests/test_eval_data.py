"""Dataset readers on the shipped subsets (../shared/assets/data) and a tiny PASCAL fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gfsam.eval.data import (
    Dataset,
    Item,
    half_of,
    load_labels,
    read_class_names,
    read_coco20i,
    read_fss1000,
    read_label_folder,
    read_pascal5i,
    select_half,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "assets" / "data"
COCO = DATA / "coco128_seg"
needs_data = pytest.mark.skipif(not COCO.is_dir(), reason="shared data subsets not present")


@needs_data
def test_label_folder_reads_coco128() -> None:
    ds = read_label_folder(COCO)
    assert len(ds.items) == 128 and ds.names[1] == "person" and ds.names[80] == "toothbrush"
    item = next(i for i in ds.items if i.key == "000000000009")
    assert ds.classes_of(item) == {46, 50, 51}
    assert load_labels(item).shape == (480, 640)


@needs_data
def test_fss1000_subset() -> None:
    ds = read_fss1000(DATA / "fss1000_subset")
    assert ds.names == {1: "apple", 2: "basketball"} and len(ds.items) == 20
    labels = load_labels(ds.items[0])
    assert set(np.unique(labels)) <= {0, 1} and labels.any()


@needs_data
def test_coco20i_from_the_overlap_tsv() -> None:
    ds = read_coco20i(COCO, 0, COCO / "coco20i_val_overlap.tsv")
    assert ds.fold_classes and all((c - 1) % 4 == 0 for c in ds.fold_classes)
    assert len(ds.items) > 20 and all(i.image.exists() and i.mask.exists() for i in ds.items)
    with pytest.raises(ValueError):
        read_coco20i(COCO, 4, COCO / "coco20i_val_overlap.tsv")


def test_pascal5i_hsnet_layout(tmp_path: Path) -> None:
    voc = tmp_path / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClassAug").mkdir()
    labels = np.zeros((8, 8), dtype=np.uint8)
    labels[2:5, 2:5], labels[0] = 7, 255
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(voc / "JPEGImages" / "a.jpg")
    Image.fromarray(labels).save(voc / "SegmentationClassAug" / "a.png")
    split = tmp_path / "fold1.txt"
    split.write_text("a__07\n")
    ds = read_pascal5i(tmp_path, 1, split)
    assert ds.fold_classes == [6, 7, 8, 9, 10]
    assert ds.classes_of(ds.items[0]) == {7}  # 255 is ignore, not a class


def test_class_names_both_formats(tmp_path: Path) -> None:
    plain, indexed = tmp_path / "a.txt", tmp_path / "b.txt"
    plain.write_text("cat\ndog\n")
    indexed.write_text("0\tperson\n1\tbicycle\n")
    assert read_class_names(plain) == {1: "cat", 2: "dog"}
    assert read_class_names(indexed) == {1: "person", 2: "bicycle"}


def test_split_hash_is_fixed_and_halves_without_overlap() -> None:
    # pinned: a change of the hash would mix tuned images into the report
    assert [half_of(k) for k in ("000000000009", "000000000025", "000000000030")] == [
        "report",
        "tune",
        "report",
    ]
    items = [Item(f"img{k}", Path(f"{k}.jpg"), Path(f"{k}.png")) for k in range(400)]
    ds = Dataset(items, {})
    tune, report = select_half(ds, "tune").items, select_half(ds, "report").items
    assert not {i.key for i in tune} & {i.key for i in report}
    assert len(tune) + len(report) == 400 and 150 < len(tune) < 250
    assert select_half(ds, "all") is ds
    assert [i.key for i in select_half(ds, "tune").items] == [i.key for i in tune]  # stable
    with pytest.raises(ValueError, match="tune, report, all"):
        select_half(ds, "test")


@needs_data
def test_coco128_halves() -> None:
    ds = read_label_folder(COCO)
    assert (len(select_half(ds, "tune").items), len(select_half(ds, "report").items)) == (53, 75)
