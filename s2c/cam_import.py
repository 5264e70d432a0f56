"""CAMs and pseudo-labels written by other WSSS codes, checked against the dataset and brought into
s2c's own files: the CAM store (:mod:`s2c.cam_store`) and the pseudo-label folder, so that every
stage after ``infer_cam`` (eval_cam, pseudo_labels with argmax / CRF / SAM, train_seg, eval_seg)
runs on them unchanged.

CAM folder formats (one file per image id, ``<folder>/<id>.npy`` unless said otherwise; "class
ids" are foreground indices 0..C-1 of the dataset's class set, background excluded):

- ``plain`` (this project's documented exchange format): ``<id>.npz`` holding ``cams`` float
  (K, H, W) and ``classes`` int (K,); or ``<id>.npy``, a float array (K, H, W) whose K maps are the
  image's labelled classes in ascending order, or (C, H, W) over the whole class set.
- ``irn`` (IRN's ``make_cam.py``, also used by AdvCAM, ReCAM and others): a pickled dict with
  ``keys`` (K,) class ids, ``high_res`` (K, H, W) CAMs at image size (used) and ``cam`` (strided,
  ignored).
- ``clip_es`` (CLIP-ES): a pickled dict with ``keys`` (K,) class ids and ``attn_highres``
  float16 (K, H, W).
- ``mctformer`` (MCTformer, as PSA): a pickled dict ``{class id: (H, W) map}``.

Every file is checked before anything is written: present, readable, maps at the image's size,
finite, in [0, 1] (``normalize`` divides each map by its max first, as infer_cam does), and its
class ids equal to the image's labels. A failure names the file and the fix. The dict formats are
pickles: import only folders you trust (``numpy.load(allow_pickle=True)`` runs their code).

Pseudo-label folders hold ``<id>.png`` (palette or grey, 0 = background, c+1 = class c, 255 =
ignore) for every id of the split, at image size, with no class the image is not labelled with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from .cam_store import CAMStore, write_cam_store
from .data.base import SegDataset
from .errors import S2CError
from .io import atomic_path, read_label_png, save_label_png

#: The CAM folder formats :func:`import_cams` reads (the schema's ``external.format`` enum).
CAM_FORMATS = ("plain", "irn", "clip_es", "mctformer")
#: Maps a little above 1 are rounding (float16 files); beyond this a folder is not max-normalised.
RANGE_TOLERANCE = 1e-2


def _load_npy(path: Path, pickled: bool):
    try:
        obj = np.load(path, allow_pickle=pickled)
    except FileNotFoundError:
        raise S2CError(f"CAM file {path} is missing; export CAMs for every image of the split "
                       "(or use a split whose ids the folder covers)") from None
    except Exception as e:  # numpy raises ValueError, OSError, UnpicklingError, EOFError ...
        raise S2CError(f"cannot read CAM file {path} ({e.__class__.__name__}: {e}); "
                       "rewrite it with the exporting code") from None
    if pickled:
        if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
            obj = obj.item()
        if not isinstance(obj, dict):
            raise S2CError(f"CAM file {path} holds a {type(obj).__name__}, not the dict this format writes; "
                           "check external.format")
    return obj


def _as_array(value, path: Path, key: str) -> np.ndarray:
    """A numpy array from a stored value (IRN pickles torch tensors beside numpy arrays)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise S2CError(f"CAM file {path}: {key!r} is not a numeric array; check external.format") from None


def _dict_key(obj: dict, key: str, path: Path, fmt: str):
    if key not in obj:
        raise S2CError(f"CAM file {path} has no {key!r} (keys: {sorted(map(str, obj))}); "
                       f"it is not in the {fmt!r} format, check external.format")
    return obj[key]


