"""Datasets: one entry point, :func:`open_dataset`, for every stage that reads images or labels.

``data_cfg`` is the config's ``data`` section. Keys (defaults in :data:`DATA_DEFAULTS`):

- ``kind``: ``"voc"`` (PASCAL VOC layout) or ``"coco"`` (COCO json + image folders).
- ``root`` (required): dataset root. VOC: the folder holding ``JPEGImages/``, ``Annotations/``,
  ``ImageSets/Segmentation/``, ``SegmentationClass[Aug]/``. COCO: the folder holding ``<split>/``
  image folders and ``annotations/instances_<split>.json``.
- ``class_set``: ``"voc20"`` or ``"coco80"`` (COCO only; VOC supports voc20 only).
- ``gt_dir``: VOC label-map folder relative to ``root``; ``None`` picks
  ``SegmentationClassAug`` when it exists, else ``SegmentationClass``.
- ``skip_corrupt``: when true, images that are missing or fail to decode are checked
  for once at open time, dropped from the split and listed (``SegDataset.skipped`` and a log
  warning); when false, a bad image raises :class:`~s2c.errors.S2CError` naming the file.
- ``cache_dir``: where derived per-split metadata (VOC image labels, corrupt-image
  scans) is cached as JSON. ``None`` → ``$XDG_CACHE_HOME/s2c/data/<sha of root>`` (default
  ``~/.cache``), so dataset folders (possibly read-only, or Snakemake outputs) are never written;
  no cache when that is not writable.
  Entries are keyed by the list file's bytes and every source file's size + mtime, so edits
  invalidate them.
- ``drop_unlabeled``: COCO only — drop images whose label vector is all zero (e.g. COCO
  images with none of the 20 VOC classes under ``voc20``); the count is logged.
- ``coco_splits``: COCO only — per-split overrides
  ``{split: {images: <dir rel. to root>, annotations: <json rel. to root>}}``; e.g. for the official
  layout ``{train: {images: train2017, annotations: annotations/instances_train2017.json}}``.
  Without an entry, split ``s`` reads ``<root>/s/`` and ``<root>/annotations/instances_s.json``.

Label conventions (see ``s2c/classes.py``): ``labels(id)`` is a float32 (C,) multi-hot over the
foreground classes 0..C-1; label maps use 0 = background, c+1 = class c, 255 = ignore.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import S2CError
from .base import DATA_DEFAULTS, SegDataset, gt_mask, resolve_data_cfg
from .coco import COCODataset, _split_paths
from .voc import VOCDataset


def open_dataset(data_cfg: dict, split: str) -> SegDataset:
    """Open split ``split`` of the dataset described by ``data_cfg`` (keys: see module docstring)."""
    cfg = resolve_data_cfg(data_cfg)
    root = Path(cfg["root"]).expanduser()
    if not root.is_dir():
        raise S2CError(f"data.root {root} is not a directory; set data.root to the dataset folder")
    kind = cfg["kind"]
    if kind == "voc":
        return VOCDataset(root, split, cfg)
    if kind == "coco":
        return COCODataset(root, split, cfg)
    raise S2CError(f"unknown data.kind {kind!r}; use 'voc' or 'coco'")


def split_list_file(data_cfg: dict, split: str) -> Path:
    """The file that defines a split's image list (VOC: ``ImageSets/Segmentation/<split>.txt``; COCO:
    the instances json, with ``data.coco_splits`` and the official ``<split>2017`` names applied,
    exactly as :class:`COCODataset` finds it). The workflow makes it a rule input, so editing a list
    reruns what depends on it."""
    cfg = resolve_data_cfg(data_cfg)
    root = Path(cfg["root"]).expanduser()
    if cfg["kind"] == "coco":
        return _split_paths(root, split, cfg)[1]
    return root / "ImageSets" / "Segmentation" / f"{split}.txt"


__all__ = ["DATA_DEFAULTS", "SegDataset", "gt_mask", "open_dataset", "resolve_data_cfg", "split_list_file"]
