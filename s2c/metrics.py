"""Segmentation metrics: confusion matrices, IoU/mIoU, the CAM background-threshold search, JSON.

Conventions (see s2c/classes.py): label maps use 0 = background, c+1 = foreground class c and
255 = ignore. A confusion matrix ``cm`` is int64 (K, K) with rows = ground truth, columns =
prediction, K = C + 1. IoU is computed from ONE matrix accumulated over the whole set (the
standard VOC protocol), never averaged per image.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import S2CError
from .io import atomic_path

IGNORE = 255

#: METHOD.md §7: the background constant is searched on 0.05..0.95 step 0.05.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore: int = IGNORE) -> np.ndarray:
    """Confusion matrix of one label map pair.

    pred, gt: integer arrays of the same shape (H, W); ``gt == ignore`` pixels are skipped.
    num_classes: K (background included). Returns int64 (K, K), rows = gt, cols = pred.
    Raises S2CError when shapes differ or a value falls outside 0..K-1 (other than ignore in gt).
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise S2CError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}; "
                       "predictions must be at the image's resolution")
    valid = gt != ignore
    g = gt[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    if g.size and (g.max() >= num_classes or g.min() < 0):
        raise S2CError(f"ground truth contains label {int(g.max())} outside 0..{num_classes - 1} "
                       f"(and not the ignore value {ignore}); check the class set")
    if p.size and (p.max() >= num_classes or p.min() < 0):
        bad = int(p.max()) if p.max() >= num_classes else int(p.min())
        raise S2CError(f"prediction contains label {bad} outside 0..{num_classes - 1}; check the class set")
    return np.bincount(g * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes).astype(np.int64)


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN) from cm (K, K). Returns float64 (K,) in [0, 1];
    NaN for classes absent from both GT and prediction (they do not count in the mean)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / np.where(denom > 0, denom, 1), np.nan)


def miou_from_confusion(cm: np.ndarray) -> float:
    """Mean IoU over classes with a defined IoU (fraction in [0, 1]; NaN if none)."""
    iou = iou_from_confusion(cm)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def with_background(class_names: Sequence[str]) -> list[str]:
    """Label-map class names: ['background', *foreground names] (index = label value)."""
    return ["background", *class_names]


class ThresholdSearch:
    """Accumulate CAM predictions for every background threshold in ONE pass over the data.

    The CAM prediction at threshold t is argmax over [t; CAMs] (METHOD.md §7): a pixel is
    foreground class L (its arg-max CAM) iff its max CAM m > t (ties go to background, as
    np.argmax picks the first entry). So a pixel's outcome depends only on how many thresholds lie
    below m: we histogram (bin(m), gt, L) jointly with one bincount per image, (T+1)·K² counts, and
    derive all T confusion matrices at the end with a cumulative sum over bins.
    """

    def __init__(self, num_classes: int, thresholds: Iterable[float] = DEFAULT_THRESHOLDS,
                 ignore: int = IGNORE):
        """num_classes: K (background included). thresholds: strictly increasing values."""
        self.thresholds = np.asarray(list(thresholds), dtype=np.float64)
        if self.thresholds.ndim != 1 or self.thresholds.size == 0:
            raise S2CError("eval_cam: 'thresholds' must be a non-empty list of numbers")
        if np.any(np.diff(self.thresholds) <= 0):
            raise S2CError(f"eval_cam: 'thresholds' must be strictly increasing, got {self.thresholds.tolist()}")
        self.K = int(num_classes)
        self.ignore = ignore
        self.hist = np.zeros((self.thresholds.size + 1, self.K, self.K), dtype=np.int64)
        self.n_images = 0

    def add(self, cams: np.ndarray, classes: np.ndarray, gt: np.ndarray) -> None:
        """Add one image.

        cams: float (k, H, W), the max-normalised CAMs of the image's k labelled classes (k may be 0).
        classes: int (k,) foreground indices 0..C-1 of those CAMs. gt: uint8 (H, W) label map.
        """
        cams = np.asarray(cams, dtype=np.float32)
        classes = np.asarray(classes, dtype=np.int64).reshape(-1)
        if cams.ndim != 3 or cams.shape[0] != classes.size or cams.shape[1:] != gt.shape:
            raise S2CError(f"CAMs of shape {cams.shape} with {classes.size} classes do not match "
                           f"ground truth of shape {gt.shape}; re-run infer_cam for this split")
        valid = gt != self.ignore
        g = gt[valid].astype(np.int64)
        if g.size and g.max() >= self.K:
            raise S2CError(f"ground truth contains label {int(g.max())} outside 0..{self.K - 1}; check the class set")
        if classes.size:
            c = cams[:, valid]
            am = c.argmax(0)
            m = c[am, np.arange(am.size)]
            lab = classes[am] + 1
        else:
            m = np.zeros(g.size, np.float32)
            lab = np.zeros(g.size, np.int64)
        # bin = number of thresholds strictly below m  →  foreground exactly for thresholds j < bin
        # (compared in float32, the CAMs' precision, so a CAM equal to t is background as in argmax)
        b = np.searchsorted(self.thresholds.astype(np.float32), m, side="left").astype(np.int64)
        K = self.K
        self.hist += np.bincount((b * K + g) * K + lab, minlength=self.hist.size).reshape(self.hist.shape)
        self.n_images += 1

    def confusions(self) -> np.ndarray:
        """int64 (T, K, K): the confusion matrix for each threshold."""
        T = self.thresholds.size
        # fg[j] = counts with bin > j (predicted their CAM class); bg[j] = bin <= j (predicted 0)
        rev = np.cumsum(self.hist[::-1], axis=0)[::-1]  # rev[i] = sum over bins >= i
        fg = rev[1:T + 1]
        bg_rows = (rev[0] - rev[1:T + 1]).sum(axis=2)  # (T, K) per-gt counts predicted background
        cms = fg.copy()
        cms[:, :, 0] += bg_rows
        return cms

    def best(self) -> tuple[float, np.ndarray, np.ndarray]:
        """(best threshold, its cm (K, K), mIoU per threshold (T,) as fractions). Ties → lowest t."""
        cms = self.confusions()
        mious = np.array([miou_from_confusion(cm) for cm in cms])
        j = int(np.nanargmax(mious)) if np.isfinite(mious).any() else 0
        return float(self.thresholds[j]), cms[j], mious


