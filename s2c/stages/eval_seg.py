"""Evaluate the segmentation network on a split (METHOD.md §7, "Segmentation").

Loads ``model.pt`` written by ``train_seg``, predicts every image with multi-scale (+ flip)
inference — softmax probabilities resized to the image and averaged — optionally refines them with
denseCRF (:mod:`s2c.refine.crf`), writes one palette PNG ``<id>.png`` per image into ``--out-dir``
(the whole directory appears atomically) and ``--out-json`` = ``{"miou": %, "iou": {class: %},
"n_images": N, ...}`` from one confusion matrix over the split (:mod:`s2c.metrics`).

A split without GT (VOC ``test``) is predicted, not scored (``miou`` null, ``"scored": false``).
``--submission out.tar.gz`` packs the palette PNGs in the layout an evaluation server takes: VOC
``results/VOC2012/Segmentation/comp6_<split>_cls/<id>.png`` (the PASCAL server's competition 6,
outside data allowed: the ImageNet-pretrained backbone), COCO ``<split>/<id>.png`` label PNGs.

Usage::

    s2c eval_seg --model out/seg/model.pt --data-cfg '{"root": "data/voc"}' --split val \
        --out-json metrics/seg_val.json --out-dir out/seg/pred_val --cfg '{"scales": [0.5, 0.75, 1, 1.25, 1.5], "flip": true}'
"""

from __future__ import annotations

import argparse
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .. import train_utils as tu
from ..classes import voc_palette
from ..cli import parse_json_arg
from ..data import open_dataset
from ..data.seg_train import normalize_image
from ..errors import S2CError, cli_main
from ..inference import load_seg_model, predict_probs
from ..io import atomic_path
from ..metrics import confusion_matrix, with_background, write_metrics
from ..refine.crf import dense_crf, require_densecrf
from ..sections import EVAL_SEG_DEFAULTS as DEFAULTS
from ..sections import EVAL_SEG_CRF_DEFAULTS as CRF_DEFAULTS
from ..sections import eval_seg_crf, resolve_eval_seg

__all__ = ["DEFAULTS", "CRF_DEFAULTS", "predict_probs", "load_seg_model", "save_palette_png", "eval_seg", "main"]


