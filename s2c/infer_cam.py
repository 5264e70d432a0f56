"""Multi-scale × flip CAM inference into one compact HDF5 store per (run, split).

For every image of a split, the trained classifier runs at scales (0.5, 1, 1.5, 2) on the image
and its horizontal flip (METHOD.md §7); ReLU CAMs of the image's *labelled* classes are resized to
the image size, summed, and each class is divided by its max. The store holds, per image,
the (K, H, W) float16 CAMs and the K foreground class indices — nothing for absent classes, which
keeps a VOC train store at ~1/10 of a dense one.

Store layout (HDF5, format version :data:`STORE_VERSION`)::

    /images/<id>/cams     float16 (K, H, W), values in [0, 1], lzf-compressed
    /images/<id>/classes  int16 (K,), foreground indices 0..C-1 (ascending)
    attrs: format_version, split, class_set, class_names (C,), num_classes, ids (ordered),
           scales, flip, model_sha256, image_list_hash

CLI::

    python -m s2c.infer_cam --model M.pt --data-cfg '{...}' --split train --out cams.h5 \
        --cfg '{"scales": [0.5, 1, 1.5, 2], "flip": true}' --device auto --weights-dir weights
"""

from __future__ import annotations

import argparse
import contextlib
import json
import warnings
from pathlib import Path
from typing import Callable, Iterator, Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data.transforms import normalize
from .config import merge_section
from .cli import parse_json_arg  # noqa: F401  (re-exported: older imports)
from .errors import S2CError, cli_main
from .io import atomic_path, sha256_file

STORE_VERSION = 1

DEFAULTS: dict = {
    "scales": [0.5, 1.0, 1.5, 2.0],
    "flip": True,
}


