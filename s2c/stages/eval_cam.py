"""CAM mIoU against ground truth, with the background threshold searched on a grid (METHOD.md §7).

Prediction at threshold t = argmax over [t; CAMs of the image's labelled classes]; IoU comes from
one confusion matrix per threshold accumulated over the whole split in a single pass
(:class:`s2c.metrics.ThresholdSearch`). The JSON reports the best threshold:
``{"miou", "iou", "threshold", "n_images", "miou_by_threshold"}`` (percent values).

CLI::

    s2c eval_cam --cams cams_train.h5 --data-cfg '{...}' --split train \
        --out results/run/metrics/cam_train.json --cfg '{"thresholds": [0.05, ..., 0.95]}' [--bar iou.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..cam_store import CAMStore
from ..cli import parse_json_arg
from ..data import gt_mask, open_dataset
from ..errors import S2CError, cli_main
from ..metrics import FloorSearch, ThresholdSearch, floor_verdict, with_background, write_metrics
from ..plots import plot_iou_bars
from ..sections import EVAL_CAM_DEFAULTS as DEFAULTS
from ..sections import resolve_eval_cam

__all__ = ["DEFAULTS", "gt_mask", "evaluate_cams", "main"]


def evaluate_cams(cams: str | Path, data_cfg: dict, split: str, out: str | Path,
                  cfg: dict | None = None, bar: str | Path | None = None, progress: bool = True) -> dict:
    """Search the background threshold for the CAM store ``cams`` on ``split``; write JSON ``out``
    (and a per-class IoU bar chart PNG ``bar``). Returns the metrics dict."""
    cfg = resolve_eval_cam(cfg)
    try:
        thresholds = [float(t) for t in cfg["thresholds"]]
    except (TypeError, ValueError):
        raise S2CError(f"eval_cam: 'thresholds' must be a list of numbers, got {cfg['thresholds']!r}") from None
    ds = open_dataset(data_cfg, split)
    store = CAMStore(cams)
    store.check_covers(ds.ids, ds.class_names, split)
    names = with_background(ds.class_names)
    search = ThresholdSearch(len(names), thresholds)
    floors = FloorSearch(len(names), thresholds)
    try:
        for image_id in tqdm(ds.ids, desc=f"eval_cam {split}", disable=not progress):
            gt = gt_mask(ds, image_id)
            c, k = store.get(image_id)
            search.add(c, k, gt)
            floors.add(k, gt)
    finally:
        store.close()
    if search.n_images == 0:
        raise S2CError(f"split {split!r} has no images to evaluate; check data.root and the image list")
    t, cm, mious = search.best()
    curve = {f"{th:g}": (None if not np.isfinite(m) else round(100 * float(m), 4))
             for th, m in zip(thresholds, mious)}
    result = write_metrics(out, cm, names, floors.result(), threshold=t, n_images=search.n_images,
                           miou_by_threshold=curve)
    if bar is not None:
        plot_iou_bars(result, bar, title=f"CAM IoU ({split}, t={t:g})")
    return result


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s2c eval_cam", description=__doc__.split("\n")[0])
    p.add_argument("--cams", type=Path, required=True, help="CAM store written by infer_cam")
    p.add_argument("--data-cfg", required=True, help="JSON of the config's data section")
    p.add_argument("--split", required=True, help="split to evaluate (needs GT masks; the store must hold its ids)")
    p.add_argument("--out", type=Path, required=True, help="output metrics JSON")
    p.add_argument("--cfg", default="{}", help="JSON: eval_cam section (thresholds)")
    p.add_argument("--bar", type=Path, default=None, help="also write a per-class IoU bar chart PNG")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    a = p.parse_args(argv)
    r = evaluate_cams(a.cams, parse_json_arg(a.data_cfg, "--data-cfg"), a.split, a.out,
                      parse_json_arg(a.cfg, "--cfg"), a.bar, progress=not a.no_progress)
    print(f"CAM mIoU {r['miou']} at threshold {r['threshold']:g} over {r['n_images']} images")
    print(floor_verdict(r["miou"], r["floors"])[1])
    return 0


if __name__ == "__main__":
    main()
