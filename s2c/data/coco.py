"""COCO reader: semantic label maps and image labels built from instance annotations (pycocotools).

Split ``s`` reads images from ``<root>/<images>/`` and annotations from ``<root>/<annotations>``,
by default ``s/`` and ``annotations/instances_s.json``; ``data.coco_splits`` overrides this per
split, and the official layout (``s2017/`` + ``annotations/instances_s2017.json``) is found
automatically when the default paths do not exist.

Semantic mask rule (deterministic, documented in one place):
1. all pixels start as background (0);
2. crowd regions (``iscrowd: 1``) become 255 (ignore);
3. non-crowd instances are painted in order of decreasing mask area (ties: increasing annotation
   id), so where instances overlap the *smaller* one wins; an instance paints c+1 when its
   category is class c of the class set, and 255 when its category is not in the set.
Image labels = classes of the set with at least one non-crowd instance of positive area.
Image ids are the file-name stems (e.g. ``000000262145``), ordered by COCO image id.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np

from ..classes import coco_category_to_index
from ..errors import S2CError
from .base import SegDataset, cache_dir_for, drop_corrupt
from .voc import _image_size

log = logging.getLogger(__name__)


def _split_paths(root: Path, split: str, cfg: dict) -> tuple[Path, Path]:
    """(image folder, annotation json) of ``split``."""
    override = (cfg.get("coco_splits") or {}).get(split)
    if override is not None:
        if not isinstance(override, dict) or not {"images", "annotations"} <= set(override):
            raise S2CError(
                f"data.coco_splits.{split} must be a mapping with keys 'images' and 'annotations', got {override!r}"
            )
        return root / override["images"], root / override["annotations"]
    img_dir, ann = root / split, root / "annotations" / f"instances_{split}.json"
    official = root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json"
    if not ann.is_file() and official[1].is_file():
        return official
    return img_dir, ann


def _load_coco(ann_path: Path):
    # pycocotools pulls in matplotlib at import: only COCO datasets pay for it
    from pycocotools.coco import COCO

    if not ann_path.is_file():
        raise S2CError(
            f"COCO annotation file not found: {ann_path}; check data.root or map the split with "
            "data.coco_splits: {<split>: {images: <dir>, annotations: <json>}}"
        )
    try:
        # pycocotools prints progress to stdout; keep stage logs clean.
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(ann_path))
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise S2CError(f"malformed COCO annotation file {ann_path} ({e.__class__.__name__}: {e}); re-download it") from None


class COCODataset(SegDataset):
    """A split of a COCO-format dataset. See :func:`s2c.data.open_dataset` for the config keys."""

    def __init__(self, root: Path, split: str, cfg: dict):
        self.root = Path(root)
        self.split = split
        self.class_set = cfg["class_set"]
        self.skipped = []
        self.cat_to_idx = coco_category_to_index(self.class_set)  # also validates class_set
        self.image_dir, self.ann_path = _split_paths(self.root, split, cfg)
        self.coco = _load_coco(self.ann_path)
        try:
            self.image_dir_rel = self.image_dir.relative_to(self.root).as_posix()
        except ValueError:
            self.image_dir_rel = str(self.image_dir)

        self._stem_to_img: dict[str, int] = {}
        self._label_idx: dict[str, list[int]] = {}
        imgs = sorted(self.coco.imgs.values(), key=lambda im: im["id"])
        for im in imgs:
            stem = Path(im["file_name"]).stem
            if stem in self._stem_to_img:
                raise S2CError(f"{self.ann_path}: two images share the file name stem {stem!r}; ids must be unique")
            self._stem_to_img[stem] = im["id"]
            cats = {
                self.cat_to_idx[a["category_id"]]
                for a in self.coco.imgToAnns.get(im["id"], [])
                if not a.get("iscrowd", 0) and a.get("area", 1) > 0 and a["category_id"] in self.cat_to_idx
            }
            self._label_idx[stem] = sorted(cats)
        ids = list(self._stem_to_img)
        if not ids:
            raise S2CError(f"COCO split {split!r} is empty: {self.ann_path} lists no images")
        if cfg["drop_unlabeled"]:
            kept = [i for i in ids if self._label_idx[i]]
            if len(kept) < len(ids):
                log.warning(
                    "%s: dropped %d of %d images with no %s class (data.drop_unlabeled)",
                    self.ann_path, len(ids) - len(kept), len(ids), self.class_set,
                )
            ids = kept
            if not ids:
                raise S2CError(
                    f"COCO split {split!r} has no image with a {self.class_set} class in {self.ann_path}; "
                    "check data.class_set or set data.drop_unlabeled: false"
                )
        self.ids = ids
        self.n_dropped_unlabeled = len(self._stem_to_img) - len(ids)

        if cfg["skip_corrupt"]:
            drop_corrupt(self, cache_dir_for(self.root, cfg))
            if not self.ids:
                raise S2CError(f"every image of split {split!r} is missing or corrupt in {self.image_dir}")
        else:
            missing = [i for i in self.ids if not self.image_path(i).is_file()]
            if missing:
                raise S2CError(
                    f"{len(missing)} image(s) of {self.ann_path} not found, e.g. {self.image_path(missing[0])}; "
                    "check the image folder (data.coco_splits) or set data.skip_corrupt: true to drop them"
                )
        self.has_masks = True

    def _rel_image_path(self, image_id: str) -> str:
        return f"{self.image_dir_rel}/{self.coco.imgs[self._stem_to_img[image_id]]['file_name']}"

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / self.coco.imgs[self._stem_to_img[image_id]]["file_name"]

    def coco_image_id(self, image_id: str) -> int:
        """The COCO integer image id of ``image_id`` (the file-name stem)."""
        return self._stem_to_img[image_id]

    def labels(self, image_id: str) -> np.ndarray:
        """Image-level multi-hot label, float32 (C,): in-set classes of non-crowd instances."""
        out = np.zeros(self.num_classes, np.float32)
        out[self._label_idx[image_id]] = 1.0
        return out

    def load_mask(self, image_id: str) -> np.ndarray:
        """Semantic label map uint8 (H, W) at the json's height/width (rule: module docstring)."""
        img = self.coco.imgs[self._stem_to_img[image_id]]
        h, w = int(img["height"]), int(img["width"])
        size = _image_size(self.image_path(image_id))
        if size is not None and size != (h, w):
            raise S2CError(
                f"{self.ann_path}: image {img['file_name']} is {h}x{w} (HxW) in the annotations but the file "
                f"{self.image_path(image_id)} is {size[0]}x{size[1]}; use the annotation file made for these images"
            )
        out = np.zeros((h, w), np.uint8)
        anns = self.coco.imgToAnns.get(img["id"], [])
        inst = []
        for a in anns:
            try:
                with warnings.catch_warnings():
                    # pycocotools' decode triggers a NumPy-2 copy-keyword DeprecationWarning per call
                    warnings.simplefilter("ignore", DeprecationWarning)
                    m = self.coco.annToMask(a).astype(bool)
            except Exception as e:  # pycocotools raises assorted types on broken segmentations
                raise S2CError(
                    f"{self.ann_path}: annotation {a.get('id')} of image {img['file_name']} has an unreadable "
                    f"segmentation ({e.__class__.__name__}: {e}); fix or drop it"
                ) from None
            if m.shape != (h, w):
                raise S2CError(f"{self.ann_path}: annotation {a.get('id')} mask size {m.shape} != image size {(h, w)}")
            if a.get("iscrowd", 0):
                out[m] = 255
            else:
                inst.append((-int(m.sum()), int(a["id"]), m, a["category_id"]))
        inst.sort(key=lambda t: (t[0], t[1]))
        for _, _, m, cat in inst:
            idx = self.cat_to_idx.get(cat)
            out[m] = 255 if idx is None else idx + 1
        return out