# ----------------------------------------------------------------------------- model
def load_classifier(path: str | Path, weights_dir: str | Path | None = None,
                    device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load a trained CAM classifier saved as {"model", "cam_cfg", "num_classes", "class_set"}.

    Returns (model in eval mode on ``device``, the file's metadata without the state dict).
    """
    from .models import build_classifier

    path = Path(path)
    if not path.is_file():
        raise S2CError(f"model file not found: {path} (run train_cam first)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt/foreign files
        raise S2CError(f"cannot read model file {path} ({e.__class__.__name__}); re-run train_cam") from None
    missing = [k for k in ("model", "cam_cfg", "num_classes") if k not in ckpt]
    if missing:
        raise S2CError(f"model file {path} lacks key(s) {missing}; it is not a train_cam output")
    # pretrained weights are overwritten by the state dict: never download/read them here
    cam_cfg = dict(ckpt["cam_cfg"], pretrained=False)
    with warnings.catch_warnings():
        # the builder warns about frozen BN without pretrained weights; here the trained state
        # dict (BN statistics included) replaces everything right away
        warnings.filterwarnings("ignore", message=".*freeze_bn.*", category=UserWarning)
        model = build_classifier(cam_cfg, int(ckpt["num_classes"]), weights_dir)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise S2CError(f"model file {path} does not match its cam_cfg ({str(e).splitlines()[0]})") from None
    meta = {k: v for k, v in ckpt.items() if k != "model"}
    return model.to(device).eval(), meta


@torch.no_grad()
def multiscale_cams(model: torch.nn.Module, image: np.ndarray, classes: Sequence[int],
                    scales: Sequence[float] = (0.5, 1.0, 1.5, 2.0), flip: bool = True,
                    device: torch.device | str = "cpu") -> np.ndarray:
    """Multi-scale (× flip) CAMs of ``classes`` for one image.

    image: uint8 (H, W, 3) RGB. classes: K foreground indices. Returns float32 (K, H, W): the sum
    over scales/flips of ReLU CAMs bilinearly resized to (H, W), each class divided by its max
    (+1e-5, as in the reference code, so an all-zero CAM stays 0).
    """
    H, W = image.shape[:2]
    classes = torch.as_tensor(list(classes), dtype=torch.long)
    if classes.numel() == 0:
        return np.zeros((0, H, W), np.float32)
    x = normalize(image).unsqueeze(0).to(device)
    acc = torch.zeros((classes.numel(), H, W), device=device)
    for s in scales:
        size = (max(1, round(H * s)), max(1, round(W * s)))
        xs = x if size == (H, W) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if flip:
            xs = torch.cat([xs, xs.flip(-1)], 0)
        cams = F.relu(model(xs)["cams"][:, classes.to(device)])
        if flip:
            cams = cams[:1] + cams[1:].flip(-1)
        acc += F.interpolate(cams, size=(H, W), mode="bilinear", align_corners=False)[0]
    acc /= acc.flatten(1).amax(1)[:, None, None] + 1e-5
    return acc.float().cpu().numpy()


# ----------------------------------------------------------------------------- store
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


def infer_cams(model_path: str | Path, data_cfg: dict, split: str, out: str | Path,
               cfg: dict | None = None, device: str = "auto",
               weights_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Run multi-scale CAM inference over ``split`` and write the HDF5 store ``out`` atomically."""
    from .data import open_dataset
    from .train_utils import select_device

    cfg = merge_section(DEFAULTS, cfg, "infer_cam")
    scales = [float(s) for s in cfg["scales"]]
    if not scales or any(s <= 0 for s in scales):
        raise S2CError(f"infer_cam: 'scales' must be a non-empty list of positive numbers, got {cfg['scales']}")
    dev = select_device(device)
    model, meta = load_classifier(model_path, weights_dir, dev)
    ds = open_dataset(data_cfg, split)
    if int(meta["num_classes"]) != ds.num_classes:
        raise S2CError(f"model {model_path} has {meta['num_classes']} classes but the dataset has "
                       f"{ds.num_classes}; use the model trained for this class set")
    attrs = {
        "split": split, "class_set": str(meta.get("class_set", data_cfg.get("class_set", ""))),
        "class_names": list(ds.class_names), "ids": list(ds.ids), "scales": scales,
        "flip": bool(cfg["flip"]), "model_sha256": sha256_file(model_path),
        "image_list_hash": ds.image_list_hash() if hasattr(ds, "image_list_hash") else "",
    }
    outside = [0, 0]  # (image, scale) pairs whose long side falls outside the training range
    train_range = training_long_side_range(meta)
    with write_cam_store(out, attrs) as put:
        for image_id in tqdm(ds.ids, desc=f"infer_cam {split}", disable=not progress):
            classes = np.flatnonzero(np.asarray(ds.labels(image_id)) > 0.5)
            image = ds.load_image(image_id)
            if train_range is not None:
                for s in scales:
                    outside[0] += not train_range[0] / 1.5 <= s * max(image.shape[:2]) <= train_range[1] * 1.5
                    outside[1] += 1
            put(image_id, multiscale_cams(model, image, classes, scales, cfg["flip"], dev),
                classes)
    if outside[1] and outside[0] > outside[1] / 2:
        warnings.warn(f"infer_cam: {outside[0]} of {outside[1]} (image, scale) pairs have a long side outside "
                      f"1.5x the training range {list(train_range)} px (cam.augment.resize_long): CAMs at "
                      "scales the classifier never saw are weaker; choose infer_cam.scales so that "
                      "scale x image size lies in that range", stacklevel=2)
    return Path(out)


def training_long_side_range(meta: dict) -> tuple[float, float] | None:
    """(lo, hi) long side in pixels the classifier was trained at (``cam.augment.resize_long`` in
    model.pt's config), or None when the model does not record one."""
    from .data.transforms import TrainAugment

    try:
        lo, hi = TrainAugment((meta.get("cam_cfg") or {}).get("augment") or {}).resize_long
        return float(lo), float(hi)
    except (S2CError, TypeError, ValueError):  # an old or foreign model.pt: no check to make
        return None


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


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m s2c.infer_cam", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True, help="trained classifier (train_cam output)")
    p.add_argument("--data-cfg", required=True, help="JSON of the config's data section")
    p.add_argument("--split", required=True, help="image list to run on (train, val, ...)")
    p.add_argument("--out", type=Path, required=True, help="output HDF5 store")
    p.add_argument("--cfg", default="{}", help="JSON: infer_cam section (scales, flip)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda[:N]")
    p.add_argument("--weights-dir", type=Path, default=None, help="pretrained weights folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    a = p.parse_args(argv)
    infer_cams(a.model, parse_json_arg(a.data_cfg, "--data-cfg"), a.split, a.out,
               parse_json_arg(a.cfg, "--cfg"), a.device, a.weights_dir, progress=not a.no_progress)
    return 0


if __name__ == "__main__":
    main()
