"""CAMs → pixel pseudo-labels (palette PNGs), with an optional refinement (METHOD.md §7).

- ``none``: argmax over [t; CAMs] with the background threshold t (eval_cam's searched value
  from ``--threshold-json``, or ``threshold`` fixed in the config, which takes precedence);
- ``crf``: denseCRF on [(1 − max)^α; CAMs] (:mod:`s2c.refine.crf`; needs ``pydensecrf2``);
- ``sam``: the ``none`` labels post-processed with the SE masks (:mod:`s2c.refine.sam_post`,
  Chen et al. 2023; needs ``--se-manifest``).

Config (the ``pseudo`` section; defaults in :data:`DEFAULTS`):

- ``threshold``: fixed background threshold; null → the ``threshold`` of ``--threshold-json``.
- ``refine``: none | crf | sam.
- ``crf`` (:data:`s2c.refine.crf.CRF_DEFAULTS`, the PSA/IRN values): ``alpha`` (null → α with
  (1 − t)^α = t), ``iters``, ``gauss_sxy``, ``gauss_compat``, ``bilateral_sxy``, ``bilateral_srgb``,
  ``bilateral_compat``.
- ``sam`` (:data:`s2c.refine.sam_post.SAM_POST_DEFAULTS`): ``fg_ratio`` (|R∩S|/|S| >),
  ``region_ratio`` (|R∩S|/|R| >=), ``include_background`` (background competes for masks like a
  class), ``keep_unclaimed`` (masks no class claims keep their labels).

The output folder holds ``<id>.png`` (VOC palette) for every id of the split; it is written to a
temporary sibling and renamed, so it is either complete or absent.

CLI::

    s2c pseudo_labels --cams cams_train.h5 --threshold-json cam_train.json \
        --data-cfg '{...}' --split train --out pseudo/ --cfg '{"refine": "sam"}' --se-manifest se.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from ..cam_store import CAMStore
from ..cli import parse_json_arg
from ..data import open_dataset
from ..errors import S2CError, cli_main
from ..io import atomic_path, save_label_png
from ..metrics import read_metrics
from ..refine import cams_to_label
from ..refine.crf import alpha_for_threshold, crf_label, require_densecrf
from ..refine.sam_post import sam_refine
from ..sam.cache import SEMapReader
from ..sections import PSEUDO_DEFAULTS as DEFAULTS
from ..sections import REFINEMENTS
from ..sections import resolve_pseudo as resolve_cfg

__all__ = ["DEFAULTS", "REFINEMENTS", "resolve_cfg", "resolve_threshold", "make_pseudo_labels", "main"]


def resolve_threshold(cfg: dict, threshold_json: str | Path | None) -> float:
    """The background threshold: ``cfg['threshold']`` when set, else the JSON's "threshold"."""
    if cfg["threshold"] is not None:
        t = cfg["threshold"]
    elif threshold_json is not None:
        t = read_metrics(threshold_json).get("threshold")
        if t is None:
            raise S2CError(f"{threshold_json} has no 'threshold'; pass the eval_cam JSON "
                           "or set pseudo_labels.threshold")
    else:
        raise S2CError("pseudo_labels: no background threshold; pass --threshold-json (eval_cam output) "
                       "or set pseudo_labels.threshold")
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise S2CError(f"pseudo_labels: threshold {t!r} is not a number") from None
    if not 0.0 <= t <= 1.0:
        raise S2CError(f"pseudo_labels: threshold {t} outside [0, 1] (CAMs are max-normalised)")
    return t


def open_se_reader(se_manifest: str | Path):
    """SEMapReader over a manifest of the SE cache (s2c.sam.cache)."""
    return SEMapReader(se_manifest)


def make_pseudo_labels(cams: str | Path, data_cfg: dict, split: str, out: str | Path,
                       cfg: dict | None = None, threshold_json: str | Path | None = None,
                       se=None, progress: bool = True) -> Path:
    """Write ``<out>/<id>.png`` pseudo-labels for every id of ``split``.

    se: for refine ``sam``, an object with ``.se_map(id) -> int (H, W)`` (e.g. SEMapReader) or a
    manifest path. Returns ``out``.
    """
    cfg = resolve_cfg(cfg)
    t = resolve_threshold(cfg, threshold_json)
    refine = cfg["refine"]
    if refine == "sam":
        if se is None:
            raise S2CError("pseudo_labels.refine 'sam' needs the SE cache: pass --se-manifest")
        if isinstance(se, (str, Path)):
            se = open_se_reader(se)
    crf_kw = dict(cfg["crf"])
    if refine == "crf":
        if crf_kw["alpha"] is None:
            crf_kw["alpha"] = alpha_for_threshold(t)
        require_densecrf()  # fail before any work when the bindings are missing
    ds = open_dataset(data_cfg, split)
    store = CAMStore(cams)
    store.check_covers(ds.ids, ds.class_names, split)
    out = Path(out)
    try:
        with atomic_path(out) as tmp:
            tmp.mkdir()
            for image_id in tqdm(ds.ids, desc=f"pseudo_labels {split} ({refine})", disable=not progress):
                c, k = store.get(image_id)
                if refine == "crf":
                    label = crf_label(ds.load_image(image_id), c, k, **crf_kw)
                else:
                    label = cams_to_label(c, k, t)
                    if refine == "sam":
                        label = sam_refine(label, se.se_map(image_id), **cfg["sam"])
                save_label_png(label, tmp / f"{image_id}.png")
    finally:
        store.close()
    return out


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s2c pseudo_labels", description=__doc__.split("\n")[0])
    p.add_argument("--cams", type=Path, required=True, help="CAM store written by infer_cam")
    p.add_argument("--threshold-json", type=Path, default=None,
                   help="eval_cam JSON whose 'threshold' is used (unless the config fixes one)")
    p.add_argument("--data-cfg", required=True, help="JSON of the config's data section")
    p.add_argument("--split", required=True, help="split the store was made for")
    p.add_argument("--out", type=Path, required=True, help="output folder of <id>.png")
    p.add_argument("--cfg", default="{}", help="JSON: pseudo_labels section (threshold, refine, crf, sam)")
    p.add_argument("--se-manifest", type=Path, default=None, help="SE-map cache manifest (refine 'sam')")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    a = p.parse_args(argv)
    make_pseudo_labels(a.cams, parse_json_arg(a.data_cfg, "--data-cfg"), a.split, a.out,
                       parse_json_arg(a.cfg, "--cfg"), a.threshold_json, a.se_manifest,
                       progress=not a.no_progress)
    return 0


if __name__ == "__main__":
    main()
