"""PASCAL VOC layout reader (also used for the synthetic dataset, which writes the same layout).

Layout under ``root``::

    JPEGImages/<id>.jpg
    Annotations/<id>.xml                 (optional; image labels come from here when present)
    SegmentationClass[Aug]/<id>.png      (palette/grey PNG: 0 bg, 1..20 classes, 255 ignore)
    ImageSets/Segmentation/<split>.txt   (one id per line; DeepLab-style "img.jpg gt.png" lines too)

Image labels follow the standard ``cls_labels.npy`` recipe: every ``<object>`` of the XML (difficult
and truncated included). Without an XML the label is the set of classes present in the label map.
"""

from __future__ import annotations

import hashlib
import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from ..classes import VOC20
from ..errors import S2CError
from ..io import read_label_png
from .base import SegDataset, cache_dir_for, cached_json, drop_corrupt, file_stamp

log = logging.getLogger(__name__)

_TRAIN_AUG_HELP = (
    "train_aug (10,582 images) needs the SBD augmentation: download SBD "
    "(http://home.bharathh.info/pubs/codes/SBD/download.html), convert its masks into "
    "SegmentationClassAug/ (or use the common SegmentationClassAug.zip), and place the standard "
    "train_aug.txt list (e.g. from the DeepLab / IRN repositories: voc12/train_aug.txt) at "
)


def read_id_list(path: Path) -> list[str]:
    """Ids of a VOC list file, in order. Accepts ``id`` lines and ``/JPEGImages/id.jpg ...`` lines."""
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise S2CError(f"image list {path} is not a text file; it must hold one image id per line") from None
    ids = []
    for line in text.splitlines():
        tok = line.split()
        if not tok:
            continue
        ids.append(Path(tok[0]).stem if "/" in tok[0] or "." in tok[0] else tok[0])
    if not ids:
        raise S2CError(f"image list {path} is empty; add image ids (one per line) or pick another split")
    seen = set()
    for i in ids:
        if i in seen:
            raise S2CError(f"image list {path} lists id {i!r} twice; remove the duplicate line")
        seen.add(i)
    return ids


