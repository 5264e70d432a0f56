"""COCO reader: a hand-made COCO json with known masks, and the real coco-mini sample (skips when absent)."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from s2c.classes import COCO80_IDS, VOC20, coco_category_to_index
from s2c.data import open_dataset
from s2c.errors import S2CError

PERSON, DOG, TRUCK = 1, 18, 8  # COCO category ids; truck is not a VOC class
H, W = 20, 30


def _rect(x0, y0, x1, y1):
    """Polygon of the pixel block [y0:y1, x0:x1] (pycocotools rasterises it exactly so)."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _write_coco(root: Path, images_dir: str, ann_file: str) -> None:
    """Three images: 'a' (person + dog on top + truck + crowd), 'b' (truck only), 'c' (no anns)."""
    (root / images_dir).mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for k, name in enumerate(["a", "b", "c"], start=1):
        Image.fromarray(rng.integers(0, 255, (H, W, 3)).astype(np.uint8)).save(root / images_dir / f"{name}.jpg")
        images.append({"id": 10 * k, "file_name": f"{name}.jpg", "height": H, "width": W})
    crowd = np.zeros((H, W), np.uint8, order="F")
    crowd[15:20, 0:10] = 1
    crowd_rle = mask_utils.encode(crowd)
    crowd_rle["counts"] = crowd_rle["counts"].decode("ascii")
    anns = [
        # large person, a smaller dog overlapping it (smaller instance wins), a truck to the right
        {"id": 1, "image_id": 10, "category_id": PERSON, "segmentation": _rect(2, 2, 14, 14), "area": 144.0, "iscrowd": 0, "bbox": [2, 2, 12, 12]},
        {"id": 2, "image_id": 10, "category_id": DOG, "segmentation": _rect(10, 8, 18, 12), "area": 32.0, "iscrowd": 0, "bbox": [10, 8, 8, 4]},
        {"id": 3, "image_id": 10, "category_id": TRUCK, "segmentation": _rect(20, 0, 30, 6), "area": 60.0, "iscrowd": 0, "bbox": [20, 0, 10, 6]},
        # a crowd region partly under the person (person pixels stay person)
        {"id": 4, "image_id": 10, "category_id": PERSON, "segmentation": crowd_rle, "area": 50.0, "iscrowd": 1, "bbox": [0, 15, 10, 5]},
        {"id": 5, "image_id": 10, "category_id": PERSON, "segmentation": _rect(4, 13, 8, 17), "area": 16.0, "iscrowd": 0, "bbox": [4, 13, 4, 4]},
        {"id": 6, "image_id": 20, "category_id": TRUCK, "segmentation": _rect(0, 0, 5, 5), "area": 25.0, "iscrowd": 0, "bbox": [0, 0, 5, 5]},
    ]
    cats = [{"id": cid, "name": str(cid), "supercategory": ""} for cid in COCO80_IDS]
    (root / ann_file).parent.mkdir(parents=True, exist_ok=True)
    (root / ann_file).write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


def _expected_a(class_set: str) -> np.ndarray:
    idx = coco_category_to_index(class_set)
    m = np.zeros((H, W), np.uint8)
    m[15:20, 0:10] = 255  # crowd
    m[2:14, 2:14] = idx[PERSON] + 1
    m[13:17, 4:8] = idx[PERSON] + 1
    m[8:12, 10:18] = idx[DOG] + 1
    m[0:6, 20:30] = idx[TRUCK] + 1 if TRUCK in idx else 255
    return m


@pytest.fixture
def tiny_coco(tmp_path) -> Path:
    _write_coco(tmp_path, "train", "annotations/instances_train.json")
    return tmp_path


def _open(root, split="train", **kw):
    return open_dataset({"kind": "coco", "root": str(root), "class_set": "voc20", **kw}, split)


def test_tiny_voc20_masks_labels_and_dropping(tiny_coco, caplog):
    with caplog.at_level(logging.WARNING, logger="s2c.data.coco"):
        ds = _open(tiny_coco)
    assert "dropped 2 of 3" in caplog.text
    assert ds.ids == ["a"]  # 'b' (truck only) and 'c' (empty) have no VOC class
    assert ds.n_dropped_unlabeled == 2
    np.testing.assert_array_equal(ds.load_mask("a"), _expected_a("voc20"))
    want = np.zeros(20, np.float32)
    want[[VOC20.index("person"), VOC20.index("dog")]] = 1
    np.testing.assert_array_equal(ds.labels("a"), want)
    assert ds.load_image("a").shape == (H, W, 3)
    assert ds.image_path("a") == tiny_coco / "train" / "a.jpg"

    ds = _open(tiny_coco, drop_unlabeled=False)
    assert ds.ids == ["a", "b", "c"]
    assert ds.labels("b").sum() == 0
    b = np.zeros((H, W), np.uint8)
    b[0:5, 0:5] = 255  # truck: not a VOC class → ignore
    np.testing.assert_array_equal(ds.load_mask("b"), b)
    assert (ds.load_mask("c") == 0).all()


def test_tiny_coco80(tiny_coco):
    ds = _open(tiny_coco, class_set="coco80")
    assert ds.ids == ["a", "b"] and ds.num_classes == 80
    np.testing.assert_array_equal(ds.load_mask("a"), _expected_a("coco80"))
    assert np.flatnonzero(ds.labels("a")).tolist() == sorted(COCO80_IDS.index(c) for c in (PERSON, DOG, TRUCK))
    assert np.flatnonzero(ds.labels("b")).tolist() == [COCO80_IDS.index(TRUCK)]