class _EvalImages(Dataset):
    """(id, uint8 image (H,W,3), uint8 GT (H,W) or None) per item, read in DataLoader workers."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds.ids)

    def __getitem__(self, i: int):
        iid = self.ds.ids[i]
        return iid, self.ds.load_image(iid), self.ds.load_mask(iid)


def _identity(x):
    return x  # keep numpy arrays and None as they are (DataLoader's default converts them)


def save_palette_png(path: Path, label: np.ndarray) -> None:
    """Write a uint8 (H,W) label map as a VOC-palette PNG."""
    im = Image.fromarray(label.astype(np.uint8), mode="P")
    im.putpalette(voc_palette())
    im.save(path)


def eval_seg(model_path: str | Path, data_cfg: dict, split: str, out_json: str | Path,
             out_dir: str | Path | None = None, cfg: dict | None = None, device: str = "auto",
             weights_dir: str | Path | None = None, submission: str | Path | None = None) -> dict:
    """Predict ``split`` with the model and score it; returns the metrics dict written to out_json.
    With ``submission`` (a ``.tar.gz`` path) the predictions are also packed in the server layout.

    Images without GT (e.g. a test split) are predicted and saved but not scored; ``n_images`` counts
    the scored ones and ``miou`` is null when none has GT.
    """
    cfg = resolve_eval_seg(cfg)
    scales = [float(s) for s in cfg["scales"]]
    dev = tu.select_device(device)
    model, meta = load_seg_model(model_path, weights_dir, dev)
    ds = open_dataset(data_cfg, split)
    K = meta["num_classes"]
    if meta.get("class_set") != ds.class_set or K != ds.num_classes + 1:
        raise S2CError(f"model {model_path} was trained for class_set {meta.get('class_set')!r} ({K} labels) "
                       f"but data.class_set is {ds.class_set!r}; use the matching model or data config")
    crf = eval_seg_crf(cfg["crf"])
    if crf is not None:
        require_densecrf()  # fail before the first image when the CRF package is missing
    cm = np.zeros((K, K), np.int64)
    n_scored = 0
    loader = DataLoader(_EvalImages(ds), batch_size=None, num_workers=cfg["num_workers"], collate_fn=_identity)
    use_amp = bool(cfg["amp"]) and dev.type == "cuda"

    def run(png_dir: Path | None) -> None:
        nonlocal cm, n_scored
        for iid, image, gt in tqdm(loader, desc=f"eval_seg {split}", total=len(ds.ids)):
            with torch.autocast(dev.type, enabled=use_amp):
                probs = predict_probs(model, normalize_image(image).to(dev), scales, cfg["flip"])
            probs = probs.cpu().numpy()
            if crf is not None:
                probs = dense_crf(image, probs, **crf)
            pred = probs.argmax(0).astype(np.uint8)
            if png_dir is not None:
                save_palette_png(png_dir / f"{iid}.png", pred)
            if gt is not None:
                cm += confusion_matrix(pred, gt, K)
                n_scored += 1

    if out_dir is None and submission is None:
        run(None)
    elif out_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            run(Path(tmp))
            pack_submission(Path(tmp), ds.ids, data_cfg.get("kind", "voc"), split, submission)
    else:
        with atomic_path(out_dir) as tmp:
            tmp.mkdir()
            run(tmp)
            if submission is not None:
                pack_submission(tmp, ds.ids, data_cfg.get("kind", "voc"), split, submission)
    return write_metrics(out_json, cm, with_background(ds.class_names), n_images=n_scored,
                         n_predicted=len(ds.ids), split=split, scales=scales, flip=bool(cfg["flip"]),
                         crf=cfg["crf"] not in (False, None), scored=n_scored > 0)


def submission_dir(kind: str, split: str) -> str:
    """The folder of the predictions inside a submission archive (VOC: the PASCAL server's layout)."""
    return f"results/VOC2012/Segmentation/comp6_{split}_cls" if kind == "voc" else split


def pack_submission(png_dir: Path, ids, kind: str, split: str, out: str | Path) -> Path:
    """``<png_dir>/<id>.png`` for every id → a gzipped tar at ``out`` (atomic) in the server layout."""
    inner = submission_dir(kind, split)
    with atomic_path(out) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for iid in ids:
            tar.add(png_dir / f"{iid}.png", arcname=f"{inner}/{iid}.png")
    return Path(out)


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s2c eval_seg", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True, help="model.pt written by train_seg")
    p.add_argument("--data-cfg", required=True, help="the config's data section (JSON or @file.json)")
    p.add_argument("--split", required=True, help="split to evaluate, e.g. val")
    p.add_argument("--out-json", type=Path, required=True, help="metrics JSON (e.g. metrics/seg_val.json)")
    p.add_argument("--out-dir", type=Path, default=None, help="directory for <id>.png predictions (optional)")
    p.add_argument("--cfg", default="{}", help="eval config (JSON); defaults in s2c.sections.EVAL_SEG_DEFAULTS")
    p.add_argument("--weights-dir", type=Path, default=None, help="where backbone weights are cached")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--submission", type=Path, default=None,
                   help="also pack the predictions as a .tar.gz in the evaluation server's layout")
    a = p.parse_args(argv)
    m = eval_seg(a.model, parse_json_arg(a.data_cfg, "--data-cfg"), a.split, a.out_json, a.out_dir,
                 parse_json_arg(a.cfg, "--cfg"), a.device, a.weights_dir, a.submission)
    if m["scored"]:
        print(f"eval_seg: {a.split} mIoU {m['miou']} over {m['n_images']} images → {a.out_json}")
    else:
        print(f"eval_seg: {a.split} has no GT: {m['n_predicted']} images predicted, no metric"
              + (f"; server archive {a.submission}" if a.submission else ""))
    return 0


if __name__ == "__main__":
    main()