def read_cam_file(folder: str | Path, fmt: str, image_id: str, labels: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, Path]:
    """One image's maps as stored by ``fmt``: (cams float32 (K, H, W), class ids int64 (K,), file).

    labels: the image's labelled class ids, ascending (the plain ``.npy`` maps follow them).
    """
    folder = Path(folder)
    if fmt not in CAM_FORMATS:
        raise S2CError(f"unknown CAM format {fmt!r}; use one of {list(CAM_FORMATS)}")
    if fmt == "plain":
        npz = folder / f"{image_id}.npz"
        if npz.is_file():
            try:
                with np.load(npz) as z:
                    cams, classes = z["cams"], z["classes"]
            except KeyError:
                raise S2CError(f"CAM file {npz} must hold the arrays 'cams' (K, H, W) and 'classes' (K,)") from None
            except Exception as e:
                raise S2CError(f"cannot read CAM file {npz} ({e.__class__.__name__}: {e}); rewrite it") from None
            return _as_array(cams, npz, "cams"), np.asarray(classes).astype(np.int64).reshape(-1), npz
        path = folder / f"{image_id}.npy"
        if not path.is_file():
            raise S2CError(f"CAM file {npz} (or {path.name}) is missing; export CAMs for every image of the split")
        cams = _as_array(_load_npy(path, pickled=False), path, "array")
        return cams, None, path  # class ids: the caller's labels (or the whole class set)
    path = folder / f"{image_id}.npy"
    obj = _load_npy(path, pickled=True)
    if fmt == "mctformer":
        try:
            classes = np.array(sorted(int(k) for k in obj), dtype=np.int64)
        except (TypeError, ValueError):
            raise S2CError(f"CAM file {path}: keys must be class ids (int), got {list(obj)[:5]}; "
                           "check external.format") from None
        maps = [_as_array(obj[k], path, str(k)) for k in sorted(obj, key=int)]
        cams = np.stack(maps) if maps else np.zeros((0, 0, 0), np.float32)
        return cams, classes, path
    cams = _as_array(_dict_key(obj, "high_res" if fmt == "irn" else "attn_highres", path, fmt), path, "cams")
    classes = np.asarray(_dict_key(obj, "keys", path, fmt)).astype(np.int64).reshape(-1)
    return cams, classes, path