def xml_class_indices(path: Path) -> list[int]:
    """Sorted foreground indices (0..19) of all ``<object><name>`` entries of a VOC XML file."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise S2CError(f"corrupt annotation XML {path} ({e}); replace it or delete it to use the mask") from None
    out = set()
    for obj in tree.getroot().iter("object"):
        name_el = obj.find("name")
        name = (name_el.text or "").strip() if name_el is not None else ""
        if name not in VOC20:
            raise S2CError(
                f"unknown class name {name!r} in {path}; VOC names are {', '.join(VOC20)}"
            )
        out.add(VOC20.index(name))
    return sorted(out)


def _image_size(path: Path) -> tuple[int, int] | None:
    """(H, W) from the image header (no decode); None when unreadable (load_image reports that)."""
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception:
        return None


def check_label_map(m: np.ndarray, num_classes: int, path: Path) -> np.ndarray:
    """Validate a label map (values in 0..C or 255); returns the per-value pixel counts (256,)."""
    counts = np.bincount(m.ravel(), minlength=256)
    bad = np.flatnonzero(counts[num_classes + 1 : 255])
    if bad.size:
        raise S2CError(
            f"label map {path} contains unknown class id(s) {(bad + num_classes + 1).tolist()}; "
            f"valid ids are 0..{num_classes} and 255 (ignore)"
        )
    return counts


class VOCDataset(SegDataset):
    """A split of a VOC-layout dataset. See :func:`s2c.data.open_dataset` for the config keys."""

    def __init__(self, root: Path, split: str, cfg: dict):
        if cfg["class_set"] != "voc20":
            raise S2CError(f"data.class_set {cfg['class_set']!r} is not supported for kind 'voc'; use 'voc20'")
        self.root = Path(root)
        self.split = split
        self.class_set = "voc20"
        self.skipped = []
        self.list_path = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not self.list_path.is_file():
            msg = f"image list not found: {self.list_path}"
            if split == "train_aug":
                msg += "; " + _TRAIN_AUG_HELP + str(self.list_path)
            else:
                msg += "; check data.root and the split name (train, val, train_aug)"
            raise S2CError(msg)
        self.ids = read_id_list(self.list_path)

        if cfg["gt_dir"]:
            self.gt_dir = self.root / cfg["gt_dir"]
        else:
            aug = self.root / "SegmentationClassAug"
            self.gt_dir = aug if aug.is_dir() else self.root / "SegmentationClass"

        cache = cache_dir_for(self.root, cfg)
        if cfg["skip_corrupt"]:
            drop_corrupt(self, cache)
            if not self.ids:
                raise S2CError(f"every image of {self.list_path} is missing or corrupt; check {self.root / 'JPEGImages'}")
        else:
            missing = [i for i in self.ids if not self.image_path(i).is_file()]
            if missing:
                raise S2CError(
                    f"{len(missing)} image(s) of {self.list_path} not found, e.g. {self.image_path(missing[0])}; "
                    "fix the list or set data.skip_corrupt: true to drop them"
                )

        n_gt = sum(self._mask_path(i).is_file() for i in self.ids)
        if 0 < n_gt < len(self.ids):
            log.warning(
                "%s: %d of %d ids have no label map in %s; load_mask returns None for them",
                self.list_path, len(self.ids) - n_gt, len(self.ids), self.gt_dir,
            )
        self.has_masks = n_gt > 0

        # The key covers the list bytes and every label source's size+mtime: any edit recomputes.
        h = hashlib.sha256(self.list_path.read_bytes())
        h.update(str(self.gt_dir).encode())
        for i in self.ids:
            h.update(f"{i}\t{file_stamp(self._xml_path(i))}\t{file_stamp(self._mask_path(i))}\n".encode())
        self._label_idx: dict[str, list[int]] = cached_json(
            cache, f"labels_{split}.json", h.hexdigest(), self._compute_labels
        )

    # paths ------------------------------------------------------------------------------------
    def _rel_image_path(self, image_id: str) -> str:
        return f"JPEGImages/{image_id}.jpg"

    def _xml_path(self, image_id: str) -> Path:
        return self.root / "Annotations" / f"{image_id}.xml"

    def _mask_path(self, image_id: str) -> Path:
        return self.gt_dir / f"{image_id}.png"

    # labels -----------------------------------------------------------------------------------
    def _labels_of(self, image_id: str) -> list[int]:
        xml = self._xml_path(image_id)
        if xml.is_file():
            return xml_class_indices(xml)
        mp = self._mask_path(image_id)
        if mp.is_file():
            counts = check_label_map(read_label_png(mp), self.num_classes, mp)
            return [c - 1 for c in range(1, self.num_classes + 1) if counts[c] > 0]
        if not self.has_masks:
            return None  # a split without GT (VOC test): only predicted, its labels never asked for
        raise S2CError(
            f"no image label source for id {image_id!r}: neither {xml} nor {mp} exists; "
            "provide the VOC Annotations/ XML or the label maps"
        )

    def _compute_labels(self) -> dict[str, list[int]]:
        return {i: self._labels_of(i) for i in self.ids}

    def labels(self, image_id: str) -> np.ndarray:
        """Image-level multi-hot label, float32 (20,), from the XML (or the mask without XML)."""
        idx = self._label_idx[image_id]
        if idx is None:
            raise S2CError(f"no image label source for id {image_id!r}: neither {self._xml_path(image_id)} nor "
                           f"{self._mask_path(image_id)} exists; image labels need the Annotations/ XML or label maps")
        out = np.zeros(self.num_classes, np.float32)
        out[idx] = 1.0
        return out

    def load_mask(self, image_id: str) -> np.ndarray | None:
        """Label map uint8 (H, W): 0 bg, c+1 class c, 255 ignore; None when this id has no PNG."""
        mp = self._mask_path(image_id)
        if not mp.is_file():
            return None
        m = read_label_png(mp)
        check_label_map(m, self.num_classes, mp)
        size = _image_size(self.image_path(image_id))
        if size is not None and m.shape != size:
            raise S2CError(
                f"GT mask {mp} is {m.shape[0]}x{m.shape[1]} but its image {self.image_path(image_id)} is "
                f"{size[0]}x{size[1]} (HxW); replace the mask with the one made for this image"
            )
        return m