#: Model-free predictors scored as sanity floors next to every CAM / pseudo-label evaluation: a
#: classifier below them has not learned to localise yet.
FLOOR_KINDS: tuple[str, ...] = ("centre_prior", "all_labelled")


def prior_cams(kind: str, num_labelled: int, shape: tuple[int, int]) -> np.ndarray:
    """The CAMs of a model-free predictor: float32 (k, H, W), the same map for each labelled class.

    ``centre_prior``: a Gaussian centred on the image, σ = a third of each side, peak 1.
    ``all_labelled``: 1 everywhere (every labelled class on every pixel).
    With identical maps the arg-max picks the first labelled class, as for tied CAMs.
    """
    h, w = shape
    if kind == "centre_prior":
        y = (np.arange(h, dtype=np.float32) + 0.5 - h / 2) / (h / 3)
        x = (np.arange(w, dtype=np.float32) + 0.5 - w / 2) / (w / 3)
        m = np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2)).astype(np.float32)
    elif kind == "all_labelled":
        m = np.ones((h, w), np.float32)
    else:
        raise S2CError(f"unknown sanity floor {kind!r}; use one of {list(FLOOR_KINDS)}")
    return np.broadcast_to(m, (num_labelled, h, w))


class FloorSearch:
    """:class:`ThresholdSearch` of each model-free predictor in :data:`FLOOR_KINDS`, fed the same
    (labels, GT) as the model under test, so the floors use the very same threshold search."""

    def __init__(self, num_classes: int, thresholds: Iterable[float] = DEFAULT_THRESHOLDS) -> None:
        self.searches = {k: ThresholdSearch(num_classes, thresholds) for k in FLOOR_KINDS}

    def add(self, classes: np.ndarray, gt: np.ndarray) -> None:
        """classes: int (k,) the image's labelled foreground classes; gt: uint8 (H, W)."""
        classes = np.asarray(classes, dtype=np.int64).reshape(-1)
        for kind, search in self.searches.items():
            search.add(prior_cams(kind, classes.size, gt.shape), classes, gt)

    def result(self) -> dict[str, dict]:
        """{kind: {"miou": percent, "threshold": t}} at each floor's own best threshold."""
        out = {}
        for kind, search in self.searches.items():
            t, cm, _ = search.best()
            out[kind] = {"miou": _percent(miou_from_confusion(cm)), "threshold": t}
        return out


def floor_verdict(miou: float | None, floors: dict[str, dict]) -> tuple[bool, str]:
    """(above every floor?, one line for the log) for a result in percent."""
    parts = ", ".join(f"{k} {v['miou']}" for k, v in floors.items())
    best = max((v["miou"] for v in floors.values() if v["miou"] is not None), default=None)
    above = miou is not None and (best is None or miou > best)
    if above:
        return True, f"mIoU {miou} is above the model-free floors ({parts})"
    return False, (f"WARNING: mIoU {miou} is NOT above the model-free floors ({parts}): "
                   "the model has not learned to localise yet (train longer / check the schedule)")


def _percent(x: float) -> float | None:
    return None if not math.isfinite(x) else round(100.0 * float(x), 4)


def metrics_dict(cm: np.ndarray, class_names: Sequence[str], **extra) -> dict:
    """{"miou": percent, "iou": {class: percent or None}, **extra}; class_names has K entries
    (background first, see :func:`with_background`)."""
    cm = np.asarray(cm)
    if cm.shape != (len(class_names), len(class_names)):
        raise S2CError(f"confusion matrix {cm.shape} does not match {len(class_names)} class names")
    iou = iou_from_confusion(cm)
    out = {"miou": _percent(miou_from_confusion(cm)),
           "iou": {name: _percent(v) for name, v in zip(class_names, iou)}}
    out.update(extra)
    return out


def write_metrics(path: str | Path, cm: np.ndarray, class_names: Sequence[str],
                  floors: dict[str, dict] | None = None, **extra) -> dict:
    """Write :func:`metrics_dict` as JSON to ``path`` atomically and return it. Percent values;
    classes with undefined IoU (absent from GT and prediction) are null. With ``floors``
    (:meth:`FloorSearch.result`) the JSON also holds them and ``above_floor``."""
    out = metrics_dict(cm, class_names, **extra)
    if floors is not None:
        out.update(floors=floors, above_floor=floor_verdict(out["miou"], floors)[0])
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(out, indent=2) + "\n")
    return out


def read_metrics(path: str | Path) -> dict:
    """Read a metrics JSON written by :func:`write_metrics`; S2CError naming the file if unusable."""
    path = Path(path)
    if not path.is_file():
        raise S2CError(f"metrics file not found: {path} (run the stage that writes it first)")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise S2CError(f"corrupt metrics JSON {path}: {e}; delete it and re-run its stage") from None
    if not isinstance(d, dict):
        raise S2CError(f"metrics JSON {path} is not an object; delete it and re-run its stage")
    return d
