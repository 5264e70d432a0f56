"""A trained segmentation model (and, on request, the CAM classifier) on a folder of new images.

Every image file of ``--images`` (PNG, JPEG and whatever else PIL reads; any size; grey, CMYK,
palette or alpha; turned upright by its EXIF orientation) gives, in ``--out``:

- ``<name>.png``: the label map as a VOC-palette PNG at the image's (upright) size, 0 = background,
  c+1 = class c of the model's class set (``model.pt`` records the class names);
- ``<name>_overlay.jpg``: the label colours blended over the image;
- with ``--cam-model`` and ``--classes``: ``<name>_cam_<class>.jpg``, the classifier's multi-scale
  CAM of each given class over the image (CAMs need the image-level labels, which new images lack:
  you name the classes to show);
- ``predictions.tsv``: per image, its size and the classes present in the label map.

Sub-folders are kept (``a/b.jpg`` → ``<out>/a/b.png``). The output folder appears when all images
are done (atomic), so an interrupted run leaves nothing that looks complete.

CLI::

    s2c predict --model results/run/seg/model.pt --images photos/ --out predictions/ \
        [--scales 0.75 1 1.25 --flip] [--cam-model results/run/cam/model.pt --classes dog person]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..classes import class_names as class_set_names
from ..classes import voc_palette
from ..data.transforms import normalize
from ..errors import S2CError, cli_main
from ..inference import load_classifier, load_seg_model, multiscale_cams, predict_probs, read_any_image
from ..io import atomic_path
from ..plots import cam_overlay, colorize
from ..train_utils import select_device

__all__ = ["image_files", "predict_folder", "main"]

#: Files PIL cannot open but that are common in photo folders: skipped without a message.
_SKIP = {".txt", ".json", ".xml", ".csv", ".tsv", ".md", ".db", ".ini", ".ds_store"}


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (by extension PIL registers), sorted, hidden files skipped."""
    exts = {e.lower() for e in Image.registered_extensions()}
    files = [p for p in folder.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts)
             and p.suffix.lower() in exts and p.suffix.lower() not in _SKIP]
    return sorted(files)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _classes_of(meta: dict) -> list[str]:
    names = meta.get("class_names") or list(class_set_names(meta.get("class_set") or "voc20"))
    return list(names)


def predict_folder(model_path: str | Path, images: str | Path, out: str | Path, scales: Sequence[float] = (1.0,),
                   flip: bool = False, cam_model: str | Path | None = None, classes: Sequence[str] = (),
                   cam_scales: Sequence[float] = (1.0,), device: str = "auto",
                   weights_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Predict every image of ``images`` into ``out`` (see the module docstring). Returns ``out``."""
    images = Path(images)
    if not images.is_dir():
        raise S2CError(f"--images {images} is not a folder; point it at a folder of image files")
    files = image_files(images)
    if not files:
        raise S2CError(f"no image files in {images} (looked for {', '.join(sorted({'.jpg', '.png', '.jpeg'}))} "
                       "and the other formats PIL reads)")
    dev = select_device(device)
    model, meta = load_seg_model(model_path, weights_dir, dev)
    names = _classes_of(meta)
    if len(names) + 1 != int(meta["num_classes"]):
        raise S2CError(f"model {model_path} has {meta['num_classes']} labels but records {len(names)} class names")
    cam_net, cam_idx = None, []
    if classes and cam_model is None:
        raise S2CError("--classes needs --cam-model (the CAM classifier, train_cam's model.pt)")
    if cam_model is not None:
        if not classes:
            raise S2CError("--cam-model needs --classes: the image-level labels whose CAMs to show")
        cam_net, cam_meta = load_classifier(cam_model, weights_dir, dev)
        cam_names = list(class_set_names(cam_meta.get("class_set") or "voc20"))
        unknown = [c for c in classes if c not in cam_names]
        if unknown:
            raise S2CError(f"--classes {unknown} not in the classifier's class set {cam_meta.get('class_set')!r}: "
                           f"{', '.join(cam_names)}")
        cam_idx = [cam_names.index(c) for c in classes]
    palette = voc_palette()
    rows = ["file\theight\twidth\tclasses"]
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for f in tqdm(files, desc="predict", disable=not progress):
            image = read_any_image(f)
            rel = f.relative_to(images).with_suffix("")
            stem = tmp / rel.parent / _safe(rel.name)
            stem.parent.mkdir(parents=True, exist_ok=True)
            probs = predict_probs(model, normalize(image).to(dev), [float(s) for s in scales], flip)
            pred = probs.argmax(0).to(torch.uint8).cpu().numpy()
            im = Image.fromarray(pred, mode="P")
            im.putpalette(palette)
            im.save(stem.with_name(stem.name + ".png"))
            blend = np.where(pred[..., None] > 0, 0.5 * image + 0.5 * colorize(pred), image).astype(np.uint8)
            Image.fromarray(blend).save(stem.with_name(stem.name + "_overlay.jpg"), quality=90)
            if cam_net is not None:
                cams = multiscale_cams(cam_net, image, cam_idx, cam_scales, True, dev)
                for name, cam in zip(classes, cams):
                    Image.fromarray(cam_overlay(image, cam)).save(
                        stem.with_name(f"{stem.name}_cam_{_safe(name)}.jpg"), quality=90)
            present = [names[c - 1] for c in np.unique(pred) if c > 0]
            rows.append(f"{rel.as_posix()}\t{image.shape[0]}\t{image.shape[1]}\t{','.join(present)}")
        (tmp / "predictions.tsv").write_text("\n".join(rows) + "\n")
    return Path(out)


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s2c predict", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True, help="segmentation model.pt written by train_seg")
    p.add_argument("--images", type=Path, required=True, help="folder of image files (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="output folder (label PNGs, overlays, predictions.tsv)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="test-time scales (averaged)")
    p.add_argument("--flip", action="store_true", help="also average the horizontally flipped image")
    p.add_argument("--cam-model", type=Path, default=None, help="CAM classifier model.pt (train_cam) for CAM overlays")
    p.add_argument("--classes", nargs="+", default=[], help="class names whose CAMs to draw (with --cam-model)")
    p.add_argument("--cam-scales", type=float, nargs="+", default=[1.0], help="CAM scales (with flip)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--weights-dir", type=Path, default=None, help="where backbone weights are cached")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    a = p.parse_args(argv)
    out = predict_folder(a.model, a.images, a.out, a.scales, a.flip, a.cam_model, a.classes, a.cam_scales,
                         a.device, a.weights_dir, progress=not a.no_progress)
    print(f"predict: wrote {out}")
    return 0


if __name__ == "__main__":
    main()
