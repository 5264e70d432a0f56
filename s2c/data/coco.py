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
import hashlib
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np

from ..classes import coco_category_to_index
from ..errors import S2CError
from .base import SegDataset, cache_dir_for, cached_json, drop_corrupt, file_stamp
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


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_segmentation(seg) -> bool:
    """COCO's two forms, checked in shape only (the numbers are pycocotools' to read): a non-empty
    list of polygons of at least three points, or an RLE with ``counts`` and ``size``."""
    if isinstance(seg, dict):
        return "counts" in seg and "size" in seg
    return (isinstance(seg, list) and len(seg) > 0
            and all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in seg))


def check_coco_json(blob, ann_path: Path) -> None:
    """Raise S2CError naming ``ann_path`` and the first entry the reader could not use.

    What the reader relies on: image entries with an integer ``id`` (unique), a relative
    ``file_name`` (unique stem: the image id) and positive ``height`` / ``width``; annotations with
    unique integer ids, an ``image_id`` some image entry has, an integer ``category_id`` some
    category entry has and a ``segmentation`` of COCO's shape; categories with unique integer ids. Anything else
    would be a KeyError deep in a job, or an annotation silently ignored.
    """
    def bad(what: str):
        raise S2CError(f"malformed COCO annotation file {ann_path}: {what}; re-download it or fix the entry")

    if not isinstance(blob, dict) or not isinstance(blob.get("images"), list):
        bad("no 'images' list at the top level")
    for key in ("annotations", "categories"):
        if key in blob and not isinstance(blob[key], list):
            bad(f"'{key}' is not a list")
    stems: dict[str, int] = {}
    for k, im in enumerate(blob["images"]):
        if not isinstance(im, dict) or not _is_int(im.get("id")):
            bad(f"images[{k}] has no integer 'id'")
        where = f"images[{k}] (id {im['id']})"
        name = im.get("file_name")
        if not isinstance(name, str) or not name.strip():
            bad(f"{where} has no 'file_name'")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            bad(f"{where} has file_name {name!r} outside the image folder")
        for dim in ("height", "width"):
            if not _is_int(im.get(dim)) or im[dim] < 1:
                bad(f"{where} has no positive integer '{dim}' (got {im.get(dim)!r})")
        stem = Path(name).stem
        if stem in stems:
            bad(f"images {stems[stem]} and {im['id']} share the file name stem {stem!r} (the image id)")
        stems[stem] = im["id"]
    image_ids = set(stems.values())
    if len(image_ids) < len(stems):
        seen: set[int] = set()
        dup = next(i for i in stems.values() if i in seen or seen.add(i))
        bad(f"two image entries have id {dup}")
    cat_ids: set[int] | None = set() if "categories" in blob else None
    for k, c in enumerate(blob.get("categories", [])):
        if not isinstance(c, dict) or not _is_int(c.get("id")):
            bad(f"categories[{k}] has no integer 'id'")
        if c["id"] in cat_ids:
            bad(f"two categories have id {c['id']}")
        cat_ids.add(c["id"])
    ann_ids: set[int] = set()
    for k, a in enumerate(blob.get("annotations", [])):
        if not isinstance(a, dict) or not _is_int(a.get("id")):
            bad(f"annotations[{k}] has no integer 'id'")
        where = f"annotations[{k}] (id {a['id']})"
        if a["id"] in ann_ids:
            bad(f"two annotations have id {a['id']}")
        ann_ids.add(a["id"])
        if not _is_int(a.get("image_id")) or a["image_id"] not in image_ids:
            bad(f"{where} points at image id {a.get('image_id')!r}, which no image entry has")
        if not _is_int(a.get("category_id")):
            bad(f"{where} has no integer 'category_id'")
        if cat_ids is not None and a["category_id"] not in cat_ids:
            bad(f"{where} has category_id {a['category_id']}, which no category entry has")
        if not _is_segmentation(a.get("segmentation")):
            bad(f"{where} has no 'segmentation' (polygons [[x, y, ...], ...] or an RLE {{counts, size}}), "
                f"got {str(a.get('segmentation'))[:60]}")
        if a.get("iscrowd", 0) not in (0, 1) or isinstance(a.get("iscrowd"), bool):
            bad(f"{where} has iscrowd {a.get('iscrowd')!r} (0 or 1)")
        if "area" in a and (isinstance(a["area"], bool) or not isinstance(a["area"], (int, float))):
            bad(f"{where} has a non-numeric 'area' {a['area']!r}")


def read_coco_json(ann_path: Path) -> dict:
    """The parsed and checked (:func:`check_coco_json`) instances json of a split."""
    if not ann_path.is_file():
        raise S2CError(
            f"COCO annotation file not found: {ann_path}; check data.root or map the split with "
            "data.coco_splits: {<split>: {images: <dir>, annotations: <json>}}"
        )
    try:
        with open(ann_path, "rb") as f:
            blob = json.load(f)
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise S2CError(f"malformed COCO annotation file {ann_path}: it does not parse as JSON "
                       f"({e.__class__.__name__}: {e}); re-download it") from None
    check_coco_json(blob, ann_path)
    return blob


#: Bump when :func:`check_coco_json` checks more: cached image lists of older checks are redone.
IMAGE_LIST_CHECK = 1


def coco_image_files(image_dir: Path, ann_path: Path, cache: Path | None) -> list[Path]:
    """The image file of every image entry of ``ann_path`` (checked), in entry order.

    The workflow's DAG-build check calls this each time Snakemake starts: the file names are cached
    in ``cache`` keyed by the json's size and mtime, so the json is parsed once per edit.
    """
    key = f"{IMAGE_LIST_CHECK}\t{ann_path.resolve()}\t{file_stamp(ann_path)}"
    name = f"coco_images_{hashlib.sha256(str(ann_path.resolve()).encode()).hexdigest()[:16]}.json"
    names = cached_json(cache, name, key, lambda: [im["file_name"] for im in read_coco_json(ann_path)["images"]])
    return [image_dir / n for n in names]


def _load_coco(ann_path: Path):
    # pycocotools pulls in matplotlib at import: only COCO datasets pay for it
    from pycocotools.coco import COCO

    blob = read_coco_json(ann_path)
    coco = COCO()
    coco.dataset = blob
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
        coco.createIndex()
    return coco


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
        for im in imgs:  # entries checked by read_coco_json: stems are unique
            stem = Path(im["file_name"]).stem
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
