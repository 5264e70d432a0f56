"""Synthetic VOC generator: determinism, layout, CLI, and that classes look distinct."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from s2c.classes import VOC20
from s2c.data import open_dataset
from s2c.data.synthetic import APPEARANCE, DEFAULT_CLASSES, make_synthetic_voc
from s2c.stages.make_synthetic_data import main
from s2c.errors import S2CError


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = _files(make_synthetic_voc(tmp_path / "a", n_train=4, n_val=2, size=64, seed=3, n_aug=1))
    b = _files(make_synthetic_voc(tmp_path / "b", n_train=4, n_val=2, size=64, seed=3, n_aug=1))
    c = _files(make_synthetic_voc(tmp_path / "c", n_train=4, n_val=2, size=64, seed=4, n_aug=1))
    assert a == b
    assert a.keys() == c.keys()
    assert a["JPEGImages/syn_train_0000.jpg"] != c["JPEGImages/syn_train_0000.jpg"]
    # 4 train + 2 val + 1 aug images; aug masks only in SegmentationClassAug (like SBD)
    assert sum(k.startswith("JPEGImages/") for k in a) == 7
    assert sum(k.startswith("SegmentationClass/") for k in a) == 6
    assert sum(k.startswith("SegmentationClassAug/") for k in a) == 7


def test_layout_lists_and_xml(synthetic_voc):
    sets = synthetic_voc / "ImageSets" / "Segmentation"
    train = sets.joinpath("train.txt").read_text().split()
    aug = sets.joinpath("train_aug.txt").read_text().split()
    assert aug[: len(train)] == train and len(aug) == len(train) + 2
    ds = open_dataset({"root": str(synthetic_voc), "cache_dir": str(synthetic_voc.parent / "cache")}, "train")
    for i in ds.ids:
        m = ds.load_mask(i)
        root = ET.parse(synthetic_voc / "Annotations" / f"{i}.xml").getroot()
        assert int(root.find("size/width").text) == m.shape[1] and int(root.find("size/height").text) == m.shape[0]
        for obj in root.iter("object"):
            c = VOC20.index(obj.find("name").text) + 1
            x0, y0, x1, y1 = (int(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax"))
            inside = np.zeros(m.shape, bool)
            inside[y0 - 1 : y1, x0 - 1 : x1] = True
            # every pixel of the class lies in the union of that class's boxes; check this box is used
            assert ((m == c) & inside).any()
        ys, xs = np.nonzero((m > 0) & (m < 255))
        assert ys.size > 0


def test_dataset_properties(tmp_path):
    """≥5 classes occur, images hold several objects (some of different classes, some touching),
    sizes vary, and each class's mean colour is recognisable (nearest class colour)."""
    root = make_synthetic_voc(tmp_path / "d", n_train=40, n_val=8, size=128, seed=0)
    ds = open_dataset({"root": str(root), "cache_dir": str(tmp_path / "cache")}, "train")
    seen, multi_class, touching, areas = set(), 0, 0, []
    palette = {VOC20.index(n) + 1: np.array(APPEARANCE[n][1], float) for n in DEFAULT_CLASSES}
    hits = total = 0
    for i in ds.ids:
        img, m = ds.load_image(i), ds.load_mask(i)
        cls = [v for v in np.unique(m) if 0 < v < 255]
        seen |= set(cls)
        multi_class += len(cls) >= 2
        # two different classes meeting: an ignore-band pixel next to both
        band = m == 255
        near = [cv2.dilate((m == c).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) for c in cls]
        touching += any((band & a & b).any() for k, a in enumerate(near) for b in near[k + 1 :])
        for c in cls:
            region = m == c
            areas.append(region.mean())
            mean = img[region].astype(float).mean(0)
            # textures darken parts of the object, so compare chromaticity (colour direction)
            best = min(palette, key=lambda k: np.linalg.norm(mean / mean.sum() - palette[k] / palette[k].sum()))
            hits += best == c
            total += 1
    assert len(seen) >= 5
    assert multi_class >= 5 and touching >= 2
    assert min(areas) < 0.05 and max(areas) > 0.12
    assert hits / total >= 0.9


def test_cli_and_guards(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--root", str(out), "--n-train", "2", "--n-val", "1", "--size", "48", "--seed", "1"]) == 0
    assert (out / "SYNTHETIC.json").is_file() and len(list((out / "JPEGImages").iterdir())) == 3
    before = _files(out)
    main(["--root", str(out), "--n-train", "2", "--n-val", "1", "--size", "48", "--seed", "1"])  # rerun replaces
    assert _files(out) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep")
    with pytest.raises(SystemExit) as e:
        main(["--root", str(other), "--n-train", "2", "--n-val", "1"])
    assert e.value.code == 2 and "not a synthetic dataset" in capsys.readouterr().err
    assert (other / "precious.txt").read_text() == "keep"
    # Snakemake pre-creates the output's parent folders: empty folders must not block generation
    pre = tmp_path / "pre"
    (pre / "ImageSets" / "Segmentation").mkdir(parents=True)
    make_synthetic_voc(pre, 2, 1, 48, 0)
    assert (pre / "ImageSets" / "Segmentation" / "train_aug.txt").is_file()
    with pytest.raises(S2CError, match="unicorn"):
        make_synthetic_voc(tmp_path / "x", 2, 1, 64, 0, classes=("cat", "unicorn"))
    with pytest.raises(S2CError, match="size"):
        make_synthetic_voc(tmp_path / "x", 2, 1, 8, 0)


def test_schema_synthetic_defaults_are_the_generators():
    """The workflow's ``synthetic`` keys default to what make_synthetic_voc (and its CLI) default to."""
    import inspect

    import yaml

    from s2c.config import SCHEMA_PATH

    props = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]["synthetic"]["properties"]
    params = inspect.signature(make_synthetic_voc).parameters
    keys = [k for k in props if k != "enabled"]
    assert keys and all(props[k]["default"] == params[k].default for k in keys), {
        k: (props[k].get("default"), params[k].default) for k in keys}
