"""VOC-layout reader on the generated fixture: ids, labels vs masks, caching, and bad-input errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from s2c.classes import VOC20
from s2c.data import DATA_DEFAULTS, open_dataset
from s2c.errors import S2CError


def _open(root, split="train", tmp=None, **kw):
    cfg = {"kind": "voc", "root": str(root), "class_set": "voc20", **kw}
    if tmp is not None:
        cfg["cache_dir"] = str(tmp / "cache")
    return open_dataset(cfg, split)


@pytest.fixture
def voc_copy(synthetic_voc, tmp_path) -> Path:
    """A private, mutable copy of the synthetic dataset."""
    return Path(shutil.copytree(synthetic_voc, tmp_path / "voc"))


def test_splits_ids_and_class_info(synthetic_voc, tmp_path):
    sets = synthetic_voc / "ImageSets" / "Segmentation"
    for split in ("train", "val", "train_aug"):
        ds = _open(synthetic_voc, split, tmp_path)
        assert ds.ids == sets.joinpath(f"{split}.txt").read_text().split()
        assert ds.num_classes == 20 and ds.class_names == VOC20
        assert ds.image_path(ds.ids[0]) == synthetic_voc / "JPEGImages" / f"{ds.ids[0]}.jpg"
    train, aug = _open(synthetic_voc, "train", tmp_path), _open(synthetic_voc, "train_aug", tmp_path)
    assert len(train) == 8 and len(aug) == 10 and set(train.ids) < set(aug.ids)


def test_labels_match_masks_and_ignore_band(synthetic_voc, tmp_path):
    ds = _open(synthetic_voc, "train_aug", tmp_path)
    saw_ignore = False
    for i in ds.ids:
        img, m, lab = ds.load_image(i), ds.load_mask(i), ds.labels(i)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert m.dtype == np.uint8 and m.shape == img.shape[:2]
        assert lab.dtype == np.float32 and lab.shape == (20,)
        values = set(np.unique(m).tolist())
        assert values <= set(range(21)) | {255}
        assert {v - 1 for v in values - {0, 255}} == set(np.flatnonzero(lab).tolist()), i
        assert lab.sum() >= 1
        saw_ignore |= 255 in values
    assert saw_ignore


def test_labels_come_from_xml_then_from_masks(voc_copy, tmp_path):
    ds = _open(voc_copy, "train", tmp_path)
    i = ds.ids[0]
    want = ds.labels(i)
    # An XML object that is not in the mask shows up in the label: XML wins when present.
    xml = voc_copy / "Annotations" / f"{i}.xml"
    text = xml.read_text()
    extra = "<object><name>tvmonitor</name><difficult>1</difficult></object></annotation>"
    xml.write_text(text.replace("</annotation>", extra))
    ds2 = _open(voc_copy, "train", tmp_path)  # same cache dir: the edit must invalidate it
    assert ds2.labels(i)[VOC20.index("tvmonitor")] == 1
    # Without any XML, labels are the mask's classes.
    shutil.rmtree(voc_copy / "Annotations")
    ds3 = _open(voc_copy, "train", tmp_path)
    np.testing.assert_array_equal(ds3.labels(i), want)


def test_label_cache_is_used(synthetic_voc, tmp_path, monkeypatch):
    _open(synthetic_voc, "val", tmp_path)
    assert (tmp_path / "cache" / "labels_val.json").is_file()
    import s2c.data.voc as voc

    def boom(path):
        raise AssertionError("XML parsed although the cache is valid")

    monkeypatch.setattr(voc, "xml_class_indices", boom)
    ds = _open(synthetic_voc, "val", tmp_path)
    assert len(ds) == 4


def test_unknown_class_name_in_xml(voc_copy, tmp_path):
    i = _open(voc_copy, "val", tmp_path).ids[1]
    xml = voc_copy / "Annotations" / f"{i}.xml"
    xml.write_text(xml.read_text().replace("</annotation>", "<object><name>unicorn</name></object></annotation>"))
    with pytest.raises(S2CError, match=rf"unicorn.*{i}\.xml"):
        _open(voc_copy, "val", tmp_path)


def _write_label(path: Path, arr: np.ndarray):
    from PIL import Image

    Image.fromarray(arr).save(path)


def test_unknown_mask_id(voc_copy, tmp_path):
    ds = _open(voc_copy, "val", tmp_path)
    i = ds.ids[0]
    m = ds.load_mask(i).copy()
    m[0, 0] = 42
    png = voc_copy / "SegmentationClassAug" / f"{i}.png"
    _write_label(png, m)
    with pytest.raises(S2CError, match=rf"{i}\.png.*42"):
        ds.load_mask(i)
    # Labels derived from that mask (no XML) fail the same way at open time.
    (voc_copy / "Annotations" / f"{i}.xml").unlink()
    with pytest.raises(S2CError, match=rf"{i}\.png.*42"):
        _open(voc_copy, "val", tmp_path)


def test_corrupt_jpeg_raises_or_is_skipped(voc_copy, tmp_path):
    ids = _open(voc_copy, "train", tmp_path).ids
    bad = voc_copy / "JPEGImages" / f"{ids[2]}.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    ds = _open(voc_copy, "train", tmp_path)
    with pytest.raises(S2CError, match=rf"{ids[2]}\.jpg"):
        ds.load_image(ids[2])
    ds = _open(voc_copy, "train", tmp_path, skip_corrupt=True)
    assert ds.ids == [i for i in ids if i != ids[2]]
    assert [s[0] for s in ds.skipped] == [ids[2]] and f"{ids[2]}.jpg" in ds.skipped[0][1]


def test_missing_image_in_list(voc_copy, tmp_path):
    ids = _open(voc_copy, "val", tmp_path).ids
    (voc_copy / "JPEGImages" / f"{ids[3]}.jpg").unlink()
    with pytest.raises(S2CError, match=rf"{ids[3]}\.jpg"):
        _open(voc_copy, "val", tmp_path)
    ds = _open(voc_copy, "val", tmp_path, skip_corrupt=True)
    assert ds.ids == ids[:3] and ds.skipped[0][0] == ids[3]


def test_empty_missing_and_duplicate_lists(voc_copy, tmp_path):
    sets = voc_copy / "ImageSets" / "Segmentation"
    (sets / "empty.txt").write_text("\n\n")
    with pytest.raises(S2CError, match=r"empty\.txt.*empty"):
        _open(voc_copy, "empty", tmp_path)
    with pytest.raises(S2CError, match=r"nosuch\.txt"):
        _open(voc_copy, "nosuch", tmp_path)
    (sets / "train_aug.txt").unlink()
    with pytest.raises(S2CError, match=r"train_aug\.txt.*SBD|SBD.*train_aug\.txt"):
        _open(voc_copy, "train_aug", tmp_path)
    ids = (sets / "val.txt").read_text().split()
    (sets / "dup.txt").write_text(f"{ids[0]}\n{ids[1]}\n{ids[0]}\n")
    with pytest.raises(S2CError, match=rf"dup\.txt.*{ids[0]}"):
        _open(voc_copy, "dup", tmp_path)


def test_deeplab_style_list_lines(voc_copy, tmp_path):
    sets = voc_copy / "ImageSets" / "Segmentation"
    ids = (sets / "val.txt").read_text().split()
    (sets / "dl.txt").write_text("".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in ids))
    assert _open(voc_copy, "dl", tmp_path).ids == ids


def test_gt_dir_choice_and_missing_masks(synthetic_voc, tmp_path):
    ds = _open(synthetic_voc, "train_aug", tmp_path)
    assert ds.gt_dir.name == "SegmentationClassAug"
    assert all(ds.load_mask(i) is not None for i in ds.ids)
    ds = _open(synthetic_voc, "train_aug", tmp_path, gt_dir="SegmentationClass")
    aug_only = [i for i in ds.ids if i.startswith("syn_aug_")]
    assert len(aug_only) == 2
    assert all(ds.load_mask(i) is None for i in aug_only)
    assert ds.load_mask(ds.ids[0]) is not None
    # labels still come from the XML for ids without a mask
    assert all(ds.labels(i).sum() >= 1 for i in aug_only)


def test_image_list_hash(synthetic_voc, voc_copy, tmp_path):
    a = _open(synthetic_voc, "train", tmp_path)
    assert a.image_list_hash() == _open(synthetic_voc, "train", tmp_path).image_list_hash()
    # root-relative: the same list in another folder hashes the same
    assert _open(voc_copy, "train", tmp_path).image_list_hash() == a.image_list_hash()
    assert a.image_list_hash() != _open(synthetic_voc, "val", tmp_path).image_list_hash()
    sets = voc_copy / "ImageSets" / "Segmentation"
    (sets / "rev.txt").write_text("\n".join(reversed(a.ids)) + "\n")
    assert _open(voc_copy, "rev", tmp_path).image_list_hash() != a.image_list_hash()


def test_bad_config(synthetic_voc, tmp_path):
    with pytest.raises(S2CError, match="coco80"):
        _open(synthetic_voc, "train", tmp_path, class_set="coco80")
    with pytest.raises(S2CError, match="bogus"):
        _open(synthetic_voc, "train", tmp_path, bogus=1)
    with pytest.raises(S2CError, match="kind"):
        open_dataset({"kind": "ade", "root": str(synthetic_voc)}, "train")
    with pytest.raises(S2CError, match="root"):
        open_dataset({"kind": "voc"}, "train")
    with pytest.raises(S2CError, match="not a directory"):
        open_dataset({"root": str(tmp_path / "nope")}, "train")
    assert DATA_DEFAULTS["skip_corrupt"] is False and DATA_DEFAULTS["kind"] == "voc"