def test_split_mapping_and_official_layout(tmp_path):
    _write_coco(tmp_path / "m", "imgs", "ann/mine.json")
    ds = _open(tmp_path / "m", "train", coco_splits={"train": {"images": "imgs", "annotations": "ann/mine.json"}})
    assert ds.ids == ["a"] and ds.image_path("a") == tmp_path / "m" / "imgs" / "a.jpg"
    with pytest.raises(S2CError, match="coco_splits.train"):
        _open(tmp_path / "m", "train", coco_splits={"train": {"images": "imgs"}})
    _write_coco(tmp_path / "o", "val2017", "annotations/instances_val2017.json")
    ds = _open(tmp_path / "o", "val")
    assert ds.ids == ["a"] and ds._rel_image_path("a") == "val2017/a.jpg"


def test_errors(tiny_coco):
    with pytest.raises(S2CError, match=r"instances_val\.json"):
        _open(tiny_coco, "val")
    (tiny_coco / "train" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(S2CError, match=r"a\.jpg"):
        _open(tiny_coco).load_image("a")
    ds = _open(tiny_coco, drop_unlabeled=False, skip_corrupt=True, cache_dir=str(tiny_coco / "cache"))
    assert ds.ids == ["b", "c"] and ds.skipped[0][0] == "a"
    bad = tiny_coco / "annotations" / "instances_bad.json"
    bad.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(S2CError, match="empty"):
        _open(tiny_coco, "bad")
    with pytest.raises(S2CError, match="class_set"):
        _open(tiny_coco, class_set="ade150")


# ---- real data --------------------------------------------------------------------------------

def _ann_mask(coco, a) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pycocotools vs NumPy 2 copy keyword
        return coco.annToMask(a).astype(bool)


@pytest.mark.parametrize("class_set", ["voc20", "coco80"])
def test_coco_mini_val(coco_mini_root, class_set):
    ds = _open(coco_mini_root, "val", class_set=class_set)
    C = ds.num_classes
    n_img = len(ds.coco.imgs)
    assert n_img == 53
    assert len(ds) + ds.n_dropped_unlabeled == n_img
    if class_set == "voc20":
        assert 0 < ds.n_dropped_unlabeled < n_img
    idx = ds.cat_to_idx
    crowd_checked = out_of_set_checked = 0
    for i in ds.ids:
        m, lab = ds.load_mask(i), ds.labels(i)
        assert m.dtype == np.uint8
        values = set(np.unique(m).tolist())
        assert values <= set(range(C + 1)) | {255}
        assert {v - 1 for v in values - {0, 255}} == set(np.flatnonzero(lab).tolist()), i
        anns = ds.coco.imgToAnns[ds.coco_image_id(i)]
        masks = {a["id"]: _ann_mask(ds.coco, a) for a in anns}
        noncrowd = np.zeros(m.shape, bool)
        for a in anns:
            if not a["iscrowd"]:
                noncrowd |= masks[a["id"]]
        assert (m[~noncrowd & (m != 255)] == 0).all()  # unlabelled → background
        cover = sum(mk.astype(np.int32) for mk in masks.values()) if masks else 0
        for a in anns:
            own = masks[a["id"]] & (cover == 1)  # pixels no other instance touches
            if not own.any():
                continue
            if a["iscrowd"]:
                assert (m[own] == 255).all()
                crowd_checked += 1
            elif a["category_id"] not in idx:
                assert (m[own] == 255).all()
                out_of_set_checked += 1
            else:
                assert (m[own] == idx[a["category_id"]] + 1).all()
    assert crowd_checked >= 1
    assert out_of_set_checked >= (1 if class_set == "voc20" else 0)
    img = ds.load_image(ds.ids[0])
    assert img.shape[:2] == ds.load_mask(ds.ids[0]).shape


def test_coco_mini_train_and_hash(coco_mini_root):
    voc = _open(coco_mini_root, "train")
    coco = _open(coco_mini_root, "train", class_set="coco80")
    assert len(coco) == 262 and len(voc) < 262
    assert set(voc.ids) < set(coco.ids)
    assert voc.image_list_hash() != coco.image_list_hash()
    assert voc.image_list_hash() == _open(coco_mini_root, "train").image_list_hash()
    # all 20 VOC classes occur in the sample
    assert (np.stack([voc.labels(i) for i in voc.ids]).sum(0) > 0).all()


def test_split_list_file_is_the_file_the_reader_opens(tmp_path):
    """s2c.data.split_list_file (the workflow's rule input) follows data.coco_splits and the official
    *2017 fallback, exactly as COCODataset does."""
    from s2c.data import split_list_file

    _write_coco(tmp_path, "val2017", "annotations/instances_val2017.json")
    cfg = {"kind": "coco", "root": str(tmp_path)}
    assert split_list_file(cfg, "val") == tmp_path / "annotations" / "instances_val2017.json"
    assert split_list_file(cfg, "val") == open_dataset(cfg, "val").ann_path
    assert split_list_file(cfg, "train") == tmp_path / "annotations" / "instances_train.json"  # absent: default
    mapped = {**cfg, "coco_splits": {"train": {"images": "val2017", "annotations": "annotations/x.json"}}}
    assert split_list_file(mapped, "train") == tmp_path / "annotations" / "x.json"
    voc = {"kind": "voc", "root": str(tmp_path)}
    assert split_list_file(voc, "val") == tmp_path / "ImageSets" / "Segmentation" / "val.txt"
