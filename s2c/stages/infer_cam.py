"""Multi-scale × flip CAM inference into one compact HDF5 store per (run, split).

For every image of a split, the trained classifier runs at the ``infer_cam`` scales on the image
and (``flip``) its horizontal flip (METHOD.md §7); ReLU CAMs of the image's *labelled* classes are resized to
the image size, summed, and each class is divided by its max. The store holds, per image,
the (K, H, W) float16 CAMs and the K foreground class indices — nothing for absent classes, which
keeps a VOC train store at ~1/10 of a dense one.

The store layout and its reader are :mod:`s2c.cam_store` (``CAMStore``, ``write_cam_store``).

CLI::

    s2c infer_cam --model M.pt --data-cfg '{...}' --split train --out cams.h5 \
        --cfg '{"scales": [0.5, 1, 1.5, 2], "flip": true}' --device auto --weights-dir weights
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..cam_store import STORE_VERSION, CAMStore, write_cam_store
from ..cli import parse_json_arg
from ..data import open_dataset
from ..data.transforms import TrainAugment
from ..errors import S2CError, cli_main
from ..inference import load_classifier, multiscale_cams
from ..io import sha256_file
from ..sections import INFER_CAM_DEFAULTS as DEFAULTS
from ..sections import resolve_infer_cam
from ..train_utils import select_device

__all__ = ["DEFAULTS", "STORE_VERSION", "CAMStore", "write_cam_store", "load_classifier", "multiscale_cams",
           "infer_cams", "main"]


def infer_cams(model_path: str | Path, data_cfg: dict, split: str, out: str | Path,
               cfg: dict | None = None, device: str = "auto",
               weights_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Run multi-scale CAM inference over ``split`` and write the HDF5 store ``out`` atomically."""
    cfg = resolve_infer_cam(cfg)
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
    try:
        lo, hi = TrainAugment((meta.get("cam_cfg") or {}).get("augment") or {}).resize_long
        return float(lo), float(hi)
    except (S2CError, TypeError, ValueError):  # an old or foreign model.pt: no check to make
        return None


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s2c infer_cam", description=__doc__.split("\n")[0])
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
