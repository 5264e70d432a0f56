"""The dataset base class, the ``data`` section's defaults and the helpers voc.py / coco.py share.

:func:`s2c.data.open_dataset` is the entry point; this module is what the readers build on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..classes import class_names as _class_names
from ..config import merge_section
from ..errors import S2CError
from ..io import atomic_path, read_image

log = logging.getLogger(__name__)

DATA_DEFAULTS: dict[str, Any] = {
    "kind": "voc",
    "root": None,
    "class_set": "voc20",
    "gt_dir": None,
    "skip_corrupt": False,
    "cache_dir": None,
    "drop_unlabeled": True,
    "coco_splits": {},
}


class SegDataset:
    """A split of a segmentation dataset: ordered image ids with images, GT maps and image labels.

    Subclasses set ``root``, ``split``, ``class_set``, ``ids`` and implement ``_rel_image_path``,
    ``load_mask`` and ``labels``.

    Attributes:
        ids: ordered image ids (str).
        class_names: foreground class names, index = foreground class id.
        num_classes: C, the number of foreground classes.
        skipped: ``[(id, reason)]`` for images dropped by ``skip_corrupt``.
        has_masks: whether the split has GT label maps (VOC: any id has a PNG in ``gt_dir``;
            ``load_mask`` returns None for ids without one).
    """

    root: Path
    split: str
    class_set: str
    ids: list[str]
    skipped: list[tuple[str, str]]
    has_masks: bool = True

    @property
    def class_names(self) -> tuple[str, ...]:
        return _class_names(self.class_set)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self.ids)})"

    def _rel_image_path(self, image_id: str) -> str:
        """Image path relative to ``root`` (posix string)."""
        raise NotImplementedError

    def image_path(self, image_id: str) -> Path:
        """Absolute path of the image file of ``image_id``."""
        return self.root / self._rel_image_path(image_id)

    def load_image(self, image_id: str) -> np.ndarray:
        """RGB image, uint8 (H, W, 3). Raises S2CError naming the file when missing/corrupt."""
        return read_image(self.image_path(image_id))

    def load_mask(self, image_id: str) -> np.ndarray | None:
        """GT label map uint8 (H, W) (0 bg, c+1 class c, 255 ignore), or None without GT."""
        raise NotImplementedError

    def labels(self, image_id: str) -> np.ndarray:
        """Image-level multi-hot label, float32 (C,)."""
        raise NotImplementedError

    def image_list_hash(self) -> str:
        """sha256 (hex) of the ordered ``id\\trel_path\\n`` lines: identifies this exact image list."""
        h = hashlib.sha256()
        for i in self.ids:
            h.update(f"{i}\t{self._rel_image_path(i)}\n".encode())
        return h.hexdigest()


def resolve_data_cfg(data_cfg: dict) -> dict:
    """``data_cfg`` merged over :data:`DATA_DEFAULTS`, with unknown keys rejected."""
    if not isinstance(data_cfg, dict):
        raise S2CError(f"config 'data' must be a mapping, got {type(data_cfg).__name__}")
    cfg = merge_section(DATA_DEFAULTS, data_cfg, "data")
    if not cfg["root"]:
        raise S2CError("config 'data.root' is not set; point it at the dataset folder")
    return cfg


def gt_mask(ds: SegDataset, image_id: str) -> np.ndarray:
    """The GT label map uint8 (H, W) of ``image_id``; S2CError naming the expected file if absent."""
    m = ds.load_mask(image_id)
    if m is None:
        where = ds._mask_path(image_id) if hasattr(ds, "_mask_path") else f"the {ds.split} GT of {ds.root}"
        raise S2CError(f"no ground-truth label map for image {image_id!r}: {where} is missing; "
                       "evaluate a split whose images all have masks (e.g. VOC train, val)")
    return m


# ---- small helpers shared by voc.py / coco.py -------------------------------------------------

def cache_dir_for(root: Path, cfg: dict) -> Path | None:
    """The metadata cache folder, or None when caching is not possible (read-only root)."""
    if cfg["cache_dir"]:
        d = Path(cfg["cache_dir"]).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        d = base / "s2c" / "data" / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return d if os.access(d, os.W_OK) else None


def file_stamp(path: Path) -> str:
    """``size:mtime_ns`` of a file, or ``-`` when absent; cheap change detection for caches."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "-"
    return f"{st.st_size}:{st.st_mtime_ns}"


def cached_json(cache: Path | None, name: str, key: str, compute):
    """Return ``compute()``, memoised in ``cache/name`` under ``key`` (recomputed on key change)."""
    if cache is None:
        return compute()
    path = cache / name
    if path.is_file():
        try:
            with open(path) as f:
                blob = json.load(f)
            if blob.get("key") == key:
                return blob["value"]
        except (OSError, ValueError):
            pass  # unreadable cache: just recompute and overwrite
    value = compute()
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                json.dump({"key": key, "value": value}, f)
    except OSError as e:
        log.warning("could not write cache %s (%s); continuing without it", path, e)
    return value


def scan_images(paths: dict[str, Path]) -> dict[str, str]:
    """Decode every image fully; return ``{id: reason}`` for the missing or corrupt ones."""
    bad = {}
    for i, p in paths.items():
        try:
            read_image(p)
        except S2CError as e:
            bad[i] = str(e)
    return bad


def drop_corrupt(ds: SegDataset, cache: Path | None) -> None:
    """``skip_corrupt``: remove bad images from ``ds.ids`` (cached scan), record and log them."""
    paths = {i: ds.image_path(i) for i in ds.ids}
    h = hashlib.sha256()
    for i, p in paths.items():
        h.update(f"{i}\t{p}\t{file_stamp(p)}\n".encode())
    bad = cached_json(cache, f"corrupt_{ds.split}.json", h.hexdigest(), lambda: scan_images(paths))
    if bad:
        ds.skipped = [(i, bad[i]) for i in ds.ids if i in bad]
        ds.ids = [i for i in ds.ids if i not in bad]
        log.warning(
            "skip_corrupt: dropped %d image(s) from split %r: %s",
            len(ds.skipped), ds.split, ", ".join(str(paths[i]) for i, _ in ds.skipped),
        )
