"""The CAM store: one compact HDF5 file of multi-scale CAMs per (run, split), written by
:mod:`s2c.stages.infer_cam` and read by eval_cam, pseudo_labels and the figures.

Layout (format version :data:`STORE_VERSION`)::

    /images/<id>/cams     float16 (K, H, W), values in [0, 1], lzf-compressed
    /images/<id>/classes  int16 (K,), foreground indices 0..C-1 (ascending)
    attrs: format_version, split, class_set, class_names (C,), num_classes, ids (ordered),
           scales, flip, model_sha256, image_list_hash

Only the K labelled classes of an image are stored (nothing for absent classes), which keeps a VOC
train store at ~1/10 of a dense one.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, Sequence

import h5py
import numpy as np

from .errors import S2CError
from .io import atomic_path

STORE_VERSION = 1


class CAMStore:
    """Reader of an infer_cam HDF5 store; opens lazily (safe to create before forking workers).

    ``get(id) -> (cams float32 (K, H, W), classes int64 (K,))``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise S2CError(f"CAM store not found: {self.path} (run infer_cam for this split first)")
        self._f: h5py.File | None = None
        f = self._file()
        version = int(f.attrs.get("format_version", -1))
        if version != STORE_VERSION:
            raise S2CError(f"CAM store {self.path} has format version {version}, expected {STORE_VERSION}; "
                           "delete it and re-run infer_cam")
        self.attrs = {k: _py(v) for k, v in f.attrs.items()}
        self.ids: list[str] = list(self.attrs["ids"])
        self.class_names: list[str] = list(self.attrs["class_names"])
        self.num_classes: int = int(self.attrs["num_classes"])
        self.close()  # re-opened on first get(), in the process that reads

    def _file(self) -> h5py.File:
        if self._f is None:
            try:
                self._f = h5py.File(self.path, "r")
            except OSError as e:
                raise S2CError(f"cannot open CAM store {self.path} ({e}); delete it and re-run infer_cam") from None
        return self._f

    def __contains__(self, image_id: str) -> bool:
        return f"images/{image_id}" in self._file()

    def get(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        f = self._file()
        key = f"images/{image_id}"
        if key not in f:
            raise S2CError(f"CAM store {self.path} has no image {image_id!r}; re-run infer_cam for this split")
        g = f[key]
        return g["cams"][()].astype(np.float32), g["classes"][()].astype(np.int64)

    def check_covers(self, ids: Sequence[str], class_names: Sequence[str], split: str = "") -> None:
        """Refuse a store made for another class list or lacking some of ``ids`` (a store of a
        superset split, e.g. train_aug for evaluating train, is fine)."""
        if list(class_names) != self.class_names:
            raise S2CError(f"CAM store {self.path} was made for another class list; re-run infer_cam")
        have = set(self.ids)
        missing = [i for i in ids if i not in have]
        if missing:
            raise S2CError(f"CAM store {self.path} (split {self.attrs.get('split')!r}) lacks {len(missing)} "
                           f"image(s) of split {split!r}, e.g. {missing[0]!r}; run infer_cam on a split "
                           "containing them")

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __getstate__(self):  # picklable for DataLoader workers: the handle is reopened there
        d = dict(self.__dict__)
        d["_f"] = None
        return d


def _py(v):
    if isinstance(v, np.ndarray):
        return [x.decode() if isinstance(x, bytes) else x.item() if hasattr(x, "item") else x for x in v]
    if isinstance(v, bytes):
        return v.decode()
    return v.item() if hasattr(v, "item") else v


@contextlib.contextmanager
def write_cam_store(out: str | Path, attrs: dict) -> Iterator[Callable[[str, np.ndarray, np.ndarray], None]]:
    """Write a CAM store atomically; yields ``put(id, cams float (K, H, W), classes int (K,))``.

    attrs must hold split, class_names and ids (the ordered image list); format_version and
    num_classes are added. The file appears at ``out`` only when the block completes.
    """
    missing = {"split", "class_names", "ids"} - set(attrs)
    if missing:
        raise ValueError(f"write_cam_store: attrs lack {sorted(missing)}")
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({**attrs, "format_version": STORE_VERSION, "num_classes": len(attrs["class_names"])})
        images = f.create_group("images")

        def put(image_id: str, cams: np.ndarray, classes: np.ndarray) -> None:
            classes = np.asarray(classes).reshape(-1)
            if cams.ndim != 3 or cams.shape[0] != classes.size:
                raise ValueError(f"put({image_id!r}): cams {cams.shape} vs {classes.size} classes")
            g = images.create_group(image_id)
            # one chunk per class map: readers take whole images; lzf is cheap to decode
            kw = dict(compression="lzf", chunks=(1, *cams.shape[1:])) if classes.size else {}
            g.create_dataset("cams", data=np.asarray(cams, dtype=np.float16), **kw)
            g.create_dataset("classes", data=classes.astype(np.int16))

        yield put