def check_cams(cams: np.ndarray, classes: np.ndarray | None, labels: np.ndarray, size: tuple[int, int],
               num_classes: int, path: Path, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """The maps of the image's labelled classes, ascending, checked; S2CError naming ``path``."""
    if cams.ndim == 2 and classes is not None and classes.size == 1:
        cams = cams[None]
    if cams.ndim != 3:
        raise S2CError(f"CAM file {path}: maps have shape {cams.shape}, expected (K, H, W)")
    if classes is None:  # plain .npy: the labelled classes in order, or the whole class set
        if cams.shape[0] == labels.size:
            classes = labels
        elif cams.shape[0] == num_classes:
            cams, classes = cams[labels], labels
        else:
            raise S2CError(f"CAM file {path} has {cams.shape[0]} maps; the image has {labels.size} labelled "
                           f"class(es) {labels.tolist()} (and the class set {num_classes}): write one map per "
                           "labelled class in ascending order, or use an .npz with 'classes'")
    if classes.size != cams.shape[0]:
        raise S2CError(f"CAM file {path}: {classes.size} class ids for {cams.shape[0]} maps")
    if sorted(classes.tolist()) != labels.tolist():
        raise S2CError(f"CAM file {path} has class ids {sorted(classes.tolist())} but the image is labelled "
                       f"{labels.tolist()} (foreground ids 0..{num_classes - 1}, background excluded); "
                       "export CAMs of the image's labelled classes for this class set")
    if cams.shape[1:] != tuple(size):
        raise S2CError(f"CAM file {path}: maps are {cams.shape[1]}x{cams.shape[2]} but the image is "
                       f"{size[0]}x{size[1]} (HxW); export CAMs at image size (IRN: high_res)")
    if not np.isfinite(cams).all():
        raise S2CError(f"CAM file {path} holds NaN or inf values; re-export it")
    order = np.argsort(classes, kind="stable")
    cams, classes = cams[order], classes[order]
    if normalize:
        cams = np.maximum(cams, 0)
        cams = cams / (cams.reshape(len(cams), -1).max(1)[:, None, None] + 1e-5)
    elif cams.size and (cams.min() < -RANGE_TOLERANCE or cams.max() > 1 + RANGE_TOLERANCE):
        raise S2CError(f"CAM file {path} has values in [{cams.min():.3g}, {cams.max():.3g}], not [0, 1]; "
                       "set external.normalize: true to divide each map by its max")
    return np.clip(cams, 0.0, 1.0), classes


def _labelled(ds: SegDataset, image_id: str) -> np.ndarray:
    return np.flatnonzero(np.asarray(ds.labels(image_id)) > 0.5).astype(np.int64)


def _image_size(ds: SegDataset, image_id: str) -> tuple[int, int]:
    return tuple(ds.load_image(image_id).shape[:2])


def import_cams(source: str | Path, fmt: str, ds: SegDataset, out: str | Path, normalize: bool = False,
                progress: bool = True) -> Path:
    """Check every CAM file of ``source`` against ``ds`` and write the CAM store ``out`` atomically."""
    source = Path(source)
    if not source.is_dir():
        raise S2CError(f"CAM folder {source} is not a directory; set external.cams to the folder of "
                       "per-image CAM files")
    attrs = {"split": ds.split, "class_set": ds.class_set, "class_names": list(ds.class_names),
             "ids": list(ds.ids), "scales": [], "flip": False, "model_sha256": "",
             "image_list_hash": ds.image_list_hash(), "source": str(source), "source_format": fmt}
    with write_cam_store(out, attrs) as put:
        for image_id in tqdm(ds.ids, desc=f"import_cams {ds.split} ({fmt})", disable=not progress):
            labels = _labelled(ds, image_id)
            cams, classes, path = read_cam_file(source, fmt, image_id, labels)
            cams, classes = check_cams(cams, classes, labels, _image_size(ds, image_id), ds.num_classes, path,
                                       normalize)
            put(image_id, cams, classes)
    return Path(out)


# ------------------------------------------------------------------------------------- export
def _write_plain(path: Path, cams: np.ndarray, classes: np.ndarray) -> None:
    np.savez_compressed(path.with_suffix(".npz"), cams=cams.astype(np.float32), classes=classes)


def _write_irn(path: Path, cams: np.ndarray, classes: np.ndarray) -> None:
    # IRN's strided map is at a quarter of the image size; readers here use high_res only
    np.save(path, {"keys": classes, "cam": cams[:, ::4, ::4].copy(), "high_res": cams.astype(np.float32)})


def _write_clip_es(path: Path, cams: np.ndarray, classes: np.ndarray) -> None:
    np.save(path, {"keys": classes, "attn_highres": cams.astype(np.float16)})


def _write_mctformer(path: Path, cams: np.ndarray, classes: np.ndarray) -> None:
    np.save(path, {int(c): m.astype(np.float32) for c, m in zip(classes, cams)})


WRITERS: dict[str, Callable[[Path, np.ndarray, np.ndarray], None]] = {
    "plain": _write_plain, "irn": _write_irn, "clip_es": _write_clip_es, "mctformer": _write_mctformer,
}


def export_cams(cams: str | Path, fmt: str, out: str | Path, progress: bool = True) -> Path:
    """Write every image of the CAM store ``cams`` as ``<out>/<id>.npy`` (``.npz`` for plain) in ``fmt``:
    what another code's post-processing reads, and a round trip for :func:`import_cams`."""
    if fmt not in WRITERS:
        raise S2CError(f"unknown CAM format {fmt!r}; use one of {list(CAM_FORMATS)}")
    store = CAMStore(cams)
    out = Path(out)
    try:
        with atomic_path(out) as tmp:
            tmp.mkdir()
            for image_id in tqdm(store.ids, desc=f"export_cams ({fmt})", disable=not progress):
                c, k = store.get(image_id)
                WRITERS[fmt](tmp / f"{image_id}.npy", c, k)
    finally:
        store.close()
    return out


# ------------------------------------------------------------------------------- pseudo-labels
def import_pseudo_labels(source: str | Path, ds: SegDataset, out: str | Path, progress: bool = True) -> Path:
    """Check ``<source>/<id>.png`` for every id of ``ds`` and write them (VOC palette) to ``out`` atomically."""
    source = Path(source)
    if not source.is_dir():
        raise S2CError(f"pseudo-label folder {source} is not a directory; set external.pseudo to the folder "
                       "of <id>.png label maps")
    C = ds.num_classes
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for image_id in tqdm(ds.ids, desc=f"import_pseudo {ds.split}", disable=not progress):
            path = source / f"{image_id}.png"
            if not path.is_file():
                raise S2CError(f"pseudo-label {path} is missing; write a label PNG for every image of the split")
            label = read_label_png(path)
            size = _image_size(ds, image_id)
            if label.shape != size:
                raise S2CError(f"pseudo-label {path} is {label.shape[0]}x{label.shape[1]} but its image is "
                               f"{size[0]}x{size[1]} (HxW); write labels at image size")
            values = np.unique(label)
            bad = [int(v) for v in values if v != 255 and v > C]
            if bad:
                raise S2CError(f"pseudo-label {path} holds unknown class id(s) {bad}; valid: 0 (background), "
                               f"1..{C} (class c+1), 255 (ignore)")
            allowed = set((_labelled(ds, image_id) + 1).tolist()) | {0, 255}
            extra = [int(v) - 1 for v in values if int(v) not in allowed]
            if extra:
                raise S2CError(f"pseudo-label {path} holds class(es) {extra} the image is not labelled with "
                               f"({_labelled(ds, image_id).tolist()}); the labels must follow the image labels")
            save_label_png(label, tmp / f"{image_id}.png")
    return Path(out)
