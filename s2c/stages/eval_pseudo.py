"""mIoU of a folder of label-map PNGs (pseudo-labels or segmentation predictions) against GT.

Every id of the split must have ``<pred>/<id>.png`` (palette or grey, 0 = background, c+1 = class
c) at the image's size. Writes ``{"miou", "iou", "n_images"}`` (percent values) — eval_cam's keys
without ``threshold``, which a label folder does not have (consumers test ``"threshold" in m``).

CLI::

    s2c eval_pseudo --pred pseudo_labels/ --data-cfg '{...}' --split train \
        --out results/run/metrics/pseudo_train.json [--bar iou.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..cli import parse_json_arg
from ..data import gt_mask, open_dataset
from ..errors import S2CError, cli_main
from ..io import read_label_png
from ..metrics import FloorSearch, confusion_matrix, floor_verdict, with_background, write_metrics
from ..plots import plot_iou_bars


def evaluate_labels(pred: str | Path, data_cfg: dict, split: str, out: str | Path,
                    bar: str | Path | None = None, progress: bool = True) -> dict:
    """Accumulate one confusion matrix over ``split`` for the PNGs in ``pred``; write JSON ``out``
    (and a per-class IoU bar chart PNG ``bar``). Returns the metrics dict."""
    pred = Path(pred)
    if not pred.is_dir():
        raise S2CError(f"prediction folder not found: {pred} (run pseudo_labels / the segmentation stage first)")
    ds = open_dataset(data_cfg, split)
    names = with_background(ds.class_names)
    K = len(names)
    cm = np.zeros((K, K), np.int64)
    floors = FloorSearch(K)  # the model-free priors, given the image labels (threshold searched)
    for image_id in tqdm(ds.ids, desc=f"eval_pseudo {split}", disable=not progress):
        gt = gt_mask(ds, image_id)
        path = pred / f"{image_id}.png"
        p = read_label_png(path)
        if p.shape != gt.shape:
            raise S2CError(f"{path} has size {p.shape} but its GT has {gt.shape}; "
                           "predictions must be written at the image's resolution")
        try:
            cm += confusion_matrix(p, gt, K)
        except S2CError as e:
            raise S2CError(f"{path}: {e}") from None
        floors.add(np.flatnonzero(ds.labels(image_id)), gt)
    if not ds.ids:
        raise S2CError(f"split {split!r} has no images to evaluate; check data.root and the image list")
    result = write_metrics(out, cm, names, floors.result(), n_images=len(ds.ids))
    if bar is not None:
        plot_iou_bars(result, bar, title=f"IoU of {pred.name} ({split})")
    return result


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s2c eval_pseudo", description=__doc__.split("\n")[0])
    p.add_argument("--pred", type=Path, required=True, help="folder of <id>.png label maps")
    p.add_argument("--data-cfg", required=True, help="JSON of the config's data section")
    p.add_argument("--split", required=True, help="split to evaluate (needs GT masks)")
    p.add_argument("--out", type=Path, required=True, help="output metrics JSON")
    p.add_argument("--bar", type=Path, default=None, help="also write a per-class IoU bar chart PNG")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    a = p.parse_args(argv)
    r = evaluate_labels(a.pred, parse_json_arg(a.data_cfg, "--data-cfg"), a.split, a.out, a.bar,
                        progress=not a.no_progress)
    print(f"mIoU {r['miou']} over {r['n_images']} images")
    print(floor_verdict(r['miou'], r['floors'])[1])
    return 0


if __name__ == "__main__":
    main()
